"""Generated programs for translation validation: hypothesis strategies and the builders behind them.

A program is a plain, hashable, printable record (`Program`), so a failing case prints as code:

    Program(kind, layers=(LayerSpec(...), ...), wrapper, int_side, depth, seed)

and `build(program)` makes the Equinox model and two example inputs (x and a fresh x2 of the same
shape) with the current default float dtype (float64 under `jax.enable_x64(True)`, float32 otherwise).

Three layers of grammar:

- learners f(z; W), z in R^{d_h}: a sequence of ops (`OPS`): matmul, bias, activations (relu, gelu
  tanh/erf forms, tanh, sigmoid, silu, softplus), LayerNorm, residual blocks (z + ops(z)), elementwise
  gates, products of two weights (elementwise and chained), integer index arithmetic, custom_jvp
  functions (a clipped-gradient identity, a smooth |x| with its own derivative) and custom_vjp
  functions (a straight-through round, a half-gradient identity), and nested learning: an op
  z + W2 vec(TTT(reshape(W1 z))) whose TTT layer runs its own inner loop (`nested_layer`);
- layer specs (`LayerSpec`): a grammar learner or (1 in 8) the non-parametric Nadaraya-Watson
  learner (softmax attention), heads, d_h, n, steps, batching full/sgd/online with every valid chunk,
  init zero/learned, decoder LN, the inner optimizer and its learning-rate schedule, learned step
  sizes (eta fixed / per head / per token), the paper's or the released code's parametrisation,
  learner arrays marked as outer parameters (shared or one copy per head), and the follow-up paper's
  options (`sequence_options`, `LayerSpec.chunk_factor`): a multi-view task, a per-position chunk factor,
  sequence maps (shared key/query projection, causal convolution, rotary positions) and a readout with a
  norm and a gate;
- enclosing programs (`Program.kind`, `Program.wrapper`): a bare layer, stacked layers with residual
  MLPs, the project's ViT and causal LM at tiny sizes; the layer call wrapped in jax.jit,
  eqx.filter_jit, jax.checkpoint, lax.scan over stacked layers, lax.cond between two layers, or a
  custom_vjp (a scaled gradient); optional integer side computations in the model.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import strategies as st

import ttt_compile as tc
from ttt_compile.layer.host_init import default_float, host_rng, normal
from ttt_compile.models import lm as lm_models
from ttt_compile.models import vit as vit_models

MAX_D = 12
MAX_N = 13
NS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)


# =========================================================================== custom derivative functions
@jax.custom_jvp
def clip_grad(x):
    """Identity whose derivative is cut to 0 where |x| >= 1.5 (a clipped-gradient identity)."""
    return x


@clip_grad.defjvp
def _clip_grad_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return clip_grad(x), jnp.where(jnp.abs(x) < 1.5, t, jnp.zeros_like(t))


@jax.custom_jvp
def smooth_abs(x):
    """sqrt(x^2 + 0.1) with its derivative x / sqrt(x^2 + 0.1) given by hand."""
    return jnp.sqrt(x * x + 0.1)


@smooth_abs.defjvp
def _smooth_abs_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = smooth_abs(x)
    return y, t * x / y


@jax.custom_vjp
def st_round(x):
    """round(4x)/4 forward, identity backward (a straight-through estimator)."""
    return jnp.round(4 * x) / 4


st_round.defvjp(lambda x: (st_round(x), None), lambda _, g: (g,))


@jax.custom_vjp
def half_grad(x):
    """Identity forward, half the cotangent backward."""
    return x


half_grad.defvjp(lambda x: (x, None), lambda _, g: (0.5 * g,))


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_erf": functools.partial(jax.nn.gelu, approximate=False),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "clip_grad": clip_grad,  # custom_jvp
    "smooth_abs": smooth_abs,  # custom_jvp
    "st_round": st_round,  # custom_vjp
    "half_grad": half_grad,  # custom_vjp
}


def index_arith(variant: str, z):
    """Integer index arithmetic on the positions 0..d-1 of z, cast back into z's float dtype."""
    i = jnp.arange(z.shape[-1])
    if variant == "floordiv":  # the (arange(d) // 2)
        return z + (i // 2).astype(z.dtype)
    if variant == "mod_mask":  # even positions kept, odd negated
        return jnp.where(i % 2 == 0, z, -z)
    if variant == "affine":  # (3 i + 1) mod 5 - 2, times 0.25
        return z + 0.25 * ((3 * i + 1) % 5 - 2).astype(z.dtype)
    if variant == "trunc":  # float -> int truncation (exact ints)
        return z + 0.1 * (z * 2.5).astype(jnp.int32).astype(z.dtype)
    raise ValueError(variant)


INDEX_VARIANTS = ("floordiv", "mod_mask", "affine", "trunc")


# =========================================================================== learner grammar
# An op is a tuple: ("linear",), ("bias",), ("ln",), ("gate",), ("gate_mat",), ("prod",), ("chain",),
# ("act", name), ("index", variant), ("residual", (op, ...)).
def op_arrays(op, dh: int, key) -> tuple:
    """The op's float arrays (fast weights), drawn at scale ~1 (on the host: building compiles nothing)."""
    kind = op[0]
    k1, k2 = jax.random.split(key)
    normal = lambda k, shape: host_rng(k).standard_normal(shape)  # noqa: E731
    if kind == "residual":
        return tuple(op_arrays(o, dh, k) for o, k in zip(op[1], jax.random.split(key, len(op[1]))))
    if kind == "ttt":
        return (
            *on_device(normal(k1, (NEST_M * NEST_D, dh)) / math.sqrt(dh)),
            *on_device(0.5 * normal(k2, (dh, NEST_M * NEST_D)) / math.sqrt(NEST_M * NEST_D)),
            nested_layer(op[1], op[2], jax.random.fold_in(key, 1)),
        )
    if kind == "linear":
        return on_device(normal(k1, (dh, dh)) / math.sqrt(dh))
    if kind == "bias":
        return on_device(0.1 * normal(k1, (dh,)))
    if kind == "ln":
        return on_device(1 + 0.1 * normal(k1, (dh,)), 0.1 * normal(k2, (dh,)))
    if kind == "gate":
        return on_device(normal(k1, (dh,)))
    if kind == "gate_mat":
        return on_device(normal(k1, (dh, dh)) / math.sqrt(dh))
    if kind in ("prod", "chain"):
        return on_device(normal(k1, (dh, dh)) / math.sqrt(dh), 1 + 0.3 * normal(k2, (dh, dh)) / math.sqrt(dh))
    return ()


def on_device(*arrays: np.ndarray) -> tuple:
    """Host arrays as device arrays of the default float dtype (a copy, no compiled program)."""
    return tuple(jax.device_put(a.astype(default_float())) for a in arrays)


# A nested op: z + W2 vec(TTT(reshape(W1 z, (NEST_M, NEST_D)))), a TTT layer learning over NEST_M
# sub-tokens of width NEST_D inside the learner (its own inner loop: batching op[1], steps op[2]).
NEST_M, NEST_D = 2, 2
NEST_ONE_IN = 16  # one layer spec in NEST_ONE_IN has a nested op first (a nested program costs ~60 s here)


def nested_layer(batching: str, steps: int, key) -> tc.TTTLayer:
    inner = (
        tc.Inner(batching="online", chunk=1)
        if batching == "online"
        else tc.Inner(steps=steps, optimizer=optax.sgd(0.5))
    )
    return tc.TTTLayer(NEST_D, 1, tc.learners.Linear(NEST_D), inner=inner, key=key)


def apply_op(op, arrays, z):
    kind = op[0]
    if kind == "linear":
        return arrays[0] @ z
    if kind == "bias":
        return z + arrays[0]
    if kind == "ln":
        mu = jnp.mean(z)
        var = jnp.mean((z - mu) ** 2)
        return (z - mu) / jnp.sqrt(var + 1e-5) * arrays[0] + arrays[1]
    if kind == "gate":
        return z * jax.nn.sigmoid(arrays[0])
    if kind == "gate_mat":
        return z * jax.nn.sigmoid(arrays[0] @ z)
    if kind == "prod":
        return (arrays[0] * arrays[1]) @ z
    if kind == "chain":
        return arrays[0] @ (arrays[1] @ z)
    if kind == "act":
        return ACTIVATIONS[op[1]](z)
    if kind == "index":
        return index_arith(op[1], z)
    if kind == "residual":
        return z + apply_ops(op[1], arrays, z)
    if kind == "ttt":
        W1, W2, layer = arrays
        return z + W2 @ layer((W1 @ z).reshape(NEST_M, NEST_D)).reshape(-1)
    raise ValueError(op)


def apply_ops(ops, arrays, z):
    for op, a in zip(ops, arrays):
        z = apply_op(op, a, z)
    return z


def has_arrays(ops) -> bool:
    return any(o[0] not in ("act", "index") and (o[0] != "residual" or has_arrays(o[1])) for o in ops)


def array_ops(ops) -> list[int]:
    """Indices of the ops that hold arrays."""
    return [i for i, o in enumerate(ops) if has_arrays((o,))]


class Learner(eqx.Module):
    """f(z; W) = ops(z): a learner composed from the grammar; W = every array of `arrays`."""

    arrays: tuple
    ops: tuple = eqx.field(static=True)

    def __init__(self, ops: tuple, dh: int, key, *, zero: bool = False, outer: tuple = ()):
        """`zero`: the fast weights (every op's arrays except those of the ops in `outer`) are zeros."""
        self.ops = ops
        arrays = tuple(op_arrays(o, dh, k) for o, k in zip(ops, jax.random.split(key, max(len(ops), 1))))
        self.arrays = tuple(
            jax.tree.map(lambda t: jax.device_put(np.zeros(t.shape, t.dtype)), a) if zero and i not in outer else a
            for i, a in enumerate(arrays)
        )

    def __call__(self, z):
        return apply_ops(self.ops, self.arrays, z)


_ARRAY_OPS = ("linear", "bias", "ln", "gate", "gate_mat", "prod", "chain")


def op_strategy(depth: int = 0):
    leaf = st.one_of(
        st.sampled_from([(k,) for k in _ARRAY_OPS]),
        st.sampled_from(tuple(ACTIVATIONS)).map(lambda a: ("act", a)),
        st.sampled_from(INDEX_VARIANTS).map(lambda v: ("index", v)),
    )
    if depth >= 1:
        return leaf
    residual = st.lists(op_strategy(depth + 1), min_size=1, max_size=3).map(lambda ops: ("residual", tuple(ops)))
    return st.one_of(leaf, leaf, leaf, residual)


@st.composite
def learner_ops(draw) -> tuple:
    ops = tuple(draw(st.lists(op_strategy(), min_size=1, max_size=4)))
    if not has_arrays(ops):  # a learner needs fast weights
        ops = (("linear",), *ops)
    return ops


# =========================================================================== inner optimizers
SCHEDULES = {
    "const": lambda lr: lr,
    "exponential_decay": lambda lr: optax.exponential_decay(lr, transition_steps=1, decay_rate=0.5),
    "linear": lambda lr: optax.linear_schedule(lr, 0.1 * lr, transition_steps=4),
    "cosine": lambda lr: optax.cosine_decay_schedule(lr, decay_steps=5),
    "piecewise": lambda lr: optax.piecewise_constant_schedule(lr, {2: 0.5}),
}

OPTIMIZERS = {  # name -> (learning rate -> GradientTransformation); lr is a float or a schedule
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "nesterov": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: optax.adam(lr),
    "adamw": lambda lr: optax.adamw(lr, weight_decay=0.01),
    "adagrad": lambda lr: optax.adagrad(lr),
    "rmsprop": lambda lr: optax.rmsprop(lr),
    "lion": lambda lr: optax.lion(lr),
    "clip_sgd": lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(lr)),
}
#: adaptive optimizers take steps of size ~lr whatever the gradient: a smaller base rate keeps them tame
LR_SCALE = {"adam": 0.1, "adamw": 0.1, "rmsprop": 0.05, "lion": 0.03, "adagrad": 0.3}


