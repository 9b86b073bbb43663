"""A NumPy evaluator of jaxprs: the translation validator's fast, XLA-free way to run a program.

    eval_closed(closed_jaxpr, *args) -> list[np.ndarray]

evaluates every equation with NumPy (one ufunc call where JAX's eager mode dispatches one compiled
XLA executable per primitive and shape: 10-50x faster on the small arrays of generated programs, and
no compile per new shape).  Semantics follow `jax.lax` exactly where they differ from NumPy's:
integer `div` truncates toward zero and `rem` takes the dividend's sign, `round` has both rounding
methods, `dynamic_slice` clamps its start indices, `select_n` picks case i where the predicate is i,
`pad` has negative and interior padding.  Every result is cast to the dtype its aval declares, so
NumPy's promotion rules never widen a float32 program.  Higher-order primitives are evaluated inside:
jit/closed_call/remat inline, custom_jvp_call/custom_vjp_call run their primal program (in a jaxpr of
a gradient, the custom rules have already been applied), scan/while/ttt_loop run as Python loops and
cond runs the branch its index selects.  A primitive without a NumPy rule is bound with JAX (its
eager impl, float64 enabled) -- slower, never wrong; `FALLBACKS` counts them.

tests/test_np_eval.py checks every rule against `jax.core.eval_jaxpr`.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special as sp
from jax.extend.core import Literal

FALLBACKS: collections.Counter = collections.Counter()


def _int_div(a, b):
    """C division: the quotient truncated toward zero."""
    q = np.floor_divide(a, b)
    return np.where((np.remainder(a, b) != 0) & ((a < 0) != (b < 0)), q + 1, q)


def _round(x, rounding_method):
    if int(rounding_method) == 0:  # lax.RoundingMethod.AWAY_FROM_ZERO
        return np.sign(x) * np.floor(np.abs(x) + np.asarray(0.5, x.dtype))
    return np.round(x)  # TO_NEAREST_EVEN


def _integer_pow(x, y):
    if y == 0:
        return np.ones_like(x)
    if y < 0:
        return np.asarray(1, x.dtype) / _integer_pow(x, -y)
    acc = None
    base = x
    while y:  # exponentiation by squaring, as XLA expands it
        if y & 1:
            acc = base if acc is None else acc * base
        y >>= 1
        if y:
            base = base * base
    return acc


def _dot_general(lhs, rhs, dimension_numbers, **_):
    (lc, rc), (lb, rb) = dimension_numbers
    lf = [i for i in range(lhs.ndim) if i not in lc and i not in lb]
    rf = [i for i in range(rhs.ndim) if i not in rc and i not in rb]
    batch = [lhs.shape[i] for i in lb]
    k = int(np.prod([lhs.shape[i] for i in lc], dtype=np.int64))
    m = [lhs.shape[i] for i in lf]
    n = [rhs.shape[i] for i in rf]
    a = np.transpose(lhs, [*lb, *lf, *lc]).reshape((*batch, int(np.prod(m, dtype=np.int64)), k))
    b = np.transpose(rhs, [*rb, *rc, *rf]).reshape((*batch, k, int(np.prod(n, dtype=np.int64))))
    if lhs.dtype == np.bool_:
        a, b = a.astype(np.int32), b.astype(np.int32)
    return np.matmul(a, b).reshape((*batch, *m, *n))


def _broadcast_in_dim(x, shape, broadcast_dimensions, **_):
    expanded = [1] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        expanded[d] = x.shape[i]
    return np.broadcast_to(np.reshape(x, expanded), shape)


def _pad(x, padding_value, padding_config):
    out = x
    for axis, (lo, hi, interior) in enumerate(padding_config):
        n = out.shape[axis]
        core = n + max(n - 1, 0) * interior
        big_shape = list(out.shape)
        big_shape[axis] = max(lo, 0) + core + max(hi, 0)
        big = np.full(big_shape, padding_value, out.dtype)
        index = [slice(None)] * out.ndim
        index[axis] = slice(max(lo, 0), max(lo, 0) + core, interior + 1)
        big[tuple(index)] = out
        index[axis] = slice(max(-lo, 0), big_shape[axis] - max(-hi, 0))
        out = big[tuple(index)]
    return out


def _clamped_starts(shape, sizes, starts):
    return [int(min(max(int(s), 0), d - k)) for s, d, k in zip(starts, shape, sizes)]


def _dynamic_slice(x, *starts, slice_sizes):
    s = _clamped_starts(x.shape, slice_sizes, starts[: x.ndim])
    return x[tuple(slice(a, a + k) for a, k in zip(s, slice_sizes))]


def _dynamic_update_slice(x, update, *starts):
    s = _clamped_starts(x.shape, update.shape, starts)
    out = np.array(x, copy=True)
    out[tuple(slice(a, a + k) for a, k in zip(s, update.shape))] = update
    return out


def _iota(dtype, shape, dimension, **_):
    expanded = [1] * len(shape)
    expanded[dimension] = shape[dimension]
    return np.broadcast_to(np.arange(shape[dimension], dtype=dtype).reshape(expanded), shape)


def _select_n(pred, *cases):
    if pred.dtype == np.bool_:
        return np.where(pred, cases[1], cases[0]) if len(cases) == 2 else cases[0]
    return np.choose(pred.astype(np.int64), np.broadcast_arrays(*cases))


def _cumulative(fn):
    def rule(x, axis, reverse):
        if reverse:
            return np.flip(fn(np.flip(x, axis), axis=axis), axis)
        return fn(x, axis=axis)

    return rule


def _reduce(fn):
    return lambda x, axes, **_: fn(x, axis=tuple(axes))


def _arg(fn):
    return lambda x, axes, index_dtype: fn(x, axis=axes[0]).astype(index_dtype)


def _div(a, b):
    return _int_div(a, b) if np.issubdtype(a.dtype, np.integer) else np.true_divide(a, b)


def _rem(a, b):
    return np.fmod(a, b)


def _split(x, sizes, axis):
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def _unary(fn):
    return lambda x, **_: fn(x)


def _logical_not(x):
    return np.logical_not(x) if x.dtype == np.bool_ else np.invert(x)


RULES = {
    "abs": _unary(np.abs),
    "neg": _unary(np.negative),
    "sign": _unary(np.sign),
    "floor": _unary(np.floor),
    "ceil": _unary(np.ceil),
    "exp": _unary(np.exp),
    "exp2": _unary(np.exp2),
    "log": _unary(np.log),
    "log1p": _unary(np.log1p),
    "expm1": _unary(np.expm1),
    "tanh": _unary(np.tanh),
    "sin": _unary(np.sin),
    "cos": _unary(np.cos),
    "tan": _unary(np.tan),
    "sqrt": _unary(np.sqrt),
    "cbrt": _unary(np.cbrt),
    "rsqrt": _unary(lambda x: 1 / np.sqrt(x)),
    "logistic": _unary(sp.expit),
    "erf": _unary(sp.erf),
    "erfc": _unary(sp.erfc),
    "erf_inv": _unary(sp.erfinv),
    "square": _unary(np.square),
    "is_finite": _unary(np.isfinite),
    "not": _unary(_logical_not),
    "atan": _unary(np.arctan),
    "asin": _unary(np.arcsin),
    "acos": _unary(np.arccos),
    "sinh": _unary(np.sinh),
    "cosh": _unary(np.cosh),
    "asinh": _unary(np.arcsinh),
    "acosh": _unary(np.arccosh),
    "atanh": _unary(np.arctanh),
    "lgamma": _unary(sp.gammaln),
    "digamma": _unary(sp.digamma),
    "add": lambda a, b: a + b,
    "add_any": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b, **_: a * b,
    "div": _div,
    "rem": _rem,
    "pow": np.power,
    "atan2": np.arctan2,
    "max": np.maximum,
    "min": np.minimum,
    "nextafter": np.nextafter,
    "integer_pow": lambda x, y: _integer_pow(x, y),
    "eq": np.equal,
    "ne": np.not_equal,
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
    "and": np.bitwise_and,
    "or": np.bitwise_or,
    "xor": np.bitwise_xor,
    "shift_left": np.left_shift,
    "shift_right_arithmetic": np.right_shift,
    "clamp": lambda lo, x, hi: np.minimum(np.maximum(x, lo), hi),
    "round": lambda x, rounding_method: _round(x, rounding_method),
    "select_n": _select_n,
    "dot_general": _dot_general,
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": lambda x, new_sizes, dimensions=None, **_: np.reshape(
        x if dimensions is None else np.transpose(x, dimensions), new_sizes
    ),
    "transpose": lambda x, permutation: np.transpose(x, permutation),
    "squeeze": lambda x, dimensions: np.squeeze(x, tuple(dimensions)),
    "expand_dims": lambda x, dimensions: np.expand_dims(x, tuple(dimensions)),
    "convert_element_type": lambda x, new_dtype, **_: x.astype(new_dtype),
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    "reduce_prod": _reduce(np.prod),
    "reduce_and": _reduce(np.all),
    "reduce_or": _reduce(np.any),
    "argmax": _arg(np.argmax),
    "argmin": _arg(np.argmin),
    "cumsum": _cumulative(np.cumsum),
    "cumprod": _cumulative(np.cumprod),
    "cummax": _cumulative(np.maximum.accumulate),
    "cummin": _cumulative(np.minimum.accumulate),
    "iota": lambda dtype, shape, dimension, **_: _iota(dtype, shape, dimension),
    "concatenate": lambda *xs, dimension: np.concatenate(xs, axis=dimension),
    "pad": _pad,
    "slice": lambda x, start_indices, limit_indices, strides: x[
        tuple(slice(a, b, s) for a, b, s in zip(start_indices, limit_indices, strides or [1] * x.ndim))
    ],
    "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _dynamic_update_slice,
    "copy": _unary(np.array),
    "copy_p": _unary(np.array),
    "stop_gradient": _unary(lambda x: x),
    "reduce_precision": None,  # bound with JAX (mantissa rounding is not a NumPy operation)
}
MULTI = {
    "split": _split,
    "unstack": lambda x, axis: list(np.moveaxis(x, axis, 0)),
    "optimization_barrier": lambda *xs: list(xs),
}
RULES = {k: v for k, v in RULES.items() if v is not None}


# The dtype every float64 value is computed in: float32 evaluates a float64 program as the same
# program in float32 (`in_float32`), without tracing it again.  `_bits`: when set, every float64
# value is also rounded to that many significant bits (`in_bits`).
_F64 = np.dtype(np.float64)
_as = {_F64: _F64}
_bits: list = [None]


def _dtype(dtype):
    return _as.get(dtype, dtype)


def round_bits(x: np.ndarray, bits: int) -> np.ndarray:
    """x (float64) rounded to `bits` significant bits, to nearest (x = m 2^e, 1/2 <= |m| < 1)."""
    m, e = np.frexp(x)
    return np.ldexp(np.round(m * 2.0**bits) / 2.0**bits, e)


def _rounded(x: np.ndarray) -> np.ndarray:
    return round_bits(x, _bits[0]) if _bits[0] is not None and x.dtype == _F64 else x


def _read(env, v):
    if isinstance(v, Literal):
        return _rounded(np.asarray(v.val, _dtype(np.dtype(v.aval.dtype))))
    return env[v]


def _arr(x):
    x = np.asarray(x)
    return _rounded(x.astype(_dtype(x.dtype), copy=False))


def eval_closed(closed, *args) -> list:
    """Evaluate a ClosedJaxpr on NumPy (or array-like) arguments."""
    return eval_jaxpr(closed.jaxpr, closed.consts, *args)


def in_float32(closed, *args) -> list:
    """`closed` (a float64 program) evaluated with every float64 value rounded to float32 -- inputs,
    constants, literals and every result: the program as it runs in float32."""
    _as[_F64] = np.dtype(np.float32)
    try:
        return eval_closed(closed, *args)
    finally:
        _as[_F64] = _F64


def in_bits(closed, bits: int, *args) -> list:
    """`closed` (a float64 program) evaluated with every float64 value -- inputs, constants, literals and
    every result -- rounded to `bits` significant bits (53 is float64 itself, 24 float32's precision
    without its exponent range): a probe of how much rounding at a chosen precision moves each result."""
    if not 2 <= bits <= 53:
        raise ValueError(f"in_bits: bits={bits} must be in 2..53")
    _bits[0] = bits
    try:
        return eval_closed(closed, *args)
    finally:
        _bits[0] = None


def eval_jaxpr(jaxpr, consts, *args) -> list:
    env = {}
    for v, x in zip(jaxpr.constvars, consts):
        env[v] = _arr(x)
    for v, x in zip(jaxpr.invars, args):
        env[v] = _arr(x)
    with np.errstate(all="ignore"):
        for eqn in jaxpr.eqns:
            invals = [_read(env, v) for v in eqn.invars]
            outs = _eval_eqn(eqn, invals)
            for v, o in zip(eqn.outvars, outs):
                aval = v.aval
                o = np.asarray(o)
                dtype = _dtype(np.dtype(aval.dtype))
                if o.dtype != dtype:
                    o = o.astype(dtype)
                o = _rounded(o)
                if o.shape != aval.shape:
                    raise AssertionError(f"np_eval: {eqn.primitive.name} gave shape {o.shape}, aval {aval.shape}")
                env[v] = o
    return [_read(env, v) for v in jaxpr.outvars]


def _eval_eqn(eqn, invals) -> list:
    name, params = eqn.primitive.name, eqn.params
    rule = RULES.get(name)
    if rule is not None:
        return [rule(*invals, **params)]
    if name == "stack":
        return [np.stack(invals, axis=params["axis"])]
    if name in MULTI:
        return MULTI[name](*invals, **params)
    if name in ("jit", "pjit"):
        return eval_closed(params["jaxpr"], *invals)
    if name in ("closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"):
        closed = params.get("call_jaxpr", params.get("fun_jaxpr"))
        return eval_closed(closed, *invals)
    if name in ("remat2", "checkpoint", "remat"):
        return eval_jaxpr(params["jaxpr"], [], *invals)
    if name in ("sharding_constraint", "device_put"):
        return list(invals)
    if name == "scan":
        return _loop(
            params["jaxpr"], params["num_consts"], params["num_carry"], params["length"], params["reverse"], invals
        )
    if name == "ttt_loop":
        return _loop(
            params["body"],
            params["num_consts"],
            params["num_carry"],
            params["steps"],
            params.get("reverse", False),
            invals,
        )
    if name == "while":
        return _while(params, invals)
    if name == "cond":
        branches = params["branches"]
        index = int(np.clip(int(invals[0]), 0, len(branches) - 1))
        return eval_closed(branches[index], *invals[1:])
    return _fallback(eqn, invals)


def _loop(body, num_consts, num_carry, length, reverse, invals) -> list:
    """scan / ttt_loop: for t in (reversed) 0..length-1: carry, ys[t] = body(*consts, *carry, *xs[t])."""
    consts, carry, xs = (
        invals[:num_consts],
        invals[num_consts : num_consts + num_carry],
        invals[num_consts + num_carry :],
    )
    y_avals = body.out_avals[num_carry:]
    ys = [np.empty((length, *a.shape), _dtype(np.dtype(a.dtype))) for a in y_avals]
    body_consts = [_arr(c) for c in body.consts]
    for t in reversed(range(length)) if reverse else range(length):
        out = eval_jaxpr(body.jaxpr, body_consts, *consts, *carry, *[x[t] for x in xs])
        carry = out[:num_carry]
        for y, o in zip(ys, out[num_carry:]):
            y[t] = o
    return [*carry, *ys]


def _while(params, invals) -> list:
    cn, bn = params["cond_nconsts"], params["body_nconsts"]
    cconsts, bconsts, carry = invals[:cn], invals[cn : cn + bn], invals[cn + bn :]
    cond, body = params["cond_jaxpr"], params["body_jaxpr"]
    while bool(eval_closed(cond, *cconsts, *carry)[0]):
        carry = eval_closed(body, *bconsts, *carry)
    return list(carry)


def _fallback(eqn, invals) -> list:
    """Bind the primitive with JAX (eager, float64 enabled): correct for anything, just slower."""
    FALLBACKS[eqn.primitive.name] += 1
    prim = eqn.primitive
    # In `in_float32` the operands are bound at their declared dtypes (the params may name them) and
    # the results are rounded to float32 by the caller.
    invals = [np.asarray(a).astype(v.aval.dtype, copy=False) for a, v in zip(invals, eqn.invars)]
    with jax.enable_x64(True):
        outs = prim.bind(*[jnp.asarray(a) for a in invals], **prim.get_bind_params(eqn.params))
    outs = outs if prim.multiple_results else [outs]
    return [np.asarray(o) for o in outs]


def value_and_grads(model, x, r) -> tuple:
    """(model(x), [d/dtheta sum(sin(model(x)) * r) for every float leaf theta]): traced once with
    jax.make_jaxpr and evaluated here with NumPy."""
    import equinox as eqx

    params, static = eqx.partition(model, eqx.is_inexact_array)

    def fn(p):
        y = eqx.combine(p, static)(x)
        g = jax.grad(lambda q: jnp.sum(jnp.sin(eqx.combine(q, static)(x)) * r))(p)
        return y, jax.tree_util.tree_leaves(g)

    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(params)
    flat = eval_closed(closed, *jax.tree_util.tree_leaves(params))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), flat)


def compare(reference, candidate, x, *, key=None):
    """`ttt_compile.validate.compare` (values and outer gradients of sum(sin(model(x)) * r) of two
    models with the same float leaves), each model evaluated by `value_and_grads` instead of
    XLA-compiled: the same `Validation`, without two compiles per model."""
    import equinox as eqx

    from ttt_compile.validate import Validation, relative_error

    key = jax.random.PRNGKey(0) if key is None else key
    shape = jax.eval_shape(reference, x)
    r = jax.random.normal(key, shape.shape, shape.dtype)
    y_ref, g_ref = value_and_grads(reference, x, r)
    y, g = value_and_grads(candidate, x, r)
    paths = [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_leaves_with_path(eqx.filter(reference, eqx.is_inexact_array))
    ]
    if len(g) != len(g_ref):
        raise ValueError(f"the two models have {len(g_ref)} and {len(g)} float leaves")
    worst = max(((relative_error(b, a), p) for p, a, b in zip(paths, g_ref, g)), default=(0.0, ""))
    return Validation(relative_error(y, y_ref), worst[0], worst[1])


def validate(model, x, passes="default", *, key=None):
    """`ttt_compile.validate.validate` (compile `model` with `passes`, then `compare` it with the
    un-compiled model) with both programs evaluated by NumPy instead of XLA-compiled."""
    import ttt_compile as tc

    return compare(model, tc.compile(model, x, passes=passes), x, key=key)
