"""A seeded generator of planted gradient bugs over layers and losses: the calibration corpus.

:func:`planted_cases` yields :class:`PlantedCase` objects: a loss, a hand-written gradient with
one planted bug, the parameters, and for each parameter the bug breaks the diagnosis a correct
reading of the evidence gives (``truth``). Bugs (:data:`BUG_KINDS`):

- relations a diagnosis can name: ``scale`` (a constant factor, batch size to 1.01), ``sign``,
  ``transpose``, ``shifted`` (rows off by one), ``unused`` (a mask the forward pass applies and
  the backward pass does not), ``clipped``, ``ties`` (a max whose backward gives every tied
  entry the full gradient), ``missing-term`` (an L2 penalty left out), ``partial-factor``
  (some rows doubled), ``zero`` (never written);
- bugs no relation describes, whose truth is ``mismatch`` (no cause named): a dropped product
  or chain-rule term, a wrong activation derivative, an error whose ratio varies with the
  value.

Every fifth seed has float32 parameters (:data:`FLOAT64_ONLY` aside). The layers are a dense layer with a tanh, sigmoid, softplus or ReLU activation under a
mean-squared or softmax cross-entropy loss (optionally with L2), and elementwise primitives
``sum(u * op(x))``. ``benchmarks/bench_calibration.py`` measures on this corpus how often a
diagnosis is right at each confidence level (:mod:`gradprobe.checking.calibration`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BUG_KINDS", "PlantedCase", "planted_cases"]

Params = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class PlantedCase:
    """One planted bug: ``gradprobe.check(case.loss, case.grad, case.params)``.

    ``truth`` maps each parameter the bug breaks to the diagnosis kind a correct reading gives
    (``"mismatch"`` where no relation describes the bug); the other parameters must pass.
    """

    label: str
    bug: str
    loss: Callable[[Params], float]
    grad: Callable[[Params], dict[str, np.ndarray]]
    params: dict[str, np.ndarray]
    truth: dict[str, str] = field(default_factory=dict)


_ACTS: dict[str, tuple[Callable, Callable, Callable]] = {
    # name: (f, f' from z and h, a wrong derivative from z and h)
    "tanh": (np.tanh, lambda z, h: 1 - h**2, lambda z, h: 1 - h),
    "sigmoid": (
        lambda z: 1 / (1 + np.exp(-z)),
        lambda z, h: h * (1 - h),
        lambda z, h: h,
    ),
    "softplus": (
        lambda z: np.logaddexp(0, z),
        lambda z, h: 1 / (1 + np.exp(-z)),
        lambda z, h: np.exp(-np.abs(z)),
    ),
    "relu": (
        lambda z: np.maximum(z, 0),
        lambda z, h: (z > 0).astype(float),
        lambda z, h: h,
    ),
}

#: Elementwise primitives: name -> (f, f', the derivative with a term dropped).
_PRIMS: dict[str, tuple[Callable, Callable, Callable]] = {
    "x*sin(x)": (
        lambda x: x * np.sin(x),
        lambda x: np.sin(x) + x * np.cos(x),
        lambda x: x * np.cos(x),
    ),
    "x*exp(-x^2)": (
        lambda x: x * np.exp(-(x**2)),
        lambda x: (1 - 2 * x**2) * np.exp(-(x**2)),
        lambda x: np.exp(-(x**2)),
    ),
    "sin(x^2)": (lambda x: np.sin(x**2), lambda x: 2 * x * np.cos(x**2), lambda x: np.cos(x**2)),
    "log(1+x^2)*x": (
        lambda x: x * np.log1p(x**2),
        lambda x: np.log1p(x**2) + 2 * x**2 / (1 + x**2),
        lambda x: np.log1p(x**2),
    ),
    "exp(tanh(x))": (
        lambda x: np.exp(np.tanh(x)),
        lambda x: np.exp(np.tanh(x)) * (1 - np.tanh(x) ** 2),
        lambda x: np.exp(np.tanh(x)),
    ),
}


def _dense(rng, act: str, loss: str, l2: float, bug: str, batch: int, d: int, h: int, k: int):
    """x -> act(x W + b) -> h V + c -> loss (+ 0.5 l2 (|W|^2 + |V|^2)); the bug planted in the
    backward pass."""
    f, df, wrong = _ACTS[act]
    X = rng.standard_normal((batch, d))
    Y = rng.integers(0, k, size=batch) if loss == "ce" else rng.standard_normal((batch, k))
    p = {
        "W": rng.standard_normal((d, h)) / np.sqrt(d),
        "b": 0.3 * rng.standard_normal(h),
        "V": rng.standard_normal((h, k)) / np.sqrt(h),
        "c": 0.1 * rng.standard_normal(k),
    }
    mask = (rng.random((d, h)) > 0.3).astype(float) if bug == "unused" else np.ones((d, h))

    def forward(q):
        z = X @ (q["W"] * mask) + q["b"]
        hh = f(z)
        return z, hh, hh @ q["V"] + q["c"]

    def loss_fn(q):
        _, _, out = forward(q)
        if loss == "ce":
            m = out.max(axis=1, keepdims=True)
            lse = np.log(np.exp(out - m).sum(axis=1)) + m[:, 0]
            data = float(np.mean(lse - out[np.arange(batch), Y]))
        else:
            data = float(0.5 * np.mean(np.sum((out - Y) ** 2, axis=1)))
        return data + 0.5 * l2 * float(np.sum(q["W"] ** 2) + np.sum(q["V"] ** 2))

    def grad(q):
        z, hh, out = forward(q)
        if loss == "ce":
            e = np.exp(out - out.max(axis=1, keepdims=True))
            dout = e / e.sum(axis=1, keepdims=True)
            dout[np.arange(batch), Y] -= 1.0
        else:
            dout = out - Y
        dout = dout / batch
        g = {"V": hh.T @ dout + l2 * q["V"], "c": dout.sum(axis=0)}
        dh = dout @ q["V"].T
        if bug == "activation":
            dz = dh * wrong(z, hh)
        elif bug == "chain-term":  # the activation's derivative dropped from the chain
            dz = dh
        else:
            dz = dh * df(z, hh)
        gW = X.T @ dz
        # "unused": the forward pass masks W, the backward pass does not.
        g["W"] = (gW if bug == "unused" else gW * mask) + l2 * q["W"]
        if bug == "missing-term":
            g["W"] = g["W"] - l2 * q["W"]
        g["b"] = dz.sum(axis=0)
        return g

    return loss_fn, grad, p


def _prim(rng, name: str, shape: tuple[int, ...]):
    f, df, dropped = _PRIMS[name]
    u = rng.standard_normal(shape)
    p = {"x": rng.standard_normal(shape)}
    return (
        lambda q: float(np.sum(u * f(q["x"]))),
        lambda q: {"x": u * df(q["x"])},
        p,
        lambda q: {"x": u * dropped(q["x"])},
    )


def _ties(rng, full: bool):
    x = np.round(rng.standard_normal((6, 5)), 1)
    for i in range(6):  # every row's max tied between two or three entries
        j = rng.choice(5, size=int(rng.integers(2, 4)), replace=False)
        x[i, j] = np.max(x[i]) + 0.5

    def grad(q):
        m = q["x"].max(axis=1, keepdims=True)
        t = (q["x"] == m).astype(float)
        # d/dm (m**2 / 2 + m) = m + 1, to every tied entry (full) or split between them.
        return {"x": (m + 1.0) * (t if full else t / t.sum(axis=1, keepdims=True))}

    return lambda q: float(np.sum(q["x"].max(axis=1) ** 2 / 2 + q["x"].max(axis=1))), grad, {"x": x}


#: Bug kinds of the corpus -> the truth of the parameters they break.
BUG_KINDS = (
    "scale",
    "scale-near-one",
    "sign",
    "transpose",
    "shifted",
    "unused",
    "clipped",
    "ties",
    "missing-term",
    "partial-factor",
    "zero",
    "dropped-term",
    "chain-term",
    "activation",
    "varying-ratio",
    "swapped",
    "confined",
    "nonfinite",
    "square-scaled",
)


def _wrap(grad, name: str, how: Callable[[np.ndarray, Params], np.ndarray]):
    def planted(q):
        g = dict(grad(q))
        g[name] = how(np.asarray(g[name], dtype=float).copy(), q)
        return g

    return planted


def _case(rng, bug: str, seed: int) -> PlantedCase:
    act = ["tanh", "sigmoid", "softplus", "relu"][seed % 4]
    lossk = ["mse", "ce"][seed % 2]
    d = [6, 12, 24][seed % 3]
    h = d if bug == "transpose" else [6, 16, 32][(seed // 3) % 3]
    dims = dict(batch=int(rng.integers(6, 33)), d=d, h=h, k=[3, 10][(seed // 2) % 2])
    l2 = 0.01 if bug == "missing-term" else 0.0 if bug == "unused" else [0.0, 0.01][(seed // 2) % 2]
    target = ["W", "V"][seed % 2]
    label = f"{bug}/{act}/{lossk}/s{seed}"
    if bug in ("chain-term", "varying-ratio", "scale-near-one") and seed % 3 == 0:
        names = list(_PRIMS) if bug != "chain-term" else ["sin(x^2)", "exp(tanh(x))"]
        name = names[seed % len(names)]
        loss, grad, p, dropped = _prim(rng, name, (4, 5))
        label = f"{bug}/{name}/s{seed}"
        if bug == "chain-term":
            return PlantedCase(label, bug, loss, dropped, p, {"x": "mismatch"})
        if bug == "scale-near-one":
            c = float(rng.choice([1.01, 0.99, 1.005]))
            return PlantedCase(
                label, bug, loss, _wrap(grad, "x", lambda g, q: c * g), p, {"x": "scale"}
            )
        return PlantedCase(
            label, bug, loss, _wrap(grad, "x", lambda g, q: g * (1 + 0.3 * q["x"])), p,
            {"x": "mismatch"},
        )  # fmt: skip
    if bug == "ties":
        loss, grad, p = _ties(rng, full=True)
        return PlantedCase(f"ties/max/s{seed}", bug, loss, grad, p, {"x": "ties"})
    if bug == "square-scaled":
        # f = sum(u * x**2) + sum(x**2) with u constant: n = 2(u+1) x, a = 3(u+1) x is both
        # "1.5 x numeric" and "numeric + k x"... only where n is proportional to x.
        x = rng.standard_normal(int(rng.integers(5, 40)))
        lam = float(rng.choice([0.5, 1.0, 2.0]))
        return PlantedCase(
            f"{bug}/s{seed}", bug, lambda q: float(lam * np.sum(q["x"] ** 2)),
            lambda q: {"x": 3.0 * lam * q["x"]}, {"x": x}, {"x": "scale"},
        )  # fmt: skip
    if bug == "dropped-term":
        name = list(_PRIMS)[seed % len(_PRIMS)]
        loss, _, p, dropped = _prim(rng, name, (4, 5))
        return PlantedCase(f"{bug}/{name}/s{seed}", bug, loss, dropped, p, {"x": "mismatch"})
    if bug in ("chain-term", "activation"):
        act = "tanh" if act == "relu" else act
        loss, grad, p = _dense(rng, act, lossk, l2, bug, **dims)
        return PlantedCase(label, bug, loss, grad, p, {"W": "mismatch", "b": "mismatch"})
    loss, grad, p = _dense(
        rng, act, lossk, l2, bug if bug in ("unused", "missing-term") else "", **dims
    )
    if bug == "unused":
        return PlantedCase(label, bug, loss, grad, p, {"W": "unused"})
    if bug == "missing-term":
        return PlantedCase(label, bug, loss, grad, p, {"W": "missing-term"})
    hows: dict[str, Callable[[np.ndarray, Params], np.ndarray]] = {
        "scale": lambda g, q: g * float(dims["batch"]),
        "scale-near-one": lambda g, q: g * 1.01,
        "sign": lambda g, q: -g,
        "transpose": lambda g, q: g.T.copy(),
        "shifted": lambda g, q: np.roll(g, 1, axis=0),
        "clipped": lambda g, q: np.clip(g, -np.quantile(np.abs(g), 0.6), np.quantile(np.abs(g), 0.6)),
        "partial-factor": lambda g, q: g * np.where(np.arange(g.shape[0]) % 3 == 0, 2.0, 1.0)[:, None],
        "zero": lambda g, q: np.zeros_like(g),
        "varying-ratio": lambda g, q: g * (1 + 0.3 * np.tanh(q[target])),
    }  # fmt: skip
    if bug == "transpose":
        target = "W"  # W is square (d == h)
    if bug == "swapped":
        loss, grad, p = _dense(rng, act, lossk, l2, "", batch=dims["batch"], d=6, h=6, k=6)

        def swapped(q, grad=grad):
            g = dict(grad(q))
            g["W"], g["V"] = g["V"], g["W"]
            return g

        return PlantedCase(label, bug, loss, swapped, p, {"W": "swapped", "V": "swapped"})
    if bug == "nonfinite":
        r = int(rng.integers(0, 3))
        return PlantedCase(
            label, bug, loss, _wrap(grad, target, lambda g, q: np.where(np.arange(g.size).reshape(g.shape) == r, np.nan, g)),
            p, {target: "nonfinite"},
        )  # fmt: skip
    if bug == "confined":
        row = int(rng.integers(0, p[target].shape[0]))
        noise = 1.0 + 0.5 * rng.random(p[target].shape[1])

        def confine(g, q, row=row, noise=noise):
            g[row] = g[row] * noise + 0.1 * np.abs(g).max()
            return g

        return PlantedCase(label, bug, loss, _wrap(grad, target, confine), p, {target: "confined"})
    want = {"scale-near-one": "scale", "varying-ratio": "mismatch"}.get(bug, bug)
    if bug in ("scale", "sign", "scale-near-one", "zero") and l2 == 0.0 and seed % 4 == 3:
        # The same bug on both layers' weights.
        grad = _wrap(_wrap(grad, "W", hows[bug]), "V", hows[bug])
        return PlantedCase(label, bug, loss, grad, p, {"W": want, "V": want})
    return PlantedCase(label, bug, loss, _wrap(grad, target, hows[bug]), p, {target: want})


def planted_cases(seeds: int = 8, kinds: tuple[str, ...] = BUG_KINDS) -> Iterator[PlantedCase]:
    """``seeds`` cases of each bug kind in ``kinds`` (deterministic: case ``(kind, s)`` is
    seeded by its kind's position and ``s``)."""
    for bug in kinds:
        if bug not in BUG_KINDS:
            raise ValueError(f"kinds: expected names from {BUG_KINDS}, found {bug!r}")
        for s in range(seeds):
            case = _case(np.random.default_rng([BUG_KINDS.index(bug), s]), bug, s)
            yield _float32(case) if s % 5 == 4 and bug not in FLOAT64_ONLY else case


#: Bugs kept in float64 (a tie of float32 values, a factor within 1% of 1, which float32
#: differences resolve only at the 1e-3 level).
FLOAT64_ONLY = ("ties", "scale-near-one")


def _float32(case: PlantedCase) -> PlantedCase:
    """The case with float32 parameters (the loss computes in whatever dtype they promote to;
    the gradient is returned in float32)."""

    def grad(q, grad=case.grad):
        return {k: np.asarray(v).astype(q[k].dtype) for k, v in grad(q).items()}

    params = {k: v.astype(np.float32) for k, v in case.params.items()}
    return PlantedCase(case.label + "/f32", case.bug, case.loss, grad, params, case.truth)
