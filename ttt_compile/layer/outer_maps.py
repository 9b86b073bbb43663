"""The outer maps of a TTT layer, trained by the outer loop: phi and psi (keys and queries, per head),
g (the decoder of the reconstruction task) and h (the output projection)."""
from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class Project(eqx.Module):
    """phi or psi: one token (d,) -> (heads, d_h), z_k = P_k x."""

    weight: Float[Array, "heads dh d"]

    def __init__(self, dim: int, heads: int, *, key: PRNGKeyArray):
        self.weight = jax.random.normal(key, (heads, dim // heads, dim)) / math.sqrt(dim)

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, "heads dh"]:
        return jnp.einsum("hkd,d->hk", self.weight, x)

    def tokens(self, x: Float[Array, "n d"]) -> Float[Array, "n heads dh"]:
        """The map applied to every token (one matmul)."""
        return jnp.einsum("hkd,nd->nhk", self.weight, x)


class Decoder(eqx.Module):
    """g: (heads, d_h) -> (heads, d), g_k(z) = G_k z, or LN(G_k z) with the paper's Decoder LN."""

    weight: Float[Array, "heads d dh"]
    ln: eqx.nn.LayerNorm | None

    def __init__(self, dim: int, heads: int, *, decoder_ln: bool, key: PRNGKeyArray):
        self.weight = jax.random.normal(key, (heads, dim, dim // heads)) / math.sqrt(dim // heads)
        self.ln = eqx.nn.LayerNorm(dim) if decoder_ln else None

    def __call__(self, z: Float[Array, "heads dh"]) -> Float[Array, "heads d"]:
        return jax.vmap(decode, in_axes=(0, None, 0))(self.weight, self.ln, z)


def decode(G: Float[Array, "d dh"], ln, z: Float[Array, " dh"]) -> Float[Array, " d"]:
    """One head's decoder g_k(z) = G_k z  (then LN if the task asks for it)."""
    y = G @ z
    return y if ln is None else ln(y)


class Output(eqx.Module):
    """h: (heads, d_h) -> (d,), h(o) = sum_k O_k o_k + b."""

    weight: Float[Array, "d heads dh"]
    bias: Float[Array, " d"]

    def __init__(self, dim: int, heads: int, *, key: PRNGKeyArray):
        self.weight = jax.random.normal(key, (dim, heads, dim // heads)) / math.sqrt(dim)
        self.bias = jnp.zeros((dim,))

    def __call__(self, o: Float[Array, "heads dh"]) -> Float[Array, " d"]:
        return jnp.einsum("dhk,hk->d", self.weight, o) + self.bias

    def tokens(self, o: Float[Array, "n heads dh"]) -> Float[Array, "n d"]:
        """The map applied to every token (one matmul)."""
        return jnp.einsum("dhk,nhk->nd", self.weight, o) + self.bias
