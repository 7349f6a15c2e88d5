"""Positional patterns of the diagnosis: where the analytic values sit relative to the numeric.

Each function looks at one failing parameter's checked entries and returns a
:class:`~gradprobe.report.model.Diagnosis` when its pattern explains the failure, else None:

- :func:`transpose_pattern`: ``a[i, j] = n[j, i]``;
- :func:`swapped_pattern`: ``a`` is another same-shape parameter's numeric gradient, and the
  other way round;
- :func:`shifted_pattern`: ``a[..., i, ...] = n[..., i + k, ...]`` along the leading or
  trailing axis for one constant offset ``k`` (``0 < |k| <= MAX_OFFSET``, ``2|k| <`` the
  axis length);
- :func:`confined_pattern`: every failing entry lies in a few rows (leading axis) or columns
  (trailing axis) while other rows or columns pass with resolvable values.

The first three compare an analytic value with a numeric one at another position. That
numeric value is reused where the check already holds a plain derivative estimate there
(:attr:`EntryResults.reusable`) and evaluated where it holds none; at most
:data:`CONFIRM_ENTRIES` positions are evaluated per hypothesis (two loss evaluations each with
central differences), and per candidate parameter for a swap (up to
:data:`MAX_SWAP_CANDIDATES` of them). A pattern holds when at least :data:`MIN_CONFIRMATIONS` usable
comparisons are made and 90% of them agree under the parameter's pass rule.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..report.model import Diagnosis
from .calibration import calibrated
from .context import ParamCheck
from .entries import numeric_entries
from .fits import KEEP, SHOW
from .results import EntryResults

#: Entries confirmed at transposed or shifted positions or against another parameter.
CONFIRM_ENTRIES = 12
#: Same-shape parameters tried as the other half of a swap.
MAX_SWAP_CANDIDATES = 4
#: A hypothesis needs at least this many usable confirmations.
MIN_CONFIRMATIONS = 2
#: Largest offset tried by the shift hypothesis.
MAX_OFFSET = 16
#: Failing entries (most disagreeing first) whose shifted partners vote for an offset.
VOTERS = 64
#: Share of the failing entries whose shifted position must lie inside the axis.
MIN_IN_RANGE = 0.6
#: Positions per candidate offset tried when no offset got votes from checked entries.
BLIND_PER_CANDIDATE = 3
#: Failing rows/columns may be at most this share of the rows/columns checked.
MAX_CONFINED_SHARE = 0.25
#: Rows/columns that must pass (with a resolvable entry) besides the failing ones.
MIN_PASSING_SLICES = 2


def numeric_at(
    ctx: ParamCheck, flat: np.ndarray, known: EntryResults | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numeric gradient of ``ctx``'s parameter at ``flat``, its round-off floor, and where it is
    usable: reused where already checked, evaluated where not, unusable where the check's step
    crossed a kink (its value is then not a derivative)."""
    numeric = np.full(flat.size, np.nan)
    noise = np.zeros(flat.size)
    usable = np.ones(flat.size, dtype=bool)
    todo = np.ones(flat.size, dtype=bool)
    if known is not None and known.size:
        where = {int(f): j for j, f in enumerate(known.flat_index)}
        reusable = known.reusable
        for r, f in enumerate(flat):
            j = where.get(int(f))
            if j is None:
                continue
            todo[r] = False
            if reusable[j]:
                numeric[r] = known.numeric[j]
                # The kept numeric came with its tolerance: recover its noise share from it.
                noise[r] = known.allowed[j]
            else:
                usable[r] = False
    if np.any(todo):
        numeric[todo], noise[todo] = numeric_entries(ctx, flat[todo])
    return numeric, noise, usable & np.isfinite(numeric)


