"""Inner.token_chunk: the loss and the queries' outputs evaluated chunk by chunk (rematerialised) are
the same math as all tokens at once, compiled or not, and the spec rejects chunks that do not fit."""
import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import ttt_compile as tc
from ttt_compile.models import layers

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402

KEY = jax.random.PRNGKey(0)


def _f64(m):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, m)


@pytest.mark.parametrize("options", [dict(steps=1), dict(steps=2, batching="sgd", eta="per_token")])
def test_token_chunk_is_the_same_math_values_and_grads(options):
    with jax.enable_x64(True):
        x = jax.random.normal(KEY, (32, 8), jnp.float64)
        chunked = _f64(layers.mttt_mlp(dim=8, heads=2, key=KEY, token_chunk=8, **options))
        whole = _f64(layers.mttt_mlp(dim=8, heads=2, key=KEY, **options))
        v = np_eval.compare(whole, chunked, x)                  # reference layers, no compile
        assert v.ok(1e-12), v
        v = np_eval.compare(chunked, tc.compile(chunked, x), x)                      # default pipeline vs its reference
        assert v.ok(1e-10), v


def test_token_chunk_must_fit():
    with pytest.raises(tc.SpecError, match="token_chunk is for batching 'full' or 'sgd'"):
        layers.mttt_linear(dim=8, heads=2, key=KEY, batching="online", chunk=4, token_chunk=8)
    with pytest.raises(tc.SpecError, match="token_chunk must be None or a positive int"):
        layers.mttt_mlp(dim=8, heads=2, key=KEY, token_chunk=0)
    layer = layers.mttt_mlp(dim=8, heads=2, key=KEY, steps=4, batching="sgd", token_chunk=8)
    with pytest.raises(tc.SpecError, match="the 12 tokens of each SGD step"):
        layer(jnp.ones((48, 8)))
