"""The outer maps of a TTT layer, trained by the outer loop: phi and psi (keys and queries, per head),
g (the decoder of the reconstruction task) and h (the output projection)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .host_init import default_float, layer_norm, normal, zeros


class Project(eqx.Module):
    """phi or psi: one token (d,) -> (heads, d_h), z_k = P_k x  (+ p_k with per-head biases)."""

    weight: Float[Array, "heads dh d"]
    bias: Float[Array, "heads dh"] | None

    def __init__(self, dim: int, heads: int, *, bias: bool = False, key: PRNGKeyArray):
        self.weight = normal(key, (heads, dim // heads, dim), 1 / math.sqrt(dim))
        self.bias = zeros((heads, dim // heads)) if bias else None

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, "heads dh"]:
        z = jnp.einsum("hkd,d->hk", self.weight, x)
        return z if self.bias is None else z + self.bias

    def tokens(self, x: Float[Array, "n d"]) -> Float[Array, "n heads dh"]:
        """The map applied to every token (one matmul)."""
        z = jnp.einsum("hkd,nd->nhk", self.weight, x)
        return z if self.bias is None else z + self.bias


class Decoder(eqx.Module):
    """g: (heads, d_h) -> (heads, d), g_k(z) = G_k z (+ c, one bias shared by the heads), then the
    paper's Decoder LN if asked (its scale and offset shared, or per head: `ln_per_head`)."""

    weight: Float[Array, "heads d dh"]
    bias: Float[Array, " d"] | None
    ln: eqx.nn.LayerNorm | None
    ln_per_head: bool = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        decoder_ln: bool,
        bias: bool = False,
        ln_per_head: bool = False,
        ln_eps: float = 1e-5,
        key: PRNGKeyArray,
    ):
        self.weight = normal(key, (heads, dim, dim // heads), 1 / math.sqrt(dim // heads))
        self.bias = zeros((dim,)) if bias else None
        self.ln_per_head = bool(decoder_ln and ln_per_head)
        if not decoder_ln:
            self.ln = None
        elif self.ln_per_head:
            self.ln = layer_norm(dim, eps=ln_eps, copies=heads)
        else:
            self.ln = layer_norm(dim, eps=ln_eps)

    def __call__(self, z: Float[Array, "heads dh"]) -> Float[Array, "heads d"]:
        return jax.vmap(decode, in_axes=(0, self.ln_axis, 0, None))(self.weight, self.ln, z, self.bias)

    @property
    def ln_axis(self) -> int | None:
        """vmap's in_axes for `ln` over the heads."""
        return 0 if self.ln_per_head else None


def decode(
    G: Float[Array, "d dh"], ln, z: Float[Array, " dh"], c: Float[Array, " d"] | None = None
) -> Float[Array, " d"]:
    """One head's decoder g_k(z) = G_k z (+ c)  (then LN if the task asks for it); G None: no decoder
    (a MultiView task compares f's output with its label view directly), g(z) = z."""
    if G is None:
        return z
    y = G @ z
    if c is not None:
        y = y + c
    return y if ln is None else ln(y)


class StepSize(eqx.Module):
    """A learned inner step size per head:  eta_k = eta_base * sigmoid(b_k)  ("per_head"), or per token
    eta_k(x_i) = eta_base * sigmoid(theta_k . x_i + b_k)  ("per_token", TTT-Linear/MLP's gate)."""

    theta: Float[Array, "heads d"] | None
    bias: Float[Array, " heads"]
    eta_base: float = eqx.field(static=True)

    def __init__(self, dim: int, heads: int, *, per_token: bool, eta_base: float):
        self.theta = zeros((heads, dim)) if per_token else None
        self.bias = zeros((heads,))
        self.eta_base = float(eta_base)

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, "heads n"] | Float[Array, " heads"]:
        """(heads, n) per token, or (heads,) per head."""
        if self.theta is None:
            return self.eta_base * jax.nn.sigmoid(self.bias)
        return self.eta_base * jax.nn.sigmoid(jnp.einsum("hd,nd->hn", self.theta, x) + self.bias[:, None])


class CausalConv(eqx.Module):
    """A causal depthwise convolution over the sequence, per channel c of the (n, heads, d_h) keys or queries:

        u'_t[c] = sum_{s=0}^{w-1} kernel[s, c] u_{t-w+1+s}[c] + bias[c]      (u_t = 0 for t < 0)

    Token t reads tokens t-w+1..t only, so an online layer stays causal."""

    kernel: Float[Array, "w heads dh"]
    bias: Float[Array, "heads dh"]

    def __init__(self, width: int, heads: int, dh: int):
        # starts as the identity (the last tap 1): the convolution is learned from there
        kernel = np.zeros((width, heads, dh), default_float())
        kernel[-1] = 1.0
        self.kernel = jax.device_put(kernel)
        self.bias = zeros((heads, dh))

    def __call__(self, u: Float[Array, "n heads dh"]) -> Float[Array, "n heads dh"]:
        w, n = self.kernel.shape[0], u.shape[0]
        padded = jnp.concatenate([jnp.zeros((w - 1, *u.shape[1:]), u.dtype), u])
        # Each tap as a contraction batched over channels, not a broadcast product: the backward pass then
        # makes dL/dkernel[s] = sum_t dL/du'_t u_{t-w+1+s} a contraction over tokens, where a broadcast
        # product's transpose is a multiply-reduce that XLA:CPU runs ~7x slower at batch 1 (one conv's
        # gradient, n = 2048, 4 x 64 channels: 26.2 against 3.6 ms; the TTT layers' table in
        # benchmarks/results/ttt_lm_jax).  HIGHEST: full f32 products on TPU too.
        out = sum(
            jnp.einsum("nhd,hd->nhd", jax.lax.slice_in_dim(padded, s, s + n), self.kernel[s], precision="highest")
            for s in range(w)
        )
        return out + self.bias


def rotary(u: Float[Array, "n heads dh"], theta: float, period: int | None) -> Float[Array, "n heads dh"]:
    """Rotary position embedding: each pair (u[2i], u[2i+1]) of a head's d_h dims rotated by the angle
    p * theta^(-2i/d_h) at position p = t (or t mod period).  The angles are host constants."""
    n, dh = u.shape[0], u.shape[-1]
    if dh % 2:
        raise ValueError(f"rotary position embedding needs an even head dimension d_h, got {dh}")
    pos = np.arange(n) if period is None else np.arange(n) % period
    angle = np.outer(pos, rotary_frequencies(dh, theta))  # (n, dh/2)
    return rotate(u, jnp.asarray(np.cos(angle), u.dtype), jnp.asarray(np.sin(angle), u.dtype))


def rotary_frequencies(dh: int, theta: float) -> np.ndarray:
    """theta^(-2i/d_h) for i = 0..d_h/2-1."""
    return 1.0 / theta ** (np.arange(0, dh, 2)[: dh // 2] / dh)


def rotate(u: Float[Array, "n heads dh"], cos: Float[Array, "n half"], sin: Float[Array, "n half"]):
    """Each pair (u[2i], u[2i+1]) rotated by the angle whose cosine and sine are given per token."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    even, odd = u[..., 0::2], u[..., 1::2]
    return jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(u.shape)


class Output(eqx.Module):
    """h: (heads, d_h) -> (d,), h(o) = sum_k O_k o_k + b  (the released code's output bias is b).

    With `Readout(norm=True)` the heads' outputs are first layer-normalised together (over all H d_h
    dims), with `Readout(gate=True)` multiplied by gelu(W_g x) of the layer's input token x, and with
    `Readout(bias=False)` there is no b:  h(o, x) = O (gelu(W_g x) * LN(o)) + b."""

    weight: Float[Array, "d heads dh"]
    bias: Float[Array, " d"] | None
    norm: eqx.nn.LayerNorm | None
    gate: Float[Array, "d d"] | None

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        key: PRNGKeyArray,
        norm: bool = False,
        gate: bool = False,
        bias: bool = True,
        norm_eps: float = 1e-6,
    ):
        self.weight = normal(key, (dim, heads, dim // heads), 1 / math.sqrt(dim))
        self.bias = zeros((dim,)) if bias else None
        self.norm = layer_norm(dim, eps=norm_eps) if norm else None
        self.gate = normal(jax.random.fold_in(key, 1), (dim, dim), 1 / math.sqrt(dim)) if gate else None

    def __call__(self, o: Float[Array, "heads dh"], x: Float[Array, " d"] | None = None) -> Float[Array, " d"]:
        return self.tokens(o[None], None if x is None else x[None])[0]

    def tokens(self, o: Float[Array, "n heads dh"], x: Float[Array, "n d"] | None = None) -> Float[Array, "n d"]:
        """The map applied to every token (one matmul); `x` (the layer's input) is needed with a gate."""
        if self.norm is not None:
            n, heads, dh = o.shape
            o = jax.vmap(self.norm)(o.reshape(n, heads * dh)).reshape(n, heads, dh)
        if self.gate is not None:
            if x is None:
                raise ValueError("a gated output map h(o, x) needs the layer's input tokens x")
            o = jax.nn.gelu(x @ self.gate.T).reshape(o.shape) * o
        out = jnp.einsum("dhk,nhk->nd", self.weight, o)
        return out if self.bias is None else out + self.bias