def make_optimizer(name: str, schedule: str, lr: float) -> optax.GradientTransformation:
    lr = lr * LR_SCALE.get(name, 1.0)
    return OPTIMIZERS[name](SCHEDULES[schedule](lr))


# =========================================================================== layer specs
@dataclasses.dataclass(frozen=True)
class LayerSpec:
    heads: int
    dh: int
    steps: int
    batching: str  # full | sgd | online
    chunk: int
    init: str  # zero | learned
    decoder_ln: bool
    optimizer: str
    schedule: str
    lr: float
    ops: tuple  # the learner's grammar ops
    outer: tuple = ()  # indices of ops whose arrays are outer parameters (TTTLayer(outer=...))
    eta: str = "fixed"  # learned step size: fixed | per_head | per_token (tc.Inner(eta=...))
    released: bool = False  # the released code's parametrisation (tc.Reconstruction.released)
    token_chunk: int | None = None  # tc.Inner(token_chunk=...): not drawn here (tests/test_token_chunk.py sets it)
    multiview: bool = False  # tc.MultiView task (label view theta_V, no decoder) instead of tc.Reconstruction
    chunk_factor: str = "none"  # tc.Inner(chunk_factor=...) of an online loop: none | inverse | learned
    shared_qk: bool = False  # tc.SequenceMaps(shared_qk=...)
    conv_width: int | None = None  # tc.SequenceMaps(conv_width=...)
    rope_period: int | None = None  # tc.SequenceMaps(rope_theta=..., rope_period=...); 0: absolute positions
    readout: tuple = (False, False, True)  # tc.Readout(norm, gate, bias)
    outer_per_head: bool = False  # TTTLayer(outer_per_head=...): one copy of the outer arrays per head

    @property
    def dim(self) -> int:
        return self.heads * self.dh


