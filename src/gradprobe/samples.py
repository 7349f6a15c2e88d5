"""``samples=``: how many entries of each parameter are checked one by one.

A request is ``"all"``, a count (``0``: none, leaving the probes), a fraction in (0, 1], or a
mapping from parameter name to one of those (a path in a tree; nested mappings are joined by
"."); :func:`validate_samples` turns it into one :class:`SampleSpec` per parameter, and
:func:`samples_from_text` reads ``--samples``. The option itself is listed with the others in
:mod:`gradprobe.options`.

The default is adaptive (:meth:`SampleSpec.plan`): a parameter of at most :data:`CHECK_ALL_UP_TO`
entries is checked in full (a sample saves little there, and probes over few entries cannot
resolve a small error in one of them); a larger one, with probes covering every entry, starts
with :data:`FIRST_SAMPLE` entries and grows to :data:`DEFAULT_SAMPLES` only where the evidence
disagrees. Without probes the sample is :data:`DEFAULT_SAMPLES` from the start.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInputError

#: Entries checked one by one where the evidence disagrees (a failed entry, a probe that
#: disagreed), so the diagnosis has as much to read as it needs; without probes, the sample.
DEFAULT_SAMPLES = 512
#: Entries checked one by one first, with probes covering the rest: enough to bound the wrong
#: fraction below ~6% at 95% on their own and to catch a dense bug at once; the probes and
#: their bisection catch sparse ones.
FIRST_SAMPLE = 48
#: Parameters up to this many entries (4 first samples) are checked in full by default.
CHECK_ALL_UP_TO = 4 * FIRST_SAMPLE


@dataclass(frozen=True)
class SampleSpec:
    """A validated per-parameter sample request: ``"all"``, a count or a fraction."""

    mode: str  # "all", "count", "fraction", "default"
    value: float = 0.0

    def resolve(self, n_total: int, default: SampleSpec) -> int:
        """How many entries to check one by one for a parameter of ``n_total`` entries."""
        spec = default if self.mode == "default" else self
        if spec.mode == "all":
            return n_total
        if spec.mode == "count":
            return min(n_total, int(spec.value))
        if spec.mode == "fraction":
            return min(n_total, max(1, math.ceil(spec.value * n_total)))
        raise AssertionError(f"unresolved sample mode {spec.mode!r}")

    def plan(self, n_total: int, probes: bool) -> tuple[int, int | None]:
        """``(first, grow_to)``: entries checked one by one at first, and the size the sample
        grows to where the evidence disagrees (None: it never grows; an explicit request is
        taken as given)."""
        if self.mode != "default":
            return self.resolve(n_total, self), None
        full = min(n_total, DEFAULT_SAMPLES)
        if not probes or n_total <= CHECK_ALL_UP_TO:
            return full, None
        first = min(n_total, FIRST_SAMPLE)
        return first, (full if full > first else None)


def _parse_one_sample(value: Any, where: str) -> SampleSpec:
    if value is None:
        return SampleSpec("default")
    if isinstance(value, str) and value == "all":
        return SampleSpec("all")
    if isinstance(value, (str, bool)):
        raise InvalidInputError(
            f"{where}: expected 'all', an int >= 0 or a fraction in (0, 1], found {value!r}."
        )
    if isinstance(value, numbers.Integral):
        if value < 0:
            raise InvalidInputError(f"{where}: expected an int >= 0, found {value}.")
        return SampleSpec("count", float(value))
    if isinstance(value, numbers.Real):
        if not (0.0 < float(value) <= 1.0):
            raise InvalidInputError(
                f"{where}: expected a fraction in (0, 1], found {value!r}; pass an int for a "
                "number of entries."
            )
        return SampleSpec("fraction", float(value))
    raise InvalidInputError(
        f"{where}: expected 'all', an int or a fraction, found {type(value).__name__}."
    )


def validate_samples(samples: Any, names: Sequence[str] | None) -> dict[str, SampleSpec]:
    """Turn ``samples=`` into one :class:`SampleSpec` per parameter name.

    ``names`` None (a suite file, read before any parameter exists): the values are checked,
    the names of a mapping are not, and the result is keyed by the names given.
    """
    if isinstance(samples, Mapping):
        samples = _by_path(samples)
        if names is None:
            return {str(n): _parse_one_sample(v, f"samples[{n!r}]") for n, v in samples.items()}
        unknown = [k for k in samples if k not in names]
        if unknown:
            raise InvalidInputError(
                f"samples: unknown parameter names {unknown}; expected some of {list(names)}."
            )
        return {n: _parse_one_sample(samples.get(n), f"samples[{n!r}]") for n in names}
    spec = _parse_one_sample(samples, "samples")
    return dict.fromkeys(names or (), spec)


def _by_path(samples: Mapping[Any, Any], prefix: str = "") -> dict[Any, Any]:
    """Nested mappings keyed by path (TOML's ``encoder.W = 32`` is ``{"encoder": {"W": 32}}``)
    flattened to the parameter names ``"encoder.W"``."""
    out: dict[Any, Any] = {}
    for key, value in samples.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            out.update(_by_path(value, str(name)))
        else:
            out[name] = value
    return out


def samples_from_text(text: str) -> int | float | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected 'all', an int or a fraction, found {text!r}") from None
