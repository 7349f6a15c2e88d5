"""The evaluator: the one object the checks call to evaluate the user's loss.

An :class:`Evaluator` keeps the accounting (budget, deadline, progress), evaluates the base
point and complex steps, and wraps the loss's errors with where they happened. How a block of
perturbed rows is evaluated (a per-entry loop, a batched call, a numba kernel: a
:class:`RowRunner`) and where it runs (:class:`InProcess` or on joblib workers: a
:class:`Placement`) are two objects that :func:`~gradprobe.evaluate.make_evaluator` composes.

An evaluator owns private working copies of the parameters; the caller's arrays are never
written to. Every perturbation restores the saved value in a ``finally`` block (never
``x + h - h``), so the working copies are exact again whatever the loss does, KeyboardInterrupt
included.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol

import numpy as np

from ..errors import CheckAborted, InvalidInputError, LossEvaluationError
from ..layout import ParamLayout
from .rows import ComputedRows
from .shared import WorkerState
from .stacked import StackedPoints
from .threads import one_blas_thread


class RowRunner(Protocol):
    """How a block of perturbed rows is evaluated in this process (loop, batched call, kernel).

    Each method receives the evaluator, for the loss, the parameters and the accounting; it
    charges the evaluations it runs, holds the one-BLAS-thread limit and raises the loss's
    errors wrapped (:meth:`Evaluator.raise_loss_error`).
    """

    #: The executor's name when every block runs in this process ("serial", "batched"...).
    name: str
    #: Seconds spent compiling kernels (reported apart from run time).
    compile_seconds: float

    def call_loss(self, ev: Evaluator, arrays: Sequence[np.ndarray], where: str) -> float:
        """One unperturbed evaluation of the loss on ``arrays`` (one per parameter)."""
        ...

    def entry_losses(
        self, ev: Evaluator, param: int, flat_index: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        """See :meth:`Evaluator.entry_losses`."""
        ...

    def vector_losses(self, ev: Evaluator, param: int, vectors: np.ndarray) -> np.ndarray:
        """See :meth:`Evaluator.vector_losses`."""
        ...


class Placement(Protocol):
    """Where the blocks of a :class:`RowRunner` run: in this process or on workers."""

    rows: RowRunner
    #: Whether :meth:`prefetch` sends blocks anywhere (workers); False: the caller need not
    #: compute them ahead.
    sends_ahead: bool

    @property
    def executor(self) -> str:
        """Which execution path evaluates the loss, as recorded in the report's settings."""
        ...

    def observe(self, seconds: float, n_evaluations: int) -> None:
        """``n_evaluations`` took ``seconds`` in this process (input to a dispatch decision)."""
        ...

    def plan(self, ev: Evaluator, n_evaluations: int) -> None:
        """The check's whole plan: ``n_evaluations`` to come (input to the choice of workers)."""
        ...

    def entry_losses(
        self, ev: Evaluator, param: int, flat_index: np.ndarray, values: np.ndarray
    ) -> np.ndarray: ...

    def vector_losses(self, ev: Evaluator, param: int, vectors: np.ndarray) -> np.ndarray: ...

    def prefetch(self, ev: Evaluator, requests: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Entry blocks the check will ask for next (see :meth:`Evaluator.prefetch`)."""
        ...

    def close(self) -> None:
        """Release workers or other resources."""
        ...


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
    placement : Placement
        Where (and, through ``placement.rows``, how) blocks of perturbed rows are evaluated.
    budget : int, optional
        Maximum number of loss evaluations; exceeding it raises :class:`CheckAborted`.
    deadline : float, optional
        ``time.monotonic()`` value after which evaluation raises :class:`CheckAborted`.
    progress : callable, optional
        Called as ``progress(done, total)`` each time evaluations are charged; ``total`` is
        ``max(planned_evaluations, done)``.
    planned_evaluations : int
        The number of evaluations the caller expects to run (for ``progress``).
    """

    def __init__(
        self,
        loss: Callable[[Any], Any],
        layout: ParamLayout,
        base: Sequence[np.ndarray],
        *,
        placement: Placement,
        budget: int | None = None,
        deadline: float | None = None,
        progress: Callable[[int, int], None] | None = None,
        planned_evaluations: int = 0,
    ) -> None:
        self.loss = loss
        self.layout = layout
        self.base = list(base)
        self.placement = placement
        self.budget = budget
        self.deadline = deadline
        self.progress = progress
        self.planned_evaluations = int(planned_evaluations)
        self.n_evaluations = 0
        #: The loss, layout and parameters as workers receive them (sent once per check).
        self.worker_state = WorkerState(loss, layout, self.base)
        self._base_value: float | None = None
        #: Seconds one evaluation takes in this process: the fastest of the base point's and
        #: the later unperturbed calls (pre-flight, noise estimate); None before any ran.
        self.base_seconds: float | None = None
        #: Stacked calls (whole points, every parameter at once) and the blocks they answered.
        self.stacked = StackedPoints()

    @property
    def rows(self) -> RowRunner:
        """How blocks of perturbed rows are evaluated."""
        return self.placement.rows

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling kernels for this evaluator (reported apart from run time)."""
        return self.rows.compile_seconds

    @property
    def executor(self) -> str:
        """Which execution path evaluates the loss, as recorded in the report's settings."""
        return self.placement.executor

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release workers or other resources (nothing when every call runs in process)."""
        try:
            self.placement.close()
        finally:
            self.worker_state.close()

    # -- accounting ----------------------------------------------------------------------------
    def charge(self, n: int) -> None:
        """Account for ``n`` loss evaluations about to run; stop at the budget or deadline.

        Raises :class:`CheckAborted` (``reason`` ``"budget"`` or ``"timeout"``) instead of
        counting them; reports progress otherwise. Call it before every evaluation of the loss.
        """
        if self.budget is None and self.deadline is None and self.progress is None:
            self.n_evaluations += n  # nothing to check: the per-evaluation fast path
            return
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
        if self.progress is not None:
            self.progress(self.n_evaluations, max(self.planned_evaluations, self.n_evaluations))

    # -- evaluation ----------------------------------------------------------------------------
    def call_loss(self, arrays: Sequence[np.ndarray], where: str) -> float:
        """Call the loss on ``arrays`` (one per parameter) and return a float.

        Its time refines :attr:`base_seconds` (the fastest seen: the first call is often cold)
        and the placement's estimate of one evaluation's cost."""
        start = time.perf_counter()
        value = self.rows.call_loss(self, arrays, where)
        seconds = time.perf_counter() - start
        if self.base_seconds is not None:
            self.base_seconds = min(self.base_seconds, seconds)
            self.placement.observe(seconds, 1)
        return value

    def stacks_points(self, n_points: int) -> bool:
        """Whether :meth:`point_losses` can evaluate ``n_points`` whole points in one call: a
        batched loss that takes every parameter stacked (its ``stacks_points``, an adapter's
        vmap), the copies within :data:`~gradprobe.evaluate.stacked.STACKED_BYTES`."""
        return self.stacked.possible(self, n_points)

    def point_losses(self, points: Sequence[np.ndarray], where: str) -> np.ndarray:
        """Losses at whole points in one batched call: ``points[q]`` holds parameter ``q``'s
        value at each point, stacked along a leading axis (only where :meth:`stacks_points`).
        Entry blocks :meth:`prefetch` left waiting go in the same call, where they fit."""
        return self.stacked.losses(self, points, where)

    @property
    def stacking(self) -> bool | None:
        """Whether a stacked call stood in for direct ones at the base point (the noise
        estimate's check at its centre); None until tried."""
        return self.stacked.verified

    @stacking.setter
    def stacking(self, verified: bool) -> None:
        self.stacked.verified = verified

    def refuse_stacking(self) -> None:
        """A stacked call could not stand in for direct ones: none is made from now on, and the
        blocks one evaluated ahead are dropped (each is evaluated when asked for)."""
        self.stacked.refuse()

    def plan(self, n_evaluations: int) -> None:
        """Tell the placement the check's whole plan: ``n_evaluations`` to come. It decides
        on that whole plan (not block by block) whether workers pay, and may start them now,
        in the background."""
        self.placement.plan(self, n_evaluations)

    def evaluations_left(self) -> int | None:
        """Loss evaluations the budget still allows (None without a budget)."""
        return None if self.budget is None else max(0, self.budget - self.n_evaluations)

    def base_loss(self) -> float:
        """The loss at the unperturbed parameters (evaluated once; later calls reuse it, the
        pre-flight having checked that the loss is deterministic). Its time is the placement's
        first estimate of the cost of one evaluation."""
        if self._base_value is None:
            start = time.perf_counter()
            self.charge(1)
            with one_blas_thread():
                value = self.call_loss([a.copy() for a in self.base], "at the base point")
            self.base_seconds = time.perf_counter() - start
            self.placement.observe(self.base_seconds, 1)
            self._base_value = value
        return self._base_value

    def entry_losses(self, param: int, flat_index: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Losses with single entries replaced.

        Row ``r``, column ``c`` of the result is the loss with entry ``flat_index[r]`` of
        parameter ``param`` set to ``values[r, c]`` (values in the parameter's dtype) and every
        other entry at its base value.
        """
        ready = self.stacked.take(param, flat_index, values)
        if ready is not None:
            return ready
        return self.placement.entry_losses(self, param, flat_index, values)

    def vector_losses(self, param: int, vectors: np.ndarray | ComputedRows) -> np.ndarray:
        """Losses with parameter ``param`` replaced by each row of ``vectors`` (flat, its dtype):
        stored rows, or :class:`ComputedRows` that a row runner able to (``fills_rows``)
        computes straight into its working copy, and others receive stored."""
        if isinstance(vectors, ComputedRows) and not getattr(self.rows, "fills_rows", False):
            vectors = np.asarray(vectors)
        return self.placement.vector_losses(self, param, vectors)  # type: ignore[arg-type]

    @property
    def base_in_use(self) -> bool:
        """Whether something besides this thread may be reading :attr:`base` now (tasks in
        threads of this process): then nothing may write into it, even to restore it."""
        return bool(getattr(self.placement, "reads_base_in_threads", False))

    @property
    def sends_ahead(self) -> bool:
        """Whether :meth:`prefetch` does anything (else its blocks need not be computed)."""
        return self.placement.sends_ahead or self.stacked.wanted(self)

    def prefetch(self, requests: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """The entry blocks the check will ask for next, ``(param, flat_index, values)`` each
        as :meth:`entry_losses` will receive it: a placement with workers sends them all now
        (every parameter's chunks through the same workers) and answers the later calls
        from them; nothing is charged until a block is asked for.

        A loss that takes every parameter stacked (:meth:`stacks_points`) evaluates every
        parameter's blocks at once in this process instead, where they fit, whatever the
        placement (the same numbers with workers or without): in the first stacked call (the
        noise estimate's) when sent before it, else in one call of their own once that call
        stood in for direct ones (:attr:`stacking`). A model of a few small inputs takes one
        call for all, not one per input."""
        if self.stacked.wanted(self) and self.stacked.prefetch(self, requests):
            return
        if self.placement.sends_ahead:
            self.placement.prefetch(self, requests)

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
            self.charge(1)
            try:
                flat[i] = self.base[param].reshape(-1)[i] + 1j * imag_steps[r]
                value = self.loss(self.layout.pack(work))
            except (TypeError, np.exceptions.ComplexWarning) as exc:
                raise _complex_unsupported(name, exc) from exc
            except Exception as exc:
                raise self.wrap_error(exc, param, i) from exc
            finally:
                # Fresh copies also undo anything the loss wrote into them.
                for k, b in enumerate(self.base):
                    work[k][...] = b
            out[r] = _as_complex_loss(value, f"with {name!r} perturbed by a complex step")
        return out

    # -- errors --------------------------------------------------------------------------------
    def wrap_error(self, exc: BaseException, param: int, flat: int | None) -> LossEvaluationError:
        """The :class:`LossEvaluationError` for ``exc`` raised by the loss with parameter
        ``param`` perturbed at flat index ``flat`` (None: along a direction)."""
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

    def raise_loss_error(self, exc: Exception, param: int, flat: int | None) -> NoReturn:
        """Re-raise gradprobe's own errors as they are; wrap the loss's with where it failed."""
        if isinstance(exc, (CheckAborted, LossEvaluationError)):
            raise exc
        raise self.wrap_error(exc, param, flat) from exc


class InProcess:
    """Placement: every block runs in this thread, through the row runner."""

    sends_ahead = False

    def __init__(self, rows: RowRunner) -> None:
        self.rows = rows

    @property
    def executor(self) -> str:
        return self.rows.name

    def observe(self, seconds: float, n_evaluations: int) -> None:
        """Nothing to decide in process."""

    def plan(self, ev: Evaluator, n_evaluations: int) -> None:
        """Nothing to decide in process."""

    def entry_losses(
        self, ev: Evaluator, param: int, flat_index: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        return self.rows.entry_losses(ev, param, flat_index, values)

    def vector_losses(self, ev: Evaluator, param: int, vectors: np.ndarray) -> np.ndarray:
        return self.rows.vector_losses(ev, param, vectors)

    def prefetch(self, ev: Evaluator, requests: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Nothing to send ahead in process."""

    def close(self) -> None:
        """Nothing to release."""


def _complex_unsupported(name: str, exc: Exception) -> Exception:
    return InvalidInputError(
        f"loss with {name!r} perturbed by a complex step: method='complex-step' needs a loss "
        f"that accepts complex parameters, but it raised {type(exc).__name__}: {exc}. Remove "
        "float()/np.abs/np.real/.astype(float) from the loss's path, or use method='central'."
    )


def _as_complex_loss(value: Any, where: str) -> complex:
    """The complex scalar a loss returned under ``method="complex-step"``."""
    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind != "c":
        raise InvalidInputError(
            f"loss {where}: method='complex-step' expected a complex scalar, found "
            f"{type(value).__name__} (dtype {arr.dtype}, size {arr.size}). The loss must "
            "propagate complex inputs: no float(), np.abs, np.real or .astype(float) on the "
            "path; otherwise use method='central'."
        )
    return complex(arr.reshape(()))
