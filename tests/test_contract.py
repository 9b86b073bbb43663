"""The pass contract and the learner API's traps (issue 8): options checked, aliases, ordering notes,
ttt_loop DCE, init='zero' with non-zero arrays, outer-parameter marking, what a pass changed."""

import contextlib
import io
import json
import os
import pathlib
import re
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend.core import jaxpr_as_fun

import ttt_compile as tc
from ttt_compile.ir.jaxpr_utils import dce
from ttt_compile.ir.primitive import emitting, ttt_loop, ttt_loop_p
from ttt_compile.models import layers

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402

KEY = jax.random.PRNGKey(0)


# --------------------------------------------------------------------------- pass options and names
@pytest.mark.parametrize(
    "spec, match",
    [
        (("unroll", {"max_steps": "x"}), r"pass 'unroll': option max_steps='x' must be int"),
        (("unroll", {"max_step": 3}), r"pass 'unroll' has no option 'max_step'; its options are max_steps"),
        (("remat", {"scheme": "binomial"}), r"option scheme='binomial' must be one of 'step', 'sqrt', 'log'"),
        (("simplify", {"anything": 1}), r"pass 'simplify' has no option 'anything'; its options are none"),
    ],
)
def test_wrong_pass_option_is_a_spec_error_naming_the_pass(spec, match):
    layer = layers.mttt_linear(dim=8, heads=2, key=KEY)
    with pytest.raises(tc.SpecError, match=match):
        tc.compile(layer, jnp.ones((4, 8)), passes=[spec])


def test_checkpoint_is_an_alias_of_remat():
    layer = layers.mttt_mlp(dim=8, heads=2, key=KEY, steps=3)
    prog = tc.compile(layer, jnp.ones((4, 8)), passes=[("checkpoint", {"scheme": "step"}), "lower"])
    assert [name for name, _, _ in prog.pipeline] == ["trace", "remat", "lower"]
    assert "remat" not in tc.passes.available() or "checkpoint" not in tc.passes.available()


def test_out_of_order_pipeline_is_reported():
    layer = layers.mttt_linear(dim=8, heads=2, key=KEY, steps=2, batching="sgd")
    prog = tc.compile(layer, jnp.ones((4, 8)), passes=["lower", "sgd_batch"])
    notes = " ".join(n for _, ns in prog.notes for n in ns)
    assert "sgd_batch runs after lower but declares it must run before it" in notes


# --------------------------------------------------------------------------- ttt_loop DCE
def test_dce_drops_dead_carries_and_outputs_of_a_loop():
    def step(consts, carry, x):
        a, b, c = carry
        return (a * 2 + x, b + a, c + 1.0), (b * x, a)

    def f(x):
        (a, _, _), (y, _) = ttt_loop(
            step, (), (1.0, 2.0, 3.0), jnp.arange(4.0) + x, steps=4, schedule="full", init="learned", num_weights=2
        )
        return a, y

    with emitting():
        closed = jax.make_jaxpr(f)(1.0)
    pruned = dce(closed)
    (eqn,) = [e for e in pruned.jaxpr.eqns if e.primitive is ttt_loop_p]
    assert (eqn.params["num_carry"], eqn.params["num_weights"], len(eqn.outvars)) == (2, 2, 3)
    for got, want in zip(jaxpr_as_fun(pruned)(1.0), f(1.0)):
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- learner API
class Gated(eqx.Module):
    W: jax.Array
    gate: jax.Array
    ln: eqx.nn.LayerNorm

    def __call__(self, z):
        return self.ln(jax.nn.relu(self.W @ z) * self.gate + z)


def _gated():
    return Gated(jax.random.normal(KEY, (4, 4)) * 0.3, jnp.full((4,), 0.7), eqx.nn.LayerNorm(4))


def test_init_zero_with_nonzero_learner_is_an_error():
    with pytest.raises(tc.SpecError, match=r"init='zero'.*non-zero fast weights \(\.W, \.gate.*init='learned'"):
        tc.TTTLayer(8, 2, _gated(), key=KEY)
    with pytest.raises(tc.SpecError, match="init='zero'"):
        tc.TTTLayer(8, 2, tc.learners.Linear(4, key=KEY), key=KEY)
    tc.TTTLayer(8, 2, tc.learners.Linear(4), key=KEY)  # zeros: fine


