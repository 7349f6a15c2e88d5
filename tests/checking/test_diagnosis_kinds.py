"""Generic causes of real backprop bugs get their own kind (issue 11, finding 7).

Each model is built here, small, with a hand-written backward pass and one planted bug that a
numpy backprop library really had: a mask the backward pass forgets (``unused``), a padding or
position offset (``shifted``), a buffered scatter-add over repeated indices
(``partial-factor``), one special row or column handled wrong (``confined``). The correct
version of every model passes, in float64 and float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pytest

import gradprobe
from gradprobe.checking.diagnosis import rank_failing, relative_error
from gradprobe.checking.results import EntryResults

Params = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Model:
    params: dict[str, np.ndarray]
    loss: Callable[[Params], float]
    grad: Callable[[Params], dict[str, np.ndarray]]


def _ce(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy averaged over the batch, and its gradient w.r.t. the logits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    b = logits.shape[0]
    d = np.exp(logp)
    d[np.arange(b), y] -= 1.0
    return float(-logp[np.arange(b), y].mean()), d / b


def _head(rng, n_in: int, classes: int, dtype) -> dict[str, np.ndarray]:
    return {
        "V": (rng.standard_normal((n_in, classes)) / np.sqrt(n_in)).astype(dtype),
        "c": (0.1 * rng.standard_normal(classes)).astype(dtype),
    }


def _cast(g: dict[str, np.ndarray], params: Params) -> dict[str, np.ndarray]:
    return {k: np.asarray(g[k], dtype=params[k].dtype) for k in params}


# -- unused: the forward pass never reads some entries ---------------------------------------


def masked_linear(bug: bool = False, dtype=np.float64, seed: int = 0, leak: float = 0.0) -> Model:
    """A MADE-style masked dense layer ``tanh(X @ (W * M) + b)``, then a softmax head. Bug: the
    backward pass returns ``X.T @ dz`` without the mask (the forward never reads W where M == 0).
    ``leak``: the mask's value where it drops an entry (the backward pass uses 0 there).
    """
    rng = np.random.default_rng(seed)
    B, d, h, C = 12, 7, 9, 4
    X = rng.standard_normal((B, d)).astype(dtype)
    y = rng.integers(0, C, B)
    keep = rng.random((d, h)) < 0.6
    M = np.where(keep, 1.0, leak).astype(dtype)
    params = {
        "W": (rng.standard_normal((d, h)) / np.sqrt(d)).astype(dtype),
        "b": (0.1 * rng.standard_normal(h)).astype(dtype),
        **_head(rng, h, C, dtype),
    }

    def forward(p):
        H = np.tanh(X @ (p["W"] * M) + p["b"])
        return H, H @ p["V"] + p["c"]

    def loss(p):
        return _ce(forward(p)[1], y)[0]

    def grad(p):
        H, logits = forward(p)
        dlog = _ce(logits, y)[1]
        dz = (dlog @ p["V"].T) * (1.0 - H**2)
        dW = X.T @ dz
        g = {"W": dW if bug else dW * keep, "b": dz.sum(0), "V": H.T @ dlog, "c": dlog.sum(0)}
        return _cast(g, p)

    return Model(params, loss, grad)


def padded_embedding(bug: bool = False, dtype=np.float64, seed: int = 0) -> Model:
    """Token embeddings ``E`` (row 0 is the padding token, zeroed in the forward pass) averaged
    over a sequence, then a softmax head. Bug: the backward pass scatters into row 0 too."""
    rng = np.random.default_rng(seed)
    B, T, vocab, d, C = 6, 7, 10, 5, 3
    idx = rng.integers(1, vocab, (B, T))
    idx[:, -2:] = 0  # padding at the end of every sequence
    keep = (idx != 0).astype(dtype)[..., None]
    y = rng.integers(0, C, B)
    params = {"E": rng.standard_normal((vocab, d)).astype(dtype), **_head(rng, d, C, dtype)}

    def forward(p):
        H = np.tanh((p["E"][idx] * keep).mean(axis=1))
        return H, H @ p["V"] + p["c"]

    def loss(p):
        return _ce(forward(p)[1], y)[0]

    def grad(p):
        H, logits = forward(p)
        dlog = _ce(logits, y)[1]
        dh = (dlog @ p["V"].T) * (1.0 - H**2) / T
        demb = np.broadcast_to(dh[:, None, :], (B, T, d))
        dE = np.zeros_like(p["E"], dtype=np.float64)
        np.add.at(dE, idx.ravel(), (demb if bug else demb * keep).reshape(-1, d))
        return _cast({"E": dE, "V": H.T @ dlog, "c": dlog.sum(0)}, p)

    return Model(params, loss, grad)


# -- shifted: an offset in how the backward pass indexes an axis -------------------------------


def positional(bug: bool = False, dtype=np.float64, seed: int = 0, T: int = 8, d: int = 4) -> Model:
    """Learned positional embeddings ``P`` (one row per position) added to the inputs, then
    ``tanh`` and a dense head over the flattened sequence. Bug: the backward pass takes position
    ``t``'s gradient from ``t + 1`` (an off-by-one, as with a begin-of-sequence token)."""
    rng = np.random.default_rng(seed)
    B, C = 6, 3
    X = rng.standard_normal((B, T, d)).astype(dtype)
    y = rng.integers(0, C, B)
    params = {"P": (0.5 * rng.standard_normal((T, d))).astype(dtype), **_head(rng, T * d, C, dtype)}

    def forward(p):
        H = np.tanh(X + p["P"])
        return H, H.reshape(B, T * d) @ p["V"] + p["c"]

    def loss(p):
        return _ce(forward(p)[1], y)[0]

    def grad(p):
        H, logits = forward(p)
        dlog = _ce(logits, y)[1]
        dP = ((dlog @ p["V"].T).reshape(B, T, d) * (1.0 - H**2)).sum(0)
        if bug:
            dP = np.concatenate([dP[1:], np.zeros((1, d))])
        return _cast({"P": dP, "V": H.reshape(B, T * d).T @ dlog, "c": dlog.sum(0)}, p)

    return Model(params, loss, grad)