#: LayerSpec.ops of a layer whose learner is tc.learners.NadarayaWatson (kernel regression: softmax
#: attention; no fast weights, no ttt_loop)
NADARAYA_WATSON = ("nadaraya_watson",)

DIMS = [(h, dh) for h in (1, 2, 3, 4) for dh in range(2, 13) if h * dh <= MAX_D]


def _divisors(n):
    return [k for k in range(1, n + 1) if n % k == 0]


@st.composite
def layer_specs(draw, n: int, heads_dh: tuple[int, int] | None = None, batching: str | None = None) -> LayerSpec:
    heads, dh = heads_dh if heads_dh is not None else draw(st.sampled_from(DIMS))
    extras = draw(sequence_options(dh))
    if batching in (None, "full") and draw(st.integers(0, 7)) == 0:  # a non-parametric learner (1 in 8)
        return LayerSpec(
            heads=heads,
            dh=dh,
            steps=1,
            batching="full",
            chunk=1,
            init="zero",
            decoder_ln=draw(st.booleans()),
            optimizer="sgd",
            schedule="const",
            lr=1.0,
            ops=(NADARAYA_WATSON,),
            released=draw(st.sampled_from([False, True])),
            **extras,
        )
    batching = batching or draw(st.sampled_from(["full", "sgd", "online"]))
    if batching == "sgd":
        steps = draw(st.sampled_from([s for s in _divisors(n) if s <= 6]))
    else:
        steps = draw(st.integers(1, 6))
    chunk = draw(st.sampled_from(_divisors(n))) if batching == "online" else 1
    ops = draw(learner_ops())
    if draw(st.integers(0, NEST_ONE_IN - 1)) == 0:  # a small share of nested learners
        ops = (("ttt", draw(st.sampled_from(["full", "online"])), draw(st.integers(1, 2))), *ops)
    holders = array_ops(ops)
    outer = ()
    if len(holders) >= 2 and draw(st.booleans()):  # keep at least one op of fast weights
        outer = tuple(sorted(draw(st.sets(st.sampled_from(holders), min_size=1, max_size=len(holders) - 1))))
    return LayerSpec(
        heads=heads,
        dh=dh,
        steps=steps,
        batching=batching,
        chunk=chunk,
        init=draw(st.sampled_from(["zero", "learned"])),
        decoder_ln=draw(st.booleans()),
        optimizer=draw(st.sampled_from(tuple(OPTIMIZERS))),
        schedule=draw(st.sampled_from(["const", "const", *[s for s in SCHEDULES if s != "const"]])),
        lr=draw(st.sampled_from([0.05, 0.2, 0.5])),
        ops=ops,
        outer=outer,
        eta=draw(st.sampled_from(["fixed", "fixed", "per_head", "per_token"])),
        released=draw(st.sampled_from([False, False, True])),
        chunk_factor=draw(st.sampled_from(["none", "none", "inverse", "learned"])) if batching == "online" else "none",
        outer_per_head=bool(outer) and draw(st.booleans()),
        **extras,
    )


