"""simplify: algebra on the traced program: scalar factors, splats, broadcasts and transposes.

Values in the walk may be symbolic:
    Splat(k)       an array filled with one constant k (e.g. broadcast of a literal)
    Scaled(x, c)   c * x for a Python scalar c, the multiplication not yet emitted

Scalar factors ride along linear operations (neg, mul by a constant, div by a constant,
transpose, reshape, broadcast, reduce_sum, dot_general, add/sub of equally scaled values, ...)
and are multiplied in once, where a non-linear operation, a product of two arrays or an output
needs the value: -(-x) = x, 2 * (0.5 * x) = x, a chain of scale factors becomes one multiply.
Scalar expressions of constants are folded.  Structural rewrites: transposes compose;
transpose(broadcast(y)) becomes broadcast(transpose(y)); squeeze/reshape of a broadcast that only
inserted unit axes reads y (AD then stores y once, not y and a copy); a dot_general whose operand is a broadcast over exactly its batch axes
contracts y itself (no materialised copy per batch entry: the shape vmap-over-heads leaves when all
heads read the same tokens).  Exact up to the rounding of folded scalar constants.
"""

from __future__ import annotations

import dataclasses
import string

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import ClosedJaxpr

from ttt_compile.ir.interpreter import rewrite
from ttt_compile.ir.jaxpr_utils import add_any_p, constant, count_eqns, primitive_named

from . import note, register


@dataclasses.dataclass(frozen=True, eq=False)
class Splat:
    value: float
    aval: object


@dataclasses.dataclass(frozen=True, eq=False)
class Scaled:
    x: object
    c: float


def _instantiate(v, aval):
    if isinstance(v, Splat):
        return lax.full(aval.shape, np.asarray(v.value, aval.dtype))
    if isinstance(v, Scaled):
        if v.c == -1:
            return lax.neg(v.x)
        return lax.mul_p.bind(v.x, np.asarray(v.c, aval.dtype), out_dtype=None)
    return v


def _parts(v):
    """(array-or-tracer, scale) of a value; Splats count as constant arrays with scale 1."""
    return (v.x, v.c) if isinstance(v, Scaled) else (v, 1.0)


def _scaled(x, c):
    """c * x, kept symbolic; a scaled splat is a splat (symbolic values never nest)."""
    if isinstance(x, Splat):
        return Splat(x.value * c, x.aval)
    return x if c == 1 else Scaled(x, c)


def _scalar_const(v):
    """k if v is a scalar constant or a Splat, else None."""
    if isinstance(v, Splat):
        return v.value
    c = constant(v)
    return c.item() if c is not None and c.ndim == 0 else None


_LINEAR_UNARY = (
    "transpose",
    "reshape",
    "squeeze",
    "expand_dims",
    "broadcast_in_dim",
    "reduce_sum",
    "slice",
    "rev",
    "copy",
    "copy_p",
    "cumsum",
    "convert_element_type",
    "dynamic_slice",
)


def _inexact(eqn) -> bool:
    """Whether every operand and result of `eqn` has an inexact (float/complex) dtype: the scalar
    algebra below (c * x carried through linear ops) is real-number algebra, wrong for integers
    (truncating division, casts) and meaningless for booleans."""
    return all(
        jnp.issubdtype(v.aval.dtype, jnp.inexact) for v in (*eqn.invars, *eqn.outvars) if hasattr(v.aval, "dtype")
    )


