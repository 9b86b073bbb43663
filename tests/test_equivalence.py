"""The paper's equivalences: MTTT-Linear (W0 = 0, T = 1, eta = 1 in eq. 1's units, no biases) is linear
attention with the identity feature map (in the released parametrisation, the presets' default, eta = 1 is
lr = d_h), and the Nadaraya-Watson learner is softmax attention -- in values and in the
gradients of a scalar loss w.r.t. every outer parameter, reference and compiled."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import ttt_compile as tc
from ttt_compile.models import layers
from ttt_compile.validate import compare, relative_error

SHAPES = [(8, 12, 1), (33, 32, 4), (10, 48, 6)]  # (n, dim, heads)


def _pair(ttt, attn, n, dim, heads, dtype, seed):
    key = jax.random.PRNGKey(seed)
    a = ttt(dim=dim, heads=heads, key=key)
    b = attn(dim=dim, heads=heads, key=key)

    def cast(m):
        return jax.tree.map(lambda t: t.astype(dtype) if jnp.issubdtype(t.dtype, jnp.floating) else t, m)

    x = jax.random.normal(jax.random.fold_in(key, 1), (n, dim), dtype)
    return cast(a), cast(b), x


def mttt_linear_eta1(parametrisation):
    """MTTT-Linear with eta = 1 in eq. 1's units and no biases: lr = d_h in the released units."""

    def make(*, dim, heads, key):
        lr = dim // heads if parametrisation == "released" else 1.0
        return layers.mttt_linear(dim=dim, heads=heads, key=key, parametrisation=parametrisation, bias=False, lr=lr)

    return make


@pytest.mark.parametrize("n,dim,heads", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-10)])
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("parametrisation", ["released", "paper"])
def test_mttt_linear_is_linear_attention(n, dim, heads, dtype, tol, compiled, parametrisation):
    with jax.enable_x64(dtype == jnp.float64):
        ttt, attn, x = _pair(mttt_linear_eta1(parametrisation), layers.linear_attention, n, dim, heads, dtype, n + dim)
        assert ttt.phi.weight.dtype == dtype
        if compiled:
            ttt = tc.compile(ttt, x, passes="default")
        v = compare(attn, ttt, x)
    assert v.value_error <= tol and v.grad_error <= tol, v


@pytest.mark.parametrize("n,dim,heads", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-10)])
@pytest.mark.parametrize("compiled", [False, True])
def test_nadaraya_watson_is_softmax_attention(n, dim, heads, dtype, tol, compiled):
    with jax.enable_x64(dtype == jnp.float64):
        ttt, attn, x = _pair(layers.mttt_kernel, layers.self_attention, n, dim, heads, dtype, 7 * n + dim)
        if compiled:
            ttt = tc.compile(ttt, x, passes="default")
        v = compare(attn, ttt, x)
    assert v.value_error <= tol and v.grad_error <= tol, v


def test_equivalence_breaks_when_it_should():
    """Guard against a vacuous check: two steps, eta != 1 (in eq. 1's units: lr != d_h = 8 in the released
    units), a Decoder LN or biases is no longer linear attention."""
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (16, 24))
    attn = layers.linear_attention(dim=24, heads=3, key=key)
    base = {"bias": False, "lr": 8.0}
    assert relative_error(layers.mttt_linear(dim=24, heads=3, key=key, **base)(x), attn(x)) < 1e-5
    for opts in ({"steps": 2}, {"lr": 1.0}, {"decoder_ln": True}, {"parametrisation": "paper"}):
        assert relative_error(layers.mttt_linear(dim=24, heads=3, key=key, **{**base, **opts})(x), attn(x)) > 1e-3
    biased = layers.mttt_linear(dim=24, heads=3, key=key, **{**base, "bias": True})
    for where in (lambda m: m.phi.bias, lambda m: m.psi.bias, lambda m: m.g.bias):  # zero at init
        moved = eqx.tree_at(where, biased, where(biased) + 0.1)
        assert relative_error(moved(x), attn(x)) > 1e-3
