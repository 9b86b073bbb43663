"""dual_form: an online chunk's outputs from matrix products, without its b per-token weight copies.

One step of an online ``ttt_loop`` (a chunk of b tokens; W the fast weights at the chunk start;
plain gradient descent) computes, for a fast-weight matrix W that the learner uses as z = W k:

    grad_j  = e_j k_j^T                     AD of z_j = W k_j: an outer product, e_j = dl_j/dz_j at W
    W_i     = W + s sum_{j<=i} e_j k_j^T    cumsum over the chunk, s = -eta for optax.sgd(eta)
    z'_i    = W_i q_i                       the query path reads token i's weights
    W_next  = W_b                           the carry handed to the next chunk

The primal form materialises the (b, d_out, d_in) tensor W_1..W_b.  The dual form (TTT-Linear's,
Sun et al. 2024) never does:

    z'_i    = W q_i + s sum_{j<=i} (k_j . q_i) e_j      i.e.  Z' = Q W^T + s tril(Q K^T) E
    W_next  = W + s E^T K

The identity needs nothing from how e_j was computed, so it holds for any decoder (with or without
the Decoder LN: e_j = G^T(G W k_j - x_j) only for the linear decoder, but the gradient with respect to
W is an outer product e_j k_j^T whatever the loss of z_j is) and for every weight matrix of a learner
that reads it through products with per-token vectors (both matrices of the MLP learner; its biases
are cumsums of vectors and stay as they are).

How the pass proves it applies (a structural check on the loop body, no numerical test): the body is
re-traced with symbolic values

    Outer(e, k)       the result of a dot_general with no contracting dimensions, one free dimension
                      per operand and at least one batch dimension (AD's form of grad_j)
    Cum(e, k, t, s, W) = W + s * cumsum_t Outer(e, k) over a batch axis t of the outer product,
                      s a product of rank-0 factors (mul by a scalar, neg), W an added array that is
                      constant along t (the broadcast chunk-start weights)

and exactly two uses of a Cum have a rewrite: a dot_general contracting one of its two matrix
dimensions with a per-token vector q over all its batch axes (-> the dual form above), and a slice
of one token along t (-> W + s sum_{j<=p} e_j k_j^T: the carry).  Any other use (a momentum/Adam
optimizer state, a learner that uses W other than in a matrix product, a per-token output of W_i
itself) would need the materialised W_i: then the loop is left unchanged and the report says which
operation needed it.  Loops with b < min_chunk (default 2) are left alone (for b = 1, W_1 is the
carry itself and there is nothing to save).

Exact in real arithmetic; sums are reassociated, so results agree to float rounding.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any

import jax.numpy as jnp
from jax import lax
from jax.extend.core import ClosedJaxpr, primitives

from ttt_compile.ir.interpreter import default_rule, rewrite, rewrite_region
from ttt_compile.ir.jaxpr_utils import add_any_p, primitive_named
from ttt_compile.ir.primitive import contains_loop, info, ttt_loop_p

from . import note, register

ASSUMES = "real-number reassociation of sums (values agree to float rounding)"
_cumsum_p = primitive_named("cumsum")


# --------------------------------------------------------------------------- symbolic values
@dataclasses.dataclass(eq=False)
class Outer:
    """O[B..., a, c] = e[B..., a] k[B..., c]; `eqn`/`invals` re-emit the original dot_general (None
    after a transpose: then it is rebuilt from e and k)."""

    e: Any
    k: Any
    eqn: Any = None
    invals: list | None = None

    @property
    def nb(self) -> int:
        return self.e.ndim - 1

    def materialize(self):
        if self.eqn is not None:
            return lax.dot_general_p.bind(*self.invals, **self.eqn.params)
        L = _letters(self.nb + 2)
        B, a, c = L[: self.nb], L[self.nb], L[self.nb + 1]
        return jnp.einsum(f"{B}{a},{B}{c}->{B}{a}{c}", self.e, self.k)


@dataclasses.dataclass(eq=False)
class Cum:
    """T[B..., a, c] = base + s * f[B...] * sum_{j <= i along axis t} e_j k_j^T  (i the index on axis t).

    `base` is None (zero) or an array of T's shape with size 1 on axis t; `scale` holds the rank-0
    factors of s; `factor` is None (1) or an array f of T's rank with size 1 on the two matrix axes
    (a factor per token, e.g. the 1/i of Inner.chunk_factor, or per batch element); `dtype` is T's dtype."""

    e: Any
    k: Any
    t: int
    scale: tuple
    base: Any
    dtype: Any
    factor: Any = None

    @property
    def nb(self) -> int:
        return self.e.ndim - 1

    @property
    def length(self) -> int:
        return self.e.shape[self.t]

    def s(self):
        out = jnp.asarray(1.0, self.dtype)
        for f in self.scale:
            out = out * jnp.asarray(f, self.dtype)
        return out

    def replace(self, **kw) -> Cum:
        return dataclasses.replace(self, **kw)

    def materialize(self):
        L = _letters(self.nb + 2)
        B, a, c = L[: self.nb], L[self.nb], L[self.nb + 1]
        outer = jnp.einsum(f"{B}{a},{B}{c}->{B}{a}{c}", self.e, self.k)
        out = self.s() * jnp.cumsum(outer, axis=self.t)
        if self.factor is not None:
            out = out * self.factor
        return (out if self.base is None else self.base + out).astype(self.dtype)


