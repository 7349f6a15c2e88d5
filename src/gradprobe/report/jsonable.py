"""JSON-ready values: numpy scalars and arrays, tuples and non-finite floats converted."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """Convert numpy scalars, arrays and tuples to JSON types, recursively (non-finite floats
    become None; anything else unknown becomes its ``repr``)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


#: What a check measured, as opposed to what was asked: ``Report.measured`` holds these keys,
#: ``Report.settings`` never does. The engine's facts (the loss's noise and precision, the
#: planned evaluations, the executor that ran), the vector-valued checks' (``jvp_calls``) and the
#: framework adapters' (framework, device, x64, how the loss was vectorized and jitted, what
#: was left out of the check).
MEASUREMENT_KEYS = frozenset(
    {
        "loss_noise",
        "noise",
        "loss_precision",
        "planned_evaluations",
        "executor",
        "jvp_calls",
        "framework",
        "device",
        "x64",
        "vectorization",
        "jitted",
        "not_checked",
    }
)


def split_settings(
    settings: Mapping[str, Any], schema_version: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(asked, measured)``: the one rule that decides which key is a measurement.

    ``schema_version=1`` reads a report written before the two were apart, where the
    adapters' ``"vectorize"`` said how the loss ran (now ``measured["vectorization"]``) and
    ``"jit"`` whether it was jitted (now ``measured["jitted"]``).
    """
    asked = {k: v for k, v in settings.items() if k not in MEASUREMENT_KEYS}
    measured = {k: v for k, v in settings.items() if k in MEASUREMENT_KEYS}
    if schema_version == 1:
        if isinstance(asked.get("vectorize"), str) and asked["vectorize"] != "auto":
            measured["vectorization"] = asked.pop("vectorize")
        if "jit" in asked and "framework" in measured:
            measured["jitted"] = asked["jit"]
    return asked, measured
