"""Load a layer of the released MTTT code (test-time-training/mttt, `inner_loop.TTTLayer`) into a
`tc.TTTLayer` that computes the same function.

The released layer, per head k (its names on the right, flax kernels are (in, out)):

    phi_k(x) = P_k x + p_k                  phi/kernel (H, d, d_h), phi/bias (H, d_h)
    psi_k(x) = Q_k x + q_k                  psi/kernel, psi/bias
    f(z; W)  = W z + b  ("mlp_1")  or  W2 gelu(W1 z + b1) + b2  ("mlp_2", hidden 4 d_h)
                                            inner_Dense_0/{kernel,bias}[, inner_Dense_1/{kernel,bias}]
    g_k(z)   = LN_k(G_k z + c)              g/kernel (H, d_h, d), g_bias (1, d), decoder_LN/{scale,bias} (H, d)
    l_k(W)   = 1/2 mean_{i,j} (g_k(f(phi_k(x_i)))_j - x_ij)^2 * H      = eq. 1 / d_h
    W_{t+1}  = W_t - inner_lr[t] grad l_k(W_t)      (full batch, or SGD over T shuffled mini-batches)
    out      = sum_k O_k f(psi_k(x); W_T) + o   h/kernel (H, d_h, d), h_bias (1, d)

which is `tc.TTTLayer` with `Reconstruction.released(decoder_ln)`, init="learned" (W0 = the
inner_Dense parameters; init="zero" when the released run froze them at zero, `train_init=False`)
and `optax.sgd` with the released step sizes (eta_released = inner_lr; eta = inner_lr / d_h in eq. 1's
units).  One difference: the released SGD mode draws a random order of the tokens for every head and
sequence; `batching="sgd"` takes the T contiguous blocks, so the two agree on tokens presented in the
released order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .learners import MLP, Linear
from .spec import Inner, Reconstruction, SpecError
from .ttt_layer import TTTLayer

_LAYER_KEYS = (
    "phi/kernel",
    "phi/bias",
    "psi/kernel",
    "psi/bias",
    "g/kernel",
    "g_bias",
    "h/kernel",
    "h_bias",
    "inner_Dense_0/kernel",
)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """A nested (flax) parameter dict, or an already flat one with "/"-joined names, as {"a/b/c": array}."""
    flat = {}
    for name, value in params.items():
        path = f"{prefix}/{name}" if prefix else str(name)
        if isinstance(value, Mapping):
            flat.update(flatten(value, path))
        else:
            flat[path] = np.asarray(value)
    return flat


def layer_params(params: Mapping[str, Any], prefix: str | None = None) -> dict[str, np.ndarray]:
    """The parameters of one released TTTLayer, named relative to it ("phi/kernel", "g_bias", ...).

    `params` is that layer's parameter dict, or a whole checkpoint (as the released train.py saves it:
    an .npz of "/"-joined names) with `prefix` naming the layer, e.g.
    "params/Transformer/encoderblock_0/TTTLayer_0"; without `prefix` the one layer found is used."""
    flat = flatten(params)
    if prefix is None:
        prefixes = sorted({k[: -len("phi/kernel")].rstrip("/") for k in flat if k.endswith("phi/kernel")})
        if len(prefixes) != 1:
            raise SpecError(
                "from_released: "
                + (
                    "no released TTTLayer parameters (no '.../phi/kernel') in the dict"
                    if not prefixes
                    else f"{len(prefixes)} TTT layers in the dict; pass prefix= one of {prefixes}"
                )
            )
        prefix = prefixes[0]
    prefix = prefix.rstrip("/")
    start = len(prefix) + 1 if prefix else 0
    mine = {k[start:]: v for k, v in flat.items() if not prefix or k.startswith(prefix + "/")}
    missing = [k for k in _LAYER_KEYS if k not in mine]
    if missing:
        raise SpecError(
            f"from_released: the layer at prefix {prefix!r} lacks {missing}; its parameters are {sorted(mine)}"
        )
    return mine


def from_released(
    params: Mapping[str, Any],
    *,
    inner_lr: Sequence[float] = (1.0,),
    sgd: bool = False,
    train_init: bool = True,
    prefix: str | None = None,
    dtype=None,
) -> TTTLayer:
    """A `tc.TTTLayer` computing the released layer whose parameters are `params` (see the module doc).

    inner_lr     the released `config.inner.TTT.inner_lr`, one step size per inner step (T = its length)
    sgd          the released `config.inner.TTT.SGD` (batching "sgd" over T blocks, else "full")
    train_init   the released `config.inner.TTT.train_init`; False (W0 frozen) loads a zero W0 as init="zero"
    prefix       where the layer's parameters sit in a whole checkpoint (see `layer_params`)
    dtype        cast the parameters (default: as stored)
    """
    p = layer_params(params, prefix)
    if dtype is not None:
        p = {k: v.astype(dtype) for k, v in p.items()}
    if isinstance(inner_lr, (int, float)) or not len(inner_lr):
        raise SpecError(
            f"from_released: inner_lr must be a non-empty sequence (one step size per inner step, "
            f"as the released config's inner_lr), got {inner_lr!r}"
        )
    heads, dim, dh = p["phi/kernel"].shape
    mlp = "inner_Dense_1/kernel" in p
    has_bias = "inner_Dense_0/bias" in p
    has_ln = "decoder_LN/scale" in p
    if heads * dh != dim:
        raise SpecError(f"from_released: phi/kernel has shape {p['phi/kernel'].shape}; expected (H, d, d/H)")

    T = len(inner_lr)
    lrs = [float(a) for a in inner_lr]
    opt = optax.sgd(lrs[0]) if len(set(lrs)) == 1 else optax.sgd(step_sizes(lrs))
    inner = Inner(steps=T, batching="sgd" if sgd else "full", optimizer=opt)

    t = lambda a: jnp.asarray(np.swapaxes(a, -1, -2))  # noqa: E731  flax (in, out) -> W (out, in)
    if mlp:
        learner = MLP(dh, bias=has_bias, key=jax.random.PRNGKey(0))
        W0 = {"W1": t(p["inner_Dense_0/kernel"]), "W2": t(p["inner_Dense_1/kernel"])}
        if has_bias:
            W0 |= {"b1": jnp.asarray(p["inner_Dense_0/bias"]), "b2": jnp.asarray(p["inner_Dense_1/bias"])}
    else:
        learner = Linear(dh, bias=has_bias)
        W0 = {"W": t(p["inner_Dense_0/kernel"])}
        if has_bias:
            W0["b"] = jnp.asarray(p["inner_Dense_0/bias"])
    init = "learned" if train_init else "zero"
    if init == "zero" and any(np.any(np.asarray(w) != 0) for w in W0.values()):
        raise SpecError(
            "from_released: train_init=False with a non-zero inner_Dense W0; the project's "
            "init='zero' is W0 = 0. Load it with train_init=True (same function, W0 then trained)"
        )
    layer = TTTLayer(
        dim,
        heads,
        learner,
        init=init,
        task=Reconstruction.released(decoder_ln=has_ln),
        inner=inner,
        key=jax.random.PRNGKey(0),
    )
    layer = _cast(layer, next(iter(p.values())).dtype)

    replace = {
        lambda m: m.phi.weight: t(p["phi/kernel"]),
        lambda m: m.phi.bias: jnp.asarray(p["phi/bias"]),
        lambda m: m.psi.weight: t(p["psi/kernel"]),
        lambda m: m.psi.bias: jnp.asarray(p["psi/bias"]),
        lambda m: m.g.weight: t(p["g/kernel"]),
        lambda m: m.g.bias: jnp.asarray(p["g_bias"]).reshape(dim),
        lambda m: m.h.weight: jnp.asarray(np.transpose(p["h/kernel"], (2, 0, 1))),
        lambda m: m.h.bias: jnp.asarray(p["h_bias"]).reshape(dim),
    }
    if has_ln:
        replace[lambda m: m.g.ln.weight] = jnp.asarray(p["decoder_LN/scale"])
        replace[lambda m: m.g.ln.bias] = jnp.asarray(p["decoder_LN/bias"])
    if init == "learned":
        for name, value in W0.items():
            replace[lambda m, name=name: getattr(m.W0, name)] = value
    for where, value in replace.items():
        old = where(layer)
        if old.shape != value.shape:
            raise SpecError(f"from_released: a parameter has shape {value.shape}, expected {old.shape}")
        layer = eqx.tree_at(where, layer, value.astype(old.dtype))
    return layer


def step_sizes(lrs: Sequence[float]):
    """An optax schedule giving step t the size lrs[t] (the released per-step inner_lr)."""
    table = jnp.asarray(lrs)
    return lambda count: table[jnp.minimum(count, len(lrs) - 1)]


def _cast(layer, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, layer)
