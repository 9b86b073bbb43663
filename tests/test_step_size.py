"""Learned inner step sizes (tc.Inner(eta="per_head" | "per_token")): their meaning, and every pass keeps
it (values and outer gradients in float64, each pass alone and the default pipeline)."""

import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ttt_compile as tc
from ttt_compile.layer.spec import SpecError
from ttt_compile.models import layers
from ttt_compile.models.lm import causal_lm
from ttt_compile.validate import relative_error

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402

KEY = jax.random.PRNGKey(0)
PASSES = [["fold_zero_init"], ["simplify"], ["sgd_batch"], ["dual_form"], ["remat"], "default"]
BATCHING = {"full": {"steps": 2}, "sgd": {"steps": 2}, "online": {"chunk": 4}}


def gated(layer, key, scale=0.3):
    """The layer with its step-size gate moved off its zero init (so that eta varies per head and token)."""
    k1, k2 = jax.random.split(key)
    layer = eqx.tree_at(lambda m: m.eta.bias, layer, jax.random.normal(k1, layer.eta.bias.shape, layer.eta.bias.dtype))
    if layer.eta.theta is not None:
        theta = scale * jax.random.normal(k2, layer.eta.theta.shape, layer.eta.theta.dtype)
        layer = eqx.tree_at(lambda m: m.eta.theta, layer, theta)
    return layer


def build(preset, eta, batching, dtype=jnp.float32, **options):
    layer = layers.get(preset)(dim=8, heads=2, key=KEY, eta=eta, batching=batching, **{**BATCHING[batching], **options})
    layer = jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, layer)
    return gated(layer, jax.random.fold_in(KEY, 1))


FAST = {
    ("mttt_linear", "per_token", "online", "dual_form"),
    ("mttt_linear", "per_token", "sgd", "sgd_batch"),
    ("mttt_linear", "per_head", "full", "fold_zero_init"),
    ("mttt_mlp", "per_token", "online", "default"),
    ("mttt_mlp", "per_head", "full", "simplify"),
    ("mttt_linear", "per_token", "full", "remat"),
    ("mttt_linear", "per_head", "online", "default"),
}


def _cases():
    out = []
    for preset in ("mttt_linear", "mttt_mlp"):
        for eta in ("per_head", "per_token"):
            for batching in BATCHING:
                for p in PASSES:
                    name = p if isinstance(p, str) else p[0]
                    fast = (preset, eta, batching, name) in FAST
                    out.append(
                        pytest.param(
                            preset,
                            eta,
                            batching,
                            p,
                            marks=() if fast else pytest.mark.slow,
                            id=f"{preset}-{eta}-{batching}-{name}",
                        )
                    )
    return out


@pytest.mark.parametrize("preset,eta,batching,passes", _cases())
def test_every_pass_keeps_a_learned_step_size(preset, eta, batching, passes):
    """Every pass keeps a learned step size (values and gradients, float64).  These cases once ran in a
    child process after XLA's CPU compiler segfaulted in them late in the suite; the cause was the
    process's JIT code mappings reaching vm.max_map_count (conftest.py now drops compiled programs after
    every module), and under pytest-xdist a native crash costs one worker, not the run."""
    with jax.enable_x64(True):
        layer = build(preset, eta, batching, jnp.float64)
        x = jax.random.normal(jax.random.fold_in(KEY, 2), (8, 8), jnp.float64)
        v = np_eval.validate(layer, x, passes)
        assert v.ok(1e-9), v
        # the step size's own parameters get outer gradients (they are trained by the outer loop)
        g = eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m(x))))(layer)
        assert jnp.all(jnp.abs(g.eta.bias) > 0)
        if eta == "per_token":
            assert jnp.all(jnp.any(jnp.abs(g.eta.theta) > 0, axis=1))


def test_dual_form_applies_with_a_per_token_step():
    """The weighted per-token loss puts eta_i into e_i of grad_i = e_i k_i^T: still an outer product."""
    layer = build("mttt_linear", "per_token", "online")
    x = jax.random.normal(KEY, (8, 8))
    prog = tc.compile(layer, x, passes=["dual_form"])
    notes = dict(prog.notes)["dual_form"]
    assert any("dual form for W" in n for n in notes), notes


def test_step_size_meaning():
    """per_head: eta_k = eta_base sigmoid(b_k) scales head k's step; per_token with theta = 0 is per_head;
    per_token weights token i's gradient by eta_k(x_i)."""
    x = jax.random.normal(KEY, (8, 8))
    fixed = layers.mttt_linear(dim=8, heads=2, key=KEY, lr=0.5)
    head = layers.mttt_linear(dim=8, heads=2, key=KEY, lr=1.0, eta="per_head", eta_base=1.0)
    assert relative_error(head(x), fixed(x)) < 1e-6  # sigmoid(0) = 1/2: eta = 0.5
    b = jnp.array([0.3, -1.2])
    head = eqx.tree_at(lambda m: m.eta.bias, head, b)
    token = eqx.tree_at(lambda m: m.eta.bias, layers.mttt_linear(dim=8, heads=2, key=KEY, eta="per_token"), b)
    assert relative_error(token(x), head(x)) < 1e-6
    # a step weighted per token, by hand (W0 = 0, one full step, linear decoder): W_1 = lr/n sum_i eta_i e_i k_i^T
    token = gated(token, KEY)
    eta = token.eta(x)  # (heads, n)
    k, q = token.phi.tokens(x), token.psi.tokens(x)
    scale = token.loss_scale
    out = []
    for h in range(2):
        G = token.g.weight[h]
        e = (x - token.g.bias) @ G  # -dl/dz at W = 0: G^T (x_i - c)
        W1 = scale * jnp.einsum("n,na,nb->ab", eta[h], e, k[:, h]) / x.shape[0]
        out.append(q[:, h] @ W1.T)
    want = token.h.tokens(jnp.stack(out, axis=1))
    assert relative_error(token(x), want) < 1e-5
    assert relative_error(gated(token, jax.random.fold_in(KEY, 9))(x), want) > 1e-3  # the gate matters


def test_lm_decode_path_reads_each_tokens_step_size():
    def mixer(**kw):
        return gated(layers.mttt_linear(batching="online", chunk=4, eta="per_token", **kw), KEY)

    model = causal_lm(vocab=11, width=16, depth=1, heads=2, max_len=16, mixer=mixer, key=KEY)
    ids = jax.random.randint(KEY, (12,), 0, 11)
    np.testing.assert_allclose(eqx.filter_jit(model.decode)(ids), eqx.filter_jit(model)(ids), rtol=1e-4, atol=1e-4)


def test_bad_step_size_specs_are_clear_errors():
    with pytest.raises(SpecError, match="Inner.eta must be"):
        tc.Inner(eta="learned")
    with pytest.raises(SpecError, match="eta_base"):
        tc.Inner(eta="per_head", eta_base=0.0)
    with pytest.raises(SpecError, match="parametric learner"):
        tc.TTTLayer(
            8, 2, tc.learners.NadarayaWatson(), inner=tc.Inner(eta="per_head", optimizer=optax.sgd(1.0)), key=KEY
        )
