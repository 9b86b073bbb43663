"""The reference layer, the ttt_loop IR, tc.compile and its errors."""

import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ttt_compile as tc
from ttt_compile.ir.primitive import contains_loop, ttt_loop_p
from ttt_compile.models import layers

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402

KEY = jax.random.PRNGKey(0)
X = jax.random.normal(jax.random.PRNGKey(1), (16, 24))


def _loops(closed):
    return [e for e in closed.jaxpr.eqns if e.primitive is ttt_loop_p]


def test_trace_emits_one_ttt_loop_per_layer_and_plain_path_does_not():
    layer = layers.mttt_mlp(dim=24, heads=3, key=KEY, steps=3)
    closed, *_ = tc.compiler.trace(layer, X)
    (eqn,) = _loops(closed)
    assert (eqn.params["steps"], eqn.params["schedule"], eqn.params["init"]) == (3, "full", "learned")
    text = str(closed)
    assert "ttt_loop" in text and "steps=3" in text and "schedule=full" in text and "init=learned" in text
    assert not contains_loop(jax.make_jaxpr(layer)(X))  # the reference path never emits it


def test_unlowered_program_runs_under_jit_vmap_and_grad():
    layer = layers.mttt_mlp(dim=24, heads=3, key=KEY, steps=2, batching="sgd")
    prog = tc.compile(
        layer,
        X,
        passes=["unroll"],
    )  # unroll only: no loop left
    assert not contains_loop(prog.jaxpr)
    closed, *_ = tc.compiler.trace(layer, X)
    f = jax.extend.core.jaxpr_as_fun(closed)
    leaves = jax.tree_util.tree_leaves(eqx.filter(layer, eqx.is_inexact_array))
    ref = layer(X)
    np.testing.assert_allclose(jax.jit(f)(*leaves, X)[0], ref, rtol=1e-5, atol=1e-5)
    xb = jnp.stack([X, 2 * X])
    batched = jax.vmap(lambda x: f(*leaves, x)[0])(xb)  # the batching rule
    np.testing.assert_allclose(batched, jax.vmap(layer)(xb), rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda x: jnp.sum(f(*leaves, x)[0]))(X)  # the jvp rule (via the impl)
    np.testing.assert_allclose(g, jax.grad(lambda x: jnp.sum(layer(x)))(X), rtol=1e-4, atol=1e-5)


