"""sgd_batch: make T mini-batch SGD steps cost what one full-batch step costs."""

from __future__ import annotations

from jax.extend.core import ClosedJaxpr

from ttt_compile.ir.interpreter import rewrite
from ttt_compile.ir.primitive import ttt_loop_p

from . import note, register
from .unroll import unroll_rule


@register("sgd_batch", before=("lower", "unroll"), why_before="unroll/lower expand the SGD loop first")
def sgd_batch(closed: ClosedJaxpr, *, max_steps: int = 16) -> ClosedJaxpr:
    """Write an SGD loop of T <= max_steps mini-batches as T straight-line steps, step t reading the
    static contiguous block xs[t] of the tokens (reshaped once to (T, n/T, .) by the layer): no
    dynamic slicing, no per-step stacking of residuals, and XLA schedules all T steps as one
    program.  Exact (no assumption)."""
    rule = unroll_rule(max_steps, schedules=("sgd",))
    out = rewrite(closed, {ttt_loop_p: rule})
    if not rule.applied:
        note(f"did not apply: no batching='sgd' ttt_loop with at most max_steps={max_steps} steps")
        return closed
    return out
