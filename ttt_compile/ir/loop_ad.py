"""Automatic differentiation of `ttt_loop` that keeps every derived loop a `ttt_loop`.

An inner step of a nested learner takes `jax.grad` through a learner that holds its own inner loop.
If differentiation turned that loop into a plain `scan`, no pass could see it.  These rules follow
JAX's own `scan` rules (jax/_src/lax/control_flow/loops.py) but bind `ttt_loop` again, with the
meaning of each derived loop stated in its `role` parameter:

    jvp        carry_{t+1}, dcarry_{t+1}, y_t, dy_t = jvp(body)(carry_t, x_t; dcarry_t, dx_t):
               the primal carry first (so `num_weights` / `init` still describe W), tangents after
    forward    the known half of a partially evaluated loop: the primal loop, also emitting the
               per-step residuals the tangent loop reads
    tangent    the unknown half: linear in its carry, consts and xs (residuals are extra xs/consts)
    transpose  the transpose of a tangent loop: the same steps in the opposite order (`reverse`),
               carrying cotangents  dL/dcarry_t  and accumulating the consts' cotangents

Rules (registered with the primitive's other rules in `primitive`):  JVP (`ad.primitive_jvps`): the body's JVP with symbolic-zero tangents pruned and carry
tangents instantiated to a fixpoint.  Partial evaluation (`pe.custom_partial_eval_rules`, used by
`jax.linearize` / `jax.vjp` / `jax.grad`): a fixpoint over unknown carries; loop-invariant residuals
are hoisted (JAX's `_scan_known_hoisting`), the rest become per-step outputs of the forward loop.
Transpose (`ad.primitive_transposes`): a reverse loop whose body is `ad.backward_pass` of the tangent
body.  `pe.partial_eval_jaxpr_custom_rules` (jax.checkpoint / remat regions) reuses JAX's scan rule on
the equivalent scan equation and turns the scan equations it returns back into `ttt_loop`s.
A transposed / differentiated body that contains a `ttt_loop` is differentiated by these same rules,
so nesting is kept at every level and any order (grad of grad, hessians).
"""

from __future__ import annotations

import numpy as np
from jax._src import ad_util, core, source_info_util
from jax._src.interpreters import ad
from jax._src.interpreters import partial_eval as pe
from jax._src.lax.control_flow import loops as jax_loops
from jax.extend.core import ClosedJaxpr

from .interpreter import trace_avals
from .loop_def import info, ttt_loop_p

_scan_p = jax_loops.scan_p


def _split3(xs, a: int, b: int):
    return list(xs[:a]), list(xs[a : a + b]), list(xs[a + b :])


def _derived(
    params: dict,
    role: str,
    *,
    body: ClosedJaxpr,
    num_consts: int,
    num_carry: int,
    weights: list[bool] | None = None,
    reverse: bool | None = None,
) -> dict:
    """Params of a loop derived from `params`: `weights` says which of its carry leaves are the
    original fast weights W (they must come first); without W leaves init is "learned" (no claim)."""
    num_weights = sum(weights) if weights else 0
    assert not weights or all(weights[:num_weights]), "fast weights must lead the carry"
    return {
        **params,
        "body": body,
        "num_consts": num_consts,
        "num_carry": num_carry,
        "num_weights": num_weights,
        "init": params["init"] if num_weights else "learned",
        "role": role,
        "reverse": params["reverse"] if reverse is None else reverse,
    }


