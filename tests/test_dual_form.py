"""The dual_form pass: translation validation against the primal (token-by-token) form, the rewrite
itself on a tiny jaxpr, and the cases where it must not apply."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ttt_compile as tc
import ttt_compile.passes.dual_form  # noqa: F401  (registers the pass)
from ttt_compile import passes
from ttt_compile.compiler import trace
from ttt_compile.ir.primitive import ttt_loop_p
from ttt_compile.models import layers
from ttt_compile.models.causal import causal_linear_attention

KEY = jax.random.PRNGKey(0)
DIM, HEADS, B = 16, 2, 4  # d_h = 8 != b = 4, so a (b, d_h, d_h) array is recognisable
DH = DIM // HEADS
X = 0.5 * jax.random.normal(jax.random.PRNGKey(1), (2, 4 * B, DIM))  # 2 sequences of 4 chunks


class Batched(eqx.Module):
    """The layer vmapped over a batch of sequences (how models call it)."""

    layer: eqx.Module

    def __call__(self, x):
        return jax.vmap(self.layer)(x)


SPECS = {
    "linear": lambda: layers.mttt_linear(dim=DIM, heads=HEADS, key=KEY, batching="online", chunk=B, lr=0.2),
    "linear_ln": lambda: layers.mttt_linear(
        dim=DIM, heads=HEADS, key=KEY, batching="online", chunk=B, lr=0.2, decoder_ln=True
    ),
    "linear_learned_W0": lambda: layers.mttt_linear(
        dim=DIM, heads=HEADS, key=KEY, batching="online", chunk=B, lr=0.2, init="learned"
    ),
    "mlp": lambda: layers.mttt_mlp(dim=DIM, heads=HEADS, key=KEY, batching="online", chunk=B, lr=0.2),
}
SPECS = {name: functools.lru_cache(maxsize=None)(build) for name, build in SPECS.items()}
DUAL = ["dual_form", "lower"]
PRIMAL = ["lower"]


@eqx.filter_jit
def _call(model, x):
    return model(x)


@eqx.filter_jit
@eqx.filter_grad
def _grad(model, x):
    return jnp.sum(jnp.sin(model(x)))


def assert_trees_close(got, want, rtol=1e-4):
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max()))


def notes(prog, name="dual_form"):
    return " ".join(n for stage, ns in prog.notes if stage == name for n in ns)


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(SPECS))
def test_dual_form_equals_the_primal_form_in_values_and_outer_gradients(spec):
    model = Batched(SPECS[spec]())
    dual, primal = tc.compile(model, X, passes=DUAL), tc.compile(model, X, passes=PRIMAL)
    assert "dual form for" in notes(dual)
    assert_trees_close(_call(dual, X), _call(model, X), rtol=1e-5)  # the reference layer
    assert_trees_close(_call(dual, X), _call(primal, X), rtol=1e-5)
    assert_trees_close(_grad(dual, X), _grad(primal, X))


def test_dual_form_values_for_the_mlp_learner_both_matrices():
    model = Batched(SPECS["mlp"]())
    dual = tc.compile(model, X, passes=DUAL)
    assert "dual form for W 32x8, W 8x32 (b=4)" in notes(dual)
    assert_trees_close(_call(dual, X), _call(model, X), rtol=1e-5)


def test_dual_form_inside_the_default_pipeline_with_checkpointing():
    model = Batched(SPECS["linear_ln"]())
    pipeline = ["remat", "dual_form", "sgd_batch", "unroll", "fold_zero_init", "simplify", "cse", "dce", "lower"]
    prog = tc.compile(model, X, passes=pipeline)
    assert "dual form for W 8x8 (b=4)" in notes(prog)
    assert_trees_close(_call(prog, X), _call(model, X), rtol=1e-5)
    assert_trees_close(_grad(prog, X), _grad(tc.compile(model, X, passes=PRIMAL), X))


def _loop_bodies(closed):
    return [e.params["body"] for e in closed.jaxpr.eqns if e.primitive is ttt_loop_p]


def _shapes(jaxpr):
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for e in jaxpr.eqns:
        yield from (tuple(v.aval.shape) for v in e.outvars)
        for sub in jax.extend.core.jaxprs_in_params(e.params):
            yield from _shapes(sub)


def _per_token_weights(shape) -> bool:
    """An array holding a (b, d_h, d_h) block: b per-token weight matrices."""
    return any(shape[i : i + 3] == (B, DH, DH) for i in range(len(shape) - 2))


def test_the_rewrite_on_a_tiny_jaxpr_materialises_no_per_token_weights():
    layer = SPECS["linear"]()
    closed, *_ = trace(layer, X[0])
    (before,) = _loop_bodies(closed)
    assert any(_per_token_weights(s) for s in _shapes(before))  # primal: (heads, b, d_h, d_h)
    after_program = passes.get("dual_form")(closed)
    (after,) = _loop_bodies(after_program)
    assert after is not before
    assert not any(_per_token_weights(s) for s in _shapes(after)), str(after)
    assert (HEADS, B, B) in set(_shapes(after))  # the masked tril(Q K^T) scores
    assert after.out_avals == before.out_avals  # same loop interface


@pytest.mark.parametrize(
    "why, build, match",
    [
        (
            "momentum",
            lambda: layers.mttt_linear(
                dim=DIM, heads=HEADS, key=KEY, batching="online", chunk=B, optimizer=optax.sgd(0.1, momentum=0.9)
            ),
            "are read by",
        ),
        (
            "b=1",
            lambda: layers.mttt_linear(dim=DIM, heads=HEADS, key=KEY, batching="online", chunk=1),
            "chunk b=1 < min_chunk=2",
        ),
        ("full batch", lambda: layers.mttt_linear(dim=DIM, heads=HEADS, key=KEY), "batching='online'"),
        ("no loop", lambda: causal_linear_attention(dim=DIM, heads=HEADS, key=KEY, chunk=B), "no ttt_loop"),
    ],
)
def test_when_it_does_not_apply_the_program_is_unchanged_and_the_note_says_why(why, build, match):
    layer = build()
    closed, *_ = trace(layer, X[0])
    with passes.collecting_notes() as ns:
        out = passes.get("dual_form")(closed)
    assert out is closed
    assert any("did not apply" in n and "because" in n and match in n for n in ns), ns


def test_one_chunk_of_n_tokens_is_unnormalised_causal_linear_attention():
    """W0 = 0, eta = 1 (eq. 1's units: lr = d_h in the presets' released units), no biases, b = n:
    W_i = sum_{j<=i} G^T x_j k_j^T, so out_i = i * (causal linear attention)_i (its 1/i normaliser; h has
    zero bias at initialisation), in the primal and the dual form."""
    n = X.shape[1]
    ttt = layers.mttt_linear(dim=DIM, heads=HEADS, key=KEY, batching="online", chunk=n, bias=False, lr=float(DH))
    la = layers.linear_attention(dim=DIM, heads=HEADS, key=KEY, causal=True)
    want = jnp.arange(1, n + 1, dtype=jnp.float32)[:, None] * la(X[0])
    np.testing.assert_allclose(ttt(X[0]), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tc.compile(ttt, X[0], passes=DUAL)(X[0]), want, rtol=1e-4, atol=1e-4)


class TransposedLinear(eqx.Module):
    """f(z; W) = W^T z: the gradient is k e^T, and AD writes it as a transposed outer product."""

    W: jax.Array

    def __call__(self, z):
        return z @ self.W


def test_a_learner_that_reads_its_weights_transposed_gets_the_dual_form_too():
    layer = tc.TTTLayer(
        DIM,
        HEADS,
        TransposedLinear(jnp.zeros((DH, DH))),
        inner=tc.Inner(batching="online", chunk=B, optimizer=optax.sgd(0.2)),
        key=KEY,
    )
    prog = tc.compile(layer, X[0], passes=DUAL)
    assert "dual form for W 8x8 (b=4)" in notes(prog)
    np.testing.assert_allclose(_call(prog, X[0]), _call(layer, X[0]), rtol=1e-5, atol=1e-5)