def _letters(n: int) -> str:
    return string.ascii_letters[:n]


# --------------------------------------------------------------------------- the dual-form algebra
def dual_query(cum: Cum, q, contract: str):
    """sum_c T[B.., i, a, c] q[B.., i, c]  (contract="c") or  sum_a T[..] q[.., a]  (contract="a"):

        W q_i + s sum_{j<=i} (k_j . q_i) e_j      (roles of e and k swapped for contract="a");

    q is in canonical layout (B..., vector).  Returns (B..., free)."""
    e, k = (cum.e, cum.k) if contract == "c" else (cum.k, cum.e)
    nb, t = cum.nb, cum.t
    L = _letters(nb + 4)
    B, i, j, v, f = L[:nb], L[nb], L[nb + 1], L[nb + 2], L[nb + 3]
    Bi, Bj, Bt = B[:t] + i + B[t + 1 :], B[:t] + j + B[t + 1 :], B[:t] + B[t + 1 :]
    scores = jnp.einsum(f"{Bi}{v},{Bj}{v}->{Bt}{i}{j}", q, k)  # (k_j . q_i)
    n = cum.length
    scores = jnp.where(jnp.tril(jnp.ones((n, n), bool)), scores, jnp.zeros((), scores.dtype))
    out = cum.s() * jnp.einsum(f"{Bt}{i}{j},{Bj}{f}->{Bi}{f}", scores, e)
    if cum.factor is not None:  # f[B.., i] (size 1 on the matrix axes) scales token i's sum
        out = out * cum.factor[..., 0]
    if cum.base is not None:
        W = jnp.squeeze(cum.base, axis=t)
        spec = f"{Bt}{f}{v}" if contract == "c" else f"{Bt}{v}{f}"
        out = out + jnp.einsum(f"{spec},{Bi}{v}->{Bi}{f}", W, q)
    return out.astype(cum.dtype)


def dual_token(cum: Cum, p: int):
    """T at token p, keeping axis t of size 1:  base + s sum_{j<=p} e_j k_j^T."""
    nb, t = cum.nb, cum.t
    L = _letters(nb + 2)
    B, a, c = L[:nb], L[nb], L[nb + 1]
    Bt = B[:t] + B[t + 1 :]
    e = lax.slice_in_dim(cum.e, 0, p + 1, axis=t)
    k = lax.slice_in_dim(cum.k, 0, p + 1, axis=t)
    w = cum.s()  # s f_p, with f_p[B.., 1 on t, 1] token p's factor (constant over j and the matrix)
    if cum.factor is not None:
        f = cum.factor if cum.factor.shape[t] == 1 else lax.slice_in_dim(cum.factor, p, p + 1, axis=t)
        w = w * f[..., 0]
    if min(e.size, k.size) <= e.size // e.shape[t] * k.shape[-1]:
        # s f_p sum_j e_j k_j^T = sum_j (s f_p e_j) k_j^T: the factor scales the smaller per-token
        # operand, so neither the product nor the outer loop's gradient of f_p (a learned factor)
        # needs a matrix-sized temporary (MLP d=256, b=16: a 4x16x64 operand, not 4x256x64)
        if e.size <= k.size:
            e, w = e * w.astype(e.dtype), None
        else:
            k, w = k * w.astype(k.dtype), None
    out = jnp.expand_dims(jnp.einsum(f"{B}{a},{B}{c}->{Bt}{a}{c}", e, k), t)
    if w is not None:
        out = out * w[..., None]
    return (out if cum.base is None else cum.base + out).astype(cum.dtype)