# --------------------------------------------------------------------------- JVP
def jvp(primals, tangents, **params):
    li = info(params)
    nc, nk = li.num_consts, li.num_carry
    num_xs = len(primals) - nc - nk
    num_ys = len(li.body.out_avals) - nk
    const_nz, init_nz, xs_nz = _split3([type(t) is not ad.Zero for t in tangents], nc, nk)
    carry_nz = init_nz
    for _ in range(1 + nk):  # a carry tangent is nonzero if it starts or becomes nonzero
        body, nz_out = ad.jvp_jaxpr(li.body, const_nz + carry_nz + xs_nz, instantiate=carry_nz + [False] * num_ys)
        if nz_out[:nk] == carry_nz:
            break
        carry_nz = [a or b for a, b in zip(carry_nz, nz_out[:nk])]
    nonzeros = const_nz + carry_nz + xs_nz
    tangents = [ad.instantiate_zeros(t) if nz else t for t, nz in zip(tangents, nonzeros)]
    consts, init, xs = _split3(primals, nc, nk)
    dconsts, dinit, dxs = ([t for t in part if type(t) is not ad.Zero] for part in _split3(tangents, nc, nk))
    body = ad.rearrange_binders(
        body,
        [nc, nk, num_xs],
        [len(dconsts), len(dinit), len(dxs)],
        [nk, num_ys],
        [len(dinit), sum(nz_out) - len(dinit)],
    )
    out = ttt_loop_p.bind(
        *consts,
        *dconsts,
        *init,
        *dinit,
        *xs,
        *dxs,
        **_derived(
            params,
            "jvp",
            body=body,
            num_consts=nc + len(dconsts),
            num_carry=nk + len(dinit),
            weights=[True] * li.num_weights + [False] * (nk - li.num_weights + len(dinit)),
        ),
    )
    carry, dcarry, ys, dys = _cut(out, [nk, len(dinit), num_ys])
    primals_out = carry + ys
    it = iter(dcarry + dys)
    return primals_out, [next(it) if nz else ad_util.p2tz(p) for p, nz in zip(primals_out, nz_out)]


# --------------------------------------------------------------------------- partial evaluation
def partial_eval(trace, *tracers, **params):
    li = info(params)
    nc, nk = li.num_consts, li.num_carry
    num_ys = len(li.body.out_avals) - nk
    const_uk, init_uk, xs_uk = _split3([not t.pval.is_known() for t in tracers], nc, nk)
    fwd = [(i < nc or i >= nc + nk) and not isinstance(t.pval.get_known(), np.ndarray) for i, t in enumerate(tracers)]
    carry_uk = init_uk
    for _ in range(1 + nk):  # a carry is unknown if it starts or becomes unknown
        unknowns = const_uk + carry_uk + xs_uk
        known, unknown, out_uk, res_avals, in_fwd_res = pe.partial_eval_jaxpr_nounits_fwd(
            li.body, unknowns, instantiate=carry_uk + [False] * num_ys, fwd=fwd
        )
        if out_uk[:nk] == carry_uk:
            break
        carry_uk = [a or b for a, b in zip(carry_uk, out_uk[:nk])]
    num_res_out, num_res_in = len(res_avals), len(in_fwd_res)
    num_known_outs = len(known.out_avals) - num_res_out
    nc_known, nk_known = nc - sum(const_uk), nk - sum(carry_uk)

    tracers = [trace.instantiate_const(t) if uk else t for t, uk in zip(tracers, unknowns)]
    known_ins = [t.pval.get_known() for t in tracers if t.pval.is_known()]
    known_consts, known_ins = known_ins[:nc_known], known_ins[nc_known:]
    # residuals that depend on consts only are computed once, outside the loop
    known, known_consts_, which_hoisted, hoisted_res = jax_loops._scan_known_hoisting(known, known_consts, num_res_out)
    num_unk_in = len(unknown.in_avals) - num_res_in
    hoisted = iter(which_hoisted)
    res_to_move = [
        not next(hoisted) if f is None else f >= len(li.body.consts) + nc_known + nk_known for f in in_fwd_res
    ]
    unknown = pe.move_binders_to_back(unknown, res_to_move + [False] * num_unk_in)

    n_w = sum(not uk for uk in carry_uk[: li.num_weights])  # known W leaves lead the known carry
    if known.out_avals or known.effects:
        known_out = ttt_loop_p.bind(
            *known_consts_,
            *known_ins,
            **_derived(
                params,
                "forward" if li.role == "jvp" else li.role,
                body=known,
                num_consts=len(known_consts_),
                num_carry=nk_known,
                weights=[True] * n_w + [False] * (nk_known - n_w),
            ),
        )
    else:
        known_out = []
    known_outs, ext_res = known_out[:num_known_outs], known_out[num_known_outs:]
    non_fwd = iter(_merge(which_hoisted, ext_res, hoisted_res))
    sources = [*li.body.consts, *known_consts, *known_ins]
    res = [next(non_fwd) if f is None else sources[f] for f in in_fwd_res]
    int_res = [trace.new_instantiated_const(r) for r, m in zip(res, res_to_move) if not m]
    ext_res = [trace.new_instantiated_const(r) for r, m in zip(res, res_to_move) if m]

    unknown_ins = [t for t in tracers if not t.pval.is_known()]
    nk_unknown = sum(carry_uk)
    carry_avals, y_avals = unknown.out_avals[:nk_unknown], unknown.out_avals[nk_unknown:]
    out_tracers = [
        pe.JaxprTracer(trace, pe.PartialVal.unknown(a), None)
        for a in [*carry_avals, *(a.update(shape=(li.steps, *a.shape)) for a in y_avals)]
    ]
    uparams = _derived(
        params,
        "tangent" if li.role == "jvp" else li.role,
        body=unknown,
        num_consts=len(int_res) + sum(const_uk),
        num_carry=nk_unknown,
    )
    name_stack = source_info_util.current_name_stack()[len(trace.name_stack) :]
    source = source_info_util.current().replace(name_stack=name_stack)
    eqn = pe.new_eqn_recipe(
        trace, [*int_res, *unknown_ins, *ext_res], out_tracers, ttt_loop_p, uparams, core.no_effects, source
    )
    for t in out_tracers:
        t.recipe = eqn
    outs_known, outs_unknown = iter(known_outs), iter(out_tracers)
    return [next(outs_unknown) if uk else next(outs_known) for uk in out_uk]