def padded_conv(bug: bool = False, dtype=np.float64, seed: int = 0) -> Model:
    """A 'same'-padded 1-D convolution (kernel ``K``: out x in x 5, padding 2) with bias,
    ``tanh``, then a dense head. Bug: the backward pass pads the input (1, 3) instead of (2, 2),
    so ``dK[..., k]`` is the correct ``dK[..., k + 1]``."""
    rng = np.random.default_rng(seed)
    B, Cin, L, Cout, w, C = 5, 3, 10, 4, 5, 3
    X = rng.standard_normal((B, Cin, L)).astype(dtype)
    y = rng.integers(0, C, B)
    params = {
        "K": (rng.standard_normal((Cout, Cin, w)) / np.sqrt(Cin * w)).astype(dtype),
        "k0": (0.1 * rng.standard_normal(Cout)).astype(dtype),
        **_head(rng, Cout * L, C, dtype),
    }

    def windows(pad):
        Xp = np.pad(X, ((0, 0), (0, 0), pad))
        return np.lib.stride_tricks.sliding_window_view(Xp, w, axis=2)  # B, Cin, L, w

    def forward(p):
        Z = np.einsum("bctk,ock->bot", windows((2, 2)), p["K"]) + p["k0"][:, None]
        H = np.tanh(Z)
        return H, H.reshape(B, Cout * L) @ p["V"] + p["c"]

    def loss(p):
        return _ce(forward(p)[1], y)[0]

    def grad(p):
        H, logits = forward(p)
        dlog = _ce(logits, y)[1]
        dZ = (dlog @ p["V"].T).reshape(B, Cout, L) * (1.0 - H**2)
        dK = np.einsum("bot,bctk->ock", dZ, windows((1, 3) if bug else (2, 2)))
        g = {"K": dK, "k0": dZ.sum((0, 2)), "V": H.reshape(B, Cout * L).T @ dlog, "c": dlog.sum(0)}
        return _cast(g, p)

    return Model(params, loss, grad)


# -- partial-factor: repeated indices scattered with a buffered += -----------------------------