# --------------------------------------------------------------------------- rules on a loop body
class _Body:
    """Rules for one online loop body; records what was rewritten and what forced a materialisation."""

    def __init__(self):
        self.consumer = "?"
        self.forced: list[str] = []  # primitives that needed a materialised W_i
        self.rewritten: list[tuple] = []  # (b, d_out, d_in) of each dual-form product
        self.lengths: list[int] = []  # chunk length b of every W_i found

    # ----- values
    def instantiate(self, v, aval):
        if isinstance(v, Cum):
            self.forced.append(self.consumer)
            return v.materialize()
        if isinstance(v, Outer):
            return v.materialize()
        return v

    def default(self, interp, eqn, invals):
        self.consumer = str(eqn.primitive)
        return default_rule(interp, eqn, invals)

    def fallback(self, interp, eqn, invals):
        self.consumer = str(eqn.primitive)
        return interp.bind(eqn, invals)

    # ----- rules
    def inline(self, interp, eqn, invals):
        """jit / closed_call: walk the callee with the symbolic values as they are."""
        sub = eqn.params["jaxpr"] if "jaxpr" in eqn.params else eqn.params["call_jaxpr"]
        return interp.eval_closed(sub, invals)

    def dot_general(self, interp, eqn, invals):
        lhs, rhs = invals
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        if isinstance(lhs, Cum) != isinstance(rhs, Cum):
            out = self._query(eqn, lhs, rhs, lc, rc, lb, rb)
            if out is not None:
                return [out]
        if _symbolic(lhs) or _symbolic(rhs):
            return self.fallback(interp, eqn, invals)
        nl, nr = jnp.ndim(lhs), jnp.ndim(rhs)
        if not lc and lb and nl == len(lb) + 1 and nr == len(rb) + 1:
            fl = [d for d in range(nl) if d not in lb]
            fr = [d for d in range(nr) if d not in rb]
            e = jnp.transpose(lhs, (*lb, *fl))
            k = jnp.transpose(rhs, (*rb, *fr))
            return [Outer(e, k, eqn, list(invals))]
        return interp.bind(eqn, invals)

    def _query(self, eqn, lhs, rhs, lc, rc, lb, rb):
        """dot_general(W_i, q) or dot_general(q, W_i) over all batch axes -> the dual form."""
        cum_is_lhs = isinstance(lhs, Cum)
        cum, q = (lhs, rhs) if cum_is_lhs else (rhs, lhs)
        if _symbolic(q):
            return None
        cc, qc, cb, qb = (lc, rc, lb, rb) if cum_is_lhs else (rc, lc, rb, lb)
        nb = cum.nb
        if len(cc) != 1 or cc[0] not in (nb, nb + 1) or sorted(cb) != list(range(nb)) or jnp.ndim(q) != nb + 1:
            return None
        pair = dict(zip(cb, qb))  # cum batch axis -> q axis
        q_can = jnp.transpose(q, (*[pair[d] for d in range(nb)], qc[0]))
        out = dual_query(cum, q_can, "c" if cc[0] == nb + 1 else "a")  # (B..., free)
        self.rewritten.append((cum.length, cum.e.shape[-1], cum.k.shape[-1]))
        # dot_general's output: batch axes in the listed order, then the free axis
        return jnp.transpose(out, (*cb, nb)).astype(eqn.outvars[0].aval.dtype)

    def cumsum(self, interp, eqn, invals):
        (x,) = invals
        axis = eqn.params["axis"] % eqn.outvars[0].aval.ndim
        if isinstance(x, Outer) and not eqn.params["reverse"] and axis < x.nb:
            self.lengths.append(x.e.shape[axis])
            return [Cum(x.e, x.k, axis, (), None, eqn.outvars[0].aval.dtype)]
        return self.fallback(interp, eqn, invals)

    def mul(self, interp, eqn, invals):
        a, b = invals
        shape = eqn.outvars[0].aval.shape
        for cum, f in ((a, b), (b, a)):
            if isinstance(cum, Cum) and not _symbolic(f) and jnp.ndim(f) == 0:
                base = None if cum.base is None else cum.base * f
                return [cum.replace(scale=(*cum.scale, f), base=base)]
            if isinstance(cum, Cum) and cum.base is None and not _symbolic(f) and _per_element(jnp.shape(f), shape):
                # a factor per token (or per batch element), constant over the matrix axes
                f = jnp.reshape(f, (1,) * (len(shape) - jnp.ndim(f)) + tuple(jnp.shape(f)))
                factor = f if cum.factor is None else cum.factor * f
                return [cum.replace(factor=factor)]
        return self.fallback(interp, eqn, invals)

    def neg(self, interp, eqn, invals):
        (x,) = invals
        if isinstance(x, Cum):
            return [x.replace(scale=(*x.scale, -1.0), base=None if x.base is None else -x.base)]
        return self.fallback(interp, eqn, invals)

    def add(self, interp, eqn, invals, sign: float = 1.0):
        a, b = invals
        shape = eqn.outvars[0].aval.shape
        for cum, w, cum_sign, w_sign in ((b, a, sign, 1.0), (a, b, 1.0, sign)):
            if (
                isinstance(cum, Cum)
                and cum.base is None
                and not _symbolic(w)
                and _constant_along(jnp.shape(w), shape, cum.t)
            ):
                w = jnp.broadcast_to(w, (*shape[: cum.t], 1, *shape[cum.t + 1 :]))
                w = w if w_sign == 1.0 else -w
                scale = cum.scale if cum_sign == 1.0 else (*cum.scale, -1.0)
                return [cum.replace(base=w.astype(cum.dtype), scale=scale)]
        return self.fallback(interp, eqn, invals)

    def sub(self, interp, eqn, invals):
        return self.add(interp, eqn, invals, sign=-1.0)

    def transpose(self, interp, eqn, invals):
        """A permutation of the batch axes, possibly swapping the two matrix axes: swap e and k."""
        (x,) = invals
        if isinstance(x, (Outer, Cum)):
            perm, nb = tuple(eqn.params["permutation"]), x.nb
            if sorted(perm[:nb]) == list(range(nb)) and sorted(perm[nb:]) == [nb, nb + 1]:
                bperm = (*perm[:nb], nb)
                e, k = jnp.transpose(x.e, bperm), jnp.transpose(x.k, bperm)
                swap = perm[nb] == nb + 1
                e, k = (k, e) if swap else (e, k)
                if isinstance(x, Outer):
                    return [Outer(e, k)]
                base = None if x.base is None else jnp.transpose(x.base, perm)
                factor = None if x.factor is None else jnp.transpose(x.factor, perm)
                return [x.replace(e=e, k=k, t=perm.index(x.t), base=base, factor=factor)]
        return self.fallback(interp, eqn, invals)

    def slice(self, interp, eqn, invals):
        (x,) = invals
        strides = eqn.params["strides"]
        if isinstance(x, Cum) and (strides is None or all(s == 1 for s in strides)):
            start, limit = eqn.params["start_indices"], eqn.params["limit_indices"]
            full = [d for d in range(len(start)) if d != x.t]
            shape = eqn.invars[0].aval.shape
            if limit[x.t] - start[x.t] == 1 and all(start[d] == 0 and limit[d] == shape[d] for d in full):
                return [dual_token(x, int(start[x.t]))]
        return self.fallback(interp, eqn, invals)

    def rules(self) -> dict:
        out = {
            lax.dot_general_p: self.dot_general,
            lax.mul_p: self.mul,
            lax.neg_p: self.neg,
            lax.add_p: self.add,
            add_any_p: self.add,
            lax.sub_p: self.sub,
            lax.slice_p: self.slice,
            lax.transpose_p: self.transpose,
            primitives.jit_p: self.inline,
            primitives.closed_call_p: self.inline,
        }
        if _cumsum_p is not None:
            out[_cumsum_p] = self.cumsum
        return out


