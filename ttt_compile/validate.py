"""Translation validation: a compiled program must compute what the reference layer computes.

For a model m, example inputs x and a pipeline of passes:
    values     m(x)                        vs  compile(m, x, passes)(x)
    gradients  d/dtheta sum(sin(m(x)) * r)  vs  the same through the compiled program
where theta are the outer parameters (every float leaf) and r is a fixed random cotangent.
Errors are relative: max|a - b| / max(max|b|, tiny).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .compiler import compile as compile_


@dataclasses.dataclass(frozen=True)
class Validation:
    value_error: float
    grad_error: float
    worst_leaf: str

    def ok(self, tol: float) -> bool:
        return self.value_error <= tol and self.grad_error <= tol


def relative_error(a, b) -> float:
    """max|a - b| / max|b| over the finite entries; inf if a and b are non-finite (nan, +-inf) at
    different places or with different values there (a program whose reference is nan must stay nan)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not b.size:
        return 0.0
    fa, fb = np.isfinite(a), np.isfinite(b)
    if np.any(fa != fb) or not np.array_equal(a[~fb], b[~fb], equal_nan=True):
        return float("inf")
    if not np.any(fb):
        return 0.0
    return float(np.max(np.abs(a[fb] - b[fb])) / max(np.max(np.abs(b[fb])), 1e-30))


@eqx.filter_jit
def _call(model, x):
    return model(x)


def outer_grads(model, x, r):
    """Gradients of sum(sin(model(x)) * r) w.r.t. every float leaf of `model`."""

    def loss(m):
        return jnp.sum(jnp.sin(m(x)) * r)

    return eqx.filter_jit(eqx.filter_grad(loss))(model)


def compare(reference, candidate, x, *, key=None) -> Validation:
    """Values and outer gradients of two models with the same float leaves (same tree order)."""
    key = jax.random.PRNGKey(0) if key is None else key
    y_ref = _call(reference, x)
    y = _call(candidate, x)
    r = jax.random.normal(key, y_ref.shape, y_ref.dtype)
    g_ref = jax.tree_util.tree_leaves_with_path(eqx.filter(outer_grads(reference, x, r), eqx.is_inexact_array))
    g = jax.tree_util.tree_leaves(eqx.filter(outer_grads(candidate, x, r), eqx.is_inexact_array))
    if len(g) != len(g_ref):
        raise ValueError(f"the two models have {len(g_ref)} and {len(g)} float leaves")
    errs = [(relative_error(b, a), jax.tree_util.keystr(p)) for (p, a), b in zip(g_ref, g)]
    worst = max(errs, default=(0.0, ""))
    return Validation(relative_error(y, y_ref), worst[0], worst[1])


def validate(model, x, passes="default", *, key=None) -> Validation:
    """Compile `model` with `passes` and compare it with the reference (un-compiled) model."""
    return compare(model, compile_(model, x, passes=passes), x, key=key)