@st.composite
def sequence_options(draw, dh: int) -> dict:
    """The follow-up paper's options (ttt-lm-jax's TTT-Linear/MLP), each drawn for about one layer in three:
    a MultiView task, SequenceMaps (one key/query projection, a causal convolution, rotary positions for an
    even d_h, absolute or mod a period) and a Readout with a norm, a gate, no bias."""
    out = {}
    if draw(st.integers(0, 2)) == 0:
        out["multiview"] = True
    if draw(st.integers(0, 2)) == 0:
        out["shared_qk"] = draw(st.booleans())
        out["conv_width"] = draw(st.sampled_from([None, 1, 2, 3]))
        if dh % 2 == 0:
            out["rope_period"] = draw(st.sampled_from([None, 0, 2, 3]))
    if draw(st.integers(0, 2)) == 0:
        out["readout"] = (draw(st.booleans()), draw(st.booleans()), draw(st.booleans()))
    return out


def build_layer(spec: LayerSpec, key) -> tc.TTTLayer:
    """The TTT layer of `spec`; with init='zero' its learner is built with zeros (W0 = 0 is the spec)."""
    k_learner, k_layer = jax.random.split(key)
    if spec.multiview:
        task = tc.MultiView(normalisation="released" if spec.released else "paper")
    elif spec.released:
        task = tc.Reconstruction.released(decoder_ln=spec.decoder_ln)
    else:
        task = tc.Reconstruction(decoder_ln=spec.decoder_ln)
    maps = dict(
        sequence=tc.SequenceMaps(
            shared_qk=spec.shared_qk,
            conv_width=spec.conv_width,
            rope_theta=None if spec.rope_period is None else 50.0,
            rope_period=spec.rope_period or None,
        ),
        readout=tc.Readout(*spec.readout),
    )
    if spec.ops == (NADARAYA_WATSON,):
        return _moved(tc.TTTLayer(spec.dim, spec.heads, tc.learners.NadarayaWatson(), task=task, key=k_layer, **maps))
    learner = Learner(spec.ops, spec.dh, k_learner, zero=spec.init == "zero", outer=spec.outer)
    inner = tc.Inner(
        steps=spec.steps,
        batching=spec.batching,
        chunk=spec.chunk,
        eta=spec.eta,
        optimizer=make_optimizer(spec.optimizer, spec.schedule, spec.lr),
        token_chunk=spec.token_chunk,
        chunk_factor=spec.chunk_factor,
    )
    outer = (lambda f: tuple(f.arrays[i] for i in spec.outer)) if spec.outer else None
    layer = tc.TTTLayer(
        spec.dim,
        spec.heads,
        learner,
        init=spec.init,
        outer=outer,
        outer_per_head=spec.outer_per_head,
        task=task,
        inner=inner,
        key=k_layer,
        **maps,
    )
    return _moved(layer)


