"""The one generic jaxpr interpreter every pass is built on (JAX's own pattern: a walker + a rule table).

`rewrite(closed, rules)` re-traces `closed` equation by equation: each equation goes to
`rules[primitive](interp, eqn, invals) -> outvals` or, without a rule, to `default_rule`, which binds
the primitive again.  Values in the walk are tracers, literals (Python/NumPy scalars) or symbolic
values a pass invents (e.g. a known zero); `Interpreter.instantiate` turns those back into arrays
where an equation without a rule needs them.  Because the output is produced by tracing, the result
is a valid ClosedJaxpr by construction, with exactly the input's interface (avals, weak types too).

Higher-order primitives: `jit` / `closed_call` are inlined (so rules see through a user's
`jax.jit`).  Every other higher-order primitive (`scan`, `while`, `cond`, `checkpoint`,
`custom_jvp_call`, `custom_vjp_call`, and `ttt_loop` for passes without a rule for it) has each
sub-jaxpr rewritten by the same pass with its interface kept (symbolic values never cross a region
boundary: operands are instantiated) and is re-bound with its other parameters unchanged: a
custom_jvp keeps its jvp rule and a custom_vjp its fwd/bwd rules (only the primal program is
rewritten).  A region the interpreter cannot rebuild (an open sub-jaxpr that gained constants) is
left as it was, with a note; its `ttt_loop`s still run (the primitive's impl) and differentiate
(its JVP).  First-order primitives without a rule are re-bound unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax._src import api_util
from jax._src import linear_util as lu
from jax._src.interpreters import partial_eval as pe
from jax._src.lax import lax as lax_internal
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal, jaxprs_in_params, primitives

from .jaxpr_utils import dce, hoist_consts
from .notes import inside, note

Rule = Callable[["Interpreter", Any, list], list]

_INLINE = {primitives.jit_p, primitives.closed_call_p}


class Interpreter:
    """Walks jaxprs applying `rules`; records who produced each value (for peephole rules and CSE)."""

    def __init__(self, rules: dict, instantiate: Callable[[Any, Any], Any] | None = None, default: Rule | None = None):
        self.rules = rules
        self.default = default or default_rule
        self._instantiate = instantiate
        self.producers: dict[int, tuple] = {}
        self._alive: list = []  # keeps recorded values alive so their ids stay unique

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
        """Bind a primitive (as jaxpr evaluation does: its sub-functions rebuilt from its params) and
        remember it as the producer of its outputs."""
        outs = prim.bind(*invals, **prim.get_bind_params(params))
        outs = list(outs) if prim.multiple_results else [outs]
        self.record(outs, prim, params, list(invals))
        return outs


def default_rule(interp: Interpreter, eqn, invals) -> list:
    """Inline calls, rewrite inside loop-bearing regions, otherwise re-bind the equation as it was."""
    if eqn.primitive in _INLINE:  # symbolic values flow in: rules see through jnp's jit wrappers
        return interp.eval_closed(eqn.params["jaxpr"], invals)
    if not any(True for _ in jaxprs_in_params(eqn.params)):
        return interp.bind(eqn, invals)
    return rewrite_region(interp, eqn, invals)


def describe_loop(params) -> str:
    """A ttt_loop's name in notes: its role (and direction) and trip count, e.g. "transpose loop T=4"."""
    rev = " reversed" if params.get("reverse") else ""
    return f"{params.get('role', 'inner')}{rev} {params['schedule']} loop T={params['steps']}"


def rewrite_region(interp: Interpreter, eqn, invals, **new_params) -> list:
    """Re-bind a higher-order equation with each of its sub-jaxprs rewritten by `interp`'s pass (and
    params updated by `new_params`).  A `ttt_loop` body is rewritten with notes naming the loop."""
    new = {}
    if eqn.primitive.name == "ttt_loop":
        with inside(describe_loop(eqn.params)):
            body = interp.rewrite(eqn.params["body"])
        return interp.bind(eqn, invals, **{**new_params, "body": body})
    for name, value in eqn.params.items():
        if isinstance(value, ClosedJaxpr):
            new[name] = interp.rewrite(value)
        elif isinstance(value, tuple) and value and all(isinstance(v, ClosedJaxpr) for v in value):
            new[name] = tuple(interp.rewrite(v) for v in value)
        elif isinstance(value, Jaxpr):
            closed = interp.rewrite(ClosedJaxpr(value, []))
            if closed.consts and eqn.primitive is not primitives.remat_p:
                note(
                    f"left a '{eqn.primitive}' region as it was: its rewritten body has constants "
                    "and the primitive takes an open jaxpr; its ttt_loops run unoptimised"
                )
                return interp.bind(eqn, invals)
            new[name] = closed if eqn.primitive is primitives.remat_p else closed.jaxpr
    if eqn.primitive is primitives.remat_p:  # open jaxpr: rewritten constants become leading inputs
        closed = new["jaxpr"]
        args = [interp.instantiate(x, v.aval) for x, v in zip(invals, eqn.invars)]
        return interp.emit(eqn.primitive, *closed.consts, *args, **{**eqn.params, "jaxpr": hoist_consts(closed.jaxpr)})
    return interp.bind(eqn, invals, **{**new, **new_params})


def rewrite(
    closed: ClosedJaxpr, rules: dict, instantiate: Callable | None = None, default: Rule | None = None
) -> ClosedJaxpr:
    """Re-trace `closed` through `rules`: the generic body of every pass.  The result has exactly the
    input's interface (avals with weak types, in and out) and is DCE'd."""
    interp = Interpreter(rules, instantiate, default)

    def run(*args):
        outs = interp.eval_closed(closed, list(args))
        return [match_aval(interp.instantiate(o, a), a) for o, a in zip(outs, closed.out_avals)]

    return dce(trace_avals(run, closed.in_avals))


def trace_avals(fun: Callable, avals) -> ClosedJaxpr:
    """make_jaxpr of `fun` on abstract values exactly as given (weak types kept, unlike ShapeDtypeStruct)."""
    dbg = api_util.debug_info("ttt_compile.rewrite", fun, tuple(avals), {})
    jaxpr, _, consts = pe.trace_to_jaxpr_dynamic(lu.wrap_init(fun, debug_info=dbg), list(avals))
    return ClosedJaxpr(jaxpr, consts)


def match_aval(x, aval):
    """x with `aval`'s shape, dtype and weak type (an interface must not change under a rewrite)."""
    if jax.numpy.shape(x) != aval.shape:
        x = jax.lax.broadcast_in_dim(x, aval.shape, tuple(range(aval.ndim - jax.numpy.ndim(x), aval.ndim)))
    have = jax.typeof(x)
    weak = getattr(aval, "weak_type", False)
    if have.dtype != aval.dtype or getattr(have, "weak_type", False) != weak:
        x = lax_internal._convert_element_type(x, aval.dtype, weak_type=weak)
    return x
