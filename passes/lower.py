"""lower: replace every remaining ttt_loop by core primitives (lax.scan)."""

from jax.extend.core import ClosedJaxpr

from ttt_compile.ir import expand_loop as loops
from ttt_compile.ir.interpreter import rewrite
from ttt_compile.ir.primitive import contains_loop, info, ttt_loop_p

from . import note, register


def _rule(interp, eqn, invals):
    li = info(eqn.params)
    consts, carry, xs = li.split([interp.instantiate(x, v.aval) for x, v in zip(invals, eqn.invars)])
    return loops.scan(interp, li, consts, carry, xs)


@register("lower")
def lower(closed: ClosedJaxpr) -> ClosedJaxpr:
    """Lower each ttt_loop to lax.scan over its body (nested, checkpointed scans for remat='sqrt'/'log').

    Exact: afterwards the program is plain JAX, so jax.jit, jax.grad and sharding apply."""
    if not contains_loop(closed):
        note("did not apply: no ttt_loop left")
        return closed
    return rewrite(closed, {ttt_loop_p: _rule})
