"""remat: choose how the outer backward pass stores an inner loop (rematerialisation)."""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from jax.extend.core import ClosedJaxpr

from ttt_compile.ir.interpreter import rewrite, rewrite_region
from ttt_compile.ir.expand_loop import remat_prediction
from ttt_compile.ir.primitive import REMAT_SCHEMES, contains_loop, info, ttt_loop_p
from ttt_compile.layer.spec import SpecError

from . import note, register


def _carry_bytes(eqn, li) -> int:
    avals = [v.aval for v in eqn.invars[li.num_consts:li.num_consts + li.num_carry]]
    return int(sum(np.prod(a.shape) * a.dtype.itemsize for a in avals))


@register("remat", before=("lower", "unroll", "sgd_batch"),
          why_before="unroll/sgd_batch/lower expand the loops whose storage remat chooses")
def remat(closed: ClosedJaxpr, *, scheme: Literal["step", "sqrt", "log"] | None = None) -> ClosedJaxpr:
    """Mark inner loops for rematerialisation: the backward pass recomputes inner steps from stored
    carries W_t instead of keeping every step's intermediates.  Default scheme: "step" for a
    full-batch loop of T > 1 steps, "sqrt" for an online loop (T = n/chunk); `scheme` forces one of
    "step" | "sqrt" | "log".  SGD loops are left alone (each step sees n/T tokens, so storing all
    steps costs what one full step costs).  Exact: changes memory and time, not values."""
    if scheme not in REMAT_SCHEMES:
        raise SpecError(f"remat: scheme must be one of {REMAT_SCHEMES[1:]}, got {scheme!r}")
    changed = []

    def rule(interp, eqn, invals):
        li = info(eqn.params)
        chosen = scheme or {"full": "step" if li.steps > 1 else None, "online": "sqrt", "sgd": None}[li.schedule]
        if chosen is None or li.steps == 1:
            why = "one step" if li.steps == 1 else "each SGD step sees n/T tokens"
            note(f"left a {li.schedule} loop of {li.steps} step(s) alone: {why}, nothing to rematerialise")
            return rewrite_region(interp, eqn, invals)
        changed.append(chosen)
        note(f"{li.role} {li.schedule} loop, T={li.steps}, scheme {chosen}: "
             + remat_prediction(dataclasses.replace(li, remat=chosen), _carry_bytes(eqn, li)))
        return rewrite_region(interp, eqn, invals, remat=chosen)     # nested loops: schemes compose

    out = rewrite(closed, {ttt_loop_p: rule})
    if not changed:
        if not contains_loop(closed):
            note("did not apply: no ttt_loop")
        return closed
    return out
