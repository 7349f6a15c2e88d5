"""Planted backward bugs on torch's own ops: every one found by gradprobe.torch.check, on the
mutated input (and entry).

Each op below runs its first op_db sample (opdb_samples.py, float64) through a custom
``torch.autograd.Function`` whose forward is the op and whose backward is autograd's, then
mutated in one way:

- ``x1.01``: the first input's gradient scaled by 1.01;
- ``sign``: the first input's gradient negated;
- ``entry zeroed``, ``entry +5%``: one entry of the first input's gradient (its largest, so
  that the bug is one a checker can see) set to 0 or made 5% larger;
- ``transposed``: a square 2-D input's gradient transposed (where it is not symmetric);
- ``second dropped``: the second input's gradient returned as zeros.

A mutant counts only where the bug changes the gradient (the correct gradient for a seeded
cotangent is not zero there; for ``transposed``, not symmetric). Detected: the check fails.
Localized: the failing inputs are exactly the mutated one, and for an entry mutant its
``bad_indices`` are that entry alone. The test prints the counts, with gradcheck's detections
beside them (``pytest -s`` shows them).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")  # torch.testing._internal imports it

import gradprobe.torch as gt  # noqa: E402

from .opdb_samples import Sample, opdb_samples  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

#: Ops whose first op_db sample (of at most opdb_samples.MAX_ENTRIES entries) gets the
#: mutants: elementwise, binary with broadcasting, reductions (amax: its sample has no tie),
#: matrix products and decompositions, indexing and scatter, tensor lists (cat), and
#: nn.functional layers.
OPS = (
    "add", "addcmul", "addmm", "addr", "amax", "atan2", "cat", "cos", "cumprod", "cumsum",
    "diag", "digamma", "div.no_rounding_mode", "dot", "einsum", "exp", "gather", "hypot",
    "index_add", "index_select", "lerp", "lgamma", "linalg.cholesky", "linalg.det",
    "linalg.inv", "linalg.solve", "linalg.vector_norm", "log", "log_softmax", "logsumexp",
    "matmul", "maximum", "mean", "mm", "mul", "mv", "nn.functional.bilinear",
    "nn.functional.conv1d", "nn.functional.conv2d", "nn.functional.cosine_similarity",
    "nn.functional.gelu", "nn.functional.layer_norm", "nn.functional.linear",
    "nn.functional.mse_loss", "nn.functional.normalize", "nn.functional.softplus", "outer",
    "pow", "reciprocal", "rsqrt", "scatter_add", "sigmoid", "softmax", "std", "sub", "sum",
    "trace", "tril", "var", "where",
)

SCALE, ENTRY_SCALE = 1.01, 1.05


@dataclass(frozen=True)
class Mutant:
    """One planted bug: ``kind`` on input ``target`` of ``sample``'s op."""

    sample: Sample
    kind: str
    target: int

    @property
    def label(self) -> str:
        return f"{self.sample.name}: {self.kind} on input{self.target}"


def _mutate(kind: str, target: int, grads: list[torch.Tensor], seen: dict) -> list[torch.Tensor]:
    grads = list(grads)
    g = grads[target]
    if kind == "x1.01":
        grads[target] = g * SCALE
    elif kind == "sign":
        grads[target] = -g
    elif kind in ("entry zeroed", "entry +5%"):
        flat = g.detach().reshape(-1).clone()
        e = int(torch.argmax(flat.abs()))
        flat[e] = 0.0 if kind == "entry zeroed" else flat[e] * ENTRY_SCALE
        seen["entry"] = tuple(int(i) for i in np.unravel_index(e, tuple(g.shape)))
        grads[target] = flat.reshape(g.shape)
    elif kind == "transposed":
        grads[target] = g.t().contiguous()
    elif kind == "second dropped":
        grads[target] = torch.zeros_like(g)
    else:  # pragma: no cover - a typo in a kind
        raise ValueError(kind)
    return grads


