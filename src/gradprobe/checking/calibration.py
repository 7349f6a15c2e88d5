"""What the diagnosis' confidence means: the measured rate at which it is right.

A diagnosis' confidence is not a score of how well a relation fits. It is read from
:data:`TABLE`: for each kind of diagnosis and each band of supporting entries (the failing
entries the relation explains), the share of planted bugs of the calibration corpus
(:mod:`gradprobe.checking.corpus`) that were given that kind and band and whose planted cause
it names. ``benchmarks/bench_calibration.py`` measures it and prints the table anew
(``--table``); the figures below are its output.

For ``mismatch`` (no cause named) "right" means the planted bug is one no relation describes
(a dropped term, a wrong activation derivative, a ratio that varies from entry to entry); for
``ambiguous`` (two relations explain the evidence equally) that one of the listed relations is
the planted one.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["BANDS", "TABLE", "band", "calibrated"]

#: Lower bounds of the bands of supporting entries.
BANDS = (1, 2, 4, 16)

#: Measured rate right, per kind and band (benchmarks/bench_calibration.py --table).
TABLE: Mapping[str, tuple[float, float, float, float]] = {
    "ambiguous": (0.5, 0.5, 0.5, 0.5),
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