def _symbolic(v) -> bool:
    return isinstance(v, (Outer, Cum))


def _per_element(shape, out_shape) -> bool:
    """A (right-aligned, numpy-broadcast) operand of `out_shape` (rank nb + 2) with size 1 on the two matrix
    axes: a factor per batch element (e.g. per token) that leaves each outer product a rank-one matrix."""
    if len(shape) > len(out_shape) or len(out_shape) < 3:
        return False
    padded = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    return padded[-2:] == (1, 1) and all(s in (1, o) for s, o in zip(padded, out_shape))


def _constant_along(shape, out_shape, t: int) -> bool:
    """A (right-aligned, numpy-broadcast) operand of `out_shape` that has size 1 on axis t."""
    if len(shape) > len(out_shape):
        return False
    padded = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    return padded[t] == 1 and all(s in (1, o) for s, o in zip(padded, out_shape))


# --------------------------------------------------------------------------- the pass
def rewrite_body(body: ClosedJaxpr, min_chunk: int = 2) -> tuple[ClosedJaxpr | None, str]:
    """The dual form of one online loop body, or (None, why it does not apply)."""
    rules = _Body()
    new = rewrite(body, rules.rules(), rules.instantiate, rules.default)
    if rules.lengths and max(rules.lengths) < min_chunk:
        return None, (f"chunk b={max(rules.lengths)} < min_chunk={min_chunk}: W_i is the carry itself, nothing to save")
    if rules.forced:
        uses = ", ".join(sorted(set(rules.forced)))
        return None, (
            f"the per-token weights W_i = W + s cumsum(e_j k_j^T) are read by `{uses}`; only "
            "products W_i q_i and the last token's W_b have a dual form (e.g. an optimizer "
            "with state such as momentum, or a learner using W other than in W z)"
        )
    if not rules.rewritten:
        return None, (
            "no per-token weights W_i = W + s cumsum(e_j k_j^T) read through a product W_i q_i "
            "(the learner's gradient is not an outer product of per-token vectors, or the "
            "update is not a scalar multiple of the summed gradients)"
        )
    b = max(r[0] for r in rules.rewritten)
    return new, ", ".join(f"W {a}x{c}" for _, a, c in rules.rewritten) + f" (b={b})"


