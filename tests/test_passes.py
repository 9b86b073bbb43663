"""Each pass: the exact rewrite on a tiny jaxpr, its 'did not apply' note, and translation
validation (values and outer gradients) of every pass and pipeline over random layer specs."""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ttt_compile as tc
from ttt_compile import passes as P
from ttt_compile.ir.primitive import contains_loop, ttt_loop_p
from ttt_compile.layer.spec import SpecError
from ttt_compile.models import layers

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402

KEY = jax.random.PRNGKey(0)


def prims(closed):
    return [e.primitive.name for e in closed.jaxpr.eqns]


def run(pass_fn, closed):
    with P.collecting_notes() as notes:
        out = pass_fn(closed)
    return out, notes


def agree(a, b, *args):
    fa, fb = jax.extend.core.jaxpr_as_fun(a), jax.extend.core.jaxpr_as_fun(b)
    for x, y in zip(fa(*args), fb(*args)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def toy_loop(steps, schedule="full", init="zero"):
    """A ttt_loop with fast weights W (3x3): W <- W - 0.1 * grad 1/2||W k - x||^2, then W q."""

    def layer(k, q, x):
        def step(consts, carry, xt):
            kk, xx = consts if xt is None else xt
            (W,) = carry
            g = jax.grad(lambda W: 0.5 * jnp.sum((kk @ W.T - xx) ** 2))(W)
            return (W - 0.1 * g,), None

        xs = None if schedule == "full" else (k.reshape(steps, -1, 3), x.reshape(steps, -1, 3))
        consts = (k, x) if schedule == "full" else ()
        (W,), _ = tc.ttt_loop(
            step, consts, (jnp.zeros((3, 3)),), xs, steps=steps, schedule=schedule, init=init, num_weights=1
        )
        return q @ W.T

    args = [jax.random.normal(jax.random.PRNGKey(i), (4, 3)) for i in range(3)]
    with tc.emitting():
        return jax.make_jaxpr(layer)(*args), args


# ------------------------------------------------------------------ exact rewrites on tiny jaxprs
def test_fold_zero_init_rewrite():
    closed = jax.make_jaxpr(lambda x, A: (jnp.zeros(3) * x + x, jnp.zeros((2, 3)) @ x + A @ x))(
        jnp.ones(3), jnp.ones((2, 3))
    )
    out, notes = run(P.fold_zero_init, closed)
    assert "mul" in prims(closed) and "mul" not in prims(out)
    assert prims(out).count("dot_general") == 1  # dot with zeros is gone
    assert out.jaxpr.outvars[0] is out.jaxpr.invars[0]  # 0*x + x  ->  x
    assert any("assumes finite values" in n for n in notes)
    agree(closed, out, jnp.arange(3.0), jnp.ones((2, 3)))


def test_fold_zero_init_peels_the_first_step_of_a_zero_init_loop():
    closed, args = toy_loop(3)
    out, _ = run(P.fold_zero_init, closed)
    (eqn,) = [e for e in out.jaxpr.eqns if e.primitive is ttt_loop_p]
    assert (eqn.params["steps"], eqn.params["init"]) == (2, "learned")
    agree(closed, out, *args)
    _, notes = run(P.fold_zero_init, toy_loop(3, init="learned")[0])
    # the toy still starts from a jnp.zeros literal: folded as a known zero, and said so
    assert notes and "folded" in notes[0]


def test_fold_zero_init_keeps_a_loop_longer_than_max_peel_steps_whole():
    """Past max_peel_steps the loop is not peeled (its xs are not sliced): same steps, still init='zero'."""
    closed, args = toy_loop(4, schedule="online")
    out, notes = run(functools.partial(P.fold_zero_init, max_peel_steps=3), closed)
    (eqn,) = [e for e in out.jaxpr.eqns if e.primitive is ttt_loop_p]
    assert (eqn.params["steps"], eqn.params["init"]) == (4, "zero")
    assert any("kept whole (T=4 > max_peel_steps=3)" in n for n in notes), notes
    agree(closed, out, *args)
    peeled, _ = run(functools.partial(P.fold_zero_init, max_peel_steps=4), closed)
    (eqn,) = [e for e in peeled.jaxpr.eqns if e.primitive is ttt_loop_p]
    assert eqn.params["steps"] == 3
    agree(closed, peeled, *args)
    with pytest.raises(SpecError, match="max_peel_steps=0 must be >= 1"):
        P.fold_zero_init(closed, max_peel_steps=0)


def test_fold_zero_init_does_not_apply_without_zeros():
    closed = jax.make_jaxpr(lambda x: jnp.sin(x) * 2.0)(jnp.ones(3))
    out, notes = run(P.fold_zero_init, closed)
    assert out is closed and "did not apply" in notes[0]


def test_simplify_rewrite():
    closed = jax.make_jaxpr(lambda x: (-(-x)) * 2.0 * 0.5)(jnp.ones(3))  # noqa: B002 (a double negation to remove)
    out, _ = run(P.simplify, closed)
    assert prims(out) == [] and out.jaxpr.outvars[0] is out.jaxpr.invars[0]
    closed = jax.make_jaxpr(lambda x: jnp.transpose(jnp.transpose(x * 3.0)) * 2.0)(jnp.ones((2, 3)))
    out, _ = run(P.simplify, closed)
    assert prims(out) == ["mul"]  # one multiply by 6, no transposes
    agree(closed, out, jnp.arange(6.0).reshape(2, 3))


def test_simplify_adds_a_negated_operand_as_a_subtraction():
    """(-x) + y becomes y - x with no negation left (the sign MTTT-Linear's W_T = -eta grad leaves at
    its output bias), bit for bit, broadcasting and signed zeros included."""
    closed = jax.make_jaxpr(lambda x, y: (-x) + y)(jnp.ones((4, 3)), jnp.ones((1, 3)))
    out, _ = run(P.simplify, closed)
    assert prims(out) == ["sub"]
    x = jnp.asarray([[0.0, -0.0, 1.5], [2.0, -3.0, 0.0], [1e30, -1e-30, 7.0], [0.1, 0.2, 0.3]])
    y = jnp.asarray([[0.0, -0.0, 1.5]])
    want, got = (jax.core.eval_jaxpr(c.jaxpr, c.consts, x, y)[0] for c in (closed, out))
    assert np.array_equal(np.asarray(got), np.asarray(want))
    assert np.array_equal(np.signbit(np.asarray(got)), np.signbit(np.asarray(want)))


def test_simplify_applies_a_factor_at_a_product_of_two_arrays():
    """0.5 a meeting a * b is multiplied into a where a is made (fused there), not carried past the
    product onto the dot's result, where the outer gradient would scale a cotangent on its own."""
    closed = jax.make_jaxpr(lambda a, b, W: ((0.5 * jnp.tanh(a)) * b) @ W)(
        jnp.ones((4, 3)), jnp.ones((4, 3)), jnp.ones((3, 2))
    )
    out, _ = run(P.simplify, closed)
    eqns = out.jaxpr.eqns
    assert [e.primitive.name for e in eqns] == ["tanh", "mul", "mul", "dot_general"]
    assert eqns[-1].outvars[0] is out.jaxpr.outvars[0]  # nothing scales the dot's result
    assert eqns[1].outvars[0] in eqns[2].invars  # the factor rides on the operand
    agree(
        closed, out, *(jax.random.normal(jax.random.fold_in(KEY, i), s) for i, s in enumerate([(4, 3), (4, 3), (3, 2)]))
    )


def test_simplify_contracts_a_broadcast_operand_once():
    """Every head reads the same tokens x: vmap leaves a broadcast copy per head; the dot reads x."""
    x, G = jnp.ones((5, 4)), jnp.ones((3, 4, 2))
    closed = jax.make_jaxpr(lambda x, G: jnp.einsum("hnd,hdk->hnk", jnp.broadcast_to(x, (3, 5, 4)), G))(x, G)
    out, _ = run(P.simplify, closed)
    dots = [e for e in out.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert dots and dots[0].params["dimension_numbers"][1] == ((), ())  # no batch axis left
    assert "broadcast_in_dim" not in prims(out)
    agree(closed, out, jax.random.normal(KEY, (5, 4)), jax.random.normal(KEY, (3, 4, 2)))


def test_simplify_reads_the_source_of_a_broadcast_that_only_inserted_unit_axes():
    """squeeze / reshape of broadcast_in_dim(W) that only added size-1 axes is W itself (or a reshape
    of it), so AD stores W once, not W and a copy; a broadcast that copies values stays."""

    def f(W, q):
        expanded = jnp.broadcast_to(W[:, None], (3, 1, 4, 2))
        Wq = jnp.einsum("hij,hnj->hni", jnp.squeeze(expanded, 1), q)
        flat = jnp.reshape(expanded, (3, 8))  # a reshape of W, not of a copy
        tiled = jnp.squeeze(jnp.broadcast_to(W[:, None], (3, 5, 4, 2))[:, :1], 1)  # values copied 5x
        return Wq, flat, tiled

    W, q = jax.random.normal(KEY, (3, 4, 2)), jax.random.normal(KEY, (3, 5, 2))
    closed = jax.make_jaxpr(f)(W, q)
    out, _ = run(P.simplify, closed)
    (dot,) = [e for e in out.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert out.jaxpr.invars[0] in dot.invars
    (reshape,) = [e for e in out.jaxpr.eqns if e.primitive.name == "reshape"]
    assert reshape.invars[0] is out.jaxpr.invars[0]
    assert prims(out).count("broadcast_in_dim") == prims(closed).count("broadcast_in_dim") - 2
    agree(closed, out, W, q)


def test_cse_rewrite():
    closed = jax.make_jaxpr(lambda x: jnp.sin(x) + jnp.sin(x))(jnp.ones(3))
    out, notes = run(P.cse, closed)
    assert prims(closed).count("sin") == 2 and prims(out).count("sin") == 1
    assert "1 repeated" in notes[0]


def test_dce_rewrite():
    closed = jax.make_jaxpr(lambda x: (jnp.sin(x), jnp.cos(x))[0])(jnp.ones(3))
    out, _ = run(P.dce, closed)
    assert "cos" in prims(closed) and prims(out) == ["sin"]
    out2, notes = run(P.dce, out)
    assert out2 is out and "did not apply" in notes[0]


def test_unroll_and_lower_rewrites():
    closed, args = toy_loop(3)
    unrolled, _ = run(P.unroll, closed)
    assert not contains_loop(unrolled)
    assert prims(unrolled).count("dot_general") > prims(closed).count("dot_general")
    lowered, _ = run(P.lower, closed)
    assert "scan" in prims(lowered) and not contains_loop(lowered)
    agree(closed, unrolled, *args)
    agree(closed, lowered, *args)
    same, notes = run(P.get("unroll", max_steps=2), closed)
    assert same is closed and "max_steps=2" in notes[0]


def test_remat_rewrite():
    closed, args = toy_loop(4)
    marked, notes = run(P.remat, closed)
    (eqn,) = [e for e in marked.jaxpr.eqns if e.primitive is ttt_loop_p]
    assert eqn.params["remat"] == "step" and "scheme step" in notes[0]
    lowered, _ = run(P.lower, marked)
    assert "checkpoint" in str(lowered) or "remat" in str(lowered)
    agree(closed, lowered, *args)
    with pytest.raises(tc.SpecError, match="scheme"):
        P.remat(closed, scheme="binomial")
    _, notes = run(P.remat, toy_loop(1)[0])
    assert "nothing to rematerialise" in notes[0]


def test_sgd_batch_rewrite():
    closed, args = toy_loop(2, schedule="sgd")
    out, _ = run(P.sgd_batch, closed)
    assert not contains_loop(out) and "dynamic_slice" not in str(out)
    agree(closed, out, *args)
    _, notes = run(P.sgd_batch, toy_loop(2)[0])
    assert "did not apply" in notes[0]


def test_available_lists_every_pass_with_a_doc():
    names = P.available()
    assert {"unroll", "lower", "dce", "fold_zero_init", "simplify", "cse", "remat", "sgd_batch"} <= set(names)
    assert all(len(doc) > 10 for doc in names.values())


# ------------------------------------------------------------------ translation validation
PIPELINES = [
    ["unroll"],
    ["lower"],
    ["dce"],
    ["fold_zero_init"],
    ["simplify"],
    ["cse"],
    ["remat"],
    ["sgd_batch"],
    ["unroll", "fold_zero_init", "simplify", "cse", "dce"],
    [("remat", {"scheme": "log"}), "lower"],
    [("remat", {"scheme": "sqrt"}), "unroll"],
    "default",
]


@st.composite
def specs(draw):
    heads = draw(st.sampled_from([1, 2]))
    dh = draw(st.sampled_from([4, 8]))
    n = draw(st.sampled_from([8, 12]))
    batching = draw(st.sampled_from(["full", "sgd", "online"]))
    steps = draw(st.sampled_from([s for s in (1, 2, 3, 4) if batching != "sgd" or n % s == 0]))
    chunk = draw(st.sampled_from([c for c in (1, 2, 4) if n % c == 0]))
    opts = dict(
        steps=steps,
        batching=batching,
        chunk=chunk,
        lr=draw(st.sampled_from([0.05, 1.0])),
        init=draw(st.sampled_from(["zero", "learned"])),
        decoder_ln=draw(st.booleans()),
        parametrisation=draw(st.sampled_from(["released", "paper"])),
        eta=draw(st.sampled_from(["fixed", "per_head", "per_token"])),
    )
    if draw(st.booleans()):
        opts["optimizer"] = optax.sgd(0.05, momentum=0.9)
    preset = draw(st.sampled_from(["mttt_linear", "mttt_mlp"]))
    pipeline = draw(st.sampled_from(PIPELINES))
    return preset, heads * dh, heads, n, opts, pipeline, draw(st.integers(0, 2**16))


@settings(max_examples=6)  # the presets' options, evaluated with NumPy (tc.validate's XLA path: test_core's
@given(specs())  # custom learner example); tests/test_validate_generated.py covers generated programs at scale
def test_translation_validation(spec):
    """In float64, so that a rewrite bug is not confused with float32 rounding amplified by a
    diverging inner loop (eta = 1 with an MLP learner can blow up: then only f64 separates them)."""
    preset, dim, heads, n, opts, pipeline, seed = spec
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(seed)
        layer = layers.get(preset)(dim=dim, heads=heads, key=key, **opts)
        x = jax.random.normal(jax.random.fold_in(key, 1), (n, dim), jnp.float64)
        v = np_eval.validate(layer, x, pipeline, key=jax.random.fold_in(key, 2))
    assert v.ok(1e-9), (spec, v)
