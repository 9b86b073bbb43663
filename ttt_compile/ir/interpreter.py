"""The one generic jaxpr interpreter every pass is built on (JAX's own pattern: a walker + a rule table).

`rewrite(closed, rules)` re-traces `closed` equation by equation: each equation goes to
`rules[primitive](interp, eqn, invals) -> outvals` or, without a rule, to `default_rule`, which binds
the primitive again.  Values in the walk are tracers, literals (Python/NumPy scalars) or symbolic
values a pass invents (e.g. a known zero); `Interpreter.instantiate` turns those back into arrays
where an equation without a rule needs them.  Because the output is produced by tracing, the result
is a valid ClosedJaxpr by construction.

Higher-order primitives: `jit` / `closed_call` are inlined (so rules see through a user's
`jax.jit`); `scan`, `checkpoint` (remat) and custom_jvp/vjp regions are rewritten recursively only
when they contain a `ttt_loop` (custom derivative regions are then inlined: the rewritten program
is differentiated from its primal equations); anything else is re-bound unchanged.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from jax.extend.core import ClosedJaxpr, Literal, primitives

from .jaxpr_utils import dce, hoist_consts
from .primitive import contains_loop

Rule = Callable[["Interpreter", Any, list], list]


_INLINE = {primitives.jit_p, primitives.closed_call_p}
_CUSTOM = {primitives.custom_jvp_call_p, primitives.custom_vjp_call_p}


class Interpreter:
    """Walks jaxprs applying `rules`; records who produced each value (for peephole rules and CSE)."""

    def __init__(self, rules: dict, instantiate: Callable[[Any, Any], Any] | None = None,
                 default: Rule | None = None):
        self.rules = rules
        self.default = default or default_rule
        self._instantiate = instantiate
        self.producers: dict[int, tuple] = {}
        self._alive: list = []            # keeps recorded values alive so their ids stay unique

    # ------------------------------------------------------------------ values
    def instantiate(self, value, aval):
        return self._instantiate(value, aval) if self._instantiate else value

    def record(self, outs, prim, params, invals):
        for i, o in enumerate(outs):
            self.producers[id(o)] = (prim, params, invals, i)
        self._alive.extend(outs)

    def producer(self, value):
        """(primitive, params, invals, output index) of the equation that made `value`, or None."""
        return self.producers.get(id(value))

    def rewrite(self, closed: ClosedJaxpr) -> ClosedJaxpr:
        """The same pass applied to a sub-jaxpr on its own (its interface is kept)."""
        return rewrite(closed, self.rules, self._instantiate, self.default)

    # ------------------------------------------------------------------ walking
    def eval(self, jaxpr, consts, args) -> list:
        env: dict = {}

        def read(v):
            return v.val if isinstance(v, Literal) else env[v]

        for v, x in zip(jaxpr.constvars, consts):
            env[v] = x
        for v, x in zip(jaxpr.invars, args):
            env[v] = x
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            outs = self.rules.get(eqn.primitive, self.default)(self, eqn, invals)
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def eval_closed(self, closed: ClosedJaxpr, args) -> list:
        return self.eval(closed.jaxpr, closed.consts, args)

    def bind(self, eqn, invals, **new_params) -> list:
        """Bind eqn's primitive on `invals` (instantiated), params updated by `new_params`."""
        invals = [self.instantiate(x, v.aval) for x, v in zip(invals, eqn.invars)]
        return self.emit(eqn.primitive, *invals, **{**eqn.params, **new_params})

    def emit(self, prim, *invals, **params) -> list:
        """Bind a primitive and remember it as the producer of its outputs."""
        outs = prim.bind(*invals, **params)
        outs = list(outs) if prim.multiple_results else [outs]
        self.record(outs, prim, params, list(invals))
        return outs


def default_rule(interp: Interpreter, eqn, invals) -> list:
    """Inline calls, recurse into loop-bearing regions, otherwise re-bind the equation as it was."""
    prim = eqn.primitive
    if prim in _INLINE:                 # symbolic values flow in: rules see through jnp's jit wrappers
        return interp.eval_closed(eqn.params["jaxpr"], invals)
    if not any(contains_loop(j) for j in jax.extend.core.jaxprs_in_params(eqn.params)):
        return interp.bind(eqn, invals)
    args = [interp.instantiate(x, v.aval) for x, v in zip(invals, eqn.invars)]
    if prim in _CUSTOM:
        return interp.eval_closed(eqn.params["call_jaxpr"], args)
    if prim is primitives.scan_p:
        return interp.bind(eqn, args, jaxpr=interp.rewrite(eqn.params["jaxpr"]))
    if prim is primitives.remat_p:
        new = interp.rewrite(ClosedJaxpr(eqn.params["jaxpr"], []))
        return list(prim.bind(*new.consts, *args, **{**eqn.params, "jaxpr": hoist_consts(new.jaxpr)}))
    raise NotImplementedError(f"a ttt_loop inside a '{prim}' region is not supported by this pass; "
                              "move the TTT layer out of it (jit, scan, checkpoint and custom_jvp work)")


def rewrite(closed: ClosedJaxpr, rules: dict, instantiate: Callable | None = None,
            default: Rule | None = None) -> ClosedJaxpr:
    """Re-trace `closed` through `rules`: the generic body of every pass.  Result is DCE'd."""
    interp = Interpreter(rules, instantiate, default)
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed.in_avals]

    def run(*args):
        outs = interp.eval_closed(closed, list(args))
        return [interp.instantiate(o, a) for o, a in zip(outs, closed.out_avals)]
    return dce(jax.make_jaxpr(run)(*avals))
