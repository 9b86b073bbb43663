"""Nested learning: ttt_loop's AD rules keep derived loops ttt_loops; a learner holding a TTT layer
compiles and validates at every level (float64 values and outer gradients)."""

import importlib.util
import json
import os
import pathlib
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend.core import jaxpr_as_fun, jaxprs_in_params

import ttt_compile as tc
import ttt_compile.passes as P
from ttt_compile.ir import contains_loop, emitting, ttt_loop, ttt_loop_p
from ttt_compile.ir.primitive import loop_nesting

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "nested_learner.py"


def _example():
    spec = importlib.util.spec_from_file_location("nested_learner", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def loops(jaxpr, level=0):
    """[(level, role, reverse, steps)] of every ttt_loop, bodies included (level = nesting depth)."""
    out = []
    for e in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        if e.primitive is ttt_loop_p:
            out.append((level, e.params["role"], e.params["reverse"], e.params["steps"]))
            out += loops(e.params["body"], level + 1)
        else:
            for sub in jaxprs_in_params(e.params):
                out += loops(sub, level)
    return out


# --------------------------------------------------------------------------- AD rules
def _step(consts, carry, x):
    (A,) = consts
    W, m = carry
    g = jnp.tanh(W @ x)[:, None] * x[None, :] + A
    m = 0.5 * m + g
    return (W - 0.1 * m, m), jnp.sin(W @ x)


def _program(A, W0, xs, *, emit, reverse=False):
    """A momentum loop as ttt_loop (emit) or as the lax.scan reference."""
    carry0 = (W0, jnp.zeros_like(W0))
    if emit:
        with emitting():
            (W, m), ys = ttt_loop(
                _step, (A,), carry0, xs, steps=xs.shape[0], schedule="full", init="learned", num_weights=1
            )
    else:
        (W, m), ys = lax.scan(lambda c, x: _step((A,), c, x), carry0, xs)
    return jnp.sum(W**2) + jnp.sum(ys * ys) + jnp.sum(jnp.cos(m))


def _inputs():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    return (jax.random.normal(k[0], (3, 4)), jax.random.normal(k[1], (3, 4)), jax.random.normal(k[2], (5, 4)))


TRANSFORMS = {
    "grad": lambda f, a: jax.grad(f, argnums=(0, 1, 2))(*a),
    "jvp": lambda f, a: jax.jvp(f, a, a),
    "vjp": lambda f, a: jax.vjp(f, *a)[1](1.0),
    "linearize": lambda f, a: jax.linearize(f, *a)[1](*a),
    "hessian": lambda f, a: jax.hessian(f, argnums=1)(*a),
    "grad_of_grad": lambda f, a: jax.grad(lambda W: jnp.sum(jax.grad(f)(a[0], W, a[2]) ** 2))(a[1]),
    "jit_grad": lambda f, a: jax.jit(jax.grad(f, argnums=1))(*a),
    "checkpoint_grad": lambda f, a: jax.grad(jax.checkpoint(f), argnums=1)(*a),
    "vmap_grad": lambda f, a: jax.vmap(jax.grad(f, argnums=1), in_axes=(None, 0, None))(
        a[0], jnp.stack([a[1], 2 * a[1]]), a[2]
    ),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_ttt_loop_ad_matches_scan_reference(name):
    with jax.enable_x64(True):
        args = _inputs()
        got = TRANSFORMS[name](lambda *a: _program(*a, emit=True), args)
        want = TRANSFORMS[name](lambda *a: _program(*a, emit=False), args)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def test_grad_of_a_ttt_loop_is_a_forward_and_a_reverse_ttt_loop():
    args = _inputs()
    with emitting():
        closed = jax.make_jaxpr(jax.grad(lambda W: _program(args[0], W, args[2], emit=True)))(args[1])
    assert [(role, rev) for _, role, rev, _ in loops(closed)] == [("forward", False), ("transpose", True)]
    assert "scan" not in str(closed)
    # derived loops say what they are: only the forward loop still claims the fast weights W
    eqns = [e for e in closed.jaxpr.eqns if e.primitive is ttt_loop_p]
    assert [e.params["num_weights"] for e in eqns] == [1, 0]


def test_passes_keep_meaning_on_derived_loops():
    """unroll / lower / fold_zero_init / simplify on a program holding forward + transpose loops."""
    with jax.enable_x64(True):
        A, W0, xs = _inputs()
        with emitting():
            closed = jax.make_jaxpr(jax.grad(lambda W: _program(A, W, xs, emit=True)))(W0)
        want = jax.grad(lambda W: _program(A, W, xs, emit=False))(W0)
        for name in ("unroll", "lower", "fold_zero_init", "simplify", "remat"):
            out = P.get(name)(closed)
            np.testing.assert_allclose(jaxpr_as_fun(out)(W0)[0], want, rtol=1e-12, err_msg=name)
        assert not contains_loop(P.get("unroll")(closed))


# --------------------------------------------------------------------------- nested learners
def test_outer_inner_step_traces_a_nested_ttt_loop():
    ex = _example()
    layer = ex.make_layer(key=jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 8))
    closed, *_ = tc.compiler.trace(layer, x)
    found = loops(closed)
    # level 0: the outer loop (and the readout's inner-layer loop); level 1: the inner layer's loop,
    # as the forward loop and the reverse (transposed) loop of the outer inner step's jax.grad
    assert (0, "inner", False, 2) in found
    assert (1, "forward", False, 1) in found and (1, "transpose", True, 1) in found
    assert "scan" not in str(closed)


@pytest.mark.parametrize("inner_fast", [False, True], ids=["inner-maps-outer", "inner-maps-fast"])
def test_nested_example_validates_with_default_passes(inner_fast):
    ex = _example()
    with jax.enable_x64(True):
        # key 1: at key 0 (host-drawn weights) the example's gradient is ill-conditioned (rounding every
        # float64 value to 40 bits moves it by 7%), where no fixed tolerance separates rounding from a bug
        layer = ex.make_layer(key=jax.random.PRNGKey(1), inner_fast=inner_fast)
        x = jax.random.normal(jax.random.PRNGKey(1), (5, 8), jnp.float64)
        prog = tc.compile(layer, x)
        assert not contains_loop(prog.jaxpr)
        assert [n for n, _ in prog.notes] == ["trace", *P.DEFAULT]
        v = np_eval.compare(layer, prog, x)
    assert v.ok(1e-10), v


def test_two_level_preset_validates_and_matches_mlp_parameter_count():
    """`layers.mttt_nested` (the experiment's mixer): causal online loop over a learner holding a TTT
    layer; the default passes keep values and outer gradients (float64), every nested loop is gone, and
    its parameter count is MTTT-MLP's plus the inner layer's outer maps (< 1% more at d_h = 32)."""
    from ttt_compile.models import layers

    with jax.enable_x64(True):
        kw = dict(
            dim=16, heads=2, key=jax.random.PRNGKey(0), batching="online", chunk=4, lr=0.05, parametrisation="paper"
        )
        layer = layers.mttt_nested(sub=4, **kw)
        x = jax.random.normal(jax.random.PRNGKey(1), (8, 16), jnp.float64)
        prog = tc.compile(layer, x)
        assert not contains_loop(prog.jaxpr)
        assert "{ forward full T=1, transpose reversed full T=1, inner full T=1 }" in loop_nesting(prog.pipeline[0][1])
        v = np_eval.compare(layer, prog, x)
    assert v.ok(1e-10), v
    count = lambda m: sum(a.size for a in jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_inexact_array)))  # noqa: E731
    big = dict(dim=64, heads=2, key=jax.random.PRNGKey(0))
    nested, mlp = count(layers.mttt_nested(**big)), count(layers.mttt_mlp(**big))
    assert mlp < nested < 1.01 * mlp, (nested, mlp)
    with pytest.raises(tc.SpecError, match="sub-token width"):
        layers.mttt_nested(dim=16, heads=2, key=jax.random.PRNGKey(0), sub=5)


