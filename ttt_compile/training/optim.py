"""The outer optimiser of every task: global-norm clipping, then AdamW on a warmup + cosine schedule.

    lr_s = lr * s / warmup                                          for s < warmup
    lr_s = lr * (1 + cos(pi (s - warmup) / (steps - warmup))) / 2   after
    theta_s = theta_{s-1} - lr_s (adam_s(clip(g)) + (weight_decay / lr) theta_{s-1} [weight matrices])

The decay is decoupled as in Beyer et al. (2022): it follows the schedule's shape, not its scale.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import PyTree

from ttt_compile.configs import Config, ConfigError


def total_steps(config: Config, train_size: int | None) -> int:
    """``steps``, or ``ceil(epochs * train_size / batch_size)``."""
    if config.steps is not None:
        return config.steps
    if train_size is None:
        raise ConfigError(
            f"epochs={config.epochs} needs a finite training set; data={config.data!r} is an "
            "endless stream: set steps instead"
        )
    return math.ceil(config.epochs * train_size / config.batch_size)


def plan_steps(config: Config, train_size: int | None, steps: int | None) -> tuple[int, int]:
    """``(total, warmup)``: the run's length (``steps`` if given, else the config's) and its warmup,
    scaled with the length: ``warmup = round(warmup_steps * total / config_total)``."""
    natural = total_steps(config, train_size)
    total = steps if steps is not None else natural
    if not isinstance(total, int) or total <= 0:
        raise ConfigError(f"steps={steps!r} must be a positive integer")
    warmup = round(config.warmup_steps * total / natural)
    if warmup >= total:
        raise ConfigError(
            f"warmup_steps={config.warmup_steps} leaves no step for the cosine decay of a "
            f"{total}-step run: lower warmup_steps below {natural}"
        )
    return total, warmup


def make_schedule(config: Config, steps: int, warmup: int) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    return optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup, steps, end_value=0.0)


def decay_mask(params: PyTree) -> PyTree:
    """Weight decay on weight matrices (ndim >= 2) but not on biases, norms or position embeddings
    (a top-level ``pos`` field)."""
    mask = jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)
    if isinstance(params, eqx.Module) and getattr(params, "pos", None) is not None:
        mask = eqx.tree_at(lambda m: m.pos, mask, False)
    return mask


def make_optimizer(config: Config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Global-norm clipping at ``grad_clip`` (if set), then AdamW with decoupled decay
    ``weight_decay / lr``, first moment in bfloat16 when ``dtype = "bfloat16"``."""
    mu_dtype = jnp.bfloat16 if config.dtype == "bfloat16" else None
    adamw = optax.adamw(
        schedule,
        b1=config.b1,
        b2=config.b2,
        weight_decay=config.weight_decay / config.lr,
        mu_dtype=mu_dtype,
        mask=decay_mask,
    )
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw) if config.grad_clip else adamw
