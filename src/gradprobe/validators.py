"""The validators of :mod:`gradprobe.options`, one per kind of option (each takes the raw
value and the parameter names and returns the value in force, or raises InvalidInputError
naming the option, what was expected and what was found)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .numerics.steps import METHODS

#: Random directions probed per parameter by default.
DEFAULT_PROBES = 2
DEFAULT_NONDET_TOL = 1e-12  #: relative jitter accepted by default (docs/reliability.md)


# -- one validator per kind -------------------------------------------------------------------
def validate_positive(name: str, value: Any, *, allow_none: bool = True) -> float | None:
    """A finite positive real, or None when allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(
            f"{name}: expected a positive number, found {value!r} ({type(value).__name__})."
        )
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InvalidInputError(f"{name}: expected a finite number > 0, found {value!r}.")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _seed(value: Any, names: Sequence[str] | None) -> int:
    if not _is_int(value) or value < 0:
        raise InvalidInputError(f"seed: expected an int >= 0, found {value!r}.")
    return int(value)


def _positive(name: str) -> Callable[[Any, Sequence[str] | None], float | None]:
    def check(value: Any, names: Sequence[str] | None) -> float | None:
        return validate_positive(name, value)

    return check


def _rtol(value: Any, names: Sequence[str] | None) -> float | None:
    # An entry passes when |a - n| <= rtol * (|a| + |n|) + ...; |a - n| never exceeds
    # |a| + |n|, so rtol >= 1 would pass every gradient (a sign-flipped one too).
    rtol = validate_positive("rtol", value)
    if rtol is not None and rtol >= 1.0:
        raise InvalidInputError(
            f"rtol: expected a number below 1 (e.g. 1e-5; 0.1 is very loose), found {value!r}: "
            "an entry passes when |a - n| <= rtol * (|a| + |n|), which holds for every "
            "gradient once rtol >= 1, a sign-flipped one included."
        )
    return rtol


def _atol(value: Any, names: Sequence[str] | None) -> float | None:
    if value is None:
        return None
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real and 0 <= value < math.inf):
        raise InvalidInputError(
            f"atol: expected a finite number >= 0, found {value!r}"
            + (": an infinite atol passes every gradient." if real and value > 0 else ".")
        )
    return float(value)


def _nondet_tol(value: Any, names: Sequence[str] | None) -> float | None:
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if value is None or (real and 0 <= value < math.inf):
        return None if value is None else float(value)
    expected = "a finite number >= 0 (e.g. 1e-10; None for the default)"
    raise InvalidInputError(f"nondet_tol: expected {expected}, found {value!r}.")


def _method(value: Any, names: Sequence[str] | None) -> str:
    if value not in METHODS:
        raise InvalidInputError(f"method: expected one of {list(METHODS)}, found {value!r}.")
    return str(value)


def _n_jobs(value: Any, names: Sequence[str] | None) -> int | str:
    if isinstance(value, str) and value == "auto":
        return value
    if not _is_int(value) or value == 0:
        raise InvalidInputError(
            f"n_jobs: expected a nonzero int (-1 = all cores) or 'auto', found {value!r}."
        )
    return value


def _flag(name: str) -> Callable[[Any, Sequence[str] | None], bool]:
    def check(value: Any, names: Sequence[str] | None) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidInputError(f"{name}: expected True or False, found {value!r}.")
        return bool(value)

    return check


def _promote(value: Any, names: Sequence[str] | None) -> bool | str:
    if isinstance(value, str) and value == "auto":
        return "auto"
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"promote: expected True, False or 'auto', found {value!r}.")
    return bool(value)


def _budget(value: Any, names: Sequence[str] | None) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise InvalidInputError(
            f"budget: expected an int >= 1 (loss evaluations), found {value!r}."
        )
    return int(value)


def _progress(value: Any, names: Sequence[str] | None) -> Callable[[int, int], None] | None:
    if value is not None and not callable(value):
        raise InvalidInputError(
            f"progress: expected a callable progress(done, total) or None, found "
            f"{type(value).__name__}."
        )
    return value


def _probes(value: Any, names: Sequence[str] | None) -> int:
    # True and False read as "probes on" (the default count) and "off", as a flag would.
    if isinstance(value, (bool, np.bool_)):
        return DEFAULT_PROBES if value else 0
    if not _is_int(value) or value < 0:
        raise InvalidInputError(
            f"probes: expected an int >= 0 (random directions per parameter), True (the "
            f"default {DEFAULT_PROBES}) or False (none), found {value!r}."
        )
    return int(value)


#: The joblib backends named in messages (joblib's own, and those it registers on demand).
KNOWN_BACKENDS = ("loky", "threading", "multiprocessing", "sequential", "dask")


def backend_names() -> list[str]:
    """The backend names ``backend=`` accepts: :data:`KNOWN_BACKENDS` and any registered with
    ``joblib.register_parallel_backend`` (read when joblib is loaded already)."""
    import sys

    names = list(KNOWN_BACKENDS)
    parallel = sys.modules.get("joblib.parallel")
    if parallel is not None:
        names += [n for n in sorted(getattr(parallel, "BACKENDS", {})) if n not in names]
    return names


def _backend(value: Any, names: Sequence[str] | None) -> str | None:
    if value is None:
        return None
    choices = backend_names()
    if not isinstance(value, str) or value not in choices:
        raise InvalidInputError(
            f"backend: expected one of {choices} (a joblib backend; 'dask' runs the workers on "
            f"the active distributed.Client) or None for joblib's default, found {value!r}."
        )
    return value