def _moved(layer: tc.TTTLayer) -> tc.TTTLayer:
    """The new options' arrays that start at a neutral value (the convolution's identity taps and zero bias,
    the chunk offset 0, the output norm's scale 1) moved off it, so that each term counts."""
    rng = host_rng(jax.random.PRNGKey(layer.dim * 31 + layer.heads))
    nudge = lambda a: jax.device_put(np.asarray(a) + (0.2 * rng.standard_normal(a.shape)).astype(a.dtype))  # noqa: E731
    for where in (
        lambda m: m.conv_k,
        lambda m: m.conv_q,
        lambda m: m.chunk_offset,
        lambda m: m.h.norm,
    ):
        part = where(layer)
        if part is not None:
            layer = eqx.tree_at(where, layer, jax.tree.map(nudge, part))
    return layer


# =========================================================================== enclosing programs
KINDS = ("layer", "stack", "vit", "lm")
WRAPPERS = (None, "jit", "filter_jit", "checkpoint", "scan", "cond", "custom_vjp")


@dataclasses.dataclass(frozen=True)
class Program:
    kind: str  # layer | stack | vit | lm
    layers: tuple  # LayerSpec per TTT layer (scan: copies of one spec)
    n: int  # tokens per sequence
    wrapper: str | None = None  # how a stack calls its layers (see WRAPPERS)
    int_side: bool = False  # integer side computations in the enclosing model
    seed: int = 0

    @property
    def dim(self) -> int:
        return self.layers[0].dim