def bag_of_words(bug: bool = False, dtype=np.float64, seed: int = 0, columns: bool = False):
    """Mean-pooled token embeddings, ``tanh``, then a softmax head; each sequence draws from its
    own slice of the vocabulary and repeats some tokens 2 or 3 times. Bug: the backward pass
    scatters with ``dE[idx] += g`` (buffered: a repeated row keeps one contribution of its
    2 or 3 equal ones) instead of ``np.add.at``. ``columns``: ``E`` is stored (d, vocab)."""
    rng = np.random.default_rng(seed)
    B, d, C, per = 4, 6, 3, 6
    seqs = []
    for b in range(B):
        v = b * per + rng.permutation(per)
        seqs.append(rng.permutation(np.concatenate([v[:1], v[:1], v[1:2], v[1:2], v[1:2], v[2:5]])))
    idx = np.stack(seqs)  # B x 8: one token twice, one three times, three once
    T = idx.shape[1]
    vocab = B * per + 2  # two rows never used
    y = rng.integers(0, C, B)
    E = rng.standard_normal((vocab, d)).astype(dtype)
    params = {"E": np.ascontiguousarray(E.T) if columns else E, **_head(rng, d, C, dtype)}

    def rows(p):
        return p["E"].T if columns else p["E"]

    def forward(p):
        H = np.tanh(rows(p)[idx].mean(axis=1))
        return H, H @ p["V"] + p["c"]

    def loss(p):
        return _ce(forward(p)[1], y)[0]

    def grad(p):
        H, logits = forward(p)
        dlog = _ce(logits, y)[1]
        dh = (dlog @ p["V"].T) * (1.0 - H**2) / T
        demb = np.repeat(dh, T, axis=0)  # B*T x d, one row per token
        dE = np.zeros((vocab, d))
        if bug:
            dE[idx.ravel()] += demb
        else:
            np.add.at(dE, idx.ravel(), demb)
        return _cast({"E": dE.T if columns else dE, "V": H.T @ dlog, "c": dlog.sum(0)}, p)

    return Model(params, loss, grad)


# -- confined: one special row or column -------------------------------------------------------


def folded_bias(bug: bool = False, dtype=np.float64, seed: int = 0) -> Model:
    """A dense ``tanh`` layer whose bias is folded into the last row of ``Wb`` (inputs get a
    column of ones), then a softmax head. Bug: the bias row's gradient skips the ``tanh``
    derivative (it sums ``dh`` instead of ``dz``)."""
    rng = np.random.default_rng(seed)
    B, d, h, C = 10, 8, 6, 3
    Xa = np.hstack([rng.standard_normal((B, d)), np.ones((B, 1))]).astype(dtype)
    y = rng.integers(0, C, B)
    params = {"Wb": (rng.standard_normal((d + 1, h)) / np.sqrt(d)).astype(dtype)}
    params.update(_head(rng, h, C, dtype))

    def forward(p):
        H = np.tanh(Xa @ p["Wb"])
        return H, H @ p["V"] + p["c"]

    def loss(p):
        return _ce(forward(p)[1], y)[0]

    def grad(p):
        H, logits = forward(p)
        dlog = _ce(logits, y)[1]
        dh = dlog @ p["V"].T
        dWb = Xa.T @ (dh * (1.0 - H**2))
        if bug:
            dWb[-1] = dh.sum(0)
        return _cast({"Wb": dWb, "V": H.T @ dlog, "c": dlog.sum(0)}, p)

    return Model(params, loss, grad)


def objectness_head(bug: bool = False, dtype=np.float64, seed: int = 0) -> Model:
    """A ``tanh`` layer, then ``V`` (h x (C + 1)): C softmax class logits and, in the last
    column, an objectness logit with a sigmoid binary cross-entropy. Bug: the objectness
    column's gradient multiplies ``(s - t)`` by the sigmoid derivative again, as if the loss
    were a squared error on ``s``."""
    rng = np.random.default_rng(seed)
    B, d, h, C = 12, 5, 8, 4
    X = rng.standard_normal((B, d)).astype(dtype)
    y = rng.integers(0, C, B)
    t = (rng.random(B) < 0.5).astype(dtype)
    params = {
        "W": (rng.standard_normal((d, h)) / np.sqrt(d)).astype(dtype),
        **_head(rng, h, C + 1, dtype),
    }

    def forward(p):
        H = np.tanh(X @ p["W"])
        return H, H @ p["V"] + p["c"]

    def loss(p):
        _, out = forward(p)
        o = out[:, -1]
        bce = np.mean(np.logaddexp(0.0, o) - t * o)
        return _ce(out[:, :C], y)[0] + float(bce)

    def grad(p):
        H, out = forward(p)
        dout = np.zeros_like(out, dtype=np.float64)
        dout[:, :C] = _ce(out[:, :C], y)[1]
        s = 1.0 / (1.0 + np.exp(-out[:, -1]))
        dout[:, -1] = (s - t) * (s * (1.0 - s) if bug else 1.0) / B
        dz = (dout @ p["V"].T) * (1.0 - H**2)
        return _cast({"W": X.T @ dz, "V": H.T @ dout, "c": dout.sum(0)}, p)

    return Model(params, loss, grad)


# -- a layer norm, with a bug that has no simple pattern ---------------------------------------


