"""remat chooses by measurement: a budget picks the least-recompute scheme that fits (compiled memory);
no budget rematerialises a full-batch loop only when it pays (stored bytes vs the T = 1 program)."""

import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import ttt_compile as tc
from ttt_compile.compiler import DEFAULT, trace
from ttt_compile.ir.primitive import ttt_loop_p
from ttt_compile.models import layers
from ttt_compile.passes.remat import candidate_memory, candidates

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402

KEY = jax.random.PRNGKey(0)


def _remat_stage(prog):
    ((_, closed, notes),) = [s for s in prog.pipeline if s[0] == "remat"]
    (eqn,) = [e for e in closed.jaxpr.eqns if e.primitive is ttt_loop_p]
    return eqn.params["remat"], notes


def test_candidates_are_the_distinct_programs():
    assert candidates(4) == [None, "step", "sqrt"]  # log of 4 = 2 x 2 is sqrt
    assert candidates(8) == [None, "step", "sqrt", "log"]
    assert candidates(7) == [None, "step"]  # prime: sqrt/log nest nothing


def test_budget_picks_least_recompute_that_fits_and_keeps_values_and_grads():
    with jax.enable_x64(True):
        layer = layers.mttt_mlp(dim=8, heads=2, steps=2, key=KEY)
        layer = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, layer)
        x = jax.random.normal(KEY, (32, 8), jnp.float64)
        (mem,) = candidate_memory(trace(layer, x)[0])
        assert set(mem) == {None, "step"}  # T = 2: sqrt/log nest nothing
        assert mem["step"] < mem[None]
        # the remat pass alone (tc.compile's remat_budget also plans token chunks: tests/test_planner.py)
        for budget, expected in [(mem[None], None), (mem["step"], "step")]:
            prog = tc.compile(layer, x, passes=[("remat", {"budget": budget}), *DEFAULT[1:]])
            chosen, notes = _remat_stage(prog)
            assert chosen == expected
            assert f"chose {expected or 'none'}" in notes[0] and "none" in notes[0] and "step" in notes[0]
        v = np_eval.compare(layer, prog, x)  # the rematerialised program
        assert v.ok(1e-10), v
        with pytest.raises(tc.SpecError, match="below the least training-step temp memory"):
            tc.compile(layer, x, passes=[("remat", {"budget": min(mem.values()) - 1}), *DEFAULT[1:]])


@pytest.mark.parametrize("steps, factor, expected", [(4, 2.0, "step"), (2, 2.0, None), (4, 100.0, None)])
def test_without_budget_remat_only_when_it_pays(steps, factor, expected):
    layer = layers.mttt_mlp(dim=16, heads=2, steps=steps, key=KEY)
    prog = tc.compile(layer, jnp.ones((64, 16)), passes=[("remat", {"factor": factor}), *DEFAULT[1:]])
    chosen, notes = _remat_stage(prog)
    assert chosen == expected
    assert "T = 1 program" in notes[0] and f"factor {factor:g}" in notes[0]


def test_bad_budget_requests_are_spec_errors():
    layer = layers.mttt_mlp(dim=8, heads=2, steps=4, key=KEY)
    x = jnp.ones((16, 8))
    with pytest.raises(tc.SpecError, match="no 'remat' pass"):
        tc.compile(layer, x, passes=["lower"], remat_budget=1 << 20)
    with pytest.raises(tc.SpecError, match="not combined with scheme"):
        tc.compile(layer, x, passes=[("remat", {"scheme": "step"}), "lower"], remat_budget=1 << 20)
    with pytest.raises(tc.SpecError, match="option budget='1GiB' must be int"):
        tc.compile(layer, x, remat_budget="1GiB")
