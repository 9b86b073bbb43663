"""The follow-up paper's TTT layers (Sun et al. 2024, test-time-training/ttt-lm-jax, `ttt/models/ttt_layer.py`)
as declarations, and a converter from a peer layer's flax parameters.

TTT-Linear and TTT-MLP are a `TTTLayer` with these options, nothing hand-written (see `ttt_lm_jax_layer`):

    learner    f(z; W) = z + LN(W z + b)  or  z + LN(W2 gelu(W1 z + b1) + b2)  (`ResidualLN`), W0 learned,
               the LN an outer parameter per head (`outer=ResidualLN.outer, outer_per_head=True`)
    task       MultiView("released"):  l = 1/(2 d_h) sum_i eta_i ||f(theta_K x_i) - theta_V x_i||^2,
               out_j = f(theta_Q x_j; W_j)
    inner      online chunks of b tokens, eta_i = base_lr * sigmoid(theta_k . x_i + b_k) per token and head,
               token i of a chunk reads W + a_i sum_{j<=i} (-eta_j grad l_j), a_i = max(1/i + o_i, 0)
               (`Inner(chunk_factor="learned")`)
    sequence   RoPE on keys and queries at positions mod b; for "linear"/"mlp" (not the "*_base" kinds)
               one projection theta_Q = theta_K followed by two causal depthwise convolutions of width 4
    readout    LayerNorm over the concatenated heads, then (not "*_base") the gate gelu(W_g x) *, then the
               output projection without a bias

The peer's code is not part of this project; `from_ttt_lm_jax` only reads its parameter names and shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .learners import ResidualLN
from .released import flatten
from .spec import Inner, MultiView, Readout, SequenceMaps, SpecError
from .ttt_layer import TTTLayer

KINDS = ("linear_base", "linear", "mlp_base", "mlp")


def ttt_lm_jax_layer(
    *,
    kind: str,
    width: int,
    heads: int,
    mini_batch_size: int,
    base_lr: float = 1.0,
    rope_theta: float = 10000.0,
    conv_width: int = 4,
    key,
) -> TTTLayer:
    """A TTT-Linear / TTT-MLP layer (kind in KINDS) declared with the spec's options, freshly initialised."""
    if kind not in KINDS:
        raise SpecError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if not isinstance(width, int) or not isinstance(heads, int) or heads < 1 or width % heads:
        raise SpecError(f"heads={heads!r} must divide width={width!r}")
    dh = width // heads
    base = kind.endswith("_base")
    kl, kc = jax.random.split(key)
    learner = ResidualLN.mlp(dh, key=kl) if kind.startswith("mlp") else ResidualLN.linear(dh, key=kl)
    return TTTLayer(
        width,
        heads,
        learner,
        init="learned",
        outer=ResidualLN.outer,
        outer_per_head=True,
        task=MultiView(normalisation="released"),
        inner=Inner(
            batching="online",
            chunk=mini_batch_size,
            optimizer=optax.sgd(1.0),
            eta="per_token",
            eta_base=base_lr,
            chunk_factor="learned",
        ),
        sequence=SequenceMaps(
            shared_qk=not base,
            conv_width=None if base else conv_width,
            rope_theta=rope_theta,
            rope_period=mini_batch_size,
        ),
        readout=Readout(norm=True, gate=not base, bias=False, norm_eps=1e-6),
        key=kc,
    )


def expected_shapes(kind: str, width: int, heads: int, mini_batch_size: int, conv_width: int) -> dict[str, tuple]:
    """The flat parameter names and shapes of one peer layer of `kind`."""
    dh, d = width // heads, width
    shapes = {
        "wq/kernel": (d, d),
        "wv/kernel": (d, d),
        "wo/kernel": (d, d),
        "learnable_token_idx": (mini_batch_size,),
        "learnable_ttt_lr/kernel": (heads, d, 1),
        "learnable_ttt_lr/bias": (heads, 1),
        "ttt_norm/scale": (heads, dh),
        "ttt_norm/bias": (heads, dh),
        "post_norm/scale": (d,),
        "post_norm/bias": (d,),
    }
    if kind.endswith("_base"):
        shapes["wk/kernel"] = (d, d)
    else:
        shapes.update(
            {
                "conv_q/kernel": (conv_width, 1, d),
                "conv_q/bias": (d,),
                "conv_k/kernel": (conv_width, 1, d),
                "conv_k/bias": (d,),
                "wg/kernel": (d, d),
            }
        )
    if kind.startswith("mlp"):
        shapes.update(
            {
                "ttt_dense_0": (heads, dh, 4 * dh),
                "ttt_bias_0": (heads, 1, 4 * dh),
                "ttt_dense_1": (heads, 4 * dh, dh),
                "ttt_bias_1": (heads, 1, dh),
            }
        )
    else:
        shapes.update({"ttt_dense_0": (heads, dh, dh), "ttt_bias_0": (heads, 1, dh)})
    return shapes


