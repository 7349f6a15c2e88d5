"""What the diagnosis' confidence means: the measured rate at which it is right.

A diagnosis' confidence is not a score of how well a relation fits. It is read from
:data:`TABLE`: for each kind of diagnosis and each band of supporting entries (the failing
entries the relation explains), the share of planted bugs of the calibration corpus
(:mod:`gradprobe.examples.planted`) that were given that kind and band and whose planted cause
it names, shrunk by one case (``right / (n + 1)``: no finite corpus shows certainty).
``benchmarks/bench_calibration.py`` measures it and prints the table anew
(``--table``); the figures below are its output.

For ``mismatch`` (no cause named) "right" means the planted bug is one no relation describes
(a dropped term, a wrong activation derivative, a ratio that varies from entry to entry); for
``ambiguous`` (two relations explain the evidence equally) that one of the listed relations is
the planted one.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Lower bounds of the bands of supporting entries.
BANDS = (1, 2, 4, 16)

#: Measured rate right, per kind and band: ``python benchmarks/bench_calibration.py --seeds 40
#: --table`` (40 cases of each of 19 planted bug kinds, 866 diagnoses; main at 4300d04 + this
#: branch). Each rate is right / (n + 1) over the cell's n cases (cells under 20 cases take
#: their kind's pooled rate).
TABLE: Mapping[str, tuple[float, float, float, float]] = {
    "ambiguous": (0.976, 0.976, 0.976, 0.966),
    "clipped": (0.976, 0.976, 0.976, 0.971),
    "confined": (0.976, 0.976, 0.976, 0.976),
    "mismatch": (0.996, 0.996, 0.963, 0.995),
    "missing-term": (0.976, 0.976, 0.976, 0.976),
    "nonfinite": (0.976, 0.976, 0.976, 0.976),
    "partial-factor": (0.976, 0.976, 0.976, 0.971),
    "scale": (0.988, 0.988, 0.988, 0.988),
    "shifted": (0.976, 0.976, 0.976, 0.976),
    "sign": (0.976, 0.976, 0.976, 0.976),
    "swapped": (0.988, 0.988, 0.988, 0.988),
    "ties": (0.976, 0.976, 0.964, 0.976),
    "transpose": (0.976, 0.976, 0.976, 0.976),
    "unused": (0.976, 0.976, 0.976, 0.973),
    "zero": (0.976, 0.976, 0.976, 0.976),
}

#: A kind the corpus never produced: no claim beyond a coin toss.
UNMEASURED = 0.5


def band(support: int) -> int:
    """The band of ``support`` supporting entries (an index into :data:`BANDS`)."""
    k = 0
    for j, lower in enumerate(BANDS):
        if support >= lower:
            k = j
    return k


def calibrated(kind: str, support: int) -> float:
    """The measured rate at which a ``kind`` diagnosis on ``support`` entries is right."""
    rates = TABLE.get(kind)
    if rates is None:
        return UNMEASURED
    return float(rates[band(max(1, support))])
