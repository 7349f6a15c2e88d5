"""Step sweep: the relative error of a few entries over a range of steps.

Finite differences trade truncation error (falling with the step: ~h**2 for central
differences) against round-off (rising as the step shrinks: ~EPS * |L| / h). Plotted on log
axes the relative error draws a V whose bottom is the best step; :func:`sweep` measures it so a
user can see why gradprobe picks the step it does, or that their loss is noisier than float
arithmetic explains (a V bottom far above the ideal). ``SweepResult.plot`` (matplotlib, the
``plot`` extra) writes the figure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checking.context import ParamCheck
from .checking.entries import numeric_entries
from .checking.preflight import analytic_gradient
from .errors import InvalidInputError, raised_at_the_call
from .evaluate import make_evaluator
from .layout import normalize_params, unravel, validate_callable
from .numerics.steps import default_relative_step
from .numerics.tolerances import Tolerance, loss_epsilon, tolerance_for
from .options import check_option
from .report.text import align_columns


@dataclass(frozen=True)
class SweepResult:
    """Relative errors of some entries over a range of relative steps.

    Attributes
    ----------
    steps : ndarray, shape (n_steps,)
        Relative steps ``eps`` (``h = eps * max(1, |x|)``), ascending.
    entries : tuple of (str, tuple of int)
        The entries swept: parameter name and index.
    analytic : ndarray, shape (n_entries,)
        The analytic gradient at those entries.
    numeric : ndarray, shape (n_entries, n_steps)
        The finite-difference estimate at each step.
    rel_errors : ndarray, shape (n_entries, n_steps)
        ``|a - n| / max(1e-8, |a| + |n|)``.
    default_step : float
        The relative step :func:`gradprobe.check` uses by default for this method and dtype.
    method : str
        The finite-difference scheme.
    n_evaluations : int
        Loss evaluations spent.
    """

    steps: np.ndarray
    entries: tuple[tuple[str, tuple[int, ...]], ...]
    analytic: np.ndarray
    numeric: np.ndarray
    rel_errors: np.ndarray
    default_step: float
    method: str
    n_evaluations: int

    @property
    def best_steps(self) -> np.ndarray:
        """For each entry, the step with the smallest relative error."""
        return self.steps[np.argmin(np.nan_to_num(self.rel_errors, nan=np.inf), axis=1)]

    def __str__(self) -> str:
        """A small table: per entry, the analytic value, the relative error at the default
        step and at the best step of the sweep."""
        col = int(np.argmin(np.abs(np.log(self.steps / self.default_step))))
        rows = [
            (
                "entry",
                "analytic",
                f"rel err at default {self.default_step:.2g}",
                "best step",
                "rel err at best",
            )
        ]
        errs = np.nan_to_num(self.rel_errors, nan=np.inf)
        for r, (name, index) in enumerate(self.entries):
            best = int(np.argmin(errs[r]))
            rows.append(
                (
                    f"{name}[{', '.join(str(i) for i in index)}]",
                    f"{self.analytic[r]:.6g}",
                    f"{self.rel_errors[r, col]:.2e}",
                    f"{self.steps[best]:.2g}",
                    f"{self.rel_errors[r, best]:.2e}",
                )
            )
        table = align_columns(rows)
        head = (
            f"step sweep: {self.method} differences, {self.steps.size} relative steps from "
            f"{self.steps[0]:.2g} to {self.steps[-1]:.2g} ({self.n_evaluations:,} loss "
            "evaluations)"
        )
        return f"{head}\n\n{table}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps.tolist(),
            "entries": [{"param": n, "index": list(i)} for n, i in self.entries],
            "analytic": self.analytic.tolist(),
            "rel_errors": np.where(np.isfinite(self.rel_errors), self.rel_errors, -1.0).tolist(),
            "default_step": self.default_step,
            "method": self.method,
            "n_evaluations": self.n_evaluations,
        }

    def plot(self, path: str | Path) -> Path:
        """Write the V plot (relative error against step, log-log) as a PNG; return the path.

        Needs matplotlib (``pip install "gradprobe[plot]"``); no pyplot state is touched.
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                'SweepResult.plot needs matplotlib: pip install "gradprobe[plot]"'
            ) from exc
        fig = Figure(figsize=(6.4, 4.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        floor = 1e-17
        for (name, index), errs in zip(self.entries, self.rel_errors, strict=True):
            label = f"{name}[{', '.join(str(i) for i in index)}]"
            ax.loglog(
                self.steps, np.maximum(np.nan_to_num(errs, nan=1.0), floor), "o-", ms=3, label=label
            )
        ax.axvline(
            self.default_step,
            color="k",
            ls="--",
            lw=1,
            label=f"default step {self.default_step:.2g}",
        )
        ax.set_xlabel("relative step eps (h = eps * max(1, |x|))")
        ax.set_ylabel("relative error |a - n| / (|a| + |n|)")
        ax.set_title(f"{self.method} differences: round-off (small steps) vs truncation (large)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=110, format="png")
        return out


def _pick_entries(
    names: Sequence[str], analytic: Sequence[np.ndarray], chosen: Sequence[int], k: int
) -> list[tuple[int, int]]:
    """``k`` entries, round-robin over the chosen parameters, largest ``|gradient|`` first."""
    orders = {p: list(np.argsort(-np.abs(analytic[p].reshape(-1)), kind="stable")) for p in chosen}
    picked: list[tuple[int, int]] = []
    while len(picked) < k and any(orders.values()):
        for p in chosen:
            if orders[p] and len(picked) < k:
                picked.append((p, int(orders[p].pop(0))))
    return picked


@raised_at_the_call
def sweep(
    loss: Callable[[Any], Any],
    grad: Any,
    params: Any,
    *,
    param: str | Sequence[str] | None = None,
    entries: int = 3,
    steps: Sequence[float] | np.ndarray | None = None,
    method: str = "central",
    plot: str | Path | None = None,
) -> SweepResult:
    """Relative error of a few entries over a range of finite-difference steps.

    Parameters
    ----------
    loss, grad, params
        As for :func:`gradprobe.check`.
    param : str or sequence of str, optional
        Parameters to take entries from (default: all).
    entries : int
        Entries to sweep, taken round-robin over the parameters, largest ``|gradient|`` first
        (a zero gradient has no meaningful relative error).
    steps : sequence of float, optional
        Relative steps. Default: 25 log-spaced from ``10 * EPS`` to ``0.1`` of the first
        parameter's dtype.
    method : str
        ``"central"``, ``"richardson"`` or ``"complex-step"``.
    plot : str or Path, optional
        Also write the V plot there (needs matplotlib).

    Returns
    -------
    SweepResult
        Costs ``entries * len(steps)`` times 2 (central), 4 (richardson) or 1 (complex-step)
        loss evaluations.
    """
    validate_callable("loss", loss)
    layout, base, _ = normalize_params(params)
    method = check_option("method", method)
    if isinstance(entries, bool) or not isinstance(entries, (int, np.integer)) or entries < 1:
        raise InvalidInputError(f"entries: expected an int >= 1, found {entries!r}.")
    wanted = [param] if isinstance(param, str) else list(param or layout.names)
    unknown = [n for n in wanted if n not in layout.names]
    if unknown or not wanted:
        raise InvalidInputError(
            f"param: expected names among {list(layout.names)}, found {unknown or wanted}."
        )
    eps = float(np.finfo(layout.dtypes[0]).eps)
    if steps is None:
        grid = np.logspace(np.log10(10 * eps), -1.0, 25)
    else:
        grid = np.sort(np.asarray(steps, dtype=np.float64).reshape(-1))
        if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
            raise InvalidInputError(
                f"steps: expected positive finite relative steps, found {np.asarray(steps)!r}."
            )
    analytic = analytic_gradient(grad, layout, base)
    chosen = [layout.names.index(n) for n in wanted]
    picked = _pick_entries(layout.names, analytic, chosen, int(entries))
    loss_eps = loss_epsilon(layout.dtypes)
    a = np.array([analytic[p].reshape(-1)[f] for p, f in picked])
    numeric = np.empty((len(picked), grid.size))
    with make_evaluator(loss, layout, base) as evaluator:
        for r, (p, f) in enumerate(picked):
            ctx = ParamCheck(
                evaluator=evaluator,
                param=p,
                analytic_flat=analytic[p].reshape(-1),
                tolerance=tolerance_for(layout.dtypes[p], loss_eps),
                relative_step=default_relative_step(layout.dtypes[p], method),
                method=method,
            )
            idx = np.array([f], dtype=np.int64)
            for c, step in enumerate(grid):
                numeric[r, c] = numeric_entries(ctx, idx, float(step))[0][0]
        n_evaluations = evaluator.n_evaluations
    # The relative error of the pass rule (no floor: the sweep shows the raw V).
    verdict = Tolerance(rtol=0.0, atol=0.0, loss_eps=loss_eps).compare(
        np.repeat(a, grid.size), numeric.reshape(-1), np.zeros(numeric.size)
    )
    rel = verdict.rel_error.reshape(numeric.shape)
    result = SweepResult(
        steps=grid,
        entries=tuple((layout.names[p], unravel(f, layout.shapes[p])) for p, f in picked),
        analytic=a,
        numeric=numeric,
        rel_errors=rel,
        default_step=default_relative_step(layout.dtypes[chosen[0]], method),
        method=method,
        n_evaluations=n_evaluations,
    )
    if plot is not None:
        result.plot(plot)
    return result