def check_params(p: dict[str, np.ndarray], kind: str, shapes: dict[str, tuple]) -> None:
    """One clear error naming the missing or mis-shaped parameter (and the kind the dict looks like)."""
    missing = [name for name in shapes if name not in p]
    if missing:
        looks = [k for k in KINDS if k != kind and _looks_like(p, k)]
        hint = f"; the dict looks like kind={looks[0]!r}" if looks else ""
        raise SpecError(
            f"from_ttt_lm_jax(kind={kind!r}): the params dict has no {missing[0]!r}"
            + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else "")
            + f"{hint}; pass one peer layer's `init(...)['params']`"
        )
    for name, shape in shapes.items():
        if tuple(p[name].shape) != shape:
            raise SpecError(
                f"from_ttt_lm_jax(kind={kind!r}): {name!r} has shape {tuple(p[name].shape)}, expected {shape} "
                "for the width, heads, mini_batch_size and conv_width given; check those arguments"
            )


def _looks_like(p: dict, kind: str) -> bool:
    gated = "wg/kernel" in p
    mlp = "ttt_dense_1" in p
    return gated == (not kind.endswith("_base")) and mlp == kind.startswith("mlp")


def from_ttt_lm_jax(
    params: Mapping[str, Any],
    *,
    kind: str,
    width: int,
    heads: int,
    mini_batch_size: int,
    base_lr: float = 1.0,
    rope_theta: float = 10000.0,
    conv_width: int = 4,
) -> TTTLayer:
    """The `TTTLayer` computing one ttt-lm-jax layer's function, from that layer's flax params dict
    (`TTTLinear(config).init(...)["params"]`, nested or "/"-flattened).  kind in KINDS: "linear_base"
    (TTTLinearBase), "linear" (TTTLinear), "mlp_base", "mlp".  The result maps (n, width) -> (n, width) for
    one sequence at positions 0..n-1 (n a multiple of mini_batch_size), equal to the peer's
    `m.apply({"params": params}, x[None], position_ids=arange(n)[None])[0][0]`."""
    if kind not in KINDS:
        raise SpecError(f"from_ttt_lm_jax: kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    p = flatten(params)
    check_params(p, kind, expected_shapes(kind, width, heads, mini_batch_size, conv_width))
    layer = ttt_lm_jax_layer(
        kind=kind,
        width=width,
        heads=heads,
        mini_batch_size=mini_batch_size,
        base_lr=base_lr,
        rope_theta=rope_theta,
        conv_width=conv_width,
        key=jax.random.PRNGKey(0),
    )
    dh, d = width // heads, width
    a = lambda name: jnp.asarray(p[name])  # noqa: E731
    heads_of = lambda name: jnp.asarray(p[name].T.reshape(heads, dh, d))  # noqa: E731 - x @ K -> (H, d_h, d)
    body = layer.W0.body
    replace: dict = {
        (lambda m: m.psi.weight) if kind.endswith("_base") else (lambda m: m.phi.weight): heads_of("wq/kernel"),
        lambda m: m.target.weight: heads_of("wv/kernel"),
        lambda m: m.h.weight: jnp.asarray(p["wo/kernel"].T.reshape(d, heads, dh)),
        lambda m: m.h.norm.weight: a("post_norm/scale"),
        lambda m: m.h.norm.bias: a("post_norm/bias"),
        lambda m: m.eta.theta: jnp.asarray(p["learnable_ttt_lr/kernel"][..., 0]),
        lambda m: m.eta.bias: jnp.asarray(p["learnable_ttt_lr/bias"][..., 0]),
        lambda m: m.chunk_offset: a("learnable_token_idx"),
        lambda m: m.learner_outer.ln.weight: a("ttt_norm/scale"),
        lambda m: m.learner_outer.ln.bias: a("ttt_norm/bias"),
    }
    T = lambda name: jnp.asarray(np.swapaxes(p[name], 1, 2))  # noqa: E731 - z @ W (peer) -> W z (ours), per head
    if isinstance(body, eqx.Module) and hasattr(body, "W1"):
        replace.update(
            {
                lambda m: m.W0.body.W1: T("ttt_dense_0"),
                lambda m: m.W0.body.b1: jnp.asarray(p["ttt_bias_0"][:, 0]),
                lambda m: m.W0.body.W2: T("ttt_dense_1"),
                lambda m: m.W0.body.b2: jnp.asarray(p["ttt_bias_1"][:, 0]),
            }
        )
    else:
        replace.update(
            {
                lambda m: m.W0.body.W: T("ttt_dense_0"),
                lambda m: m.W0.body.b: jnp.asarray(p["ttt_bias_0"][:, 0]),
            }
        )
    if kind.endswith("_base"):
        replace[lambda m: m.phi.weight] = heads_of("wk/kernel")
    else:
        conv = lambda name: jnp.asarray(p[name][:, 0, :].reshape(conv_width, heads, dh))  # noqa: E731
        replace.update(
            {
                lambda m: m.conv_q.kernel: conv("conv_q/kernel"),
                lambda m: m.conv_q.bias: jnp.asarray(p["conv_q/bias"].reshape(heads, dh)),
                lambda m: m.conv_k.kernel: conv("conv_k/kernel"),
                lambda m: m.conv_k.bias: jnp.asarray(p["conv_k/bias"].reshape(heads, dh)),
                lambda m: m.h.gate: jnp.asarray(p["wg/kernel"].T),
            }
        )
    for where, value in replace.items():
        layer = eqx.tree_at(where, layer, value.astype(where(layer).dtype))
    return layer