@register(
    "dual_form", before=("lower", "unroll"), why_before="unroll/lower expand the online loop first", assumes=ASSUMES
)
def dual_form(closed: ClosedJaxpr, *, min_chunk: int = 2) -> ClosedJaxpr:
    """Compute each online ttt_loop chunk in dual form: token outputs W q_i + s tril(Q K^T) E and the
    next weights W + s E^T K, instead of materialising b per-token weight matrices (plain-GD learners
    whose fast weights enter as products W z; structural check on the body, see the module doc).
    Exact up to float reassociation.  Run it before unroll / fold_zero_init (they consume the loop)."""
    applied: list[str] = []

    def loop_rule(interp, eqn, invals):
        li = info(eqn.params)
        if li.schedule != "online":
            note(f"did not apply to a {li.schedule} loop because the dual form is for batching='online'")
            return rewrite_region(interp, eqn, invals)
        if li.role not in ("inner", "forward") or li.reverse:
            note(
                f"did not apply to the {li.role} loop of an online loop: the dual form is for the loop "
                "that computes the fast weights"
            )
            return rewrite_region(interp, eqn, invals)
        new, why = rewrite_body(li.body, min_chunk)
        if new is None:
            note(f"did not apply to an online loop of T={li.steps} steps because {why}")
            return rewrite_region(interp, eqn, invals)
        applied.append(why)
        note(f"online loop, T={li.steps}: dual form for {why}; no per-token weights materialised")
        return interp.bind(eqn, invals, body=new)

    if not contains_loop(closed):
        note("did not apply because there is no ttt_loop")
        return closed
    out = rewrite(closed, {ttt_loop_p: loop_rule})
    return out if applied else closed