def mutated(fn: Callable[..., Any], mutant: Mutant, seen: dict) -> Callable[..., Any]:
    """``fn`` as a custom autograd.Function whose backward is autograd's, then mutated."""

    class Planted(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(*xs):
            return fn(*xs).clone()

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, g):
            xs = [x.detach().requires_grad_() for x in ctx.saved_tensors]
            with torch.enable_grad():
                grads = torch.autograd.grad(fn(*xs), xs, g, allow_unused=True)
            pairs = zip(xs, grads, strict=True)
            grads = [torch.zeros_like(x) if d is None else d for x, d in pairs]
            return tuple(_mutate(mutant.kind, mutant.target, grads, seen))

    return Planted.apply


def _correct_grads(fn: Callable[..., Any], inputs: tuple) -> list[torch.Tensor] | None:
    """autograd's gradients for a seeded cotangent; None where fn's output is not one
    floating-point tensor."""
    xs = [x.detach().requires_grad_() for x in inputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fn(*xs)
    if not (isinstance(out, torch.Tensor) and out.is_floating_point() and out.requires_grad):
        return None
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, xs, g, allow_unused=True)
    pairs = zip(xs, grads, strict=True)
    return [torch.zeros_like(x) if d is None else d.detach() for x, d in pairs]


def _visible(kind: str, g: torch.Tensor) -> bool:
    """The mutation changes this gradient (beyond round-off)."""
    size = float(g.abs().max()) if g.numel() else 0.0
    if size < 1e-8:
        return False
    if kind == "transposed":
        square = g.dim() == 2 and g.shape[0] == g.shape[1] > 1
        return square and float((g - g.t()).abs().max()) > 0.05 * size
    return True


def build_mutants() -> list[Mutant]:
    out = []
    for sample in opdb_samples(only=OPS):
        fn, inputs = sample.build()
        if sample.entries == 0:
            continue
        grads = _correct_grads(fn, inputs)
        if grads is None:
            continue
        kinds = [(k, 0) for k in ("x1.01", "sign", "entry zeroed", "entry +5%")]
        square = [i for i, g in enumerate(grads) if _visible("transposed", g)]
        kinds += [("transposed", square[0])] if square else []
        kinds += [("second dropped", 1)] if len(grads) > 1 else []
        out += [Mutant(sample, k, t) for k, t in kinds if _visible(k, grads[t])]
    return out


@dataclass
class Outcome:
    mutant: Mutant
    detected: bool
    localized: bool
    gradcheck_detected: bool
    detail: str


def _run(mutant: Mutant) -> Outcome:
    fn, inputs = mutant.sample.build()
    seen: dict = {}
    planted = mutated(fn, mutant, seen)
    report = gt.check(planted, *inputs)
    name = f"input{mutant.target}"
    failed = [p.name for p in report.failures]
    localized = failed == [name]
    if localized and "entry" in seen:
        localized = report.params[name].bad_indices == (seen["entry"],)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            caught = not torch.autograd.gradcheck(
                planted, inputs, raise_exception=False, check_batched_grad=False
            )
        except Exception:
            caught = True
    return Outcome(mutant, not report.passed, localized, caught, f"{seen} {report}"[:1500])


@pytest.fixture(scope="module")
def mutant_run():
    return [_run(m) for m in build_mutants()]


def test_every_mutant_is_detected_and_localized(mutant_run, capsys):
    counts = {}
    for o in mutant_run:
        c = counts.setdefault(o.mutant.kind, [0, 0, 0, 0])
        c[0] += o.detected
        c[1] += o.localized
        c[2] += 1
        c[3] += o.gradcheck_detected
    total = [sum(c[i] for c in counts.values()) for i in range(4)]
    lines = [
        f"planted backward bugs on {len({o.mutant.sample.name for o in mutant_run})} op_db ops "
        f"(detected / localized / total; gradcheck detected): "
        f"{total[0]} / {total[1]} / {total[2]}; {total[3]}"
    ]
    lines += [f"  {k}: {c[0]} / {c[1]} / {c[2]}; {c[3]}" for k, c in sorted(counts.items())]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert total[2] >= 250, "the mutant set shrank"
    bad = [f"{o.mutant.label}: {o.detail}" for o in mutant_run if not (o.detected and o.localized)]
    assert not bad, "\n\n".join(bad)
