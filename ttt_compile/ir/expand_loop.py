"""Expanding a `ttt_loop` inside a pass: two ways to run it: as explicit steps, or as (nested) scans.

Both evaluate the loop body through the pass's interpreter, so rules apply inside the body too,
and both honour the loop's `remat` parameter (set by the `checkpoint` pass):

    None    store every step's intermediates for the outer backward pass (what jax.grad does)
    "step"  jax.checkpoint each step: store only the carry W_t per step, recompute the step
    "sqrt"  scan over ~sqrt(T) checkpointed chunks of ~sqrt(T) steps: ~2 sqrt(T) carries stored,
            one extra forward pass
    "log"   the same nesting with T factored into small primes (levels L ~ log2 T): ~sum of the
            factors (~2 log2 T) carries stored, L extra forward passes
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from .interpreter import describe_loop
from .notes import inside
from .primitive import LoopInfo


def step_fn(interp, li: LoopInfo, consts):
    """carry, x_t -> carry', y_t  evaluating the body through `interp` (checkpointed if remat set)."""

    def step(carry, xs):
        with inside(describe_loop(li.__dict__)):
            out = interp.eval_closed(li.body, [*consts, *carry, *xs])
        out = [interp.instantiate(o, a) for o, a in zip(out, li.body.out_avals)]
        return out[: li.num_carry], out[li.num_carry :]

    return jax.checkpoint(step) if li.remat is not None else step


def unroll(interp, li: LoopInfo, consts, carry, xs) -> list:
    """T explicit steps; step t reads the static slice xs[t] (a contiguous block of the step axis);
    a `reverse` loop runs t = T-1, ..., 0 and still stacks ys[t] at index t."""
    step = step_fn(interp, li, consts)
    ys = []
    for t in reversed(range(li.steps)) if li.reverse else range(li.steps):
        carry, y = step(carry, [lax.index_in_dim(x, t, 0, keepdims=False) for x in xs])
        ys.append(y)
    ys = ys[::-1] if li.reverse else ys
    stacked = [jnp.stack(col) for col in zip(*ys)] if ys and ys[0] else []
    return [*carry, *stacked]


def factors(T: int, scheme: str | None) -> tuple[int, ...]:
    """Nesting of the scan: (outer, ..., inner) trip counts whose product is T."""
    if scheme == "sqrt":
        c = min((d for d in range(1, T + 1) if T % d == 0), key=lambda d: (abs(d - math.sqrt(T)), d))
        return (T // c, c) if 1 < c < T else (T,)
    if scheme == "log":
        out, rest, p = [], T, 2
        while rest > 1:
            while rest % p == 0:
                out.append(p)
                rest //= p
            p += 1
        return tuple(out) or (1,)
    return (T,)


def scan(interp, li: LoopInfo, consts, carry, xs) -> list:
    """The loop as lax.scan; with remat "sqrt"/"log", nested scans whose inner levels are checkpointed."""
    if li.remat in ("sqrt", "log"):
        plain = LoopInfo(**{**li.__dict__, "remat": None})
        step = step_fn(interp, plain, consts)
        fs = factors(li.steps, li.remat)
    else:
        step, fs = step_fn(interp, li, consts), (li.steps,)

    def nested(carry, xs, fs):
        if len(fs) == 1:
            return lax.scan(step, carry, xs, length=fs[0], reverse=li.reverse)
        inner = jax.checkpoint(lambda c, x: nested(c, x, fs[1:]))
        xs = [x.reshape(fs[0], -1, *x.shape[1:]) for x in xs]
        carry, ys = lax.scan(inner, carry, xs, length=fs[0], reverse=li.reverse)
        return carry, [y.reshape(-1, *y.shape[2:]) for y in ys]

    carry, ys = nested(list(carry), list(xs), fs)
    return [*carry, *ys]


def remat_prediction(li: LoopInfo, carry_bytes: int) -> str:
    """What the remat scheme is expected to store and recompute, for the report."""
    fs = factors(li.steps, li.remat) if li.remat in ("sqrt", "log") else (li.steps,)
    if li.remat is None:
        return f"stores every step's intermediates: {li.steps} x (carry {carry_bytes} B + activations)"
    if li.remat == "step":
        return f"stores {li.steps} carries ({li.steps * carry_bytes} B), recomputes each step once (~1 extra forward)"
    stored = sum(fs)
    return (
        f"levels {fs}: stores ~{stored} carries ({stored * carry_bytes} B) instead of {li.steps} "
        f"({li.steps * carry_bytes} B), ~{len(fs) - 1} extra forward pass(es)"
    )
