"""Small facts about jaxprs that every pass and the cost model need: constants, primitives by name,
hoisting consts, dead-code elimination, equation counts."""

from __future__ import annotations

import jax
import numpy as np
from jax import lax
from jax._src import ad_util
from jax.extend.core import ClosedJaxpr
from jax.interpreters import partial_eval as pe

#: Primitives passes match on that jax.lax does not export.
add_any_p = ad_util.add_jaxvals_p


def constant(v):
    """The NumPy value of a value known at trace time (a literal or const), else None."""
    if isinstance(v, jax.core.Tracer) or not hasattr(v, "dtype") and not isinstance(v, (int, float)):
        return None
    return np.asarray(v)


def primitive_named(name: str):
    """The lax primitive called `name` (e.g. "cumsum"), or None if this JAX has none."""
    from jax._src.lax import control_flow, slicing
    from jax._src.lax import lax as lax_internal

    for mod in (lax, lax_internal, slicing, control_flow):
        p = getattr(mod, f"{name}_p", None)
        if p is not None:
            return p
    return None


def hoist_consts(jaxpr):
    """The same jaxpr with its constvars turned into leading invars."""
    return jaxpr.replace(constvars=[], invars=[*jaxpr.constvars, *jaxpr.invars]) if jaxpr.constvars else jaxpr


def dce(closed: ClosedJaxpr) -> ClosedJaxpr:
    """Drop equations whose outputs are unused (JAX's own dce rules recurse into sub-jaxprs)."""
    jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars), instantiate=True)
    return ClosedJaxpr(jaxpr, closed.consts)


def count_eqns(jaxpr) -> int:
    """Equations, counting those inside sub-jaxprs (loop bodies once)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    return sum(1 + sum(count_eqns(j) for j in jax.extend.core.jaxprs_in_params(e.params)) for e in jaxpr.eqns)
