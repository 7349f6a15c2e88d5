"""What process workers need for a check, sent once per check instead of with every task.

A :class:`WorkerState` holds the loss, the layout and the base parameters of one check. Sent to
a Dask or multiprocessing worker it travels by value, like any task argument. For gradprobe's
own loky pool it is *published* once (:meth:`WorkerState.publish`): the parameters are written
to a folder in shared memory (``/dev/shm`` where there is one) and the loss and layout are
pickled there once; a task then carries only the folder's path and a token. Each worker
attaches on its first task of the check (:func:`_by_reference`): it maps the parameters
copy-on-write, so its working copy costs memory only for the pages a perturbation touches,
and it keeps them for the check's later tasks, perturbing in place and restoring the saved
value after each evaluation (as the in-process loop does).

The folder is removed when the check ends (:meth:`WorkerState.close`), at interpreter exit,
and, when this process is killed first, by loky's resource tracker (it outlives the process
and removes what was registered with it, as for joblib's own memory-mapped folders).
"""

from __future__ import annotations

import atexit
import os
import pickle
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..layout import ParamLayout

#: Checks whose state a worker keeps attached (the newest first out when more arrive).
ATTACHED_CHECKS = 2

_published: set[str] = set()  # folders this process made and has not removed yet
_attached: OrderedDict[str, _Attached] = OrderedDict()
_attach_lock = threading.Lock()


def _shared_root() -> str:
    """Where published states go: RAM-backed ``/dev/shm`` where it exists and is writable."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return tempfile.gettempdir()


def _tracker() -> Any:
    """loky's resource tracker: a process that removes the folders registered with it when
    this process dies without removing them (killed, or ended by os._exit), as joblib's own
    memory-mapped folders are; None without loky."""
    try:
        from joblib.externals.loky.backend import resource_tracker
    except ImportError:  # pragma: no cover
        return None
    return resource_tracker


def _remove(folder: str) -> None:
    tracker = _tracker()
    if tracker is not None:
        tracker.unregister(folder, "folder")
    shutil.rmtree(folder, ignore_errors=True)
    _published.discard(folder)


def _remove_leftovers() -> None:
    for folder in list(_published):
        _remove(folder)


atexit.register(_remove_leftovers)


class WorkerState:
    """The loss, layout and base parameters of one check, as workers receive them.

    Parameters
    ----------
    loss : callable
        The user's loss.
    layout : ParamLayout
        How the parameters are packed for the loss.
    arrays : sequence of ndarray
        The base parameters (the evaluator's private copies; never written to).
    """

    def __init__(
        self, loss: Callable[[Any], Any], layout: ParamLayout, arrays: Sequence[np.ndarray]
    ) -> None:
        self.loss = loss
        self.layout = layout
        self.arrays = list(arrays)
        self.token = uuid.uuid4().hex
        #: The published folder (None: not published, the state travels by value).
        self.folder: str | None = None

    def publish(self) -> None:
        """Write the state to shared memory once, so tasks carry only its path (see the
        module). Raises what pickling the loss raises."""
        if self.folder is not None:
            return
        try:  # joblib >= 1.5 depends on cloudpickle; older versions vendor it
            import cloudpickle
        except ImportError:  # pragma: no cover
            from joblib.externals import cloudpickle  # type: ignore[no-redef]

        payload = cloudpickle.dumps((self.loss, self.layout))
        folder = tempfile.mkdtemp(prefix=f"gradprobe-{os.getpid()}-", dir=_shared_root())
        _published.add(folder)
        tracker = _tracker()
        if tracker is not None:
            tracker.register(folder, "folder")
        try:
            with open(os.path.join(folder, "loss.pkl"), "wb") as f:
                f.write(payload)
            for k, a in enumerate(self.arrays):
                np.save(os.path.join(folder, f"{k}.npy"), a, allow_pickle=False)
        except BaseException:
            _remove(folder)
            raise
        self.folder = folder

    def close(self) -> None:
        """Remove the published folder (workers that attached keep their mappings)."""
        if self.folder is not None:
            _remove(self.folder)
            self.folder = None

    def __reduce__(self) -> tuple[Any, ...]:
        if self.folder is not None:
            return (_by_reference, (self.token, self.folder))
        return (_by_value, (self.loss, self.layout, self.arrays, self.token))

    def working_copies(self) -> list[np.ndarray]:
        """Arrays a task may perturb in place (restoring each value after use): in a worker
        that attached to a published state, its own copy-on-write mappings, kept for the
        check's later tasks; elsewhere (threads, by-value states) fresh copies per task."""
        return [np.array(a, copy=True) for a in self.arrays]


class _Attached(WorkerState):
    """A published state as a worker process sees it: mapped, attached once per check."""

    def __init__(self, token: str, folder: str) -> None:
        with open(os.path.join(folder, "loss.pkl"), "rb") as f:
            loss, layout = pickle.load(f)
        files = [os.path.join(folder, f"{k}.npy") for k in range(len(layout.names))]
        # Read-only maps are the base values; copy-on-write maps the working copies: pages
        # are copied privately only where a perturbation writes.
        base = [np.asarray(np.load(p, mmap_mode="r", allow_pickle=False)) for p in files]
        super().__init__(loss, layout, base)
        self.token = token
        self._work = [np.asarray(np.load(p, mmap_mode="c", allow_pickle=False)) for p in files]

    def __reduce__(self) -> tuple[Any, ...]:  # pragma: no cover - never sent on
        return (_by_value, (self.loss, self.layout, self.arrays, self.token))

    def working_copies(self) -> list[np.ndarray]:
        return self._work


def _by_value(
    loss: Callable[[Any], Any], layout: ParamLayout, arrays: Sequence[np.ndarray], token: str
) -> WorkerState:
    state = WorkerState(loss, layout, arrays)
    state.token = token
    return state


def _by_reference(token: str, folder: str) -> WorkerState:
    """A worker's attached state for ``token`` (attaching on first use, see the module)."""
    with _attach_lock:
        state = _attached.get(token)
        if state is None:
            state = _Attached(token, folder)
            _attached[token] = state
            while len(_attached) > ATTACHED_CHECKS:
                _attached.popitem(last=False)
        else:
            _attached.move_to_end(token)
        return state