def _merge(which, a, b):
    a, b = iter(a), iter(b)
    return [next(b) if w else next(a) for w in which]


# --------------------------------------------------------------------------- transpose
def transpose(cts, *args, **params):
    """The loop is linear in its carry and in the consts / xs given as UndefinedPrimal; the other
    consts / xs are residuals.  The transpose runs the steps backwards, carrying the carry's cotangent
    and the running sum of the linear consts' cotangents, and emitting the linear xs' cotangents."""
    li = info(params)
    nc, nk = li.num_consts, li.num_carry
    consts, init, xs = _split3(args, nc, nk)
    lin_c = [ad.is_undefined_primal(c) for c in consts]
    lin_x = [ad.is_undefined_primal(x) for x in xs]
    num_ys = len(li.body.out_avals) - nk
    ct_carry = [ad.instantiate_zeros(c) for c in cts[:nk]]
    ct_ys = list(cts[nk:])
    ys_zero = [type(c) is ad.Zero for c in ct_ys]
    res_c = [c for c, lin in zip(consts, lin_c) if not lin]
    res_x = [x for x, lin in zip(xs, lin_x) if not lin]
    c_avals = [a for a, lin in zip(li.body.in_avals[:nc], lin_c) if lin]
    k_avals = li.body.in_avals[nc : nc + nk]
    x_avals = li.body.in_avals[nc + nk :]
    y_avals = li.body.out_avals[nk:]
    ct_consts = [ad_util.zeros_like_aval(a) for a in c_avals]

    def step(*flat):
        rc, cc, ck, cy, rx = _cut(flat, [len(res_c), len(c_avals), nk, num_ys - sum(ys_zero)])
        cy = iter(cy)
        cy = [ad.Zero(a.to_tangent_aval()) if z else next(cy) for a, z in zip(y_avals, ys_zero)]
        rc, rx = iter(rc), iter(rx)
        primals = (
            [ad.UndefinedPrimal(a) if lin else next(rc) for a, lin in zip(li.body.in_avals[:nc], lin_c)]
            + [ad.UndefinedPrimal(a) for a in k_avals]
            + [ad.UndefinedPrimal(a) if lin else next(rx) for a, lin in zip(x_avals, lin_x)]
        )
        out = ad.backward_pass(li.body.jaxpr, False, li.body.consts, primals, [*ck, *cy])
        oc, ok, ox = _split3(out, nc, nk)
        oc = [ad.instantiate_zeros(o) for o, lin in zip(oc, lin_c) if lin]
        new_cc = [ad.instantiate_zeros(ad.add_tangents(a, b)) for a, b in zip(cc, oc)]
        ok = [ad.instantiate_zeros(o) for o in ok]
        ox = [ad.instantiate_zeros(o) for o, lin in zip(ox, lin_x) if lin]
        return [*new_cc, *ok, *ox]

    avals = (
        [core.typeof(r) for r in res_c]
        + [a.to_tangent_aval() for a in c_avals]
        + [a.to_tangent_aval() for a in k_avals]
        + [a.to_tangent_aval() for a, z in zip(y_avals, ys_zero) if not z]
        + [core.typeof(r).update(shape=core.typeof(r).shape[1:]) for r in res_x]
    )
    body = trace_avals(step, avals)
    out = ttt_loop_p.bind(
        *res_c,
        *ct_consts,
        *ct_carry,
        *[c for c in ct_ys if type(c) is not ad.Zero],
        *res_x,
        **_derived(
            params, "transpose", body=body, num_consts=len(res_c), num_carry=len(c_avals) + nk, reverse=not li.reverse
        ),
    )
    oc, ok, ox = _cut(out, [len(c_avals), nk])[:3]
    oc, ox = iter(oc), iter(ox)
    return (
        [next(oc) if lin else None for lin in lin_c]
        + [o if ad.is_undefined_primal(a) else None for a, o in zip(init, ok)]
        + [next(ox) if lin else None for lin in lin_x]
    )