def test_outer_arrays_are_trained_by_the_outer_loop_and_fixed_in_the_inner_one():
    layer = tc.TTTLayer(
        8, 2, _gated(), init="learned", outer=lambda f: (f.gate, f.ln), inner=tc.Inner(steps=2), key=KEY
    )
    assert layer.W0.gate is None and layer.W0.ln.weight is None and layer.W0.W.shape == (2, 4, 4)
    x = jax.random.normal(KEY, (6, 8))
    # fixed in the inner loop: the inner weights sequence never changes the gate
    losses = eqx.filter_eval_shape(layer.inner_losses, x)
    assert losses.shape == (2, 3)
    # trained by the outer loop: a non-zero outer gradient, and a changed gate changes the output
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m(x)))))(layer)
    assert float(jnp.abs(grads.learner_outer.gate).max()) > 1e-3
    other = eqx.tree_at(lambda m: m.learner_outer.gate, layer, jnp.full((4,), -0.2))
    call = eqx.filter_jit(lambda m: m(x))
    assert float(jnp.abs(call(other) - call(layer)).max()) > 1e-3
    with jax.enable_x64(True):
        layer64 = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, layer)
        for passes in ("none", "default", ["simplify"], ["fold_zero_init"]):
            v = np_eval.validate(layer64, x.astype(jnp.float64), passes)
            assert v.ok(1e-10), (passes, v)


def test_outer_selector_errors_name_the_fix():
    with pytest.raises(tc.SpecError, match="outer must select parts of the learner"):
        tc.TTTLayer(8, 2, _gated(), init="learned", outer=lambda f: f.missing, key=KEY)


# --------------------------------------------------------------------------- what a pass changed
def test_compiled_diff_shows_what_each_pass_did():
    layer = layers.mttt_linear(dim=8, heads=2, key=KEY)
    prog = tc.compile(layer, jnp.ones((4, 8)))
    unrolled = prog.diff("unroll")
    assert unrolled.removed >= 1 and unrolled.rewritten == 0
    removed = [line for line in unrolled.text.splitlines() if line.startswith("- ")]
    assert any("ttt_loop" in line for line in removed)
    names = [name for name, _, _ in prog.stages]
    assert "ttt_loop" not in str(prog.stages[names.index("unroll")][1])
    folded = prog.diff("fold_zero_init")
    assert folded.removed > folded.added
    assert "(no change)" in str(prog.diff("cse"))
    with pytest.raises(tc.SpecError, match="no pass stage 'nope'"):
        prog.diff("nope")


def test_readme_inspect_figures_match_the_command():
    """The README quotes `inspect mttt_linear`'s equation counts and FLOPs: they must be what it prints."""
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    m = re.search(
        r"the trace has (\d+)\s+equations and ([\d.e+]+) FLOPs; after `default`\s+(\d+) equations\s+and "
        r"([\d.e+]+) FLOPs",
        readme,
    )
    assert m, "README no longer quotes the inspect figures in the tested form"
    from ttt_compile import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["inspect", "mttt_linear", "--dim", "384", "--heads", "6", "--seq", "196", "--json"]) == 0
    stages = json.loads(out.getvalue())["stages"]
    trace, final = stages[0], stages[-1]
    assert (trace["eqns"], final["eqns"]) == (int(m.group(1)), int(m.group(3)))
    assert trace["flops"] == pytest.approx(float(m.group(2)), rel=5e-3)  # quoted to 3 figures
    assert final["flops"] == pytest.approx(float(m.group(4)), rel=5e-3)


def test_learning_rate_schedule_and_cond_compile_under_default():
    inner = tc.Inner(steps=2, optimizer=optax.sgd(optax.exponential_decay(0.5, 1, 0.5)))
    a = tc.TTTLayer(8, 2, tc.learners.Linear(4), inner=inner, key=KEY)
    b = layers.mttt_linear(dim=8, heads=2, key=jax.random.PRNGKey(1))

    class Switch(eqx.Module):
        a: tc.TTTLayer
        b: tc.TTTLayer

        def __call__(self, x):
            return jax.lax.cond(jnp.sum(x) > 0, lambda x: self.a(x), lambda x: self.b(x), x)

    x = jax.random.normal(KEY, (6, 8))
    prog = tc.compile(Switch(a, b), x)
    assert not tc.ir.contains_loop(prog.jaxpr)  # both branches' loops were compiled
    for sign in (1.0, -1.0):
        np.testing.assert_allclose(prog(sign * x), Switch(a, b)(sign * x), rtol=1e-5, atol=1e-6)