def _pick(e: EntryResults, mask: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` positions of ``mask``, the most disagreeing first."""
    pos = np.flatnonzero(mask)
    order = np.argsort(-np.nan_to_num(e.abs_error[pos] / e.allowed[pos], nan=np.inf), kind="stable")
    return pos[order[:k]]


def _confirmed(match: np.ndarray, usable: np.ndarray) -> int | None:
    """How many usable entries confirm a hypothesis, or None when fewer than 90% of them do
    (or too few are usable to say)."""
    k = int(np.count_nonzero(usable))
    n = int(np.count_nonzero(match & usable))
    return n if k >= MIN_CONFIRMATIONS and n >= int(np.ceil(0.9 * k)) else None


def transpose_pattern(ctx: ParamCheck, e: EntryResults, fail: np.ndarray) -> Diagnosis | None:
    """``a[i, j] = n[j, i]`` at the most disagreeing failing entries of a square matrix."""
    shape = ctx.shape
    if len(shape) != 2 or shape[0] != shape[1]:
        return None
    rows, cols = np.unravel_index(e.flat_index, shape)
    pos = _pick(e, fail & e.reusable & (rows != cols), CONFIRM_ENTRIES)
    if pos.size == 0:
        return None
    flat_t = np.ravel_multi_index((cols[pos], rows[pos]), shape).astype(np.int64)
    n_t, noise, usable = numeric_at(ctx, flat_t, e)
    confirmed = _confirmed(ctx.tolerance.compare(e.analytic[pos], n_t, noise).passed, usable)
    if confirmed is None:
        return None
    name = ctx.name
    return Diagnosis(
        "transpose",
        f"the analytic gradient of {name} equals the numeric one transposed at "
        f"{confirmed} of {pos.size} entries checked at transposed positions: "
        f"return d{name} = X.T @ delta, not its transpose (or swap the operands of the product)",
        calibrated("transpose", confirmed),
        {"n_confirmed": confirmed, "n_tried": int(pos.size)},
    )


def swapped_pattern(
    ctx: ParamCheck,
    e: EntryResults,
    fail: np.ndarray,
    contexts: Mapping[str, ParamCheck],
    entries: Mapping[str, EntryResults],
) -> Diagnosis | None:
    """``a`` matches a same-shape parameter's numeric gradient and that one's analytic this
    numeric one (both directions at the same positions)."""
    shape = ctx.shape
    others = [c for c in contexts.values() if c.param != ctx.param and c.shape == shape]
    pos = _pick(e, fail & e.reusable, CONFIRM_ENTRIES)
    flat = e.flat_index[pos]
    for other_ctx in others[:MAX_SWAP_CANDIDATES]:
        other = other_ctx.name
        # A swap is symmetric: test both directions at the same positions, this analytic
        # against the other's numeric and the other's analytic against this numeric, so the
        # two parameters of a swapped pair are judged on the same evidence.
        n_q, noise_q, usable_q = numeric_at(other_ctx, flat, entries.get(other))
        forward = ctx.tolerance.compare(e.analytic[pos], n_q, noise_q).passed
        a_q = other_ctx.analytic_flat[flat].astype(np.float64)
        backward = other_ctx.tolerance.compare(a_q, e.numeric[pos], e.allowed[pos]).passed
        usable_back = np.isfinite(a_q)
        confirmed = _confirmed(
            np.concatenate([forward, backward]), np.concatenate([usable_q, usable_back])
        )
        if confirmed is not None:
            name = ctx.name
            return Diagnosis(
                "swapped",
                f"the analytic gradient of {name} matches the numeric gradient of {other} (same "
                f"shape {shape}), and the other way round, at {confirmed} of {2 * pos.size} "
                "comparisons: the "
                f"gradients of {name} and {other} are returned under each other's names",
                calibrated("swapped", confirmed),
                {"other": other, "n_confirmed": confirmed, "n_tried": 2 * int(pos.size)},
            )
    return None


def _axes(shape: tuple[int, ...]) -> list[int]:
    return sorted({0, len(shape) - 1}) if shape else []


def _stride(shape: tuple[int, ...], axis: int) -> int:
    return int(np.prod(shape[axis + 1 :], dtype=np.int64))


class _Lookup:
    """Position in ``e`` of a flat index (-1 where it was not checked)."""

    def __init__(self, e: EntryResults):
        self.order = np.argsort(e.flat_index, kind="stable")
        self.sorted = e.flat_index[self.order]

    def __call__(self, flat: np.ndarray) -> np.ndarray:
        if self.sorted.size == 0:
            return np.full(flat.shape, -1, dtype=np.int64)
        k = np.clip(np.searchsorted(self.sorted, flat), 0, self.sorted.size - 1)
        return np.where(self.sorted[k] == flat, self.order[k], -1)


def _shift_votes(
    e: EntryResults, voters: np.ndarray, shape: tuple[int, ...], ctx: ParamCheck
) -> list[tuple[int, int, int]]:
    """Candidate offsets ``(votes, axis, k)``, most votes first: a failing voter votes for
    ``(axis, k)`` when its analytic value matches the checked numeric one ``k`` positions away
    along ``axis`` (reusable and resolvable, ``|n| > allowed``). No evaluations."""
    lookup = _Lookup(e)
    multi = np.unravel_index(e.flat_index[voters], shape)
    resolvable = e.reusable & (np.abs(np.nan_to_num(e.numeric)) > e.allowed)
    found = []
    for axis in _axes(shape):
        length, stride = shape[axis], _stride(shape, axis)
        kmax = min(MAX_OFFSET, (length - 1) // 2)
        for k in [s * m for m in range(1, kmax + 1) for s in (1, -1)]:
            inside = (multi[axis] + k >= 0) & (multi[axis] + k < length)
            j = np.where(inside, lookup(e.flat_index[voters] + k * stride), -1)
            have = j >= 0
            if not np.any(have):
                continue
            jj = j[have]
            ok = resolvable[jj]
            match = ctx.tolerance.compare(e.analytic[voters[have]], e.numeric[jj], e.allowed[jj])
            votes = int(np.count_nonzero(match.passed & ok))
            if votes >= MIN_CONFIRMATIONS:
                found.append((votes, axis, k))
    found.sort(key=lambda t: (-t[0], abs(t[2]), t[1], -t[2]))
    return found


def _try_shift(
    ctx: ParamCheck, e: EntryResults, fail: np.ndarray, axis: int, k: int, budget: int
) -> tuple[int, int, float] | None:
    """Confirm ``a[i] = n[i + k]`` along ``axis`` at the failing entries: every one whose partner
    was checked, plus up to ``budget`` evaluated ones. ``(confirmed, tried, out_of_range)``."""
    shape = ctx.shape
    length, stride = shape[axis], _stride(shape, axis)
    idx = np.unravel_index(e.flat_index, shape)[axis]
    inside = (idx + k >= 0) & (idx + k < length)
    n_fail = int(np.count_nonzero(fail))
    out_share = float(np.count_nonzero(fail & ~inside)) / max(1, n_fail)
    if 1.0 - out_share < MIN_IN_RANGE:
        return None
    cand = fail & inside
    target = e.flat_index + k * stride
    j = np.where(cand, _Lookup(e)(target), -1)
    checked = np.flatnonzero(j >= 0)
    paid = _pick(e, cand & (j < 0), budget)
    pos = np.concatenate([checked, paid])
    n_t, noise, usable = numeric_at(ctx, target[pos].astype(np.int64), e)
    a = e.analytic[pos]
    match = ctx.tolerance.compare(a, n_t, noise).passed
    # A pair where both values are 0 within the floor neither confirms nor refutes.
    usable &= (np.abs(np.nan_to_num(n_t)) > noise) | (np.abs(a) > noise)
    confirmed = _confirmed(match, usable)
    if confirmed is None:
        return None
    return confirmed, int(np.count_nonzero(usable)), out_share


def shifted_pattern(ctx: ParamCheck, e: EntryResults, fail: np.ndarray) -> Diagnosis | None:
    """``a[i] = n[i + k]`` along the leading or trailing axis for one offset ``k``."""
    shape = ctx.shape
    if not np.any(fail) or not shape or max(shape) < 3:
        return None
    voters = _pick(e, fail, VOTERS)
    votes = _shift_votes(e, voters, shape, ctx)
    found = None
    if votes:
        _, axis, k = votes[0]
        got = _try_shift(ctx, e, fail, axis, k, CONFIRM_ENTRIES)
        found = None if got is None else (axis, k, got)
    else:
        # No checked pair shows an offset (a sparse sample): try one step either way along
        # each axis at a few evaluated positions, within the same budget.
        # (At most 4 candidates x BLIND_PER_CANDIDATE = CONFIRM_ENTRIES evaluated positions.)
        blind = [(ax, s) for ax in _axes(shape) if shape[ax] >= 3 for s in (1, -1)]
        for axis, k in blind:
            got = _try_shift(ctx, e, fail, axis, k, BLIND_PER_CANDIDATE)
            if got is not None and got[0] >= BLIND_PER_CANDIDATE:
                found = (axis, k, got)
                break
    if found is None:
        return None
    axis, k, (confirmed, tried, out_share) = found
    name = ctx.name
    word = "row" if axis == 0 else ("column" if len(shape) > 1 else "entry")
    return Diagnosis(
        "shifted",
        f"the analytic gradient of {name} at {word} i equals the numeric one at {word} "
        f"i {'+' if k > 0 else '-'} {abs(k)} "
        f"(axis {axis}) at {confirmed} of {tried} failing entries compared: its backward pass "
        f"indexes that axis {abs(k)} position{'s' if abs(k) > 1 else ''} off (a padding offset, "
        "an off-by-one in a convolution, a stride or a sequence position)",
        calibrated("shifted", confirmed),
        {
            "axis": int(axis),
            "offset": int(k),
            "n_confirmed": confirmed,
            "n_tried": tried,
            "out_of_range": out_share,
        },
    )


def confined_pattern(ctx: ParamCheck, e: EntryResults, fail: np.ndarray, ok: np.ndarray):
    """Every failing entry lies in at most a quarter of the rows (or columns) checked, and at
    least two other rows (columns) pass with a resolvable entry."""
    shape = ctx.shape
    if len(shape) < 2 or not np.any(fail):
        return None
    multi = np.unravel_index(e.flat_index, shape)
    resolvable = ok & ~fail & (np.abs(np.nan_to_num(e.numeric)) > e.allowed)
    best = None
    for axis in _axes(shape):
        s = np.asarray(multi[axis])
        failing = np.unique(s[fail])
        checked = np.unique(s[ok])
        passing = np.setdiff1d(np.unique(s[resolvable]), failing)
        share = failing.size / max(1, checked.size)
        if share <= MAX_CONFINED_SHARE and passing.size >= MIN_PASSING_SLICES:
            if best is None or share < best[0]:
                best = (share, axis, failing, checked.size)
    if best is None:
        return None
    share, axis, failing, n_checked = best
    word = "rows" if axis == 0 else "columns"
    listed = [int(j) for j in failing[:SHOW]]
    more = f" and {failing.size - SHOW} more" if failing.size > SHOW else ""
    support = int(np.count_nonzero(fail))
    return Diagnosis(
        "confined",
        f"the failures of {ctx.name} are confined to {word} {listed}{more} ({failing.size} of "
        f"{n_checked} {word} checked; axis {axis}) while the other {word} pass: look at how "
        f"that layer's backward pass indexes those {word} (a special first/last {word[:-1]}, "
        "a bias folded into the weights, a padding or ignored index, an off-by-one range)",
        calibrated("confined", support),
        {
            "axis": int(axis),
            word: [int(j) for j in failing[:KEEP]],
            "n_failing_slices": int(failing.size),
            "n_checked_slices": int(n_checked),
        },
    )
