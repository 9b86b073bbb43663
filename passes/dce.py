"""dce: remove equations whose results nothing uses."""

from jax.extend.core import ClosedJaxpr

from ttt_compile.ir.jaxpr_utils import count_eqns
from ttt_compile.ir.jaxpr_utils import dce as _dce

from . import note, register


@register("dce")
def dce(closed: ClosedJaxpr) -> ClosedJaxpr:
    """Dead-code elimination: drop equations (also inside sub-jaxprs) whose outputs are unused."""
    out = _dce(closed)
    if count_eqns(out) == count_eqns(closed):
        note("did not apply: every equation's result is used")
        return closed
    return out