class _Simplifier:
    def __init__(self):
        self.hits = 0

    def hit(self, out):
        self.hits += 1
        return out

    # ---------------------------------------------------------------- scalar factors
    def linear_unary(self, interp, eqn, invals):
        """op(c x) = c op(x) for ops linear in their first operand; op(Splat) = Splat when shape-only."""
        x, rest = invals[0], invals[1:]
        if isinstance(x, Splat) and eqn.primitive.name in (
            "transpose",
            "reshape",
            "squeeze",
            "expand_dims",
            "broadcast_in_dim",
            "convert_element_type",
            "copy",
            "rev",
            "slice",
            "dynamic_slice",
        ):
            return self.hit([Splat(x.value, eqn.outvars[0].aval)])
        if _scalar_const(x) is not None and eqn.primitive.name == "broadcast_in_dim" and not rest:
            return self.hit([Splat(_scalar_const(x), eqn.outvars[0].aval)])
        base, c = _parts(x)
        p = interp.producer(base)
        if eqn.primitive is lax.transpose_p:
            out = self.transpose(interp, eqn, base)
        elif (
            eqn.primitive is lax.broadcast_in_dim_p
            and not rest
            and p is not None
            and p[0] is lax.broadcast_in_dim_p
            and len(p[2]) == 1
        ):  # broadcast of a broadcast
            self.hits += 1
            dims = tuple(eqn.params["broadcast_dimensions"][d] for d in p[1]["broadcast_dimensions"])
            out = interp.emit(lax.broadcast_in_dim_p, p[2][0], **{**eqn.params, "broadcast_dimensions": dims})[0]
        elif (
            (eqn.primitive is lax.squeeze_p or (eqn.primitive is lax.reshape_p and eqn.params["dimensions"] is None))
            and not rest
            and p is not None
            and p[0] is lax.broadcast_in_dim_p
            and len(p[2]) == 1
            and np.size(p[2][0]) == np.size(base)
        ):  # of a broadcast that only inserted unit axes: a reshape of its source (W, not a copy of W)
            self.hits += 1
            y, shape = p[2][0], eqn.outvars[0].aval.shape
            if np.shape(y) == shape:
                out = y
            else:
                out = interp.emit(lax.reshape_p, y, new_sizes=shape, dimensions=None, sharding=None)[0]
        else:
            out = interp.bind(eqn, [base, *rest])[0]
        return [_scaled(out, c)]

    def neg(self, interp, eqn, invals):
        if isinstance(invals[0], Splat):
            return self.hit([Splat(-invals[0].value, eqn.outvars[0].aval)])
        base, c = _parts(invals[0])
        return self.hit([_scaled(base, -c)])

    def mul(self, interp, eqn, invals):
        a, b = invals
        out = eqn.outvars[0].aval
        ka, kb = _scalar_const(a), _scalar_const(b)
        if ka is not None and kb is not None:
            return self.hit([Splat(ka * kb, out)] if out.shape else interp.bind(eqn, invals))
        for k, other in ((ka, b), (kb, a)):
            if k is not None and np.shape(_parts(other)[0]) == out.shape:
                base, c = _parts(other)
                return self.hit([_scaled(base, c * k)])
        # A product of two arrays: each operand's factor is multiplied in where the operand is made
        # (elementwise work XLA fuses it into), not carried on to a dot, where the outer loop's AD
        # would scale a cotangent in a pass of its own (MTTT-MLP T=1 train step 7 % slower).
        return interp.bind(eqn, [_instantiate(a, eqn.invars[0].aval), _instantiate(b, eqn.invars[1].aval)])

    def div(self, interp, eqn, invals):
        a, b = invals
        kb = _scalar_const(b)
        base, c = _parts(a)
        if kb is not None and kb != 0 and np.shape(base) == eqn.outvars[0].aval.shape:
            return self.hit([_scaled(base, c / kb)])
        return [_scaled(interp.bind(eqn, [base, b])[0], c)]

    def add(self, interp, eqn, invals):
        """c x + c y = c (x + y);  c x + (-c) y = c (x - y)  (and the same for sub and add_any);
        (-x) + y = y - x with no factor left (IEEE: y - x is y + (-x), exactly)."""
        (xa, ca), (xb, cb) = _parts(invals[0]), _parts(invals[1])
        if isinstance(invals[0], Splat) or isinstance(invals[1], Splat):
            return interp.bind(eqn, invals)
        if ca == cb:
            return [_scaled(interp.bind(eqn, [xa, xb])[0], ca)]
        if ca == -1 and cb == 1 and eqn.primitive is not lax.sub_p:
            return self.hit(interp.emit(lax.sub_p, xb, xa))
        if ca == -cb:
            other = lax.sub_p if eqn.primitive is not lax.sub_p else lax.add_p
            return self.hit([_scaled(interp.emit(other, xa, xb)[0], ca)])
        return interp.bind(eqn, invals)

    def integer_pow(self, interp, eqn, invals):
        base, c = _parts(invals[0])
        if c == 0 and eqn.params["y"] < 0:
            return interp.bind(eqn, invals)
        return [_scaled(interp.bind(eqn, [base])[0], c ** eqn.params["y"])]

    def dot_general(self, interp, eqn, invals):
        (xa, ca), (xb, cb) = _parts(invals[0]), _parts(invals[1])
        if isinstance(invals[0], Splat) or isinstance(invals[1], Splat):
            return interp.bind(eqn, invals)
        out = self._dot_through_broadcast(interp, eqn, xa, xb)
        if out is None:
            out = interp.bind(eqn, [xa, xb])[0]
        c = ca * cb
        size = np.prod(eqn.outvars[0].aval.shape)
        if c != 1 and size < min(np.size(xa), np.size(xb)):  # the smallest tensor yet: apply c here
            return [_instantiate(Scaled(out, c), eqn.outvars[0].aval)]
        return [_scaled(out, c)]

    # ---------------------------------------------------------------- structure
    def transpose(self, interp, eqn, x):
        perm = tuple(eqn.params["permutation"])
        if perm == tuple(range(len(perm))):
            self.hits += 1
            return x
        p = interp.producer(x)
        if p is not None and p[0] is lax.transpose_p:  # transpose of transpose
            self.hits += 1
            inner = p[1]["permutation"]
            composed = tuple(inner[i] for i in perm)
            return (
                p[2][0]
                if composed == tuple(range(len(composed)))
                else interp.emit(lax.transpose_p, p[2][0], permutation=composed)[0]
            )
        if p is not None and p[0] is lax.broadcast_in_dim_p and len(p[2]) == 1:  # of a broadcast
            self.hits += 1
            y, dims = p[2][0], p[1]["broadcast_dimensions"]
            new = [perm.index(d) for d in dims]
            order = sorted(range(len(new)), key=lambda j: new[j])
            if order != list(range(len(new))):
                y = interp.emit(lax.transpose_p, y, permutation=tuple(order))[0]
            return interp.emit(
                lax.broadcast_in_dim_p,
                y,
                shape=eqn.outvars[0].aval.shape,
                broadcast_dimensions=tuple(sorted(new)),
                sharding=None,
            )[0]
        return interp.emit(lax.transpose_p, x, permutation=perm)[0]

    def _dot_through_broadcast(self, interp, eqn, a, b):
        """dot_general(broadcast(y) over exactly the batch axes, b) = dot of y with b's batch axes free."""
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        for side in (0, 1):
            x = (a, b)[side]
            p = interp.producer(x)
            if p is None or p[0] is not lax.broadcast_in_dim_p or len(p[2]) != 1:
                continue
            y, dims = p[2][0], tuple(p[1]["broadcast_dimensions"])
            batch = (lb, rb)[side]
            if set(range(np.ndim(x))) - set(dims) != set(batch) or any(
                np.shape(y)[j] != np.shape(x)[d] for j, d in enumerate(dims)
            ):
                continue
            self.hits += 1
            return _dot_by_labels(a, b, eqn.params, drop=(side, dims), interp=interp)
        return None