def test_every_pass_reaches_the_nested_level_and_notes_name_it():
    """remat marks the nested loops too (schemes compose with the outer loop's),
    fold_zero_init peels the inner layer's zero-init loop inside the outer body, and the report shows
    the nesting and which loop each note is about."""
    ex = _example()
    with jax.enable_x64(True):
        # key 1: at key 0 the gradient is chaotic (float32 overflows; 40-bit rounding moves it by 100%)
        layer = ex.make_layer(key=jax.random.PRNGKey(1), inner_steps=2)
        x = jax.random.normal(jax.random.PRNGKey(1), (5, 8), jnp.float64)
        prog = tc.compile(layer, x, passes=["remat", "unroll", "fold_zero_init", "simplify", "dce"])
        forced = tc.compile(
            layer, x, passes=[("remat", {"scheme": "step"}), "unroll", "fold_zero_init", "simplify", "dce"]
        )
        v = np_eval.compare(layer, prog, x)
        v_forced = np_eval.compare(layer, forced, x)
        report = forced.report()  # measures costs: float64 programs, in float64 mode
    assert v.ok(1e-10) and v_forced.ok(1e-10), (v, v_forced)
    stage = {n: j for n, j, _ in prog.pipeline}
    notes = dict(prog.notes)
    # nested loops by their kind (full: per step); the top-level loops by the stored-bytes rule (the T=2
    # program stores <= 2x the T=1 program's bytes here, so they are not rematerialised)
    assert [e.params["remat"] for e in _all_loops(stage["remat"])] == [None, "step", "step", None]
    assert sum("not rematerialised" in n for n in notes["remat"]) == 2, notes["remat"]
    assert any(
        n.startswith("[level 1, in inner full loop T=2] forward full loop, T=2, scheme step") for n in notes["remat"]
    ), notes["remat"]
    # a forced scheme reaches every level; unroll keeps rematerialised loops, fold_zero_init peels inside them
    notes = dict(forced.notes)
    assert [e.params["remat"] for e in _all_loops(dict((n, j) for n, j, _ in forced.pipeline)["remat"])] == ["step"] * 4
    assert any(
        n.startswith("[level 1, in inner full loop T=2] forward full loop, T=2, scheme step (forced)")
        for n in notes["remat"]
    ), notes["remat"]
    assert any(
        n.startswith("[level 1, in inner full loop T=2] forward full loop T=2: first step")
        for n in notes["fold_zero_init"]
    ), notes["fold_zero_init"]
    assert "loops: inner full T=2 { forward full T=2, transpose reversed full T=2 }, inner full T=2" in report
    assert report.count("FLOPs by loop level: level 0 ") == 1 and ", level 2 " in report  # the traced stage
    assert "loops: inner full T=2 { forward full T=1, transpose reversed full T=2 }, inner full T=1" in report


