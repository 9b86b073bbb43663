"""cse: common-subexpression elimination."""

from __future__ import annotations

from jax.extend.core import ClosedJaxpr

from ttt_compile.ir.interpreter import default_rule, rewrite
from ttt_compile.ir.jaxpr_utils import constant, count_eqns

from . import note, register


def _operand_key(v):
    c = constant(v)
    if c is None or c.size > 64:
        return ("t", id(v))
    return ("c", c.dtype.str, c.shape, c.tobytes(), bool(getattr(getattr(v, "aval", None), "weak_type", False)))


class _CSE:
    def __init__(self):
        self.seen: dict = {}
        self.hits = 0

    def rule(self, interp, eqn, invals):
        if eqn.effects or eqn.primitive.multiple_results and eqn.primitive.name == "ttt_loop":
            return default_rule(interp, eqn, invals)
        try:
            key = (eqn.primitive, tuple(sorted(eqn.params.items())), tuple(_operand_key(v) for v in invals))
            hash(key)
        except TypeError:
            return default_rule(interp, eqn, invals)
        seen = self.seen.setdefault(interp, {})  # per trace: a region's rewrite is another trace
        if key in seen:
            self.hits += 1
            return seen[key]
        outs = default_rule(interp, eqn, invals)
        seen[key] = outs
        interp._alive.extend(invals)  # keep operand ids stable while the key lives
        return outs


@register("cse")
def cse(closed: ClosedJaxpr) -> ClosedJaxpr:
    """Common subexpressions: an equation with the same primitive, params and operands as an earlier
    one reuses its results.  Exact (pure primitives only; effects are never merged)."""
    c = _CSE()
    out = rewrite(closed, {}, default=c.rule)
    if not c.hits:
        note("did not apply: no repeated subexpression")
        return closed
    note(f"{c.hits} repeated subexpressions merged; equations {count_eqns(closed)} -> {count_eqns(out)}")
    return out
