"""The outer maps of a TTT layer, trained by the outer loop: phi and psi (keys and queries, per head),
g (the decoder of the reconstruction task) and h (the output projection)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .host_init import layer_norm, normal, zeros


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
    """One head's decoder g_k(z) = G_k z (+ c)  (then LN if the task asks for it)."""
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


class Output(eqx.Module):
    """h: (heads, d_h) -> (d,), h(o) = sum_k O_k o_k + b  (the released code's output bias is b)."""

    weight: Float[Array, "d heads dh"]
    bias: Float[Array, " d"]

    def __init__(self, dim: int, heads: int, *, key: PRNGKeyArray):
        self.weight = normal(key, (dim, heads, dim // heads), 1 / math.sqrt(dim))
        self.bias = zeros((dim,))

    def __call__(self, o: Float[Array, "heads dh"]) -> Float[Array, " d"]:
        return jnp.einsum("dhk,hk->d", self.weight, o) + self.bias

    def tokens(self, o: Float[Array, "n heads dh"]) -> Float[Array, "n d"]:
        """The map applied to every token (one matmul)."""
        return jnp.einsum("dhk,nhk->nd", self.weight, o) + self.bias
