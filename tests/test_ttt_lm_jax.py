"""The follow-up paper's TTT-Linear / TTT-MLP (test-time-training/ttt-lm-jax) as declarations.

`from_ttt_lm_jax` loads a peer layer's flax parameters into a `TTTLayer` built from the spec's general
options (MultiView task, Inner.chunk_factor, SequenceMaps, Readout, ResidualLN learners); the fixtures in
tests/fixtures/ttt_lm_jax_*.npz are the peer's own outputs with every parameter moved off its init (see
tests/fixtures/ttt_lm_jax.md).  `dual_form` must apply to all four kinds and keep values and outer
gradients (float64, NumPy evaluation)."""

import contextlib
import io
import json
import os
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

import ttt_compile as tc
from ttt_compile.layer.spec import SpecError
from ttt_compile.layer.ttt_lm_jax import KINDS, from_ttt_lm_jax, ttt_lm_jax_layer
from ttt_compile.validate import relative_error

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
META = json.loads((FIXTURES / "ttt_lm_jax.json").read_text())


def _load(name):
    data = np.load(FIXTURES / f"ttt_lm_jax_{name}.npz")
    params = {k[len("params/") :]: data[k] for k in data.files if k.startswith("params/")}
    return params, data, META["cases"][name]


def _convert(params, case):
    return from_ttt_lm_jax(
        params,
        kind=case["kind"],
        width=case["width"],
        heads=case["heads"],
        mini_batch_size=case["mini_batch_size"],
        base_lr=case["base_lr"],
        rope_theta=case["rope_theta"],
        conv_width=case["conv_width"],
    )


@pytest.mark.parametrize("name", sorted(META["cases"]))
def test_converted_layer_equals_the_peer_uncompiled_and_compiled(name):
    params, data, case = _load(name)
    layer = _convert(params, case)
    x, want = jnp.asarray(data["x"][0]), data["y"][0]
    assert x.dtype == jnp.float32
    assert relative_error(jax.jit(lambda x: layer(x))(x), want) <= 1e-5
    prog = tc.compile(layer, x, passes="default")
    assert relative_error(prog(x), want) <= 1e-5
    dual = " ".join(n for stage, ns in prog.notes if stage == "dual_form" for n in ns)
    matrices = "W 64x16, W 16x64" if case["kind"].startswith("mlp") else "W 16x16"
    assert f"dual form for {matrices} (b={case['mini_batch_size']})" in dual


def _perturbed(layer, key):
    """Every float leaf moved off its init (learned token offset, LNs, biases, gate and convs included)."""
    leaves, tree = jax.tree_util.tree_flatten(layer)
    keys = jax.random.split(key, len(leaves))
    moved = [
        a + 0.3 * jax.random.normal(k, a.shape, a.dtype)
        if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating)
        else a
        for a, k in zip(leaves, keys)
    ]
    return jax.tree_util.tree_unflatten(tree, moved)


@pytest.mark.parametrize("kind", KINDS)
def test_dual_form_keeps_values_and_outer_gradients_of_every_kind_float64(kind):
    with jax.enable_x64(True):
        layer = _perturbed(
            ttt_lm_jax_layer(kind=kind, width=8, heads=2, mini_batch_size=4, key=jax.random.PRNGKey(3)),
            jax.random.PRNGKey(4),
        )
        x = jax.random.normal(jax.random.PRNGKey(5), (12, 8))
        prog = tc.compile(layer, x, passes=["dual_form", "lower"])
        notes = " ".join(n for stage, ns in prog.notes if stage == "dual_form" for n in ns)
        assert "dual form for" in notes, notes
        v = np_eval.compare(layer, prog, x)
        assert v.value_error <= 1e-10 and v.grad_error <= 1e-9, v
        v = np_eval.validate(layer, x, passes="default")
        assert v.value_error <= 1e-10 and v.grad_error <= 1e-9, v


def test_a_params_dict_of_the_wrong_kind_or_width_names_the_parameter():
    params, _, case = _load("linear")
    args = dict(width=case["width"], heads=case["heads"], mini_batch_size=case["mini_batch_size"])
    with pytest.raises(SpecError, match=r"no 'ttt_dense_1'.*looks like kind='linear'"):
        from_ttt_lm_jax(params, kind="mlp", **args)
    with pytest.raises(SpecError, match=r"no 'wk/kernel'"):
        from_ttt_lm_jax(params, kind="linear_base", **args)
    with pytest.raises(SpecError, match=r"'wq/kernel' has shape \(64, 64\), expected \(32, 32\)"):
        from_ttt_lm_jax(params, kind="linear", **{**args, "width": 32})
    with pytest.raises(SpecError, match="kind must be one of"):
        from_ttt_lm_jax(params, kind="transformer", **args)


