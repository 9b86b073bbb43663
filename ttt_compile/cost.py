"""What a program costs, read from XLA: FLOPs, bytes accessed, compiled temp memory.

XLA's cost analysis counts a while/scan body once whatever its trip count, so `measure` adds, for
every loop (scan or ttt_loop, also inside jit/checkpoint regions), (trips - 1) times its body:

    F(P) = XLA(P) + sum_{loops L in P} ( trips_L * F(body_L) - XLA(body_L) )

(recursively, so nested loops multiply).  If XLA removed every loop itself (no `while` left in the
compiled program) nothing is added.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
from jax.extend.core import ClosedJaxpr, jaxpr_as_fun, jaxprs_in_params, primitives

from .ir.jaxpr_utils import count_eqns
from .ir.primitive import ttt_loop_p


@dataclasses.dataclass(frozen=True)
class Cost:
    """flops and bytes accessed (trip counts included), temp_bytes of the compiled program, eqns."""

    flops: float
    bytes: float
    temp_bytes: int
    eqns: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _xla(closed: ClosedJaxpr):
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed.in_avals]
    compiled = jax.jit(jaxpr_as_fun(closed)).lower(*avals).compile()
    ca = compiled.cost_analysis()
    ca = (ca[0] if ca else {}) if isinstance(ca, (list, tuple)) else (ca or {})
    ma = compiled.memory_analysis()
    temp = int(getattr(ma, "temp_size_in_bytes", 0)) if ma is not None else 0
    has_while = "while" in compiled.as_text()
    return float(ca.get("flops", 0.0)), float(ca.get("bytes accessed", 0.0)), temp, has_while


def _loops(jaxpr):
    """(body ClosedJaxpr, trips) of each loop in jaxpr, looking through non-loop regions."""
    for eqn in jaxpr.eqns:
        if eqn.primitive is primitives.scan_p:
            yield eqn.params["jaxpr"], eqn.params["length"]
        elif eqn.primitive is ttt_loop_p:
            yield eqn.params["body"], eqn.params["steps"]
        else:
            for sub in jaxprs_in_params(eqn.params):
                yield from _loops(getattr(sub, "jaxpr", sub))


def _true(closed: ClosedJaxpr):
    """(flops, bytes with trip counts, temp bytes, XLA's own flops, XLA's own bytes)."""
    xf, xb, temp, has_while = _xla(closed)
    f, b = xf, xb
    if has_while:
        for body, trips in _loops(closed.jaxpr):
            tf, tb, _, bf, bb = _true(body if isinstance(body, ClosedJaxpr) else ClosedJaxpr(body, []))
            f += trips * tf - bf
            b += trips * tb - bb
    return f, b, temp, xf, xb


def measure(closed: ClosedJaxpr) -> Cost:
    """Cost of a closed jaxpr, loop trip counts accounted for."""
    flops, bytes_, temp, _, _ = _true(closed)
    return Cost(flops=flops, bytes=bytes_, temp_bytes=temp, eqns=count_eqns(closed))


def of(fn: Callable, *args) -> Cost:
    """Cost of `fn(*args)` (traced with jax.make_jaxpr)."""
    return measure(jax.make_jaxpr(fn)(*args))
