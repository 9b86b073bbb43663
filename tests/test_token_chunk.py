"""Inner.token_chunk: the loss and the queries' outputs evaluated chunk by chunk (rematerialised) are
the same math as all tokens at once, compiled or not, and the spec rejects chunks that do not fit."""

import dataclasses
import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

import ttt_compile as tc
from ttt_compile.models import layers

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402
import program_gen as G  # noqa: E402
import test_validate_generated as T  # noqa: E402

KEY = jax.random.PRNGKey(0)


def _f64(m):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, m)


@pytest.mark.parametrize("options", [dict(steps=1), dict(steps=2, batching="sgd", eta="per_token")])
def test_token_chunk_is_the_same_math_values_and_grads(options):
    with jax.enable_x64(True):
        x = jax.random.normal(KEY, (32, 8), jnp.float64)
        chunked = _f64(layers.mttt_mlp(dim=8, heads=2, key=KEY, token_chunk=8, **options))
        whole = _f64(layers.mttt_mlp(dim=8, heads=2, key=KEY, **options))
        v = np_eval.compare(whole, chunked, x)  # reference layers, no compile
        assert v.ok(1e-12), v
        v = np_eval.compare(chunked, tc.compile(chunked, x), x)  # default pipeline vs its reference
        assert v.ok(1e-10), v


def test_token_chunk_must_fit():
    with pytest.raises(tc.SpecError, match="token_chunk is for batching 'full' or 'sgd'"):
        layers.mttt_linear(dim=8, heads=2, key=KEY, batching="online", chunk=4, token_chunk=8)
    with pytest.raises(tc.SpecError, match="token_chunk must be None or a positive int"):
        layers.mttt_mlp(dim=8, heads=2, key=KEY, token_chunk=0)
    layer = layers.mttt_mlp(dim=8, heads=2, key=KEY, steps=4, batching="sgd", token_chunk=8)
    with pytest.raises(tc.SpecError, match="the 12 tokens of each SGD step"):
        layer(jnp.ones((48, 8)))


# =========================================================================== generated programs


@st.composite
def chunked_programs(draw):
    """A generated layer or stack (tests/program_gen.py) whose full-batch and SGD layers get a
    token_chunk that divides the tokens one step sees and is smaller than them."""
    program = draw(G.programs(kinds=("layer", "stack"), max_size=60))
    specs = []
    for spec in program.layers:
        rows = program.n // spec.steps if spec.batching == "sgd" else program.n
        options = [c for c in G._divisors(rows) if c < rows]
        if spec.ops == (G.NADARAYA_WATSON,) or spec.batching == "online" or not options:
            specs.append(spec)
        else:
            specs.append(dataclasses.replace(spec, token_chunk=draw(st.sampled_from(options))))
    assume(any(s.token_chunk for s in specs))
    return dataclasses.replace(program, layers=tuple(specs))


def check_chunked_program(program):
    """token_chunk on generated learners, optimizers and specs (folded or decoded loss, nested learners):
    the chunked program equals the unchunked one, and compiles (default pipeline) to itself, within
    the validator's conditioning-relative tolerance (tests/test_validate_generated.py), float64."""
    try:
        ref = T.Reference(program, pair=False)  # the chunked program, not compiled
    except T.IllConditioned:
        reject()
    whole = dataclasses.replace(program, layers=tuple(dataclasses.replace(s, token_chunk=None) for s in program.layers))
    with jax.enable_x64(True):
        model, _, _ = G.build(whole)
        got = T.evaluate(model, ref.x, ref.r)
    assert T.compare(got, ref, False, "unchunked") == [], T.describe(program, None)
    assert T.check(program, "default", ref, pair=False) == [], T.describe(program, "default")


GENERATED = dict(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))


@settings(max_examples=4, **GENERATED)  # the default run; -m slow draws 24
@given(chunked_programs())
def test_token_chunk_on_generated_programs(program):
    check_chunked_program(program)


@pytest.mark.slow
@settings(max_examples=24, **GENERATED)
@given(chunked_programs())
def test_token_chunk_on_generated_programs_slow(program):
    check_chunked_program(program)
