"""Where process and thread workers come from: the joblib backend a check runs under, and
how many workers ``n_jobs`` gives there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidInputError


@contextlib.contextmanager
def joblib_backend(name: str | None) -> Iterator[None]:
    """Where the joblib backend is picked: ``check(backend=name)`` runs inside this block.

    None leaves joblib's configuration as it is (``joblib.parallel_config`` of the caller, else
    processes). ``"dask"`` needs an active ``distributed.Client`` (the one ``get_client()``
    finds: the last one created, or the worker's own inside a task) and raises
    :class:`InvalidInputError` naming the fix without one.
    """
    if name is None:
        yield
        return
    import joblib

    if name == "dask":
        try:
            from distributed import get_client
        except ImportError:
            raise InvalidInputError(
                'backend: "dask" needs dask.distributed: pip install "gradprobe[dask]".'
            ) from None
        try:
            get_client()
        except ValueError:
            raise InvalidInputError(
                'backend: "dask" found no active distributed.Client; create one first '
                '(client = distributed.Client("tcp://host:8786"), or '
                "distributed.Client(distributed.LocalCluster()) on this machine)."
            ) from None
    with joblib.parallel_config(backend=name):
        yield


def workers_for(n_jobs: Any) -> int:
    """The number of workers ``n_jobs`` resolves to under the current joblib configuration."""
    if isinstance(n_jobs, int) and n_jobs == 1:
        return 1  # joblib's answer too, without importing joblib for a serial check
    import joblib

    return int(joblib.effective_n_jobs(-1 if n_jobs == "auto" else n_jobs))
