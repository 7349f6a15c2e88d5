"""How often a diagnosis is right, by kind, band of supporting entries and confidence.

Runs ``gradprobe.check`` on the planted-bug corpus (:mod:`gradprobe.examples.planted`) and
compares each failing parameter's diagnosis with the planted truth: right when its kind is
the truth (for ``mismatch``: the bug is one no relation describes; for a diagnosis listing
alternatives: one of them is the truth). Prints the reliability table (confidence level ->
share right), the misses and false alarms, and with ``--table`` the calibration table of
:mod:`gradprobe.checking.calibration` measured anew: each cell's rate is ``right / (n + 1)``
(the measured rate, one case short of certainty), cells with fewer than ``MIN_CELL`` cases
take their kind's pooled rate.

    python benchmarks/bench_calibration.py [--seeds 12] [--table]

Against an older gradprobe (``PYTHONPATH=/path/to/old/src``) the corpus is read from this
checkout's ``src/gradprobe/examples/planted.py``.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict

import gradprobe

try:
    from gradprobe.checking.calibration import BANDS, band
    from gradprobe.examples.planted import BUG_KINDS, planted_cases
except ImportError:  # a gradprobe from before the calibration (main at 4300d04): --before
    import importlib.util
    import pathlib
    import sys

    BANDS = (1, 2, 4, 16)

    def band(support: int) -> int:
        return max(j for j, lower in enumerate(BANDS) if support >= lower or j == 0)

    _here = pathlib.Path(__file__).resolve().parents[1] / "src/gradprobe/examples/planted.py"
    _spec = importlib.util.spec_from_file_location("planted", _here)
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["planted"] = _mod
    _spec.loader.exec_module(_mod)
    BUG_KINDS, planted_cases = _mod.BUG_KINDS, _mod.planted_cases

#: Cases a (kind, band) cell needs for its own rate.
MIN_CELL = 20
#: Confidence levels of the reliability table.
LEVELS = (0.9, 0.7, 0.5, 0.0)


def judge(seeds: int, kinds=BUG_KINDS):
    """Per diagnosis: (key, band, confidence, right, label); plus false alarms and misses."""
    rows, false_alarms, misses = [], [], []
    for case in planted_cases(seeds, kinds):
        report = gradprobe.check(case.loss, case.grad, case.params)
        for p in report.params.values():
            want = case.truth.get(p.name)
            if p.passed:
                if want is not None:
                    misses.append((case.label, p.name))
                continue
            if want is None:
                false_alarms.append((case.label, p.name, p.diagnosis.kind))
                continue
            d = p.diagnosis
            kinds_named = {d.kind} | {a["kind"] for a in d.evidence.get("alternatives", [])}
            key = "ambiguous" if "alternatives" in d.evidence else d.kind
            support = int(d.evidence.get("support", p.n_failed))
            rows.append((key, band(support), d.confidence, want in kinds_named, case.label, want))
    return rows, false_alarms, misses


def calibration_table(rows) -> dict[str, tuple[float, ...]]:
    cells: dict[tuple[str, int], list[bool]] = defaultdict(list)
    pooled: dict[str, list[bool]] = defaultdict(list)
    for key, b, _, right, _, _ in rows:
        cells[key, b].append(right)
        pooled[key].append(right)

    def rate(v: list[bool]) -> float:
        return round(sum(v) / (len(v) + 1), 3)

    return {
        key: tuple(
            rate(cells[key, b]) if len(cells[key, b]) >= MIN_CELL else rate(pooled[key])
            for b in range(len(BANDS))
        )
        for key in sorted(pooled)
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--table", action="store_true", help="print the calibration table")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows, false_alarms, misses = judge(args.seeds)
    print(
        f"gradprobe {gradprobe.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}; {args.seeds} seeds x {len(BUG_KINDS)} bug kinds, "
        f"{len(rows)} diagnoses, {time.perf_counter() - t0:.1f} s"
    )
    print(f"\nfalse alarms (a parameter the bug does not break fails): {len(false_alarms)}")
    for fa in false_alarms[:10]:
        print("   ", fa)
    print(f"misses (a broken parameter passes): {len(misses)}")
    for m in misses[:10]:
        print("   ", m)
    print("\n| confidence | diagnoses | right | share right |\n|---|---|---|---|")
    upper = 1.01
    for lo in LEVELS:
        sel = [r for r in rows if lo <= r[2] < upper]
        n, k = len(sel), sum(r[3] for r in sel)
        share = f"{k / n:.1%}" if n else "-"
        print(f"| {lo:.1f} - {min(upper, 1.0):.1f} | {n} | {k} | {share} |")
        upper = lo
    print("\n| diagnosis | n | right | confidence printed |\n|---|---|---|---|")
    by_key: dict[str, list] = defaultdict(list)
    for r in rows:
        by_key[r[0]].append(r)
    for key, sel in sorted(by_key.items()):
        confs = sorted({r[2] for r in sel})
        print(
            f"| {key} | {len(sel)} | {sum(r[3] for r in sel)} | "
            f"{confs[0]:.2f}" + (f" - {confs[-1]:.2f}" if len(confs) > 1 else "") + " |"
        )
    wrong = [r for r in rows if not r[3]]
    print(f"\nwrong diagnoses: {len(wrong)}")
    for r in wrong[:20]:
        print(f"    {r[4]}: named {r[0]} (confidence {r[2]:.2f}), planted {r[5]}")
    forbidden = [
        r for r in rows if r[5] == "mismatch" and r[0] in ("scale", "sign", "missing-term")
    ]
    print(f"dropped-term / activation / varying-ratio bugs named scale, sign or missing-term: "
          f"{len(forbidden)}")  # fmt: skip
    if args.table:
        print("\nTABLE = {")
        for key, rates in calibration_table(rows).items():
            print(f"    {key!r}: ({', '.join(f'{r:.3f}' for r in rates)}),")
        print("}")


if __name__ == "__main__":
    main()
