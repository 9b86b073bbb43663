"""What a program costs, read from XLA: FLOPs, bytes accessed, compiled temp memory.

XLA's cost analysis counts a while/scan body once whatever its trip count, so `measure` adds, for
every loop (scan or ttt_loop, also inside jit/checkpoint regions), (trips - 1) times its body:

    F(P) = XLA(P) + sum_{loops L in P} ( trips_L * F(body_L) - XLA(body_L) )

(recursively, so nested loops multiply).  If XLA removed every loop itself (no `while` left in the
compiled program) nothing is added.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
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


def by_level(closed: ClosedJaxpr) -> list[float]:
    """FLOPs at each loop-nesting level, trip counts included: entry k is what runs inside k nested
    loops and no deeper (level 0: outside every loop), so the entries sum to `measure(closed).flops`
    up to XLA fusing a body differently in and out of context:

        levels(P) = [F(P) - sum_L trips_L F(body_L)] + sum_L trips_L * shift(levels(body_L))

    Every loop body is compiled on its own (also where XLA unrolled the loop)."""
    f, *_ = _true(closed)
    inner, top = [], f
    for body, trips in _loops(closed.jaxpr):
        sub = by_level(body if isinstance(body, ClosedJaxpr) else ClosedJaxpr(body, []))
        top -= trips * sum(sub)
        inner = [
            a + trips * b
            for a, b in zip(inner + [0.0] * (len(sub) - len(inner)), sub + [0.0] * (len(inner) - len(sub)))
        ]
    return [top, *inner]


def of(fn: Callable, *args) -> Cost:
    """Cost of `fn(*args)` (traced with jax.make_jaxpr)."""
    return measure(jax.make_jaxpr(fn)(*args))


_TRAIN_TEMP: dict[str, int] = {}  # program text -> measured bytes (programs recur across passes)


def train_temp_bytes(closed: ClosedJaxpr) -> int:
    """Compiled temp memory (XLA `memory_analysis().temp_size_in_bytes`) of the program's training
    step: ``value_and_grad`` of ``sum(sin(outputs))`` w.r.t. every inexact input (the backward pass
    is what stores an inner loop's steps).  A program without inexact inputs or outputs has no
    backward pass: its forward program is measured.  Compiled, never run."""
    key = str(closed)
    if key in _TRAIN_TEMP:
        return _TRAIN_TEMP[key]
    fun = jaxpr_as_fun(closed)
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed.in_avals]
    diff = [i for i, a in enumerate(avals) if jnp.issubdtype(a.dtype, jnp.inexact)]
    inexact_out = [i for i, a in enumerate(closed.out_avals) if jnp.issubdtype(a.dtype, jnp.inexact)]

    def loss(d, rest):
        args = list(rest)
        for i, v in zip(diff, d):
            args[i] = v
        outs = fun(*args)
        return sum(jnp.sum(jnp.sin(outs[i])).astype(jnp.float32) for i in inexact_out)

    if diff and inexact_out:
        rest = [None if i in diff else a for i, a in enumerate(avals)]
        lowered = jax.jit(jax.value_and_grad(loss)).lower([avals[i] for i in diff], rest)
    else:
        lowered = jax.jit(fun).lower(*avals)
    ma = lowered.compile().memory_analysis()
    if ma is None:
        raise RuntimeError("XLA gave no memory analysis for this backend")
    if len(_TRAIN_TEMP) > 512:
        _TRAIN_TEMP.clear()
    _TRAIN_TEMP[key] = int(ma.temp_size_in_bytes)
    return _TRAIN_TEMP[key]


def stored_bytes(closed: ClosedJaxpr) -> int:
    """Bytes the training step's backward pass stores for `closed`: the residuals of ``jax.vjp`` of
    the program w.r.t. its inexact inputs (the primal inputs it keeps included), counted by tracing
    alone (``jax.eval_shape``; nothing compiled, nothing run).  Stored bytes add up over the parts
    of a program, unlike compiled temp memory; they leave out what a rematerialised step
    recomputes transiently in the backward pass."""
    fun = jaxpr_as_fun(closed)
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed.in_avals]
    diff = [i for i, a in enumerate(avals) if jnp.issubdtype(a.dtype, jnp.inexact)]

    def residuals(d, rest):
        def f(*d):
            args = list(rest)
            for i, v in zip(diff, d):
                args[i] = v
            return fun(*args)

        return jax.vjp(f, *d)[1]

    rest = [None if i in diff else a for i, a in enumerate(avals)]
    leaves = jax.tree_util.tree_leaves(jax.eval_shape(residuals, [avals[i] for i in diff], rest))
    return int(sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves if hasattr(x, "dtype")))