def layer_norm(bug: bool = False, dtype=np.float64, seed: int = 0) -> Model:
    """``X @ W``, a layer norm over the features (``gamma``, ``beta``), ``tanh``, a softmax
    head. Bug: the backward pass through the normalization drops the terms of the mean and the
    variance (treats them as constants): no simple pattern, diagnosed ``mismatch``."""
    rng = np.random.default_rng(seed)
    B, d, h, C = 10, 6, 8, 3
    X = rng.standard_normal((B, d)).astype(dtype)
    y = rng.integers(0, C, B)
    params = {
        "W": (rng.standard_normal((d, h)) / np.sqrt(d)).astype(dtype),
        "gamma": (1.0 + 0.1 * rng.standard_normal(h)).astype(dtype),
        "beta": (0.1 * rng.standard_normal(h)).astype(dtype),
        **_head(rng, h, C, dtype),
    }

    def forward(p):
        Z = X @ p["W"]
        mu = Z.mean(axis=1, keepdims=True)
        sd = np.sqrt(Z.var(axis=1, keepdims=True) + 1e-5)
        Zh = (Z - mu) / sd
        H = np.tanh(p["gamma"] * Zh + p["beta"])
        return Zh, sd, H, H @ p["V"] + p["c"]

    def loss(p):
        return _ce(forward(p)[3], y)[0]

    def grad(p):
        Zh, sd, H, logits = forward(p)
        dlog = _ce(logits, y)[1]
        da = (dlog @ p["V"].T) * (1.0 - H**2)
        dZh = da * p["gamma"]
        if bug:
            dZ = dZh / sd
        else:
            dZ = (dZh - dZh.mean(1, keepdims=True) - Zh * (dZh * Zh).mean(1, keepdims=True)) / sd
        g = {
            "W": X.T @ dZ,
            "gamma": (da * Zh).sum(0),
            "beta": da.sum(0),
            "V": H.T @ dlog,
            "c": dlog.sum(0),
        }
        return _cast(g, p)

    return Model(params, loss, grad)


# -- the tests ---------------------------------------------------------------------------------

# model, parameters its bug breaks, and the kind each gets (None: not asserted).
BUGS = {
    "masked-linear": (masked_linear, {"W": "unused"}),
    "padded-embedding": (padded_embedding, {"E": "unused"}),
    "positional": (positional, {"P": "shifted"}),
    "padded-conv": (padded_conv, {"K": "shifted"}),
    "bag-of-words": (bag_of_words, {"E": "partial-factor"}),
    "folded-bias": (folded_bias, {"Wb": "confined"}),
    "objectness": (objectness_head, {"W": None, "V": "confined", "c": None}),
    "layer-norm": (layer_norm, {"W": "mismatch"}),
}
DTYPES = [np.float64, np.float32]


def _failing_kinds(report) -> dict[str, str]:
    return {p.name: p.diagnosis.kind for p in report.failures}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("label", sorted(BUGS))
def test_correct_model_passes(label, dtype):
    make, _ = BUGS[label]
    m = make(dtype=dtype)
    report = gradprobe.check(m.loss, m.grad, m.params)
    assert report.passed, str(report)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("label", sorted(BUGS))
def test_planted_bug_gets_its_kind(label, dtype):
    make, want = BUGS[label]
    m = make(bug=True, dtype=dtype)
    report = gradprobe.check(m.loss, m.grad, m.params)
    kinds = _failing_kinds(report)
    # Parameters the bug reaches only through others (kind None) may pass in float32.
    assert {k for k, v in want.items() if v} <= set(kinds) <= set(want), str(report)
    for name in kinds:
        d = report.params[name].diagnosis
        assert want[name] is None or d.kind == want[name], (name, d)
        assert 0.0 < d.confidence <= 1.0 and d.detail


@pytest.mark.parametrize("seed", range(3))
def test_planted_bug_kind_holds_across_seeds(seed):
    for label, (make, want) in BUGS.items():
        m = make(bug=True, seed=seed)
        kinds = _failing_kinds(gradprobe.check(m.loss, m.grad, m.params))
        assert {k: v for k, v in kinds.items() if want.get(k)} == {
            k: v for k, v in want.items() if v
        }, (label, kinds)


def test_unused_names_the_entries_the_forward_pass_never_reads():
    m = padded_embedding(bug=True)
    d = gradprobe.check(m.loss, m.grad, m.params).params["E"].diagnosis
    assert d.evidence["n_unused"] == d.evidence["n_failing"] == 5  # row 0, every column
    assert d.evidence["first_index"][0] == [0, 0]
    assert "does not depend on these entries" in d.detail


def test_unused_judges_numeric_zero_against_the_round_off_floor():
    # The forward pass leaks 1e-12 of the masked weights: their numeric gradient is tiny but
    # not exactly 0, far under its allowance; the analytic one is O(0.1).
    m = masked_linear(bug=True, leak=1e-12)
    report = gradprobe.check(m.loss, m.grad, m.params)
    d = report.params["W"].diagnosis
    assert d.kind == "unused" and d.evidence["n_unused"] == d.evidence["n_failing"] > 10, d


