"""Ready-made inner-loop learners f(z; W).

A parametric learner is any `eqx.Module` whose inexact-array leaves are the fast weights W and whose
`__call__` maps one token z in R^{d_h} to R^{d_h}.  A non-parametric learner subclasses
`NonParametric`: `fit` stores what it needs from the keys and labels, `predict` answers a query.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from .host_init import layer_norm, normal, zeros


class Linear(eqx.Module):
    """f(z; W) = W z  (+ b with `bias=True`).  With W0 = 0 and one GD step of size eta=1, MTTT-Linear is
    linear attention."""

    W: Float[Array, "dout din"]
    b: Float[Array, " dout"] | None

    def __init__(self, din: int, dout: int | None = None, *, bias: bool = False, key: PRNGKeyArray | None = None):
        dout = din if dout is None else dout
        self.W = zeros((dout, din)) if key is None else normal(key, (dout, din), 1 / math.sqrt(din))
        self.b = zeros((dout,)) if bias else None

    def __call__(self, z: Float[Array, " din"]) -> Float[Array, " dout"]:
        return self.W @ z if self.b is None else self.W @ z + self.b


class MLP(eqx.Module):
    """f(z; W) = W2 gelu(W1 z + b1) + b2, hidden width 4 d_h (the paper's MTTT-MLP); `bias=False` drops
    b1 and b2.  gelu is jax.nn.gelu's tanh form (flax's too)."""

    W1: Float[Array, "hidden din"]
    b1: Float[Array, " hidden"] | None
    W2: Float[Array, "dout hidden"]
    b2: Float[Array, " dout"] | None

    def __init__(
        self, din: int, dout: int | None = None, *, hidden: int | None = None, bias: bool = True, key: PRNGKeyArray
    ):
        dout = din if dout is None else dout
        hidden = 4 * din if hidden is None else hidden
        k1, k2 = jax.random.split(key)
        self.W1 = normal(k1, (hidden, din), 1 / math.sqrt(din))
        self.b1 = zeros((hidden,)) if bias else None
        self.W2 = normal(k2, (dout, hidden), 1 / math.sqrt(hidden))
        self.b2 = zeros((dout,)) if bias else None

    def __call__(self, z: Float[Array, " din"]) -> Float[Array, " dout"]:
        a = self.W1 @ z if self.b1 is None else self.W1 @ z + self.b1
        y = self.W2 @ jax.nn.gelu(a)
        return y if self.b2 is None else y + self.b2


class ResidualLN(eqx.Module):
    """f(z; W) = z + LN(body(z; W)): a residual learner whose output passes a LayerNorm (ttt-lm-jax's
    TTT-Linear and TTT-MLP, Sun et al. 2024).  The LN's scale and offset are meant to be outer
    parameters: build the layer with `outer=ResidualLN.outer` (and `outer_per_head=True` for one LN per
    head, as ttt-lm-jax has), so that the fast weights are the body's arrays only.

    `ResidualLN.linear(d)`: body W z + b (TTT-Linear);  `ResidualLN.mlp(d)`: body W2 gelu(W1 z + b1) + b2,
    hidden 4 d (TTT-MLP)."""

    body: eqx.Module
    ln: eqx.nn.LayerNorm

    def __init__(self, body: eqx.Module, dim: int, *, eps: float = 1e-6):
        self.body = body
        self.ln = layer_norm(dim, eps=eps)

    def __call__(self, z: Float[Array, " d"]) -> Float[Array, " d"]:
        return z + self.ln(self.body(z))

    @staticmethod
    def outer(f: ResidualLN):
        """The LN: `TTTLayer(..., outer=ResidualLN.outer)` makes it an outer parameter."""
        return f.ln

    @classmethod
    def linear(cls, dim: int, *, key: PRNGKeyArray | None = None, eps: float = 1e-6) -> ResidualLN:
        """f(z) = z + LN(W z + b) (TTT-Linear); W = 0 without a key (for init='zero')."""
        return cls(Linear(dim, bias=True, key=key), dim, eps=eps)

    @classmethod
    def mlp(cls, dim: int, *, key: PRNGKeyArray, hidden: int | None = None, eps: float = 1e-6) -> ResidualLN:
        """f(z) = z + LN(W2 gelu(W1 z + b1) + b2), hidden 4 d by default (TTT-MLP)."""
        return cls(MLP(dim, hidden=hidden, key=key), dim, eps=eps)


class NonParametric(eqx.Module):
    """A learner whose 'training' stores data: fit(keys, labels) -> state; predict(state, q) -> out."""

    def fit(self, keys: Float[Array, "n dk"], labels: Float[Array, "n dv"]):
        raise NotImplementedError

    def predict(self, state, q: Float[Array, " dk"]) -> Float[Array, " dv"]:
        raise NotImplementedError


class NadarayaWatson(NonParametric):
    """Kernel regression  f(q) = sum_i k(q, k_i) v_i / sum_i k(q, k_i),  k(q, k) = exp(q.k / sqrt(d_h)).

    Fitting stores the keys k_i = phi(x_i) and labels v_i; with the reconstruction task the labels
    are v_i = -grad_z l(z; x_i) at z = 0 (for a linear decoder g(z) = G z: v_i = G^T x_i), which
    makes the layer exactly softmax attention with values G^T x_i.
    """

    def fit(self, keys, labels):
        return keys, labels

    def predict(self, state, q):
        keys, labels = state
        return jax.nn.softmax(keys @ q / math.sqrt(q.shape[-1])) @ labels