def test_unroll_expands_every_level():
    ex = _example()
    with jax.enable_x64(True):
        layer = ex.make_layer(key=jax.random.PRNGKey(0), inner_steps=2, inner_fast=True)
        x = jax.random.normal(jax.random.PRNGKey(1), (5, 8), jnp.float64)
        prog = tc.compile(layer, x, passes=["unroll"])
        assert not contains_loop(prog.jaxpr) and [n for n, _ in prog.notes] == ["trace", "unroll"]
        v = np_eval.compare(layer, prog, x)
    assert v.ok(1e-10), v


def _all_loops(jaxpr):
    out = []
    for e in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        if e.primitive is ttt_loop_p:
            out += [e, *_all_loops(e.params["body"])]
        else:
            for sub in jaxprs_in_params(e.params):
                out += _all_loops(sub)
    return out


# --------------------------------------------------------------------------- cost of nested loops
def _inner_step(consts, carry, x):
    (A,) = consts
    (W,) = carry
    return (jnp.tanh(W @ A) + x,), None


def _outer_step(consts, carry, x):
    (A,) = consts
    (W,), _ = ttt_loop(_inner_step, (A,), carry, x, steps=4, schedule="full", init="learned", num_weights=1)
    return (W @ A,), None


def _two_level(A, V0, xs):
    (V,), _ = ttt_loop(_outer_step, (A,), (V0,), xs, steps=3, schedule="full", init="learned", num_weights=1)
    return V


