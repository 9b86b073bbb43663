"""Two levels of learning at test time: the inner learner f is itself a TTT layer's forward pass.

    f(z; W) = W2 . vec( TTT_inner( reshape(W1 z, (m, d')) ) )

A TTT layer learns over the m sub-tokens of one head's token z; W1, W2 are fast weights, the inner
layer's phi, psi, g, h outer parameters (`outer=`) or, with `inner_fast=True`, fast weights too.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float

import ttt_compile as tc


class TTTLearner(eqx.Module):
    W1: Float[Array, "md dh"]
    W2: Float[Array, "dh md"]
    inner: tc.TTTLayer
    m: int = eqx.field(static=True)

    def __init__(self, dh: int, m: int, d: int, *, steps: int = 1, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.W1 = jax.random.normal(k1, (m * d, dh)) / jnp.sqrt(dh)
        self.W2 = jax.random.normal(k2, (dh, m * d)) / jnp.sqrt(m * d)
        self.inner = tc.TTTLayer(d, 1, tc.learners.Linear(d), inner=tc.Inner(steps, optimizer=optax.sgd(0.2)), key=k3)
        self.m = m

    def __call__(self, z: Float[Array, " dh"]) -> Float[Array, " dh"]:
        return self.W2 @ self.inner((self.W1 @ z).reshape(self.m, -1)).reshape(-1)


def make_layer(
    dim: int = 8,
    heads: int = 2,
    *,
    m: int = 3,
    d: int = 4,
    steps: int = 2,
    lr: float = 0.02,
    inner_steps: int = 1,
    inner_fast: bool = False,
    key,
):
    k1, k2 = jax.random.split(key)
    learner = TTTLearner(dim // heads, m, d, steps=inner_steps, key=k1)
    return tc.TTTLayer(
        dim,
        heads,
        learner,
        init="learned",
        inner=tc.Inner(steps=steps, optimizer=optax.sgd(lr)),
        key=k2,
        outer=None if inner_fast else (lambda f: f.inner),
    )
