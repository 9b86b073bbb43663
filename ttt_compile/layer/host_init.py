"""Parameter initialisation on the host.

Eager `jax.random.normal(key, shape)` compiles one XLA program per shape and dtype (and `jnp.zeros`
one more): building a small model spent seconds compiling programs that run once.  Here a concrete
key seeds a numpy generator with its raw bits and the draws are copied to the device, so building a
layer compiles nothing.  A traced key (a layer built under jit/vmap) draws the same distributions with
jax.random instead.  Arrays come in JAX's default float dtype (float64 under `jax.enable_x64`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray


def host_rng(key: PRNGKeyArray) -> np.random.Generator:
    """A numpy generator seeded by a concrete JAX key (its raw bits; no device computation)."""
    if isinstance(key, jax.core.Tracer):
        raise TypeError(
            "this model draws its weights on the host and needs a concrete key: build it outside "
            "jit/vmap/eval_shape (close over a concrete key instead)"
        )
    bits = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.random.default_rng(np.asarray(bits).ravel().tolist())


def default_float() -> np.dtype:
    """JAX's default float dtype now (float32, or float64 under x64)."""
    return np.dtype(jnp.result_type(float))


def normal(key: PRNGKeyArray, shape: tuple[int, ...], std: float = 1.0) -> Float[Array, "*shape"]:
    """std * N(0, 1) of `shape`: drawn on the host for a concrete key, with jax.random for a traced one."""
    if isinstance(key, jax.core.Tracer):
        return std * jax.random.normal(key, shape)
    return jax.device_put((std * host_rng(key).standard_normal(shape)).astype(default_float()))


def uniform(key: PRNGKeyArray, shape: tuple[int, ...], bound: float) -> Float[Array, "*shape"]:
    """U(-bound, bound) of `shape` (on the host for a concrete key, as `normal`)."""
    if isinstance(key, jax.core.Tracer):
        return jax.random.uniform(key, shape, minval=-bound, maxval=bound)
    return jax.device_put(host_rng(key).uniform(-bound, bound, shape).astype(default_float()))


def zeros(shape: tuple[int, ...]) -> Float[Array, "*shape"]:
    """Zeros of `shape` in the default float dtype (a copy to the device, not a compiled broadcast)."""
    return jax.device_put(np.zeros(shape, default_float()))


def stack_copies(a: Array, copies: int) -> Array:
    """`copies` copies of `a` stacked on a new leading axis (on the host when `a` is concrete)."""
    if isinstance(a, jax.core.Tracer):
        return jnp.broadcast_to(a, (copies, *a.shape))
    host = np.asarray(a)
    return jax.device_put(np.ascontiguousarray(np.broadcast_to(host, (copies, *host.shape))))


def nonzero_paths(tree) -> list[str]:
    """Paths of the concrete array leaves of `tree` holding a non-zero value (checked on the host)."""
    return [
        jax.tree_util.keystr(path)
        for path, a in jax.tree_util.tree_leaves_with_path(tree)
        if not isinstance(a, jax.core.Tracer) and np.any(np.asarray(a) != 0)
    ]


def ones(shape: tuple[int, ...]) -> Float[Array, "*shape"]:
    """Ones of `shape` in the default float dtype (a copy to the device)."""
    return jax.device_put(np.ones(shape, default_float()))


def layer_norm(dim: int, *, eps: float = 1e-5, copies: int | None = None) -> eqx.nn.LayerNorm:
    """`eqx.nn.LayerNorm(dim, eps=eps)` (scale 1, offset 0) with its arrays made on the host; `copies`:
    that many stacked on a leading axis (one per head, for `jax.vmap`)."""
    ln = eqx.filter_eval_shape(lambda: eqx.nn.LayerNorm(dim, eps=eps))
    lead = () if copies is None else (copies,)
    return eqx.tree_at(lambda m: (m.weight, m.bias), ln, (ones((*lead, dim)), zeros((*lead, dim))))


def linear(din: int, dout: int, *, key: PRNGKeyArray) -> eqx.nn.Linear:
    """`eqx.nn.Linear(din, dout)` with its initialisation (weight and bias ~ U(+-1/sqrt(din))) drawn
    on the host."""
    kw, kb = jax.random.split(key)
    lin = eqx.filter_eval_shape(lambda: eqx.nn.Linear(din, dout, key=jax.random.PRNGKey(0)))
    bound = 1 / np.sqrt(din)
    return eqx.tree_at(
        lambda m: (m.weight, m.bias), lin, (uniform(kw, (dout, din), bound), uniform(kb, (dout,), bound))
    )
