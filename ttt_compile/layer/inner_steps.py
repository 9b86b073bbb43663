"""The inner loop's math as pure functions: the reconstruction loss and one inner step.

    l(W; X)  = 1/(2b) sum_i || g(f(phi(x_i); W)) - x_i ||^2
    W_{t+1}  = W_t + u_t,   (u_t, s_{t+1}) = optimizer.update(grad l(W_t; X_t), s_t, W_t)

`compute` (a dtype or None) is the dtype the learner sees W in: W is cast to it where it is used,
so the fast weights, their gradients and updates keep their own dtype while the matmuls run in
`compute` (Inner.dtype="mixed").
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float

from .outer_maps import decode


def token_loss(pred: Float[Array, " d"], x: Float[Array, " d"]) -> Float[Array, ""]:
    """1/2 ||g(f(phi(x))) - x||^2 for one token."""
    return 0.5 * jnp.sum((pred - x) ** 2)


def reconstruction_loss(W, static, G, ln, k: Float[Array, "b dh"], x: Float[Array, "b d"]) -> Float[Array, ""]:
    """l(W; X) = 1/(2b) sum_i ||g(f(k_i; W)) - x_i||^2 over the b tokens given."""
    f = eqx.combine(W, static)
    pred = jax.vmap(lambda ki: decode(G, ln, f(ki)))(k)
    return 0.5 * jnp.mean(jnp.sum((pred - x) ** 2, axis=-1))


def as_compute(W, compute):
    """W with every float array cast to `compute` (W itself when compute is None)."""
    if compute is None:
        return W
    return jax.tree.map(lambda w: w.astype(compute) if eqx.is_inexact_array(w) else w, W)


def batch_step(opt: optax.GradientTransformation, static, compute=None):
    """One full-batch or mini-batch step: W <- W + u, (u, s) = opt.update(grad l(W; X_t), s, W)."""
    def step(consts, carry, xt):
        if xt is None:
            G, ln, k, x = consts
        else:
            (G, ln), (k, x) = consts, xt
        W, s = carry
        grads = jax.grad(lambda W: reconstruction_loss(as_compute(W, compute), static, G, ln, k, x))(W)
        updates, s = opt.update(grads, s, W)
        return (optax.apply_updates(W, updates), s), None
    return step


def online_step(opt: optax.GradientTransformation, static, compute=None):
    """One causal chunk of b tokens starting from weights W:
    g_i = grad 1/2||g(f(k_i; W)) - x_i||^2,  W_i = W + update(sum_{j<=i} g_j),  y_i = f(q_i; W_i);
    the chunk hands W_b (and its optimizer state) to the next chunk."""
    def step(consts, carry, xt):
        G, ln = consts
        W, s = carry
        k, q, x = xt
        grads = jax.vmap(jax.grad(lambda W, ki, xi: token_loss(
            decode(G, ln, eqx.combine(as_compute(W, compute), static)(ki)), xi)), in_axes=(None, 0, 0))(W, k, x)
        cumulative = jax.tree.map(lambda g: jnp.cumsum(g, axis=0), grads)
        updates, states = jax.vmap(opt.update, in_axes=(0, None, None))(cumulative, s, W)
        Ws = jax.tree.map(lambda w, u: w + u, W, updates)
        y = jax.vmap(lambda Wi, qi: eqx.combine(as_compute(Wi, compute), static)(qi))(Ws, q)
        last = jax.tree.map(lambda a: a[-1], (Ws, states))
        return last, y
    return step
