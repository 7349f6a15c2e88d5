"""Parameter trees: nested dicts, lists, tuples, NamedTuples and dataclasses as ``params``.

The loss gets the same structure back, names are paths, and leaves that are not float arrays
are held fixed: passed as the very objects given, never perturbed, named in the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple

import joblib
import numpy as np
import pytest

import gradprobe
from gradprobe import InvalidInputError
from gradprobe.layout import normalize_gradient, normalize_params
from gradprobe.suites.config import load_suite
from gradprobe.suites.runner import run_check
from gradprobe.tree import unpacked_names

# ---------------------------------------------------------------------------------------------
# A small tanh network whose parameters are a nested dict of dicts of lists.

RNG = np.random.default_rng(3)
X = RNG.standard_normal((16, 4))
Y = RNG.standard_normal(16)


def net_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    layer = lambda n_in, n_out: {  # noqa: E731
        "W": rng.standard_normal((n_in, n_out)) / np.sqrt(n_in),
        "b": 0.1 * rng.standard_normal(n_out),
    }
    return {
        "encoder": {"layers": [layer(4, 5), layer(5, 3)]},
        "head": {"w": rng.standard_normal(3)},
    }


def _forward(p):
    hs = [X]
    for layer in p["encoder"]["layers"]:
        hs.append(np.tanh(hs[-1] @ layer["W"] + layer["b"]))
    return hs, hs[-1] @ p["head"]["w"] - Y


def net_loss(p):
    return float(0.5 * np.mean(_forward(p)[1] ** 2))


def net_grad(p, bug: float = 1.0):
    hs, r = _forward(p)
    dout = r / len(Y)
    dh = np.outer(dout, p["head"]["w"])
    layers = p["encoder"]["layers"]
    grads: list[dict] = [{} for _ in layers]
    for i in reversed(range(len(layers))):
        dz = dh * (1 - hs[i + 1] ** 2)
        grads[i] = {"W": hs[i].T @ dz, "b": dz.sum(axis=0)}
        dh = dz @ layers[i]["W"].T
    grads[1]["b"] = bug * grads[1]["b"]
    return {"encoder": {"layers": grads}, "head": {"w": hs[-1].T @ dout}}


NET_NAMES = [
    "encoder.layers[0].W",
    "encoder.layers[0].b",
    "encoder.layers[1].W",
    "encoder.layers[1].b",
    "head.w",
]


def leaves(tree):
    """Every numpy array in a tree, in order (for bit-exact snapshots)."""
    if isinstance(tree, np.ndarray):
        return [tree]
    if isinstance(tree, dict):
        return [a for v in tree.values() for a in leaves(v)]
    if isinstance(tree, (list, tuple)):
        return [a for v in tree for a in leaves(v)]
    if hasattr(tree, "__dataclass_fields__"):
        return [a for f in tree.__dataclass_fields__ for a in leaves(getattr(tree, f))]
    return []


def snapshot_tree(tree):
    return [(a.dtype, a.shape, a.tobytes()) for a in leaves(tree)]


# ---------------------------------------------------------------------------------------------


def test_nested_dict_of_dicts_of_lists_passes_with_path_names_and_the_same_structure():
    params = net_params()
    seen = []

    def loss(p):
        seen.append((type(p), type(p["encoder"]), type(p["encoder"]["layers"])))
        return net_loss(p)

    saved = snapshot_tree(params)
    report = gradprobe.check(loss, net_grad, params)
    assert report.passed, str(report)
    assert list(report.params) == NET_NAMES
    assert report.params["encoder.layers[0].W"].shape == (4, 5)
    assert set(seen) == {(dict, dict, list)}
    assert not any("held fixed" in w for w in report.warnings)
    assert snapshot_tree(params) == saved  # the caller's arrays, bit for bit
    # The JSON report is keyed by the paths.
    assert [p["name"] for p in json.loads(report.to_json())["params"]] == NET_NAMES


def test_planted_bug_in_one_nested_leaf_is_localized_to_its_path():
    params = net_params()
    report = gradprobe.check(net_loss, lambda p: net_grad(p, bug=1.5), params)
    assert not report.passed
    failing = [name for name, r in report.params.items() if not r.passed]
    assert failing == ["encoder.layers[1].b"]
    assert "encoder.layers[1].b" in str(report)


class Affine(NamedTuple):
    W: np.ndarray
    b: np.ndarray


def test_namedtuple_inside_a_dict_is_rebuilt_with_its_fields():
    rng = np.random.default_rng(1)
    params = {"layer": Affine(rng.standard_normal((3, 2)), rng.standard_normal(2)), "s": np.ones(2)}
    seen = set()

    def loss(p):
        seen.add(type(p["layer"]))
        z = X[:, :3] @ p["layer"].W + p["layer"].b  # attribute access, as written
        return float(np.sum(np.sin(z) * p["s"]))

    def grad(p):
        dz = np.cos(X[:, :3] @ p["layer"].W + p["layer"].b) * p["s"]
        s = np.sin(X[:, :3] @ p["layer"].W + p["layer"].b).sum(axis=0)
        return {"layer": Affine(W=X[:, :3].T @ dz, b=dz.sum(axis=0)), "s": s}

    report = gradprobe.check(loss, grad, params)
    assert report.passed, str(report)
    assert list(report.params) == ["layer.W", "layer.b", "s"]
    assert seen == {Affine}
    # The gradient may also be a plain tuple, or a dict keyed by the field names.
    as_tuple = gradprobe.check(
        loss, lambda p: {**grad(p), "layer": tuple(grad(p)["layer"])}, params
    )
    as_dict = gradprobe.check(
        loss, lambda p: {**grad(p), "layer": grad(p)["layer"]._asdict()}, params
    )
    assert as_tuple.passed and as_dict.passed


@dataclass(frozen=True)
class Linear:
    W: np.ndarray
    b: np.ndarray
    activation: str = "tanh"
    n_heads: int = 2


def linear_loss(m: Linear) -> float:
    assert isinstance(m, Linear) and m.activation == "tanh" and m.n_heads == 2
    return float(0.5 * np.sum((np.tanh(X @ m.W + m.b) - Y[:, None]) ** 2))


def linear_grad(m: Linear) -> Linear:
    h = np.tanh(X @ m.W + m.b)
    dz = (h - Y[:, None]) * (1 - h**2)
    return Linear(W=X.T @ dz, b=dz.sum(axis=0), activation="unused", n_heads=-1)


def test_dataclass_is_rebuilt_and_its_non_float_fields_are_held_fixed():
    rng = np.random.default_rng(2)
    model = Linear(rng.standard_normal((4, 2)), rng.standard_normal(2))
    report = gradprobe.check(linear_loss, linear_grad, model)
    assert report.passed, str(report)
    assert list(report.params) == ["W", "b"]
    assert "held fixed (not checked): activation (str), n_heads (int)." in report.warnings
    # Threads rebuild it the same way; the report does not depend on n_jobs.
    with joblib.parallel_config(backend="threading"):
        threaded = gradprobe.check(linear_loss, linear_grad, model, n_jobs=2)
    assert threaded.params["W"].max_rel_error == report.params["W"].max_rel_error


def softmax_loss(tree):
    p, labels = tree
    z = X @ p["W"] + p["b"]
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(labels)), labels]))


def softmax_grad(tree):
    p, labels = tree
    z = X @ p["W"] + p["b"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    dz = e / e.sum(axis=1, keepdims=True)
    dz[np.arange(len(labels)), labels] -= 1
    dz /= len(labels)
    return ({"W": X.T @ dz, "b": dz.sum(axis=0)},)  # the labels' entry left out


def test_tuple_of_params_and_integer_labels():
    rng = np.random.default_rng(4)
    p = {"W": rng.standard_normal((4, 3)), "b": np.zeros(3)}
    labels = rng.integers(0, 3, size=16)
    report = gradprobe.check(softmax_loss, softmax_grad, (p, labels))
    assert report.passed, str(report)
    assert list(report.params) == ["[0].W", "[0].b"]
    assert "held fixed (not checked): [1] (int64 array)." in report.warnings
    # None (or anything) in the labels' place is fine too.
    report = gradprobe.check(softmax_loss, lambda t: (*softmax_grad(t), None), (p, labels))
    assert report.passed


def test_fixed_leaves_are_the_very_objects_given_and_never_perturbed():
    labels = np.array([2, 0, 1, 1])
    mask = np.array([True, False, True, True])
    cfg = {"n": 3, "name": "tiny", "none": None, "eps": 0.5, "ids": [1, 2]}
    params = {"w": np.arange(1.0, 5.0), "labels": labels, "mask": mask, "cfg": cfg}
    saved = snapshot_tree(params)
    calls = []

    def loss(p):
        calls.append(1)
        # The same objects every call, with the same values.
        assert p["labels"] is labels and p["mask"] is mask and p["cfg"] is cfg
        assert snapshot_tree([p["labels"], p["mask"]]) == saved[1:]
        return float(np.sum(p["w"][p["mask"]] ** 2 * p["labels"][p["mask"]]))

    def grad(p):
        assert p["labels"] is labels and p["cfg"] is cfg
        return {"w": 2 * p["w"] * p["labels"] * p["mask"]}

    report = gradprobe.check(loss, grad, params)
    assert report.passed and len(calls) > 10
    assert list(report.params) == ["w"]
    assert (
        "held fixed (not checked): labels (int64 array), mask (bool array), cfg.n (int), "
        "cfg.name (str), cfg.none (NoneType), cfg.eps (float), cfg.ids[0] (int), "
        "cfg.ids[1] (int)."
    ) in report.warnings
    assert snapshot_tree(params) == saved
    assert cfg == {"n": 3, "name": "tiny", "none": None, "eps": 0.5, "ids": [1, 2]}


def test_batched_loss_gets_the_leading_axis_on_float_leaves_only():
    rng = np.random.default_rng(5)
    p = {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    labels = rng.integers(0, 3, size=16)

    def batched(tree):
        q, lab = tree
        assert lab is labels
        assert q["W"].ndim == 3 and q["b"].ndim == 2
        n = max(len(q["W"]), len(q["b"]))  # B for the perturbed parameter, 1 for the other
        return np.array(
            [
                softmax_loss(({"W": q["W"][i % len(q["W"])], "b": q["b"][i % len(q["b"])]}, lab))
                for i in range(n)
            ]
        )

    report = gradprobe.check(batched, softmax_grad, (p, labels), batched=True)
    assert report.passed, str(report)
    assert list(report.params) == ["[0].W", "[0].b"]


def test_gradient_missing_a_float_leaf_or_of_the_wrong_shape_names_the_path():
    params = net_params()

    def without_head_w(p):
        g = net_grad(p)
        del g["head"]["w"]
        return g

    with pytest.raises(InvalidInputError, match=r"grad at 'head': .*missing \['w'\]"):
        gradprobe.check(net_loss, without_head_w, params)

    def short_layers(p):
        g = net_grad(p)
        g["encoder"]["layers"].pop()
        return g

    with pytest.raises(
        InvalidInputError,
        match=r"grad at 'encoder.layers': expected 2 entries like params, found 1",
    ):
        gradprobe.check(net_loss, short_layers, params)

    def transposed(p):
        g = net_grad(p)
        g["encoder"]["layers"][1]["W"] = g["encoder"]["layers"][1]["W"].T
        return g

    with pytest.raises(
        InvalidInputError,
        match=r"gradient of 'encoder.layers\[1\].W': expected shape \(5, 3\).*found \(3, 5\)",
    ):
        gradprobe.check(net_loss, transposed, params)

    def none_for_encoder(p):
        return {**net_grad(p), "encoder": None}

    with pytest.raises(
        InvalidInputError, match=r"grad at 'encoder': expected a mapping .*NoneType"
    ):
        gradprobe.check(net_loss, none_for_encoder, params)

    def extra_key(p):
        return {**net_grad(p), "tail": np.zeros(2)}

    with pytest.raises(InvalidInputError, match=r"unexpected \['tail' \(str\)\]"):
        gradprobe.check(net_loss, extra_key, params)


def test_gradient_keyed_by_path_is_accepted():
    params = net_params()

    def by_path(p):
        g = net_grad(p)
        layers = g["encoder"]["layers"]
        return {
            **{f"encoder.layers[{i}].{k}": layers[i][k] for i in range(2) for k in ("W", "b")},
            "head.w": g["head"]["w"],
        }

    assert gradprobe.check(net_loss, by_path, params).passed


def test_samples_by_path_and_by_nested_mapping():
    params = net_params()
    report = gradprobe.check(
        net_loss, net_grad, params, samples={"encoder.layers[0].W": 3, "head": {"w": 2}}
    )
    assert report.params["encoder.layers[0].W"].n_checked == 3
    assert report.params["head.w"].n_checked == 2
    assert report.params["encoder.layers[1].b"].n_checked == 3  # the default: all of them
    with pytest.raises(InvalidInputError, match=r"unknown parameter names \['encoder.W'\]"):
        gradprobe.check(net_loss, net_grad, params, samples={"encoder": {"W": 3}})


def test_float32_leaf_in_a_tree_and_promote():
    rng = np.random.default_rng(6)
    params = {
        "a": {"w32": rng.standard_normal(5).astype(np.float32), "w64": rng.standard_normal(3)}
    }

    def loss(p):
        return float(np.sum(p["a"]["w32"].astype(np.float64) ** 2) + np.sum(np.sin(p["a"]["w64"])))

    def grad(p):
        return {"a": {"w32": 2 * p["a"]["w32"].astype(np.float64), "w64": np.cos(p["a"]["w64"])}}

    saved = snapshot_tree(params)
    report = gradprobe.check(loss, grad, params)
    assert report.passed, str(report)
    assert report.params["a.w32"].dtype == "float32" and report.params["a.w64"].dtype == "float64"
    assert any("['a.w32'] are float32" in w for w in report.warnings)
    promoted = gradprobe.check(loss, grad, params, promote=True)
    assert promoted.passed and promoted.params["a.w32"].dtype == "float64"
    assert snapshot_tree(params) == saved


def test_a_loss_writing_into_a_held_leaf_is_refused_by_the_preflight():
    labels = np.array([1, 2, 3])

    def loss(p):
        p["labels"][0] += 1  # the caller's own array: gradprobe can only report it
        return float(np.sum(p["w"] ** 2))

    with pytest.raises(InvalidInputError, match=r"loss: expected it to leave .*\['labels'\]"):
        gradprobe.check(loss, lambda p: {"w": 2 * p["w"]}, {"w": np.ones(2), "labels": labels})


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (np.arange(3), r"parameter 'x': expected a floating-point dtype, found int64; convert"),
        (
            {"ids": np.arange(3), "n": 2},
            r"parameter 'ids': expected a floating-point dtype.* only leaves held fixed: "
            r"ids \(int64 array\), n \(int\)",
        ),
        (
            {"cfg": {"n": 2, "name": "x"}, "scale": 1.5},
            r"params: expected at least one floating-point array to check, found only leaves "
            r"held fixed: cfg.n \(int\), cfg.name \(str\), scale \(float\)",
        ),
        ({"a": {"b": np.ones(2)}, "a.b": np.ones(2)}, r"found two named 'a.b'"),
        ({"w": np.ones(2), "z": np.ones(2, dtype=complex)}, r"parameter 'z': expected a floating"),
        ({"layers": {0: np.ones(2)}}, r"expected string keys .* key 0 of type int at 'layers'"),
    ],
)
def test_trees_without_a_float_leaf_or_with_bad_leaves_are_refused(params, match):
    with pytest.raises(InvalidInputError, match=match):
        gradprobe.check(lambda p: 0.0, lambda p: p, params)


def test_a_tree_containing_itself_is_refused():
    params: dict = {"w": np.ones(2), "sub": []}
    params["sub"].append(params["sub"])
    with pytest.raises(InvalidInputError, match=r"'sub\[0\]' containing itself"):
        gradprobe.check(lambda p: 0.0, lambda p: p, params)


TREE_MODELS = """
import numpy as np
import gradprobe

