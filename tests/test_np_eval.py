"""The NumPy jaxpr evaluator (tests/np_eval.py) agrees with JAX on every rule it has.

Each case is a small function whose jaxpr exercises rules where lax and NumPy differ (integer
division and remainder signs, both rounding methods, clamped dynamic slices, negative and interior
padding, batched dot_general, reversed cumulative sums and loops, select_n on an index); it is traced
and evaluated by np_eval and by JAX, float64, and must agree to 1e-12 with no JAX fallback."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402

import ttt_compile as tc  # noqa: E402
from ttt_compile.models import layers  # noqa: E402


def _x(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def _ints(*shape):
    return np.arange(-7, -7 + int(np.prod(shape)), dtype=np.int32).reshape(shape)


def _scan_rev(x):
    return lax.scan(lambda c, xt: (c * 0.5 + xt, c * xt), x[0], x, reverse=True)


def _while(x):
    return lax.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, jnp.tanh(c[1]) * 1.5), (0, x))


def _cond(i, x):
    return lax.switch(i, [jnp.sin, jnp.cos, lambda v: v * 2.0], x)


CASES = {
    "int div/rem": (
        lambda a, b: (
            lax.div(a, jnp.broadcast_to(b, a.shape)),
            lax.rem(a, jnp.broadcast_to(b, a.shape)),
            a // b,
            a % b,
        ),
        (_ints(3, 4), np.array([3, -3, 2, -5], np.int32)),
    ),
    "float rem": (lambda a, b: lax.rem(a, b), (_x(3, 4) * 5, _x(3, 4, seed=1) + 2)),
    "round": (
        lambda x: (
            lax.round(x, lax.RoundingMethod.AWAY_FROM_ZERO),
            lax.round(x, lax.RoundingMethod.TO_NEAREST_EVEN),
            jnp.round(x),
        ),
        (np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.3, -0.7]),),
    ),
    "dot_general batch": (
        lambda a, b: (
            jnp.einsum("bij,bjk->bik", a, b),
            jnp.einsum("ijb,kjb->bki", a, jnp.ones((5, 3, 4)) * a[0, 0, 0]),
            a.reshape(-1) @ b.reshape(-1)[: a.size],
        ),
        (_x(2, 3, 4), _x(2, 4, 5, seed=1)),
    ),
    "broadcast/reshape/transpose": (
        lambda x: (
            jnp.broadcast_to(x[:, None, :], (3, 2, 4)).transpose(2, 0, 1).reshape(4, 6),
            jnp.squeeze(x[None], 0),
            jnp.expand_dims(x, 1),
        ),
        (_x(3, 4),),
    ),
    "pad": (
        lambda x: (lax.pad(x, 0.5, [(2, -1, 1), (-1, 2, 0)]), lax.pad(x, -1.0, [(0, 0, 2), (1, 1, 1)])),
        (_x(3, 4),),
    ),
    "slices": (
        lambda x, i: (
            x[1:3, ::2],
            lax.dynamic_slice(x, (i, i), (2, 2)),
            lax.dynamic_update_slice(x, jnp.ones((2, 3)), (i, i)),
            jnp.split(x, [1, 3], axis=1),
            jnp.concatenate([x, x * 2], 0),
        ),
        (_x(3, 4), np.int32(5)),
    ),
    "reductions": (
        lambda x: (
            x.sum((0, 2)),
            x.max(1),
            x.min(),
            jnp.argmax(x, 1),
            jnp.argmin(x, 0),
            jnp.prod(x, 2),
            jnp.all(x > 0, 1),
            jnp.any(x > 1, 0),
            jnp.cumsum(x, 1),
            lax.cumsum(x, 2, reverse=True),
            lax.cummax(x, 0, reverse=True),
            jnp.cumprod(x, 2),
        ),
        (_x(2, 3, 4),),
    ),
    "elementwise": (
        lambda x, y: (
            jnp.tanh(x),
            jax.nn.sigmoid(x),
            jax.nn.gelu(x, approximate=False),
            jax.nn.gelu(x),
            jax.nn.softplus(x),
            jax.nn.silu(x),
            jax.nn.relu(x),
            lax.rsqrt(y * y + 1),
            jnp.exp2(x),
            jnp.log1p(y * y),
            jnp.expm1(x),
            x**3,
            x**-2,
            jnp.abs(y) ** x,
            jnp.clip(x, -0.5, 0.5),
            jnp.sign(x),
            jnp.arctan2(x, y),
            jnp.where(x > y, x, y),
            jax.scipy.special.erfinv(jnp.tanh(x) * 0.9),
            jnp.floor(x),
            jnp.ceil(y),
            jnp.isfinite(x / (y - y)),
            jnp.maximum(x, y),
            jnp.minimum(x, y),
        ),
        (_x(3, 5), _x(3, 5, seed=1)),
    ),
    "ints and bools": (
        lambda a: (
            (a * 3) // 2 + (a >> 1) - (a << 2),
            (a > 0) & (a < 4) | ~(a == 2),
            lax.iota(jnp.int32, 5),
            (a % 3).astype(jnp.float64) * 0.5,
            (jnp.arange(12) // 2).reshape(3, 4) + a,
        ),
        (_ints(3, 4),),
    ),
    "select_n": (
        lambda i, x, y, z: (lax.select_n(i, x, y, z), lax.select_n(x > y, x, y)),
        (np.array([[0, 1, 2, 1, 0]] * 3, np.int32), _x(3, 5), _x(3, 5, seed=1), _x(3, 5, seed=2)),
    ),
    "loops": (lambda x: (_scan_rev(x), _while(x[0]), jax.checkpoint(lambda v: jnp.sin(v) * v)(x)), (_x(4, 3),)),
    "cond": (lambda x: (_cond(0, x), _cond(1, x), _cond(7, x), lax.cond(x[0] > 0, jnp.sin, jnp.cos, x)), (_x(3),)),
    "gradients": (lambda x: jax.grad(lambda v: jnp.sum(jax.nn.gelu(jnp.cumsum(v)) * jnp.tanh(v) ** 2))(x), (_x(6),)),
    "stack/unstack": (
        lambda x: jax.grad(lambda v: sum(jnp.sum(r**2) for r in v) + jnp.sum(jnp.stack([v[0], v[2]]) ** 3))(x),
        (_x(4, 3),),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_np_eval_matches_jax(name):
    fn, args = CASES[name]
    with jax.enable_x64(True):
        closed = jax.make_jaxpr(fn)(*args)
        want = [np.asarray(a) for a in jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *args)]
    np_eval.FALLBACKS.clear()
    got = np_eval.eval_closed(closed, *args)
    assert not np_eval.FALLBACKS, dict(np_eval.FALLBACKS)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype, g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


def test_np_eval_ttt_loop_and_float32():
    """A compiled program's un-lowered ttt_loop runs as its scan; a float32 program stays float32."""
    layer = layers.mttt_mlp(dim=8, heads=2, key=jax.random.PRNGKey(0), steps=2)
    x = jnp.asarray(_x(5, 8), jnp.float32)
    compiled = tc.compile(layer, x, passes="none")
    closed = compiled.pipeline[0][1]  # the traced program, before `lower`
    assert "ttt_loop" in str(closed)
    args = [*jax.tree_util.tree_leaves(compiled.params), x]
    got = np_eval.eval_closed(closed, *args)
    want = jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *args)
    assert got[0].dtype == np.float32
    np.testing.assert_allclose(got[0], np.asarray(want[0]), rtol=2e-4, atol=2e-5)