def _combine_call(params, static, x):
    return eqx.combine(params, static)(x)


def scaled_grad_call(static, scale: float):
    """A custom_vjp around a layer call: the layer forward, `scale` times its gradients backward."""

    @jax.custom_vjp
    def call(params, x):
        return _combine_call(params, static, x)

    def fwd(params, x):
        return call(params, x), (params, x)

    def bwd(res, g):
        params, x = res
        _, vjp = jax.vjp(lambda p, x: _combine_call(p, static, x), params, x)
        return vjp(jax.tree.map(lambda c: scale * c, g))

    call.defvjp(fwd, bwd)
    return call


@eqx.filter_jit
def _filter_jit_call(layer, x):
    return layer(x)


def call_layer(layer, x, wrapper: str | None):
    """layer(x) the way the user's program calls it."""
    if wrapper in (None, "scan", "cond"):
        return layer(x)
    params, static = eqx.partition(layer, eqx.is_array)
    if wrapper == "jit":
        return jax.jit(functools.partial(_combine_call, static=static))(params, x=x)
    if wrapper == "filter_jit":
        return _filter_jit_call(layer, x)
    if wrapper == "checkpoint":
        return jax.checkpoint(functools.partial(_combine_call, static=static))(params, x=x)
    if wrapper == "custom_vjp":
        return scaled_grad_call(static, 0.5)(params, x)
    raise ValueError(wrapper)


def int_side_features(x):
    """Integer side computations: ((3 i + j) mod 5) // 2 over token i, feature j; a parity sign; and an
    integer lax.while_loop (sum of t mod 3 for t < n) scaling the input."""
    n, d = x.shape
    i, j = jnp.arange(n)[:, None], jnp.arange(d)[None, :]
    feat = ((3 * i + j) % 5 // 2).astype(x.dtype)
    sign = jnp.where(jnp.arange(n) % 2 == 0, 1, -1).astype(x.dtype)[:, None]
    _, k = jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] + c[0] % 3), (jnp.int32(0), jnp.int32(0)))
    return x * sign * (1 + 0.01 * k.astype(x.dtype)) + 0.1 * feat


def layer_norm(x, eps=1e-5):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    return (x - mu) / jnp.sqrt(jnp.mean((x - mu) ** 2, axis=-1, keepdims=True) + eps)


class ResidualMLP(eqx.Module):
    W1: jax.Array
    W2: jax.Array

    def __init__(self, d: int, key):
        k1, k2 = jax.random.split(key)
        self.W1 = normal(k1, (d, 2 * d), 1 / math.sqrt(d))
        self.W2 = normal(k2, (2 * d, d), 1 / math.sqrt(2 * d))

    def __call__(self, x):
        return x + jax.nn.gelu(x @ self.W1) @ self.W2


