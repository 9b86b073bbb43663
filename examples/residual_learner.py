"""A learner the package does not ship: f(z; W) = z + LN(W z), a residual linear learner."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

import ttt_compile as tc


class ResidualLinear(eqx.Module):
    W: Float[Array, "dh dh"]
    ln: eqx.nn.LayerNorm

    def __init__(self, dh: int, *, key):
        self.W = jax.random.normal(key, (dh, dh)) / jnp.sqrt(dh)
        self.ln = eqx.nn.LayerNorm(dh)

    def __call__(self, z: Float[Array, " dh"]) -> Float[Array, " dh"]:
        return z + self.ln(self.W @ z)


def make_layer(dim: int, heads: int, *, key):
    k1, k2 = jax.random.split(key)
    return tc.TTTLayer(
        dim, heads, ResidualLinear(dim // heads, key=k1), init="learned", inner=tc.Inner(steps=2), key=k2
    )
