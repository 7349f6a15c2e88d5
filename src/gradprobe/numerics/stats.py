"""Coverage statistics: what a sample of checked entries says about the entries not checked.

From ``k`` sampled entries with ``f`` failures, the exact (Clopper-Pearson) one-sided upper
confidence bound on the fraction of wrong entries: the ``p`` at which seeing ``f`` or fewer
failures in ``k`` draws has probability ``1 - confidence``. Computed with the regularized
incomplete beta function (a continued fraction) and bisection, so the core needs no scipy.
"""

from __future__ import annotations

import math

#: Confidence level of the bound in coverage statements.
CONFIDENCE = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def upper_bound_wrong_fraction(k: int, f: int, confidence: float = CONFIDENCE) -> float:
    """Exact one-sided upper confidence bound on a failure fraction (Clopper-Pearson).

    Parameters
    ----------
    k : int
        Entries checked (draws).
    f : int
        Of those, how many failed.
    confidence : float
        Confidence level in (0, 1).

    Returns
    -------
    float
        The ``p`` with ``P(X <= f; k, p) = 1 - confidence``, i.e. the ``confidence`` quantile of
        ``Beta(f + 1, k - f)``; 1.0 when ``f >= k`` or ``k == 0``.
    """
    if k <= 0 or f >= k:
        return 1.0
    alpha = 1.0 - confidence
    if f == 0:
        return -math.expm1(math.log(alpha) / k)  # closed form: 1 - alpha**(1/k)
    a, b = f + 1.0, float(k - f)
    lo, hi = 0.0, 1.0
    # I_p(f+1, k-f) = P(X >= f+1; k, p) increases with p; find where it reaches `confidence`.
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _betainc(a, b, mid) < confidence:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * max(hi, 1e-300):
            break
    return hi