class Stack(eqx.Module):
    """x -> [x + A_l(LN(x));  x + MLP_l(x)] for each layer l; A_l called through `wrapper`."""

    layers: tuple
    mlps: tuple
    wrapper: str | None = eqx.field(static=True)
    int_side: bool = eqx.field(static=True)

    def __call__(self, x):
        if self.int_side:
            x = int_side_features(x)
        if self.wrapper == "scan":
            first = self.layers[0]
            leaves, treedef = jax.tree_util.tree_flatten(eqx.filter(first, eqx.is_array))
            stacked = jax.tree_util.tree_unflatten(
                treedef,
                [
                    jnp.stack(ls)
                    for ls in zip(
                        *[jax.tree_util.tree_leaves(eqx.filter(layer, eqx.is_array)) for layer in self.layers]
                    )
                ],
            )
            static = eqx.filter(first, eqx.is_array, inverse=True)

            def body(x, p):
                return x + eqx.combine(p, static)(layer_norm(x)), None

            x, _ = jax.lax.scan(body, x, stacked)
            return self.mlps[0](x)
        if self.wrapper == "cond":
            a, b = self.layers[0], self.layers[1 % len(self.layers)]
            pa, sa = eqx.partition(a, eqx.is_array)
            pb, sb = eqx.partition(b, eqx.is_array)
            y = jax.lax.cond(
                jnp.sum(x) > 0,
                lambda p, x: eqx.combine(p[0], sa)(x),
                lambda p, x: eqx.combine(p[1], sb)(x),
                (pa, pb),
                layer_norm(x),
            )
            return self.mlps[0](x + y)
        for layer, mlp in zip(self.layers, self.mlps):
            x = x + call_layer(layer, layer_norm(x), self.wrapper)
            x = mlp(x)
        return x


class Bare(eqx.Module):
    """One layer, called through `wrapper`, optionally after an integer side computation."""

    layer: tc.TTTLayer
    wrapper: str | None = eqx.field(static=True)
    int_side: bool = eqx.field(static=True)

    def __call__(self, x):
        if self.int_side:
            x = int_side_features(x)
        return call_layer(self.layer, x, self.wrapper)


VIT_GRIDS = {
    1: (1, 1),
    2: (1, 2),
    3: (1, 3),
    4: (2, 2),
    5: (1, 5),
    6: (2, 3),
    7: (1, 7),
    8: (2, 4),
    9: (3, 3),
    10: (2, 5),
    11: (1, 11),
    12: (3, 4),
    13: (1, 13),
}
VOCAB = 7


def _cast_floats(tree, dtype):
    """Every float array of `tree` in `dtype`, cast on the host (a device astype compiles a program per shape)."""
    return jax.tree.map(lambda a: jax.device_put(np.asarray(a).astype(dtype)) if eqx.is_inexact_array(a) else a, tree)


def build(program: Program):
    """(model, x, x2): the program's model and two inputs of the same shape, in the default float dtype."""
    dtype = jnp.result_type(float)
    key = jax.random.PRNGKey(program.seed)
    k_layers, k_model, k_x, k_x2 = jax.random.split(key, 4)
    layers = [build_layer(s, k) for s, k in zip(program.layers, jax.random.split(k_layers, len(program.layers)))]
    n, d = program.n, program.dim
    if program.kind == "layer":
        model = Bare(layers[0], program.wrapper, program.int_side)
    elif program.kind == "stack":
        mlps = tuple(ResidualMLP(d, k) for k in jax.random.split(k_model, len(layers)))
        model = Stack(tuple(layers), mlps, program.wrapper, program.int_side)
    elif program.kind == "vit":
        rows, cols = VIT_GRIDS[n]
        model = vit_models.ViT(
            image_size=(rows, cols),
            channels=2,
            num_classes=3,
            patch=1,
            width=d,
            depth=len(layers),
            heads=program.layers[0].heads,
            mlp_dim=2 * d,
            layer=layers,
            key=k_model,
        )
        model = _cast_floats(model, dtype)  # the ViT stores its own weights in float32
        shape = (rows, cols, 2)
        return model, normal(k_x, shape), normal(k_x2, shape)  # host draws: nothing to compile
    elif program.kind == "lm":
        model = lm_models.causal_lm(
            vocab=VOCAB,
            width=d,
            depth=len(layers),
            heads=program.layers[0].heads,
            mlp_dim=2 * d,
            max_len=n,
            mixer=layers,
            key=k_model,
        )
        ids = lambda k: jax.device_put(host_rng(k).integers(0, VOCAB, (n,)).astype(np.int32))  # noqa: E731
        return model, ids(k_x), ids(k_x2)
    else:
        raise ValueError(program.kind)
    return model, normal(k_x, (n, d)), normal(k_x2, (n, d))