def test_np_eval_falls_back_to_jax():
    """A primitive without a NumPy rule (gather from fancy indexing) is bound with JAX and counted."""
    x, idx = _x(5, 3), np.array([4, 0, 2, 2])
    closed = jax.make_jaxpr(lambda v, i: v[i] * 2)(x, idx)
    np_eval.FALLBACKS.clear()
    with jax.enable_x64(True):
        got = np_eval.eval_closed(closed, x, idx)
    np.testing.assert_allclose(got[0], x[idx] * 2)
    assert np_eval.FALLBACKS["gather"] == 1


def test_in_bits_is_a_rounding_probe():
    """in_bits rounds every float64 value: at 24 bits an input is exactly its float32 rounding, at 53
    bits the program is unchanged, and sin of a large argument moves by about |x| 2^-bits (its
    conditioning), which float32 cannot resolve."""
    x = np.random.default_rng(0).normal(size=1000) * 10.0 ** np.arange(-5, 5).repeat(100)
    np.testing.assert_array_equal(np_eval.round_bits(x, 24), x.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(np_eval.round_bits(x, 53), x)
    with jax.enable_x64(True):
        big = np.array([3.0e9, 1.7e9, 2.2e9])
        closed = jax.make_jaxpr(lambda v: jnp.sin(v * 1.0000001))(big)
        exact = np_eval.eval_closed(closed, big)[0]
        assert np.array_equal(np_eval.in_bits(closed, 53, big)[0], exact)
        err40 = np.max(np.abs(np_eval.in_bits(closed, 40, big)[0] - exact))
        err24 = np.max(np.abs(np_eval.in_float32(closed, big)[0] - exact))
    assert 1e-5 < err40 < 1e-2 < err24  # 3e9 * 2^-40 = 2.7e-3; float32's ulp of 3e9 is 256
    with pytest.raises(ValueError, match="bits"):
        np_eval.in_bits(closed, 60, big)