def _dot_by_labels(a, b, params, drop, interp):
    """Recompute dot_general(a, b) with operand `drop[0]` replaced by the array it was broadcast from."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    letters = iter(string.ascii_letters)
    la = [next(letters) for _ in range(np.ndim(a))]
    lbl = [next(letters) for _ in range(np.ndim(b))]
    for i, j in zip(lc, rc):
        lbl[j] = la[i]
    for i, j in zip(lb, rb):
        lbl[j] = la[i]
    out = (
        [la[i] for i in lb]
        + [la[i] for i in range(len(la)) if i not in lc and i not in lb]
        + [lbl[j] for j in range(len(lbl)) if j not in rc and j not in rb]
    )
    side, dims = drop
    p = interp.producer((a, b)[side])
    y = p[2][0]
    ly = [(la, lbl)[side][d] for d in dims]
    operands = [(y, ly), (b, lbl)] if side == 0 else [(a, la), (y, ly)]
    (x0, l0), (x1, l1) = operands
    contract = [c for c in l0 if c in l1 and c not in out]
    batch = [c for c in l0 if c in l1 and c in out]
    dn = (
        (tuple(l0.index(c) for c in contract), tuple(l1.index(c) for c in contract)),
        (tuple(l0.index(c) for c in batch), tuple(l1.index(c) for c in batch)),
    )
    res = interp.emit(
        lax.dot_general_p,
        x0,
        x1,
        dimension_numbers=dn,
        precision=params.get("precision"),
        preferred_element_type=params.get("preferred_element_type"),
        **{k: v for k, v in params.items() if k not in ("dimension_numbers", "precision", "preferred_element_type")},
    )[0]
    produced = batch + [c for c in l0 if c not in l1] + [c for c in l1 if c not in l0]
    perm = tuple(produced.index(c) for c in out)
    return res if perm == tuple(range(len(perm))) else interp.emit(lax.transpose_p, res, permutation=perm)[0]


def _fold_constants(rule_table, s):
    """Wrap the default: an equation whose inputs are all scalar constants is evaluated now (exact:
    the same primitive on the same values); other equations go to their rule only when they are
    inexact arithmetic, else to the default rule (operands instantiated, re-bound unchanged)."""
    from ttt_compile.ir.interpreter import default_rule

    def rule(interp, eqn, invals):
        if (
            invals
            and not eqn.primitive.multiple_results
            and not eqn.effects
            and all(_scalar_const(v) is not None and not isinstance(v, Splat) for v in invals)
            and eqn.outvars[0].aval.shape == ()
        ):
            with jax.ensure_compile_time_eval():
                s.hits += 1
                return [np.asarray(eqn.primitive.bind(*[np.asarray(v) for v in invals], **eqn.params))]
        if eqn.primitive in rule_table and _inexact(eqn):
            return rule_table[eqn.primitive](interp, eqn, invals)
        return default_rule(interp, eqn, invals)

    return rule


def _rules(s: _Simplifier) -> dict:
    rules = {
        lax.neg_p: s.neg,
        lax.mul_p: s.mul,
        lax.div_p: s.div,
        lax.add_p: s.add,
        add_any_p: s.add,
        lax.sub_p: s.add,
        lax.integer_pow_p: s.integer_pow,
        lax.dot_general_p: s.dot_general,
    }
    for name in _LINEAR_UNARY:
        prim = primitive_named(name)
        if prim is not None:
            rules[prim] = s.linear_unary
    return rules


@register("simplify")
def simplify(closed: ClosedJaxpr) -> ClosedJaxpr:
    """Algebraic simplification: scalar factors carried through linear ops and applied once,
    -(-x) = x, constant scalar folding, composed transposes, dots that contract a broadcast operand's
    source instead of its per-batch copies.  Exact up to rounding of folded scalars."""
    s = _Simplifier()
    out = rewrite(closed, {}, _instantiate, default=_fold_constants(_rules(s), s))
    if not s.hits:
        note("did not apply: no pattern found")
        return closed
    note(f"{s.hits} rewrites; equations {count_eqns(closed)} -> {count_eqns(out)}")
    return out