def test_compiled_is_a_trainable_module():
    layer = layers.mttt_linear(dim=24, heads=3, key=KEY)
    prog = tc.compile(layer, X)
    opt = optax.adam(1e-2)
    state = opt.init(eqx.filter(prog, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(m, state):
        loss, g = eqx.filter_value_and_grad(lambda m: jnp.mean((m(X) - X) ** 2))(m)
        updates, state = opt.update(g, state)
        return eqx.apply_updates(m, updates), state, loss

    losses = []
    for _ in range(20):
        prog, state, loss = step(prog, state)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]
    out = jax.vmap(prog)(jnp.stack([X, X]))  # vmappable over a batch
    assert out.shape == (2, 16, 24)


def test_stages_report_and_costs():
    prog = tc.compile(layers.mttt_linear(dim=24, heads=3, key=KEY), X, passes=["unroll", "dce"])
    names = [s[0] for s in prog.stages]
    assert names == ["trace", "unroll", "dce"]
    for _, _closed, cost in prog.stages:
        assert cost.flops > 0 and cost.eqns > 0 and cost.temp_bytes >= 0
    rep = prog.report()
    assert "FLOPs" in rep and "did not apply" in rep  # dce had nothing to do and says so


def test_lower_is_appended_when_a_loop_remains():
    prog = tc.compile(layers.mttt_linear(dim=24, heads=3, key=KEY), X, passes="none")
    assert [s[0] for s in prog.stages] == ["trace", "lower"] and not contains_loop(prog.jaxpr)


@pytest.mark.parametrize("batching", ["full", "sgd"])
def test_unroll_equals_scan(batching):
    layer = layers.mttt_mlp(dim=24, heads=3, key=KEY, steps=4, batching=batching, lr=0.1)
    a = tc.compile(layer, X, passes=["unroll"])
    b = tc.compile(layer, X, passes=["lower"])
    assert "scan" in str(b.jaxpr) and "scan" not in str(a.jaxpr)
    np.testing.assert_allclose(a(X), b(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batching", ["full", "sgd"])
@pytest.mark.parametrize("preset", [layers.mttt_linear, layers.mttt_mlp])
def test_inner_loop_learns(batching, preset):
    layer = preset(dim=24, heads=3, key=KEY, steps=4, batching=batching, lr=0.03, init="learned")
    losses = np.asarray(layer.inner_losses(X))  # (heads, T + 1)
    assert losses.shape == (3, 5)
    assert np.all(losses[:, -1] < losses[:, 0])
    if batching == "full":
        assert np.all(np.diff(losses, axis=1) < 0)  # full-batch GD with a small step descends


def test_nesting_inside_jit_and_checkpoint():
    class Model(eqx.Module):
        a: tc.TTTLayer
        b: tc.TTTLayer

        def __call__(self, x):
            x = x + eqx.filter_jit(self.a)(x)
            return x + jax.checkpoint(lambda m, x: m(x))(self.b, x)

    k1, k2 = jax.random.split(KEY)
    model = Model(layers.mttt_linear(dim=24, heads=3, key=k1), layers.mttt_mlp(dim=24, heads=3, key=k2, steps=2))
    closed, *_ = tc.compiler.trace(model, X)
    assert contains_loop(closed)
    for passes in ("default", "none"):
        prog = tc.compile(model, X, passes=passes)
        assert not contains_loop(prog.jaxpr)
        v = np_eval.compare(model, prog, X)
        assert v.ok(1e-4), (passes, v)


def test_custom_learner_example():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "examples" / "residual_learner.py"
    assert len(path.read_text().splitlines()) < 30
    spec = importlib.util.spec_from_file_location("residual_learner", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    layer = mod.make_layer(dim=24, heads=3, key=KEY)
    assert tc.validate.validate(layer, X, "default").ok(1e-4)


# ------------------------------------------------------------------ bad input: one clear error each
def test_wrong_token_dim():
    with pytest.raises(ValueError, match=r"dim=24.*build the layer with dim=20"):
        layers.mttt_linear(dim=24, heads=3, key=KEY)(jnp.ones((16, 20)))


def test_heads_not_dividing_dim():
    with pytest.raises(tc.SpecError, match=r"heads=5 must divide dim=24"):
        layers.mttt_linear(dim=24, heads=5, key=KEY)


def test_steps_not_dividing_n_for_sgd():
    layer = layers.mttt_mlp(dim=24, heads=3, key=KEY, steps=5, batching="sgd")
    with pytest.raises(tc.SpecError, match=r"steps=5 must divide the sequence length n=16"):
        layer(X)


def test_unknown_pass():
    with pytest.raises(tc.SpecError, match=r"unknown pass 'fold_zeros'.*available passes"):
        tc.compile(layers.mttt_linear(dim=24, heads=3, key=KEY), X, passes=["fold_zeros"])


def test_learner_without_array_leaves():
    class Identity(eqx.Module):
        def __call__(self, z):
            return z

    with pytest.raises(tc.SpecError, match=r"no float array leaves"):
        tc.TTTLayer(24, 3, Identity(), key=KEY)


def test_learner_with_wrong_shape():
    with pytest.raises(tc.SpecError, match=r"must map"):
        tc.TTTLayer(24, 3, tc.learners.Linear(4, key=KEY), init="learned", key=KEY)


def test_non_float_tokens():
    with pytest.raises(TypeError, match=r"float array.*astype"):
        layers.mttt_linear(dim=24, heads=3, key=KEY)(jnp.ones((16, 24), jnp.int32))


def test_bad_inner_spec_and_options():
    with pytest.raises(tc.SpecError, match="batching"):
        tc.Inner(batching="minibatch")
    with pytest.raises(tc.SpecError, match="optax"):
        tc.Inner(optimizer="sgd")
    with pytest.raises(tc.SpecError, match=r"unknown option\(s\) \['stepz'\]"):
        layers.mttt_mlp(dim=24, heads=3, key=KEY, stepz=2)


def test_compiled_called_with_other_shape():
    prog = tc.compile(layers.mttt_linear(dim=24, heads=3, key=KEY), X)
    with pytest.raises(ValueError, match="compile again"):
        prog(jnp.ones((8, 24)))


def test_cost_counts_loop_trip_counts():
    """XLA counts a while body once; Cost multiplies it by the trip count (hand count and unrolled)."""

    def scanned(W, xs):
        return jax.lax.scan(lambda c, x: (c @ x, None), W, xs)[0]

    W, xs = jnp.ones((32, 32)), jnp.ones((8, 32, 32))
    assert tc.cost.of(scanned, W, xs).flops == pytest.approx(8 * 2 * 32**3, rel=1e-3)
    layer = layers.mttt_mlp(dim=24, heads=3, key=KEY, steps=4)
    looped = tc.compile(layer, X, passes=["lower"]).stages[-1][2]
    unrolled = tc.compile(layer, X, passes=["unroll"]).stages[-1][2]
    assert looped.flops == pytest.approx(unrolled.flops, rel=0.02)
    one = tc.compile(layers.mttt_mlp(dim=24, heads=3, key=KEY, steps=1), X, passes=["lower"]).stages[-1][2]
    assert looped.flops > 2 * one.flops  # T=4 is not reported as T=1