def test_cost_multiplies_nested_trip_counts():
    """3 outer steps x (4 inner steps + 1) matmuls of 32^3: Cost of the nested scans equals the FLOPs of
    the fully unrolled program (XLA alone counts each loop body once)."""
    from ttt_compile import cost

    d = 32
    A, V0, xs = jnp.ones((d, d)), jnp.ones((d, d)), jnp.ones((3, 4, d, d))
    with emitting():
        closed = jax.make_jaxpr(_two_level)(A, V0, xs)
        grad = jax.make_jaxpr(jax.grad(lambda A: jnp.sum(jnp.sin(_two_level(A, V0, xs)))))(A)
    scans, unrolled = P.lower(closed), P.unroll(closed)
    assert not contains_loop(unrolled)
    nested, flat = cost.measure(scans).flops, cost.measure(unrolled).flops
    dots = 3 * (4 + 1) * 2 * d**3
    assert dots <= flat and abs(nested - flat) <= 1e-3 * flat, (nested, flat)
    assert cost._xla(scans)[0] < 0.3 * nested  # what XLA reports without trip counts
    # by level: the 12 inner steps' matmuls at level 2, the 3 outer steps' W @ A at level 1, nothing outside
    levels = cost.by_level(closed)
    assert len(levels) == 3 and abs(sum(levels) - nested) <= 1e-6 * nested, (levels, nested)
    assert 12 * 2 * d**3 <= levels[2] <= 1.05 * 12 * 2 * d**3 and 3 * 2 * d**3 <= levels[1] <= 1.05 * 3 * 2 * d**3
    assert levels[0] <= 0.01 * nested, levels
    # the outer gradient: forward and transposed loops nested in both loops, per-step residual stacking
    nested_g, flat_g = cost.measure(P.lower(grad)).flops, cost.measure(P.unroll(grad)).flops
    assert abs(nested_g - flat_g) <= 0.05 * flat_g, (nested_g, flat_g)


def test_inspect_shows_the_nesting(capsys, monkeypatch):
    from ttt_compile.cli import main

    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    argv = ["inspect", "nested_learner:make_layer", "--dim", "8", "--heads", "2", "--seq", "4", "--steps", "2"]
    assert main([*argv, "--passes", "remat,lower", "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert [s["loops"] for s in stages] == [
        "inner full T=2 { forward full T=1, transpose reversed full T=1 }, inner full T=1"
    ] * 2 + [""]
    assert main([*argv, "--passes", "unroll"]) == 0
    assert "loops: inner full T=2 { forward full T=1, transpose reversed full T=1 }" in capsys.readouterr().out


@pytest.mark.slow
def test_generated_nested_program_with_symbolic_zero_loop_operands():
    """A generated program (default run, seed 20261201) whose peeled init='zero' outer step handed
    symbolic zeros to a nested loop's operands in fold_zero_init (they reached ttt_loop's bind)."""
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    import program_gen as G
    import test_validate_generated as V

    spec = G.LayerSpec(
        heads=2,
        dh=3,
        steps=5,
        batching="online",
        chunk=7,
        init="zero",
        decoder_ln=True,
        optimizer="clip_sgd",
        schedule="cosine",
        lr=0.5,
        ops=(("ttt", "full", 2), ("linear",), ("index", "affine"), ("act", "softplus"), ("act", "half_grad")),
        outer=(),
        eta="fixed",
        released=True,
    )
    nw = G.LayerSpec(
        heads=2,
        dh=3,
        steps=1,
        batching="full",
        chunk=1,
        init="zero",
        decoder_ln=True,
        optimizer="sgd",
        schedule="const",
        lr=1.0,
        ops=(G.NADARAYA_WATSON,),
        outer=(),
        eta="fixed",
        released=True,
    )
    program = G.Program(kind="stack", layers=(spec, nw), n=7, wrapper=None, int_side=True, seed=170943)
    assert V.check(program, ["fold_zero_init"]) == []