def _entries(a, n, kink=None):
    a, n = np.asarray(a, float), np.asarray(n, float)
    size = a.size
    return EntryResults(
        flat_index=np.arange(size),
        analytic=a,
        numeric=n,
        abs_error=np.abs(a - n),
        rel_error=np.abs(a - n) / np.maximum(1e-300, np.abs(a) + np.abs(n)),
        allowed=np.full(size, 1e-9),
        passed=np.abs(a - n) <= 1e-9,
        kink=np.zeros(size, bool) if kink is None else np.asarray(kink),
        step=np.full(size, 1e-6),
    )


def test_mismatch_start_is_the_largest_relative_error_with_a_margin():
    e = {
        "A": _entries([1.0, 2.0], [1.0, 1.0]),  # ||a - n|| / ||n|| = 1 / sqrt(2)
        "B": _entries([3.0, 0.0], [1.0, 0.0]),  # 2
        "D": _entries([5.0], [1.0], kink=[True]),  # only a kink: no usable entry
        "E": _entries([2.0, 2.0], [1.0, 1.0]),  # 1
    }
    start, errors = rank_failing(e, ["A", "B", "D", "E"])
    assert start == "B"
    assert errors["A"] == pytest.approx(2**-0.5) and np.isnan(errors["D"])
    assert relative_error(e["B"]) == pytest.approx(2.0)
    # n == 0 where a is not: infinitely wrong, first.
    e["C"] = _entries([1.0], [0.0])
    assert rank_failing(e, ["A", "B", "C", "D", "E"])[0] == "C"
    # Within 1% of the largest is a tie, broken towards the loss (the last listed).
    e["F"] = _entries([2.99, 0.0], [1.0, 0.0])  # 1.99, within 1% of B's 2
    assert rank_failing(e, ["A", "B", "D", "E", "F"])[0] == "F"
    assert rank_failing(e, ["A", "F", "D", "E", "B"])[0] == "B"
    assert rank_failing(e, ["D"])[0] == "D"


def test_shifted_reports_axis_and_offset():
    pos = gradprobe.check(*_args(positional(bug=True))).params["P"].diagnosis
    assert (pos.evidence["axis"], pos.evidence["offset"]) == (0, 1)
    conv = gradprobe.check(*_args(padded_conv(bug=True))).params["K"].diagnosis
    assert (conv.evidence["axis"], conv.evidence["offset"]) == (2, 1)
    assert "off" in conv.detail and "padding" in conv.detail


def test_shifted_is_confirmed_by_evaluation_when_the_sample_holds_no_pair():
    # 24 of P's 2048 entries checked one by one: no checked pair shows the offset, so the
    # blind candidates (+-1 along each axis) are tried at a few evaluated positions.
    m = positional(bug=True, T=64, d=32)
    report = gradprobe.check(m.loss, m.grad, m.params, samples={"P": 24}, probes=0)
    d = report.params["P"].diagnosis
    assert (d.kind, d.evidence["axis"], d.evidence["offset"]) == ("shifted", 0, 1), d
    assert d.evidence["n_confirmed"] >= 3


def test_partial_factor_reports_rows_and_factors():
    m = bag_of_words(bug=True)
    d = gradprobe.check(m.loss, m.grad, m.params).params["E"].diagnosis
    assert d.evidence["axis"] == 0
    assert set(d.evidence["factors"]) == {"1/2", "1/3"}
    assert all(len(rows) == 4 for rows in d.evidence["factors"].values())  # one per sequence
    assert "np.add.at" in d.detail and "appears 2, 3 times" in d.detail, d.detail
    cols = bag_of_words(bug=True, columns=True)
    dc = gradprobe.check(cols.loss, cols.grad, cols.params).params["E"].diagnosis
    assert (dc.kind, dc.evidence["axis"]) == ("partial-factor", 1)
    assert dc.evidence["factors"] == d.evidence["factors"]


def test_confined_names_the_rows_or_columns():
    d = gradprobe.check(*_args(folded_bias(bug=True))).params["Wb"].diagnosis
    assert (d.evidence["axis"], d.evidence["rows"]) == (0, [8])
    assert "rows [8]" in d.detail
    d = gradprobe.check(*_args(objectness_head(bug=True))).params["V"].diagnosis
    assert (d.evidence["axis"], d.evidence["columns"]) == (1, [4])


def _args(m: Model):
    return m.loss, m.grad, m.params
