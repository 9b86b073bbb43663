"""The IR's one addition to jaxpr: the higher-order primitive `ttt_loop`.

    carry_T, ys = ttt_loop[body, steps, schedule, init, ...](*consts, *carry_0, *xs)

means  for t in 0..steps-1:  carry_{t+1}, ys[t] = body(*consts, *carry_t, *xs[t])  -- a scan whose
parameters also say what the loop *is* (an inner loop of fast weights: `schedule` full/sgd/online,
`init` zero/learned, which carry leaves are the weights W and which the optimizer state, and how the
backward pass should store it, `remat`).  Passes read those parameters to rewrite the loop; `lower`
replaces it by `lax.scan`.  The impl (also its MLIR lowering, so `jax.jit` of an un-lowered program
runs) is that scan, so an un-lowered program has the reference meaning.  `reverse` runs the steps
backwards (a transposed loop); `role` says whether the loop is a layer's inner loop ("inner") or a
loop that differentiation derived from one (`loop_ad`: "jvp", "forward", "tangent", "transpose"):
AD keeps every derived loop a `ttt_loop`, so nested inner loops stay visible to the passes.

The layer emits `ttt_loop` only while tracing for compilation (`emitting()`); the plain call path
runs `lax.scan` directly and never touches this primitive.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax._src.interpreters import ad, batching
from jax.extend.core import ClosedJaxpr, jaxpr_as_fun
from jax.interpreters import mlir
from jax.interpreters import partial_eval as pe

from . import loop_ad
from .jaxpr_utils import dce, hoist_consts

# the primitive and its parameters live in loop_def; imported from here as well (the public path)
from .loop_def import REMAT_SCHEMES as REMAT_SCHEMES
from .loop_def import LoopInfo as LoopInfo
from .loop_def import info as info
from .loop_def import ttt_loop_p as ttt_loop_p

_EMIT = contextvars.ContextVar("ttt_compile_emit", default=False)


@contextlib.contextmanager
def emitting():
    """Within this context TTT layers trace their inner loops as `ttt_loop` equations."""
    token = _EMIT.set(True)
    try:
        yield
    finally:
        _EMIT.reset(token)


def is_emitting() -> bool:
    return _EMIT.get()


# --------------------------------------------------------------------------- semantics
def scan_body(body: ClosedJaxpr, num_consts: int, num_carry: int) -> Callable:
    """The loop body as a lax.scan step function  (carry, x_t) -> (carry', y_t)  closing over consts."""
    fun = jaxpr_as_fun(body)

    def make(consts):
        def step(carry, xs):
            out = fun(*consts, *carry, *xs)
            return list(out[:num_carry]), list(out[num_carry:])

        return step

    return make


def _impl(*args, **params):
    li = info(params)
    consts, carry, xs = li.split(args)
    carry, ys = lax.scan(
        scan_body(li.body, li.num_consts, li.num_carry)(consts), carry, xs, length=li.steps, reverse=li.reverse
    )
    return [*carry, *ys]


def _abstract_eval(*avals, **params):
    li = info(params)
    _, carry, _ = li.split(avals)
    y_avals = [a.update(shape=(li.steps, *a.shape)) for a in li.body.out_avals[li.num_carry :]]
    return [*carry, *y_avals]


def _batch(axis_data, vals, dims, **params):
    """vmap (JAX's scan rule): consts and carry batched on axis 0, xs and ys on axis 1 (axis 0 is the
    step axis).  A carry leaf is batched if it starts batched or becomes batched after a step (an
    unbatched W0 becomes batched after one step with batched data): a fixpoint over the carry."""
    li = info(params)
    cb, kb, xb = li.split([d is not None for d in dims])
    num_ys = len(li.body.out_avals) - li.num_carry
    carry_b = kb
    for _ in range(1 + li.num_carry):
        body, out_b = batching.batch_jaxpr(
            li.body, axis_data, cb + carry_b + xb, instantiate=carry_b + [False] * num_ys
        )
        if out_b[: li.num_carry] == carry_b:
            break
        carry_b = [a or b for a, b in zip(carry_b, out_b[: li.num_carry])]
    consts, carry, xs = li.split(vals)
    cd, kd, xd = li.split(dims)
    consts = [c if d is None else batching.moveaxis(c, d, 0) for c, d in zip(consts, cd)]
    carry = [
        batching.moveaxis(c, d, 0)
        if d is not None
        else batching.broadcast(c, axis_data.size, 0, axis_data.explicit_mesh_axis)
        if b
        else c
        for c, d, b in zip(carry, kd, carry_b)
    ]
    xs = [x if d is None else batching.moveaxis(x, d, 1) for x, d in zip(xs, xd)]
    out = ttt_loop_p.bind(*consts, *carry, *xs, **{**params, "body": body})
    return out, [0 if b else None for b in carry_b] + [1 if b else None for b in out_b[li.num_carry :]]


def _dce(used_outputs: list[bool], eqn):
    """JAX's DCE rule for `ttt_loop`: drop unused per-step outputs ys and every carry leaf that no used
    output depends on (a fixpoint: a carry is live if it is used after the loop or the body needs it
    to compute a live value), then the inputs the remaining body does not read."""
    li = info(eqn.params)
    if not any(used_outputs):
        return [False] * len(eqn.invars), None
    used_carry, used_ys = list(used_outputs[: li.num_carry]), list(used_outputs[li.num_carry :])
    num_xs = len(eqn.invars) - li.num_consts - li.num_carry
    while True:
        body, used_in = pe.dce_jaxpr(
            li.body.jaxpr, used_carry + used_ys, instantiate=[False] * li.num_consts + used_carry + [False] * num_xs
        )
        carry_in = used_in[li.num_consts : li.num_consts + li.num_carry]
        if all(a or not b for a, b in zip(used_carry, carry_in)):
            break
        used_carry = [a or b for a, b in zip(used_carry, carry_in)]
    used_consts = used_in[: li.num_consts]
    used_in = used_consts + used_carry + used_in[li.num_consts + li.num_carry :]
    body, _ = pe.dce_jaxpr(li.body.jaxpr, used_carry + used_ys, instantiate=used_in)
    params = {
        **eqn.params,
        "body": ClosedJaxpr(body, li.body.consts),
        "num_consts": sum(used_consts),
        "num_carry": sum(used_carry),
        "num_weights": sum(used_carry[: li.num_weights]),
    }
    invars = [v for v, u in zip(eqn.invars, used_in) if u]
    outvars = [v for v, u in zip(eqn.outvars, used_carry + used_ys) if u]
    return used_in, eqn.replace(invars=invars, outvars=outvars, params=params)


# Every rule of ttt_loop is registered here, in one place (as jax/_src/lax/control_flow/loops.py
# does for scan_p): evaluation, abstract evaluation, batching, DCE, lowering, and AD from `loop_ad`.
ttt_loop_p.def_impl(_impl)
ttt_loop_p.def_abstract_eval(_abstract_eval)
batching.fancy_primitive_batchers[ttt_loop_p] = _batch
pe.dce_rules[ttt_loop_p] = _dce
mlir.register_lowering(ttt_loop_p, mlir.lower_fun(_impl, multiple_results=True))
ad.primitive_jvps[ttt_loop_p] = loop_ad.jvp
pe.custom_partial_eval_rules[ttt_loop_p] = loop_ad.partial_eval
ad.primitive_transposes[ttt_loop_p] = loop_ad.transpose
pe.partial_eval_jaxpr_custom_rules[ttt_loop_p] = loop_ad.partial_eval_custom


# --------------------------------------------------------------------------- the user-facing helper
def trace_body(fun: Callable, *arg_trees) -> tuple[ClosedJaxpr, list[Any], Any]:
    """Trace `fun(*arg_trees)` to a ClosedJaxpr whose consts are hoisted into leading inputs.

    Returns (jaxpr, hoisted_consts, out_tree).  Hoisting keeps outer tracers that `fun` closes over
    out of `ClosedJaxpr.consts` (they become explicit operands of the loop instead).
    """
    flat, in_tree = jax.tree_util.tree_flatten(arg_trees)
    out_tree = []

    def flat_fun(*leaves):
        out = fun(*jax.tree_util.tree_unflatten(in_tree, leaves))
        leaves_out, tree = jax.tree_util.tree_flatten(out)
        out_tree.append(tree)
        return leaves_out

    closed = jax.make_jaxpr(flat_fun)(*[jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in flat])
    return dce(ClosedJaxpr(hoist_consts(closed.jaxpr), [])), list(closed.consts), out_tree[0]


def ttt_loop(step: Callable, consts, carry, xs, *, steps: int, schedule: str, init: str, num_weights: int):
    """Run `carry, y_t = step(consts, carry, x_t)` for `steps` steps; xs leaves have a leading step axis.

    Plain call path: `lax.scan`.  While `emitting()`: one `ttt_loop` equation whose body is `step`
    traced with every input explicit.  `num_weights` is how many leading carry leaves are the fast
    weights W (the rest is optimizer state).
    """
    if not is_emitting():
        return lax.scan(lambda c, x: step(consts, c, x), carry, xs, length=steps)
    x_t = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)), xs)
    body, hoisted, out_tree = trace_body(step, consts, carry, x_t)
    flat_consts = jax.tree_util.tree_leaves(consts)
    flat_carry, carry_tree = jax.tree_util.tree_flatten(carry)
    flat_xs = jax.tree_util.tree_leaves(xs)
    out = ttt_loop_p.bind(
        *hoisted,
        *flat_consts,
        *flat_carry,
        *flat_xs,
        body=body,
        steps=steps,
        schedule=schedule,
        init=init,
        num_consts=len(hoisted) + len(flat_consts),
        num_carry=len(flat_carry),
        num_weights=num_weights,
        remat=None,
        reverse=False,
        role="inner",
    )
    carry_out = jax.tree_util.tree_unflatten(carry_tree, out[: len(flat_carry)])
    _, ys_tree = out_tree.children()
    return carry_out, jax.tree_util.tree_unflatten(ys_tree, out[len(flat_carry) :])


def contains_loop(jaxpr) -> bool:
    """Whether a (Closed)Jaxpr has a `ttt_loop` anywhere, sub-jaxprs included."""
    from jax.extend.core import jaxprs_in_params

    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    return any(
        e.primitive is ttt_loop_p or any(contains_loop(j) for j in jaxprs_in_params(e.params)) for e in jaxpr.eqns
    )


def loop_nesting(jaxpr) -> str:
    """The ttt_loops of a program as a nesting, e.g. "inner full T=2 { forward full T=1, transpose
    reversed full T=1 }, inner full T=1" (loops inside jit/scan/checkpoint regions included)."""
    from jax.extend.core import jaxprs_in_params

    def walk(j):
        out = []
        for e in getattr(j, "jaxpr", j).eqns:
            if e.primitive is ttt_loop_p:
                p = e.params
                name = f"{p['role']}{' reversed' if p['reverse'] else ''} {p['schedule']} T={p['steps']}"
                inner = walk(p["body"])
                out.append(name + (f" {{ {', '.join(inner)} }}" if inner else ""))
            else:
                for sub in jaxprs_in_params(e.params):
                    out.extend(walk(sub))
        return out

    return ", ".join(walk(jaxpr))
