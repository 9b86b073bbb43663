"""unroll: replace each ttt_loop by its T steps written out."""
from jax.extend.core import ClosedJaxpr

from ttt_compile import loops
from ttt_compile.interpret import rewrite
from ttt_compile.primitive import info, ttt_loop_p

from . import note, register


def unroll_rule(max_steps: int, schedules=("full", "sgd", "online")):
    """Rule: a ttt_loop with steps <= max_steps (and a schedule in `schedules`) becomes T steps."""
    def rule(interp, eqn, invals):
        li = info(eqn.params)
        if li.schedule not in schedules:
            return interp.bind(eqn, invals)
        if li.steps > max_steps:
            note(f"did not unroll a {li.schedule} loop of {li.steps} steps (> max_steps={max_steps}); "
                 "lower keeps it a scan")
            return interp.bind(eqn, invals)
        rule.applied += 1
        consts, carry, xs = li.split([interp.instantiate(x, v.aval) for x, v in zip(invals, eqn.invars)])
        return loops.unroll(interp, li, consts, carry, xs)
    rule.applied = 0
    return rule


@register("unroll")
def unroll(closed: ClosedJaxpr, *, max_steps: int = 64) -> ClosedJaxpr:
    """Unroll every ttt_loop of at most max_steps steps into explicit steps: x_t = xs[t], carry threaded.

    Exact (no assumption): the same operations in the same order, without the loop."""
    rule = unroll_rule(max_steps)
    out = rewrite(closed, {ttt_loop_p: rule})
    if not rule.applied:
        note("did not apply: no ttt_loop to unroll" if not _has_loop(closed) else
             f"did not apply: every ttt_loop has more than max_steps={max_steps} steps")
        return closed
    return out


def _has_loop(closed) -> bool:
    from ttt_compile.primitive import contains_loop
    return contains_loop(closed)