def test_the_new_options_are_checked_where_they_are_declared():
    with pytest.raises(SpecError, match="chunk_factor.*needs batching='online'"):
        tc.Inner(chunk_factor="inverse")
    with pytest.raises(SpecError, match="rope_period needs rope_theta"):
        tc.SequenceMaps(rope_period=4)
    with pytest.raises(SpecError, match="d_h = dim/heads must be even"):
        tc.TTTLayer(6, 2, tc.learners.Linear(3), sequence=tc.SequenceMaps(rope_theta=100.0), key=jax.random.PRNGKey(0))
    with pytest.raises(SpecError, match="outer_per_head=True needs `outer`"):
        tc.TTTLayer(8, 2, tc.learners.Linear(4), outer_per_head=True, key=jax.random.PRNGKey(0))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_the_layer_is_causal_with_its_convolutions_and_positions(kind):
    layer = _perturbed(
        ttt_lm_jax_layer(kind=kind, width=8, heads=2, mini_batch_size=4, key=jax.random.PRNGKey(3)),
        jax.random.PRNGKey(4),
    )
    x = jax.random.normal(jax.random.PRNGKey(5), (12, 8))
    t = 6  # inside the second chunk
    y = layer(x)
    y2 = layer(x.at[t].add(1.0))
    np.testing.assert_array_equal(np.asarray(y[:t]), np.asarray(y2[:t]))
    assert float(jnp.max(jnp.abs(y[t:] - y2[t:]))) > 1e-3


def test_a_learner_the_peer_cannot_run_gets_its_dual_form_derived():
    import importlib.util

    path = pathlib.Path(__file__).parents[1] / "examples" / "deep_residual_learner.py"
    spec = importlib.util.spec_from_file_location("deep_residual_learner", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with jax.enable_x64(True):
        layer = _perturbed(mod.make_layer(dim=8, heads=2, chunk=4, key=jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
        x = jax.random.normal(jax.random.PRNGKey(2), (8, 8))
        prog = tc.compile(layer, x, passes="default")
        notes = " ".join(n for stage, ns in prog.notes if stage == "dual_form" for n in ns)
        assert "dual form for W 16x4, W 16x16, W 4x16 (b=4)" in notes, notes
        v = np_eval.compare(layer, prog, x)
        assert v.value_error <= 1e-10 and v.grad_error <= 1e-9, v


def _loop_bodies(jaxpr):
    for e in jaxpr.eqns:
        if e.primitive.name == "ttt_loop":
            yield e.params["body"]
        for sub in jax.extend.core.jaxprs_in_params(e.params):
            yield from _loop_bodies(getattr(sub, "jaxpr", sub))


@pytest.mark.parametrize("kind", ["linear_base", "mlp_base"])
def test_the_dual_form_step_saves_no_matrix_but_the_carried_weights(kind):
    """The outer gradient of a dual-form chunk step stores, of matrix-sized values, only the chunk-start
    weights W it carries: the learned chunk factor a_b scales a per-token operand of the carry
    W + s a_b E^T K (not the matrix), and the chunk-start W the outputs read is W itself (not a copy
    through broadcast and squeeze).  Each matrix-sized residual is stored once per step of the scan."""
    width, heads = 32, 2
    layer = ttt_lm_jax_layer(kind=kind, width=width, heads=heads, mini_batch_size=4, key=jax.random.PRNGKey(3))
    x = jax.random.normal(jax.random.PRNGKey(5), (16, width))
    prog = tc.compile(layer, x, passes=["dual_form", "simplify"])
    simplified = {name: jaxpr for name, jaxpr, _ in prog.pipeline}["simplify"]  # before lower makes scans
    (body,) = _loop_bodies(simplified.jaxpr)
    dh = width // heads
    matrices = {(dh, dh)} if kind.startswith("linear") else {(dh, 4 * dh), (4 * dh, dh)}
    args = [0.1 + jnp.zeros(v.aval.shape, v.aval.dtype) for v in body.jaxpr.invars]

    def loss(*args):
        return sum(jnp.sum(jnp.sin(o)) for o in jax.extend.core.jaxpr_as_fun(body)(*args))

    printed = io.StringIO()  # JAX's public residual listing: one "f32[a,b,c] <why it is saved>" per line
    with contextlib.redirect_stdout(printed):
        print_saved_residuals(loss, *args)
    stored = [
        line
        for line in printed.getvalue().splitlines()
        if tuple(int(d) for d in re.match(r"\w+\[([\d,]*)\]", line).group(1).split(",") if d)[-2:] in matrices
        and "of cos" not in line  # the loss's own
    ]
    assert len(stored) == len(matrices) and all("argument" in why for why in stored), stored
