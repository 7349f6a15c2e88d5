"""gradprobe.check points framework arrays to their adapter, without importing the framework.

The detection reads ``type(x).__module__``; these stand-ins carry the modules of a torch
tensor and a jax array, so the rule is tested where neither framework is installed.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import gradprobe
from gradprobe import InvalidInputError


def _stand_in(module: str, name: str) -> object:
    kind = type(name, (), {"__array__": lambda self, *a, **k: np.ones(3)})
    kind.__module__ = module
    return kind()


@pytest.mark.parametrize(
    ("module", "name", "adapter"),
    [
        ("torch", "Tensor", "gradprobe.torch.check"),
        ("torch.nn.parameter", "Parameter", "gradprobe.torch.check"),
        ("jaxlib._jax", "ArrayImpl", "gradprobe.jax.check"),
        ("jax._src.core", "Tracer", "gradprobe.jax.check"),
    ],
)
def test_framework_arrays_get_the_adapter_hint(module, name, adapter):
    value = _stand_in(module, name)
    for params, where in [
        (value, "params"),
        ({"w": value}, "parameter 'w'"),
        ([np.ones(2), value], "parameter '1'"),
    ]:
        with pytest.raises(InvalidInputError, match=rf"^{where}: expected a numpy array") as exc:
            gradprobe.check(lambda p: 0.0, lambda p: p, params)
        assert adapter in str(exc.value) and name in str(exc.value)


def test_other_array_likes_are_still_converted():
    value = _stand_in("mylib.arrays", "Array")  # not a framework with an adapter
    report = gradprobe.check(lambda p: float(np.sum(p["w"])), {"w": np.ones(3)}, {"w": value})
    assert report.passed


@pytest.mark.parametrize(
    ("framework", "extra"), [("torch", "gradprobe[torch]"), ("jax", "gradprobe[jax]")]
)
def test_adapter_without_its_framework_says_what_to_install(framework, extra):
    code = (
        f"import sys; sys.modules[{framework!r}] = None\n"  # as if it were not installed
        f"try:\n    import gradprobe.{framework}\n"
        "except ModuleNotFoundError as exc:\n    print(exc.name, '|', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    name, _, message = out.stdout.partition(" | ")
    assert name == framework, out.stdout + out.stderr
    assert extra in message