def _cut(xs, sizes):
    out, i = [], 0
    for s in sizes:
        out.append(list(xs[i : i + s]))
        i += s
    out.append(list(xs[i:]))
    return out


# --------------------------------------------------------------------------- remat (checkpoint) regions
def _as_scan(eqn):
    li = info(eqn.params)
    return eqn.replace(
        primitive=_scan_p,
        params=dict(
            reverse=li.reverse,
            length=li.steps,
            jaxpr=li.body,
            num_consts=li.num_consts,
            num_carry=li.num_carry,
            unroll=1,
        ),
    )


def _as_loop(scan_eqn, params: dict, role: str):
    p = scan_eqn.params
    return scan_eqn.replace(
        primitive=ttt_loop_p,
        params=_derived(
            params, role, body=p["jaxpr"], num_consts=p["num_consts"], num_carry=p["num_carry"], reverse=p["reverse"]
        ),
    )


def partial_eval_custom(saveable, unks_in, inst_in, eqn):
    """jax.checkpoint's partial evaluation: JAX's scan rule on the equivalent scan, whose known loop
    (inside a closed_call) and staged loop are turned back into `ttt_loop`s.  The derived loops claim
    no fast weights (their carries are subsets of the original's in an order the rule chooses)."""
    li = info(eqn.params)
    known, staged, unks_out, inst_out, new_vars = jax_loops._scan_partial_eval_custom(
        saveable, unks_in, inst_in, _as_scan(eqn)
    )
    role = "forward" if li.role == "jvp" else li.role
    if known is not None and known.primitive is core.closed_call_p:
        call = known.params["call_jaxpr"]
        eqns = list(call.jaxpr.eqns)
        if eqns and eqns[-1].primitive is _scan_p:
            eqns[-1] = _as_loop(eqns[-1], eqn.params, role)
            known = known.replace(
                params={**known.params, "call_jaxpr": ClosedJaxpr(call.jaxpr.replace(eqns=eqns), call.consts)}
            )
    if staged is not None and staged.primitive is _scan_p:
        staged = _as_loop(staged, eqn.params, "tangent" if li.role == "jvp" else li.role)
    return known, staged, unks_out, inst_out, new_vars