def tree():
    rng = np.random.default_rng(0)
    params = {"enc": [{"W": rng.standard_normal((3, 4))}], "head": {"w": rng.standard_normal(4)}}

    def loss(p):
        return float(np.sum(np.sin(p["enc"][0]["W"])) + np.sum(p["head"]["w"] ** 2))

    def grad(p):
        return {"enc": [{"W": np.cos(p["enc"][0]["W"])}], "head": {"w": 2 * p["head"]["w"]}}

    return gradprobe.Problem(loss=loss, grad=grad, params=params)
"""


def test_suite_samples_table_keyed_by_path(tmp_path):
    (tmp_path / "tree_models.py").write_text(TREE_MODELS)
    (tmp_path / "gradprobe.toml").write_text(
        '[checks.tree]\ntarget = "tree_models.py:tree"\nisolate = false\n'
        'samples = { "enc[0].W" = 5, head.w = 2 }\n'
    )
    outcome = run_check(load_suite(tmp_path).checks[0])
    assert outcome.status == "passed", outcome
    assert outcome.report.params["enc[0].W"].n_checked == 5
    assert outcome.report.params["head.w"].n_checked == 2


def test_a_gradient_for_a_held_float_scalar_is_refused_and_object_arrays_are_held():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3, 2))

    def loss(p):
        return float(np.sum(p["W"] ** 2) * p["b"])

    def grad(p, db=999.0):
        return {"W": 2 * p["W"] * p["b"], "b": db}

    params = {"W": W, "b": 0.5}
    with pytest.raises(gradprobe.InvalidInputError, match=r"'b'.*np.array"):
        gradprobe.check(loss, grad, params)
    # The held value passed through, or zero, is no gradient of its own: accepted.
    for db in (0.5, 0.0, None):
        report = gradprobe.check(loss, lambda p, db=db: grad(p, db), params)
        assert report.passed and list(report.params) == ["W"]
    meta = np.array(["a", None], dtype=object)
    report = gradprobe.check(
        lambda p: float(np.sum(p["W"] ** 2)), lambda p: {"W": 2 * p["W"]}, {"W": W, "meta": meta}
    )
    assert report.passed and any("meta" in w for w in report.warnings)


def _cast(tree, dtype):
    if isinstance(tree, np.ndarray):
        return tree.astype(dtype)
    if isinstance(tree, dict):
        return {k: _cast(v, dtype) for k, v in tree.items()}
    return [_cast(v, dtype) for v in tree]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tree_checks_at_20_seeds_pass_when_correct_and_localize_a_bug(dtype):
    for seed in range(20):
        params = _cast(net_params(seed), dtype)
        report = gradprobe.check(net_loss, net_grad, params, seed=seed)
        assert report.passed, f"seed {seed}:\n{report}"
        buggy = gradprobe.check(net_loss, lambda p: net_grad(p, bug=1.5), params, seed=seed)
        failing = [name for name, r in buggy.params.items() if not r.passed]
        assert failing == ["encoder.layers[1].b"], f"seed {seed}:\n{buggy}"
        assert buggy.params["encoder.layers[1].b"].bad_indices  # localized to its entries


# ---------------------------------------------------------------------------------------------
# A flat tuple of parameters named as the loss unpacks it.


def _unpacking_loss(params):
    """Least squares; the tuple is unpacked on the second line of the body."""
    X2 = X[:, :2]
    W, b = params
    return float(np.sum((X2 @ W + b - Y) ** 2))


def _unpacking_grad(params):
    W, b = params
    r = 2 * (X[:, :2] @ W + b - Y)
    return X[:, :2].T @ r, np.array(r.sum())


class _Model:
    def loss(self, p):
        first, second, third = p
        return first + second + third


def test_unpacked_names_are_the_names_the_function_unpacks_its_first_argument_into():
    assert unpacked_names(_unpacking_loss, 2) == ["W", "b"]
    assert unpacked_names(_Model().loss, 3) == ["first", "second", "third"]  # self skipped

    def closure(q):
        [a, c] = q
        return a + c

    assert unpacked_names(closure, 2) == ["a", "c"]


def _repeated(p):
    a, a = p
    return a


def _underscore(p):
    a, _ = p
    return a


def _starred(p):
    a, *rest = p
    return a + sum(rest)


def _unpacks_something_else(p, q):
    a, b = q
    return a + b


@pytest.mark.parametrize(
    "fn",
    [_repeated, _underscore, _starred, _unpacks_something_else, lambda p: p[0], max, len],
    ids=["repeated", "underscore", "starred", "other-argument", "lambda", "builtin", "len"],
)
def test_unpacked_names_gives_none_where_the_function_gives_no_names(fn):
    assert unpacked_names(fn, 2) is None


def test_unpacked_names_needs_the_count_of_the_params():
    assert unpacked_names(_unpacking_loss, 3) is None


def test_a_flat_tuple_is_named_as_the_loss_unpacks_it():
    params = (np.ones((2, 1)), np.zeros(1))
    layout, _, _ = normalize_params(params, _unpacking_loss)
    assert layout.names == ("W", "b")
    assert layout.pack([np.ones((2, 1)), np.zeros(1)])[1].shape == (1,)  # still a tuple
    assert normalize_params(list(params), _unpacking_loss)[0].names == ("W", "b")
    # Without a loss, or with one that gives no names: by position, as before.
    assert normalize_params(params)[0].names == ("0", "1")
    assert normalize_params(params, lambda p: 0.0)[0].names == ("0", "1")
    # A gradient keyed by the new names or by the positions matches.
    grads = (np.full((2, 1), 3.0), np.full(1, 4.0))
    for keyed in ({"W": grads[0], "b": grads[1]}, {"0": grads[0], "1": grads[1]}, grads):
        got = normalize_gradient(layout, keyed)
        assert [g.tolist() for g in got] == [[[3.0], [3.0]], [4.0]]


def test_check_names_a_tuple_of_params_as_the_loss_unpacks_it():
    params = (0.1 * RNG.standard_normal((2, 1)).ravel(), np.array(0.3))
    report = gradprobe.check(_unpacking_loss, _unpacking_grad, params)
    assert report.passed, str(report)
    assert list(report.params) == ["W", "b"]
