"""Drop-in sequence layers, each `preset(dim=..., heads=..., key=..., **options)` -> an eqx.Module
mapping (n, dim) -> (n, dim), vmappable over a batch.

Every layer here shares the outer maps of `tc.TTTLayer`, named as in the paper: phi (keys), psi
(queries), g (per-head decoder G_k: d_h -> d; the attention baselines use its transpose G_k^T as
the value map) and h (output).  So an attention baseline and a TTT layer built from the same key
have the same weights, and the paper's equivalences can be checked directly:

    mttt_linear (W0 = 0, T = 1, eta = 1 in eq. 1's units, no biases)  ==  linear_attention(feature_map="identity")
    mttt_kernel (Nadaraya-Watson learner)                           ==  self_attention

The TTT presets use the released code's parametrisation by default (`parametrisation="released"`,
`tc.Reconstruction.released`): the inner loss is eq. 1 / d_h, phi and psi have per-head biases and g a
shared bias, so `lr` is the released `inner_lr` and lr = 1 is eta = 1/d_h in eq. 1's units (MTTT-Linear
equals linear attention with `bias=False, lr=d_h`).  `parametrisation="paper"` is eq. 1 as written, no
biases (eta = lr).
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from ttt_compile.layer import Decoder, Output, Project, TTTLayer, check_tokens
from ttt_compile.layer.host_init import normal, zeros
from ttt_compile.layer.learners import MLP, Linear, NadarayaWatson
from ttt_compile.layer.spec import Inner, Reconstruction, SpecError
from ttt_compile.layer.ttt_lm_jax import ttt_lm_jax_layer


class Attention(eqx.Module):
    """Multi-head attention over values v_i = G_k^T x_i with keys phi(x), queries psi(x).

    kind="softmax":  o_j = sum_i softmax_i(q_j.k_i / sqrt(d_h)) v_i
    kind="identity": o_j = 1/n sum_i (q_j.k_i) v_i  = 1/n q_j^T (K^T V)       (linear, phi(x) = x)
    kind="elu1":     o_j = f(q_j)^T S / f(q_j).z,  S = sum_i f(k_i) v_i^T, z = sum_i f(k_i),
                     f = elu + 1  (Katharopoulos et al. 2020)
    causal=True restricts the sums to i <= j (and 1/n to 1/j).
    """

    phi: Project
    psi: Project
    g: Decoder
    h: Output
    dim: int = eqx.field(static=True)
    heads: int = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    causal: bool = eqx.field(static=True)

    def __init__(self, dim: int, heads: int, *, kind: str, causal: bool = False, key: PRNGKeyArray):
        _check_dims(dim, heads)
        kp, kq, kg, kh = jax.random.split(key, 4)
        self.phi, self.psi = Project(dim, heads, key=kp), Project(dim, heads, key=kq)
        self.g = Decoder(dim, heads, decoder_ln=False, key=kg)
        self.h = Output(dim, heads, key=kh)
        self.dim, self.heads, self.kind, self.causal = dim, heads, kind, causal

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        check_tokens(x, self.dim)
        k, q = self.phi.tokens(x), self.psi.tokens(x)
        v = jnp.einsum("hdk,nd->nhk", self.g.weight, x)
        o = {"softmax": softmax_attention, "identity": identity_attention, "elu1": elu1_attention}[self.kind](
            q, k, v, self.causal
        )
        return self.h.tokens(o)


def softmax_attention(q, k, v, causal: bool):
    s = jnp.einsum("nhk,mhk->hnm", q, k) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[0]
        s = jnp.where(jnp.tril(jnp.ones((n, n), bool)), s, -jnp.inf)
    return jnp.einsum("hnm,mhk->nhk", jax.nn.softmax(s, axis=-1), v)


def identity_attention(q, k, v, causal: bool):
    n = q.shape[0]
    if causal:
        s = jnp.tril(jnp.einsum("nhk,mhk->hnm", q, k)) / jnp.arange(1, n + 1, dtype=q.dtype)[:, None]
        return jnp.einsum("hnm,mhk->nhk", s, v)
    return jnp.einsum("nhk,hkv->nhv", q, jnp.einsum("nhk,nhv->hkv", k, v) / n)


def elu1_attention(q, k, v, causal: bool):
    fq, fk = jax.nn.elu(q) + 1, jax.nn.elu(k) + 1
    if causal:
        s = jnp.tril(jnp.einsum("nhk,mhk->hnm", fq, fk))
        return jnp.einsum("hnm,mhk->nhk", s, v) / jnp.sum(s, -1).T[..., None]
    S, z = jnp.einsum("nhk,nhv->hkv", fk, v), jnp.sum(fk, axis=0)
    return jnp.einsum("nhk,hkv->nhv", fq, S) / jnp.einsum("nhk,hk->nh", fq, z)[..., None]


def _check_dims(dim, heads):
    if not isinstance(dim, int) or not isinstance(heads, int) or dim < 1 or heads < 1:
        raise SpecError(f"dim and heads must be positive ints, got dim={dim!r}, heads={heads!r}")
    if dim % heads:
        raise SpecError(
            f"heads={heads} must divide dim={dim}; pick heads from "
            f"{[h for h in range(1, dim + 1) if dim % h == 0][:12]}"
        )


def _options(name: str, options: dict, allowed: dict) -> dict:
    unknown = set(options) - set(allowed)
    if unknown:
        raise SpecError(f"{name}: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return {**allowed, **options}


# --------------------------------------------------------------------------- presets
def self_attention(*, dim: int, heads: int, key: PRNGKeyArray, **options) -> Attention:
    """Softmax attention (options: causal)."""
    o = _options("self_attention", options, {"causal": False})
    return Attention(dim, heads, kind="softmax", causal=o["causal"], key=key)


def linear_attention(*, dim: int, heads: int, key: PRNGKeyArray, feature_map: str = "identity", **options) -> Attention:
    """Linear attention, feature_map "identity" (1/n q^T K^T V) or "elu1" (options: causal)."""
    if feature_map not in ("identity", "elu1"):
        raise SpecError(f"linear_attention: feature_map must be 'identity' or 'elu1', got {feature_map!r}")
    o = _options("linear_attention", options, {"causal": False})
    return Attention(dim, heads, kind=feature_map, causal=o["causal"], key=key)


_TTT_OPTIONS = {
    "steps": 1,
    "batching": "full",
    "chunk": 1,
    "lr": 1.0,
    "decoder_ln": False,
    "init": "zero",
    "optimizer": None,
    "parametrisation": "released",
    "bias": None,
    "eta": "fixed",
    "eta_base": 1.0,
    "inner_dtype": None,
    "token_chunk": None,
}


def task_for(parametrisation: str, decoder_ln: bool, bias: bool | None) -> Reconstruction:
    """The preset's task: the released code's parametrisation or eq. 1 as written (`bias` overrides
    whether phi/psi/g have biases; None keeps the parametrisation's choice)."""
    if parametrisation not in ("released", "paper"):
        raise SpecError(
            f"parametrisation must be 'released' (the released code's: loss / d_h, biases) or "
            f"'paper' (eq. 1, no biases), got {parametrisation!r}"
        )
    task = Reconstruction.released(decoder_ln) if parametrisation == "released" else Reconstruction(decoder_ln)
    return task if bias is None else dataclasses.replace(task, bias=bias)


def _ttt(name, learner, dim, heads, key, options, outer=None, **defaults) -> TTTLayer:
    _check_dims(dim, heads)
    o = _options(name, options, {**_TTT_OPTIONS, **defaults})
    opt = o["optimizer"] if o["optimizer"] is not None else optax.sgd(o["lr"])
    return TTTLayer(
        dim,
        heads,
        learner,
        init=o["init"],
        task=task_for(o["parametrisation"], o["decoder_ln"], o["bias"]),
        inner=Inner(
            steps=o["steps"],
            batching=o["batching"],
            chunk=o["chunk"],
            optimizer=opt,
            eta=o["eta"],
            eta_base=o["eta_base"],
            dtype=o["inner_dtype"],
            token_chunk=o["token_chunk"],
        ),
        outer=outer,
        key=key,
    )


def mttt_linear(*, dim: int, heads: int, key: PRNGKeyArray, **options) -> TTTLayer:
    """MTTT-Linear: f(z; W) = W z, W0 = 0 (options: steps, batching, chunk, lr, decoder_ln, init, optimizer,
    parametrisation, bias, eta, eta_base, inner_dtype = Inner.dtype, token_chunk = Inner.token_chunk)."""
    _check_dims(dim, heads)
    return _ttt("mttt_linear", Linear(dim // heads), dim, heads, key, options)


def mttt_mlp(*, dim: int, heads: int, key: PRNGKeyArray, **options) -> TTTLayer:
    """MTTT-MLP: f = 2-layer GELU MLP (hidden 4 d_h), learned W0, Decoder LN (same options)."""
    _check_dims(dim, heads)
    k_learner, k_layer = jax.random.split(key)
    learner = MLP(dim // heads, key=k_learner)
    if options.get("init") == "zero":  # W0 = 0 is the learner's own value, not a reset
        learner = jax.tree.map(lambda a: zeros(a.shape), learner)
    return _ttt("mttt_mlp", learner, dim, heads, k_layer, options, init="learned", decoder_ln=True)


class NestedMLP(eqx.Module):
    """A two-level learner: MTTT-MLP's learner whose hidden layer learns at test time itself.

        u = reshape(W1 z + b1, (m, d')),   f(z; W) = W2 gelu(vec(u + TTT_inner(u))) + b2

    TTT_inner is an MTTT-Linear layer (one head, W0 = 0, T = 1, eta = 1) over the m sub-tokens of
    width d' of one token's hidden vector (hidden = m d' = 4 d_h, as MTTT-MLP's); its phi, psi, g, h
    are outer parameters (`outer=lambda f: f.inner`), W1, b1, W2, b2 fast weights."""

    W1: Float[Array, "hidden dh"]
    b1: Float[Array, " hidden"]
    W2: Float[Array, "dh hidden"]
    b2: Float[Array, " dh"]
    inner: TTTLayer
    m: int = eqx.field(static=True)

    def __init__(self, dh: int, *, sub: int = 8, key: PRNGKeyArray):
        hidden = 4 * dh
        if hidden % sub:
            raise SpecError(f"NestedMLP: sub-token width sub={sub} must divide the hidden width 4 d_h = {hidden}")
        k1, k2, k3 = jax.random.split(key, 3)
        self.W1 = normal(k1, (hidden, dh), 1 / math.sqrt(dh))
        self.b1 = zeros((hidden,))
        self.W2 = normal(k2, (dh, hidden), 1 / math.sqrt(hidden))
        self.b2 = zeros((dh,))
        self.inner = TTTLayer(sub, 1, Linear(sub), inner=Inner(optimizer=optax.sgd(1.0)), key=k3)
        self.m = hidden // sub

    def __call__(self, z: Float[Array, " dh"]) -> Float[Array, " dh"]:
        u = (self.W1 @ z + self.b1).reshape(self.m, -1)
        return self.W2 @ jax.nn.gelu((u + self.inner(u)).reshape(-1)) + self.b2


def mttt_nested(*, dim: int, heads: int, key: PRNGKeyArray, sub: int = 8, **options) -> TTTLayer:
    """Two-level MTTT: the `NestedMLP` learner (an MTTT-Linear layer inside MTTT-MLP's learner, over
    sub-tokens of width `sub`), learned W0, decoder LN (the TTT options of mttt_mlp)."""
    _check_dims(dim, heads)
    k_learner, k_layer = jax.random.split(key)
    learner = NestedMLP(dim // heads, sub=sub, key=k_learner)
    return _ttt(
        "mttt_nested", learner, dim, heads, k_layer, options, outer=lambda f: f.inner, init="learned", decoder_ln=True
    )


def mttt_kernel(*, dim: int, heads: int, key: PRNGKeyArray, **options) -> TTTLayer:
    """MTTT with a Nadaraya-Watson learner: softmax attention as a test-time learner (eq. 1's
    parametrisation: the released code has no such layer, and loss / d_h would scale the values)."""
    _check_dims(dim, heads)
    o = _options("mttt_kernel", options, {"decoder_ln": False})
    return TTTLayer(dim, heads, NadarayaWatson(), task=Reconstruction(decoder_ln=o["decoder_ln"]), key=key)


_TTT_LM_OPTIONS = {"chunk": 16, "lr": 1.0, "base": False, "conv_width": 4, "rope_theta": 10000.0, "batching": "online"}


def _ttt_lm(kind: str, dim: int, heads: int, key: PRNGKeyArray, options: dict) -> TTTLayer:
    _check_dims(dim, heads)
    o = _options(f"ttt_{kind}", options, _TTT_LM_OPTIONS)
    if o["batching"] != "online":
        raise SpecError(f"ttt_{kind}: the layer is causal (batching='online'), got batching={o['batching']!r}")
    return ttt_lm_jax_layer(
        kind=kind + ("_base" if o["base"] else ""),
        width=dim,
        heads=heads,
        mini_batch_size=o["chunk"],
        base_lr=o["lr"],
        rope_theta=o["rope_theta"],
        conv_width=o["conv_width"],
        key=key,
    )


def ttt_linear(*, dim: int, heads: int, key: PRNGKeyArray, **options) -> TTTLayer:
    """TTT-Linear (Sun et al. 2024, ttt-lm-jax's TTTLinear) as ttt-lm-jax builds it: f(z) = z + LN(W z + b),
    a multi-view task, online chunks with the learned 1/i factor, RoPE, a shared q/k projection with causal
    convolutions, an output norm and gate (options: chunk = b (16), lr = ttt_base_lr (1.0),
    base = TTTLinearBase (no convolutions, no gate), conv_width (4), rope_theta (1e4))."""
    return _ttt_lm("linear", dim, heads, key, options)


def ttt_mlp(*, dim: int, heads: int, key: PRNGKeyArray, **options) -> TTTLayer:
    """TTT-MLP (ttt-lm-jax's TTTMLP): f(z) = z + LN(W2 gelu(W1 z + b1) + b2), hidden 4 d_h, otherwise as
    `ttt_linear` (same options)."""
    return _ttt_lm("mlp", dim, heads, key, options)


PRESETS = {
    "self_attention": self_attention,
    "linear_attention": linear_attention,
    "linear_attention_elu1": lambda **kw: linear_attention(feature_map="elu1", **kw),
    "mttt_linear": mttt_linear,
    "mttt_mlp": mttt_mlp,
    "mttt_kernel": mttt_kernel,
    "mttt_nested": mttt_nested,
    "ttt_linear": ttt_linear,
    "ttt_mlp": ttt_mlp,
}


def get(name: str):
    """The preset factory called `name` (a key of PRESETS)."""
    if name not in PRESETS:
        raise SpecError(f"unknown layer {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
