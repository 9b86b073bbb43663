"""batching="online": causality (Jacobians), the token-by-token definition, and checkpoint validation."""

import functools
import operator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import primitives

import ttt_compile as tc
from ttt_compile.layer import decode, token_loss
from ttt_compile.models import layers

KEY = jax.random.PRNGKey(0)
DIM, HEADS, N, ETA = 8, 2, 8, 0.1
X = 0.5 * jax.random.normal(jax.random.PRNGKey(1), (N, DIM))

PIPELINES = {
    "default": "default",
    "none": "none",
    "sqrt": [("remat", {"scheme": "sqrt"}), "lower"],
    "log": [("remat", {"scheme": "log"}), "lower"],
    "step": [("remat", {"scheme": "step"}), "lower"],
}


@functools.cache
def make(kind: str, chunk: int):
    build = layers.mttt_linear if kind == "linear" else layers.mttt_mlp
    return build(dim=DIM, heads=HEADS, key=KEY, batching="online", chunk=chunk, lr=ETA)


def program(layer, pipeline):
    return layer if pipeline is None else tc.compile(layer, X, passes=PIPELINES[pipeline])


def hand_written(layer, x, chunk: int):
    """The online rule written out per head and token: token t of chunk c starting at weights W_c
    reads W_c - eta sum_{j in c, j <= t} grad l(W_c; x_j); the next chunk starts from the last of
    these.  With chunk=1 this is W_t = W_{t-1} - eta grad l(W_{t-1}; x_t), out_t = f(q_t; W_t)."""
    static, c, scale = layer.learner, layer.g.bias, layer.loss_scale  # the presets' released parametrisation:
    k, q = layer.phi.tokens(x), layer.psi.tokens(x)  # loss / d_h, biases, per-head LN
    grad = jax.jit(jax.grad(lambda W, G, ln, k, x: scale * token_loss(decode(G, ln, eqx.combine(W, static)(k), c), x)))
    read = jax.jit(lambda W, q: eqx.combine(W, static)(q))
    heads = []
    for h in range(HEADS):
        W = (
            jax.tree.map(operator.itemgetter(h), layer.W0)
            if layer.init == "learned"
            else jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), layer.fast_shape)
        )
        ln = jax.tree.map(operator.itemgetter(h), layer.g.ln) if layer.g.ln_per_head else layer.g.ln
        G, outs = layer.g.weight[h], []
        for c in range(0, x.shape[0], chunk):
            Wc, acc = W, None
            for t in range(c, c + chunk):
                g = grad(Wc, G, ln, k[t, h], x[t])
                acc = g if acc is None else jax.tree.map(jnp.add, acc, g)
                W = jax.tree.map(lambda w, a: w - ETA * a, Wc, acc)
                outs.append(read(W, q[t, h]))
        heads.append(jnp.stack(outs))
    return layer.h.tokens(jnp.stack(heads, axis=1))


def assert_causal(f, x):
    """d out_i / d x_j == 0 for every j > i, and != 0 for j = i (the test is not vacuous)."""
    J = np.asarray(eqx.filter_jit(lambda f, x: jax.jacfwd(f)(x))(f, x))  # (n, d, n, d)
    n = x.shape[0]
    later = np.triu(np.ones((n, n), bool), k=1)  # [i, j]: j > i
    per_pair = np.abs(J).max(axis=(1, 3))  # (n, n)
    assert per_pair[later].max() == 0.0, f"output depends on a later token: {per_pair}"
    assert (np.diag(per_pair) > 0).all()
    assert per_pair[np.tril(np.ones((n, n), bool), k=-1)].min() > 0  # earlier tokens do matter


FAST = {("linear", 1, None), ("linear", 1, "default"), ("linear", 4, "log"), ("mlp", 4, "none")}


def _cases(kinds, chunks, pipelines, fast):
    """Every combination; those not in `fast` are marked slow (run with -m slow)."""
    return [
        pytest.param(k, c, p, marks=() if (k, c, p) in fast else pytest.mark.slow)
        for k in kinds
        for c in chunks
        for p in pipelines
    ]


@pytest.mark.parametrize("kind, chunk, pipeline", _cases(["linear", "mlp"], [1, 4], [None, *PIPELINES], FAST))
def test_no_output_depends_on_a_later_token(kind, chunk, pipeline):
    assert_causal(program(make(kind, chunk), pipeline), X)


@pytest.mark.parametrize(
    "kind, chunk, pipeline",
    _cases(
        ["linear", "mlp"],
        [1, 4],
        [None, "none", "default", "log"],
        {("linear", 1, None), ("linear", 1, "none"), ("linear", 4, "default"), ("mlp", 4, None)},
    ),
)
def test_reference_and_compiled_equal_the_hand_written_loop(kind, chunk, pipeline):
    layer = make(kind, chunk)
    want = hand_written(layer, X, chunk)
    np.testing.assert_allclose(_call(program(layer, pipeline), X), want, rtol=1e-5, atol=1e-5)


@eqx.filter_jit
def _call(model, x):
    return model(x)


def _loss(model, x):
    return jnp.sum(jnp.sin(model(x)))


_grad = eqx.filter_jit(eqx.filter_grad(_loss))


@pytest.mark.parametrize(
    "kind, chunk, scheme",
    _cases(["linear", "mlp"], [1, 2], ["sqrt", "log", "step"], {("linear", 2, "log"), ("linear", 1, "step")}),
)
def test_checkpointed_programs_equal_the_plain_one_in_values_and_outer_gradients(kind, chunk, scheme):
    layer = make(kind, chunk)
    plain = tc.compile(layer, X, passes=["lower"])
    prog = tc.compile(layer, X, passes=[("remat", {"scheme": scheme}), "lower"])
    assert any(e.primitive is primitives.remat_p for e in _all_eqns(prog.jaxpr.jaxpr))
    np.testing.assert_allclose(_call(prog, X), _call(plain, X), rtol=1e-6, atol=1e-6)
    assert_trees_close(_grad(prog, X), _grad(plain, X))


def assert_trees_close(got, want, rtol=1e-4):
    """Leaf by leaf, to rtol of the leaf's largest entry (float32 sums in a different order)."""
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max()))


def _all_eqns(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for sub in jax.extend.core.jaxprs_in_params(e.params):
            yield from _all_eqns(getattr(sub, "jaxpr", sub))


def test_chunk_that_does_not_divide_n_is_a_spec_error():
    layer = layers.mttt_linear(dim=DIM, heads=HEADS, key=KEY, batching="online", chunk=3)
    with pytest.raises(tc.SpecError, match="chunk=3 must divide"):
        layer(X)
    with pytest.raises(tc.SpecError, match="chunk=3 must divide"):
        tc.compile(layer, X)
