"""unroll: replace each ttt_loop by its T steps written out."""

from jax.extend.core import ClosedJaxpr

from ttt_compile.ir import expand_loop as loops
from ttt_compile.ir.interpreter import rewrite, rewrite_region
from ttt_compile.ir.primitive import contains_loop, info, ttt_loop_p

from . import note, register


def unroll_rule(max_steps: int, schedules=("full", "sgd", "online"), checkpointed: bool = False):
    """Rule: a ttt_loop with steps <= max_steps (and a schedule in `schedules`) becomes T steps;
    loops marked for rematerialisation stay loops unless `checkpointed`.  A loop kept a loop has its
    body rewritten (loops nested in it are unrolled too); an unrolled body is evaluated by the same
    rule, so every level is reached."""

    def rule(interp, eqn, invals):
        li = info(eqn.params)
        if li.schedule not in schedules:
            return rewrite_region(interp, eqn, invals)
        if li.remat is not None and not checkpointed:
            note(
                f"kept the {li.role} {li.schedule} loop of {li.steps} steps (remat={li.remat}) a loop: as a scan of "
                "checkpointed steps only W_t is stored per step, while unrolled XLA keeps recomputed "
                "steps live (pass checkpointed=True to unroll it anyway)"
            )
            return rewrite_region(interp, eqn, invals)
        if li.steps > max_steps:
            note(
                f"did not unroll a {li.role} {li.schedule} loop of {li.steps} steps (> max_steps={max_steps}); "
                "lower keeps it a scan"
            )
            return rewrite_region(interp, eqn, invals)
        rule.applied += 1
        consts, carry, xs = li.split([interp.instantiate(x, v.aval) for x, v in zip(invals, eqn.invars)])
        return loops.unroll(interp, li, consts, carry, xs)

    rule.applied = 0
    return rule


@register("unroll", before=("lower",), why_before="lower turns every ttt_loop into a scan, leaving no loop to rewrite")
def unroll(closed: ClosedJaxpr, *, max_steps: int = 64, checkpointed: bool = False) -> ClosedJaxpr:
    """Unroll every ttt_loop of at most max_steps steps into explicit steps: x_t = xs[t], carry threaded.

    Loops the `checkpoint` pass marked stay scans (unless checkpointed=True): measured on MTTT-MLP
    T=4, n=256, the scan of checkpointed steps needs 0.35x the training temp memory of the unrolled
    checkpointed steps.  Exact (no assumption): the same operations in the same order."""
    rule = unroll_rule(max_steps, checkpointed=checkpointed)
    out = rewrite(closed, {ttt_loop_p: rule})
    if not rule.applied:
        if not contains_loop(closed):
            note("did not apply: no ttt_loop to unroll")
        return closed
    return out
