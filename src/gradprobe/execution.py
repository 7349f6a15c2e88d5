"""Evaluating the user's loss at perturbed parameters.

This is the only module that calls the user's loss during a check. An evaluator owns private
working copies of the parameters; the caller's arrays are never written to. Every perturbation
restores the saved value in a ``finally`` block (never ``x + h - h``), so the working copies are
exact again whatever the loss does, KeyboardInterrupt included.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import CheckAborted, LossEvaluationError
from .validation import ParamLayout, as_scalar_loss

__all__ = ["Evaluator", "SerialEvaluator", "make_evaluator"]


class Evaluator:
    """Evaluates ``loss`` at the base point and at perturbations of one parameter at a time.

    Parameters
    ----------
    loss : callable
        The user's loss, called with the user's kind of container.
    layout : ParamLayout
        Names, shapes and container kind of the parameters.
    base : list of ndarray
        Private C-contiguous copies of the parameters (owned by the evaluator from now on).
    budget : int, optional
        Maximum number of loss evaluations; exceeding it raises :class:`CheckAborted`.
    deadline : float, optional
        ``time.monotonic()`` value after which evaluation raises :class:`CheckAborted`.
    """

    def __init__(
        self,
        loss: Callable[[Any], Any],
        layout: ParamLayout,
        base: Sequence[np.ndarray],
        *,
        budget: int | None = None,
        deadline: float | None = None,
    ) -> None:
        self.loss = loss
        self.layout = layout
        self.base = list(base)
        self.budget = budget
        self.deadline = deadline
        self.n_evaluations = 0
        # Set by check(progress=...): called as progress(done, total) each time work is charged.
        self.on_progress: Callable[[int, int], None] | None = None
        self.planned_evaluations = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release workers or other resources (nothing for the serial evaluator)."""

    # -- accounting ----------------------------------------------------------------------------
    def _charge(self, n: int) -> None:
        """Account for ``n`` loss evaluations about to run; stop at the budget or deadline."""
        if self.budget is not None and self.n_evaluations + n > self.budget:
            raise CheckAborted(
                f"evaluation budget of {self.budget} loss evaluations exhausted "
                f"({self.n_evaluations} done); raise `budget` or check fewer entries.",
                reason="budget",
            )
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise CheckAborted(
                "time limit reached; raise `timeout` or check fewer entries.", reason="timeout"
            )
        self.n_evaluations += n
        if self.on_progress is not None:
            self.on_progress(self.n_evaluations, max(self.planned_evaluations, self.n_evaluations))

    # -- evaluation ----------------------------------------------------------------------------
    def call_loss(self, arrays: Sequence[np.ndarray], where: str) -> float:
        """Call the loss on ``arrays`` (one per parameter) and return a float."""
        return as_scalar_loss(self.loss(self.layout.pack(arrays)), where)

    def base_loss(self) -> float:
        """The loss at the unperturbed parameters."""
        self._charge(1)
        return self.call_loss([a.copy() for a in self.base], "at the base point")

    def entry_losses(self, param: int, flat_index: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Losses with single entries replaced.

        Row ``r``, column ``c`` of the result is the loss with entry ``flat_index[r]`` of
        parameter ``param`` set to ``values[r, c]`` (values in the parameter's dtype) and every
        other entry at its base value.
        """
        raise NotImplementedError

    def vector_losses(self, param: int, vectors: np.ndarray) -> np.ndarray:
        """Losses with parameter ``param`` replaced by each row of ``vectors`` (flat, its dtype)."""
        raise NotImplementedError

    # -- complex step (method="complex-step"; always serial, in this process) ------------------
    def complex_entry_losses(
        self, param: int, flat_index: np.ndarray, imag_steps: np.ndarray
    ) -> np.ndarray:
        """Complex losses with ``1j * imag_steps[r]`` added to entry ``flat_index[r]``.

        Every parameter is passed as a complex copy (complex128, or complex64 for float32
        and narrower); the loss must propagate complex values and return a complex scalar.
        Returns the complex losses (imaginary part ``~ h * dL/dx``).
        """
        cdtype = [np.result_type(dt, np.complex64) for dt in self.layout.dtypes]
        work = [b.astype(ct) for b, ct in zip(self.base, cdtype, strict=True)]
        flat = work[param].reshape(-1)
        name = self.layout.names[param]
        out = np.empty(flat_index.size, dtype=np.complex128)
        for r in range(flat_index.size):
            i = int(flat_index[r])
            self._charge(1)
            try:
                flat[i] = self.base[param].reshape(-1)[i] + 1j * imag_steps[r]
                value = self.loss(self.layout.pack(work))
            except (TypeError, np.exceptions.ComplexWarning) as exc:
                raise _complex_unsupported(name, exc) from exc
            except Exception as exc:
                raise self._wrap_error(exc, param, i) from exc
            finally:
                # Fresh copies also undo anything the loss wrote into them.
                for k, b in enumerate(self.base):
                    work[k][...] = b
            out[r] = _as_complex_loss(value, f"with {name!r} perturbed by a complex step")
        return out

    def _wrap_error(self, exc: Exception, param: int, flat: int | None) -> LossEvaluationError:
        name = self.layout.names[param]
        if flat is None:
            where, index = f"while perturbing parameter {name!r} along a direction", None
        else:
            index = tuple(int(i) for i in np.unravel_index(flat, self.layout.shapes[param]))
            where = f"while perturbing parameter {name!r} at index {list(index)}"
        err = LossEvaluationError(
            f"loss raised {type(exc).__name__} {where}: {exc}", param=name, index=index
        )
        err.__cause__ = exc
        return err


class SerialEvaluator(Evaluator):
    """Evaluates in this thread, one loss call at a time, on in-place perturbed working copies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.work = [a.copy() for a in self.base]
        self.flat = [w.reshape(-1) for w in self.work]

    def entry_losses(self, param: int, flat_index: np.ndarray, values: np.ndarray) -> np.ndarray:
        m, k = values.shape
        out = np.empty((m, k))
        flat = self.flat[param]
        name = self.layout.names[param]
        for r in range(m):
            i = int(flat_index[r])
            saved = flat[i]
            try:
                for c in range(k):
                    self._charge(1)
                    flat[i] = values[r, c]
                    try:
                        out[r, c] = self.call_loss(self.work, f"with {name!r} perturbed")
                    except (CheckAborted, LossEvaluationError):
                        raise
                    except Exception as exc:
                        raise self._wrap_error(exc, param, i) from exc
            finally:
                flat[i] = saved
        return out

    def vector_losses(self, param: int, vectors: np.ndarray) -> np.ndarray:
        out = np.empty(vectors.shape[0])
        flat = self.flat[param]
        name = self.layout.names[param]
        for r in range(vectors.shape[0]):
            self._charge(1)
            try:
                flat[:] = vectors[r]
                out[r] = self.call_loss(self.work, f"with {name!r} perturbed")
            except (CheckAborted, LossEvaluationError):
                raise
            except Exception as exc:
                raise self._wrap_error(exc, param, None) from exc
            finally:
                flat[:] = self.base[param].reshape(-1)
        return out


def make_evaluator(
    loss: Callable[[Any], Any],
    layout: ParamLayout,
    base: Sequence[np.ndarray],
    *,
    n_jobs: Any = 1,
    budget: int | None = None,
    deadline: float | None = None,
) -> Evaluator:
    """Pick the evaluator for the requested execution (serial until the parallel engine)."""
    return SerialEvaluator(loss, layout, base, budget=budget, deadline=deadline)


def _complex_unsupported(name: str, exc: Exception) -> Exception:
    from .errors import InvalidInputError

    return InvalidInputError(
        f"loss with {name!r} perturbed by a complex step: method='complex-step' needs a loss "
        f"that accepts complex parameters, but it raised {type(exc).__name__}: {exc}. Remove "
        "float()/np.abs/np.real/.astype(float) from the loss's path, or use method='central'."
    )


def _as_complex_loss(value: Any, where: str) -> complex:
    """The complex scalar a loss returned under ``method="complex-step"``."""
    from .errors import InvalidInputError

    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind != "c":
        raise InvalidInputError(
            f"loss {where}: method='complex-step' expected a complex scalar, found "
            f"{type(value).__name__} (dtype {arr.dtype}, size {arr.size}). The loss must "
            "propagate complex inputs: no float(), np.abs, np.real or .astype(float) on the "
            "path; otherwise use method='central'."
        )
    return complex(arr.reshape(()))