# =========================================================================== program size
def op_count(ops) -> int:
    return sum(1 + (op_count(o[1]) if o[0] == "residual" else 6 if o[0] == "ttt" else 0) for o in ops)


def loop_steps(spec: LayerSpec, n: int) -> int:
    return n // spec.chunk if spec.batching == "online" else spec.steps


def size(program: Program) -> int:
    """A cost proxy: inner steps times learner ops, summed over the layers (an evaluation of the program
    takes time roughly in proportion)."""
    return sum(loop_steps(s, program.n) * (op_count(s.ops) + 3 + 2 * s.decoder_ln) for s in program.layers)


# =========================================================================== program strategy
def programs(kinds=KINDS, wrappers=WRAPPERS, max_size: int = 10**9, shapes=None):
    """Generated programs of at most `max_size` (see `size`), with (n, heads, d_h) from `shapes` (all
    n <= 13, d <= 12 if None)."""
    return _programs(kinds, wrappers, shapes).filter(lambda p: size(p) <= max_size)


@st.composite
def _programs(draw, kinds, wrappers, shapes) -> Program:
    kind = draw(st.sampled_from(kinds))
    if shapes is None:
        n = draw(st.sampled_from(NS))
        heads, dh = draw(st.sampled_from(DIMS))
    else:
        n, heads, dh = draw(st.sampled_from(shapes))
    seed = draw(st.integers(0, 2**31 - 1))
    if kind == "lm":
        depth = draw(st.integers(1, 2))
        layers = tuple(draw(layer_specs(n, (heads, dh), batching="online")) for _ in range(depth))
        return Program("lm", layers, n, seed=seed)
    if kind == "vit":
        depth = draw(st.integers(1, 2))
        layers = tuple(draw(layer_specs(n, (heads, dh))) for _ in range(depth))
        return Program("vit", layers, n, seed=seed)
    wrapper = draw(st.sampled_from(wrappers))
    int_side = draw(st.booleans())
    if kind == "layer" and wrapper not in ("scan", "cond"):
        return Program("layer", (draw(layer_specs(n, (heads, dh))),), n, wrapper, int_side, seed)
    kind = "stack"
    if wrapper == "scan":
        layers = (draw(layer_specs(n, (heads, dh))),) * draw(st.integers(1, 3))
    else:
        layers = tuple(draw(layer_specs(n, (heads, dh))) for _ in range(draw(st.integers(1, 3))))
    if wrapper == "cond" and len(layers) < 2:
        layers = (*layers, draw(layer_specs(n, (heads, dh))))
    return Program(kind, layers, n, wrapper, int_side, seed)


# =========================================================================== pipelines
def pass_names() -> list[str]:
    return sorted(tc.passes.available())


PASS_OPTIONS = {  # options a random pipeline may give a pass (each must be accepted by passes.get)
    "remat": [{"scheme": s} for s in ("step", "sqrt", "log")],
    "unroll": [{"max_steps": 2}, {"checkpointed": True}],
    "sgd_batch": [{"max_steps": 2}],
    "dual_form": [{"min_chunk": 1}],
}


@st.composite
def random_pipelines(draw) -> list:
    """1-6 registered passes in a random order, repeats allowed, sometimes with options."""
    names = pass_names()
    out = []
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=6)):
        opts = PASS_OPTIONS.get(name, [])
        if opts and draw(st.booleans()):
            out.append((name, draw(st.sampled_from(opts))))
        else:
            out.append(name)
    return out
