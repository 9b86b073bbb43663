"""`TTTLayer`: an attention layer whose every head runs an inner loop (the reference semantics).

For one sequence X = (x_1..x_n) and head k, with keys phi_k(x_i), queries psi_k(x_j), decoder g_k:

    l_k(W; X) = c/(2n) sum_i eta_k(x_i) || g_k(f(phi_k(x_i); W)) - x_i ||^2
    W_{t+1}   = W_t + u_t,   (u_t, s_{t+1}) = optimizer.update(grad l_k(W_t; X_t), s_t, W_t)
    out_j     = h( [f(psi_k(x_j); W_T)]_k )        (h sums the heads' output maps)

c = 1 (eq. 1) or 1/d_h (`Reconstruction(normalisation="released")`); eta_k = 1 for a fixed step size,
else the learned `StepSize` (`Inner(eta="per_head" | "per_token")`).

X_t is all of X (batching="full"), the t-th of T contiguous mini-batches ("sgd"), or the t-th
chunk of a causal pass ("online", where token j reads the weights after learning from tokens <= j).
The plain call runs this with jax.grad inside lax.scan; under `tc.compile` the same code emits
one `ttt_loop` per layer for the passes to rewrite.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ttt_compile.ir.primitive import ttt_loop

from .host_init import nonzero_paths, stack_copies, zeros
from .inner_steps import (
    as_compute,
    batch_step,
    chunked_map,
    fold_decoder,
    fold_targets,
    linear_decoder_terms,
    online_step,
    reconstruction_loss,
    token_loss,
)
from .learners import NonParametric
from .outer_maps import CausalConv, Decoder, Output, Project, StepSize, decode, rotary
from .spec import Inner, MultiView, Readout, Reconstruction, SequenceMaps, SpecError

_LENGTHS: list[list[tuple[int, int]]] = []  # open `recording_lengths` recorders, innermost last


@contextlib.contextmanager
def recording_lengths() -> Iterator[list[tuple[int, int]]]:
    """Record (n, b) of every full/SGD loop traced inside: its sequence length n and the b tokens of each
    inner step (b = n for "full", n/T for "sgd"); the memory planner draws its token chunks from them."""
    seen: list[tuple[int, int]] = []
    _LENGTHS.append(seen)
    try:
        yield seen
    finally:
        _LENGTHS.remove(seen)


# --------------------------------------------------------------------------- the learner's arrays
def split_learner(learner: eqx.Module, outer: Callable | None):
    """(fast weights, outer arrays or None, non-array rest) of a learner; `outer` selects subtrees."""
    arrays, rest = eqx.partition(learner, eqx.is_inexact_array)
    if outer is None:
        return arrays, None, rest
    marked = jax.tree.map(lambda _: False, learner)
    try:
        marked = eqx.tree_at(outer, marked, replace_fn=lambda node: jax.tree.map(lambda _: True, node))
    except Exception as e:  # noqa: BLE001 - re-raised with the fix
        raise SpecError(
            f"TTTLayer.outer must select parts of the learner, e.g. outer=lambda f: (f.ln, f.gate); "
            f"applying it failed: {e}"
        ) from e
    fast = eqx.filter(arrays, jax.tree.map(lambda m: not m, marked))
    kept = eqx.filter(arrays, marked)
    if not jax.tree_util.tree_leaves(kept):
        raise SpecError(
            "TTTLayer.outer selected no float arrays of the learner; select array fields or "
            "modules holding them, e.g. outer=lambda f: f.ln"
        )
    return fast, kept, rest


def _nonzero(params) -> str:
    """The paths of concrete non-zero arrays in `params` ('' if all zero or not concrete)."""
    return ", ".join(nonzero_paths(params))


# --------------------------------------------------------------------------- input checks
def check_tokens(x: Any, dim: int, what: str = "x") -> None:
    """Shapes and dtypes at the public boundary: one clear error naming the fix."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{what}: expected an array of tokens with shape (n, {dim}), got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{what}: expected a float array, got dtype {x.dtype}; cast it, e.g. {what}.astype(jnp.float32)"
        )
    if x.ndim != 2:
        raise ValueError(
            f"{what}: expected shape (n, {dim}) for one sequence, got {tuple(x.shape)}; "
            f"for a batch use jax.vmap(layer)({what})"
        )
    if x.shape[-1] != dim:
        raise ValueError(
            f"{what}: token dimension is {x.shape[-1]} but the layer was built with dim={dim}; "
            f"build the layer with dim={x.shape[-1]} or project the tokens to {dim}"
        )


# --------------------------------------------------------------------------- the layer
class TTTLayer(eqx.Module):
    """A multi-head TTT layer: H independent inner loops with fast weights W, outer maps phi, psi, g, h.

    With `task=MultiView()` the label view is `target` and there is no decoder (g is None); with
    `SequenceMaps(shared_qk=True)` keys and queries share `phi` (psi is None); `conv_k`/`conv_q` are the
    causal convolutions of `SequenceMaps(conv_width=...)`, `chunk_offset` the learned offset of
    `Inner(chunk_factor="learned")`."""

    phi: Project
    psi: Project | None
    g: Decoder | None
    h: Output
    W0: Any  # stacked over heads (init="learned"), else None
    eta: StepSize | None  # the learned inner step size (Inner.eta != "fixed"), else None
    target: Project | None  # theta_V of a MultiView task, else None
    conv_k: CausalConv | None
    conv_q: CausalConv | None
    chunk_offset: Float[Array, " b"] | None
    dim: int = eqx.field(static=True)
    heads: int = eqx.field(static=True)
    init: str = eqx.field(static=True)
    inner: Inner = eqx.field(static=True)
    task: Reconstruction | MultiView = eqx.field(static=True)
    sequence: SequenceMaps = eqx.field(static=True)
    readout: Readout = eqx.field(static=True)
    outer_per_head: bool = eqx.field(static=True)
    learner_outer: Any  # the learner's arrays marked `outer` (trained by the outer loop; stacked over heads
    # with outer_per_head), or None
    learner: Any = eqx.field(static=True)  # the learner's non-array part (eqx.partition)
    fast_shape: Any = eqx.field(static=True)  # one head's fast weights as ShapeDtypeStructs
    nonparametric: bool = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        heads: int,
        learner: eqx.Module,
        *,
        init: str = "zero",
        task: Reconstruction | MultiView = Reconstruction(),
        inner: Inner = Inner(),
        outer: Callable[[eqx.Module], Any] | None = None,
        outer_per_head: bool = False,
        sequence: SequenceMaps = SequenceMaps(),
        readout: Readout = Readout(),
        key: PRNGKeyArray,
    ):
        """`outer`, optional, selects parts of the learner (as `eqx.tree_at`'s `where` does, e.g.
        `outer=lambda f: (f.ln, f.gate)`) whose arrays are outer parameters: trained by the outer loop,
        held fixed by the inner one, shared by the heads (one copy per head with `outer_per_head=True`).
        Every other float array is a fast weight.  `sequence` (SequenceMaps) adds a causal convolution
        and rotary positions to keys and queries, `readout` (Readout) a norm and a gate to h."""
        if not isinstance(dim, int) or not isinstance(heads, int) or dim < 1 or heads < 1:
            raise SpecError(f"TTTLayer: dim and heads must be positive ints, got dim={dim!r}, heads={heads!r}")
        if dim % heads:
            raise SpecError(
                f"TTTLayer.heads={heads} must divide dim={dim} (each head has d/H dims); "
                f"pick heads from {[h for h in range(1, dim + 1) if dim % h == 0][:12]}"
            )
        if init not in ("zero", "learned"):
            raise SpecError(f"TTTLayer.init must be 'zero' or 'learned', got {init!r}")
        if not isinstance(task, (Reconstruction, MultiView)):
            raise SpecError(
                f"TTTLayer.task must be tc.Reconstruction(...) or tc.MultiView(...), got {type(task).__name__}"
            )
        if not isinstance(sequence, SequenceMaps):
            raise SpecError(f"TTTLayer.sequence must be tc.SequenceMaps(...), got {type(sequence).__name__}")
        if not isinstance(readout, Readout):
            raise SpecError(f"TTTLayer.readout must be tc.Readout(...), got {type(readout).__name__}")
        if not isinstance(outer_per_head, bool):
            raise SpecError(f"TTTLayer.outer_per_head must be a bool, got {outer_per_head!r}")
        if outer_per_head and outer is None:
            raise SpecError("TTTLayer.outer_per_head=True needs `outer` (which learner arrays are outer parameters)")
        if sequence.rope_theta is not None and (dim // heads) % 2:
            raise SpecError(
                f"SequenceMaps.rope_theta rotates pairs of dims, so d_h = dim/heads must be even; got d_h={dim // heads}"
            )
        if not isinstance(inner, Inner):
            raise SpecError(f"TTTLayer.inner must be tc.Inner(...), got {type(inner).__name__}")
        if not isinstance(learner, eqx.Module):
            raise SpecError(f"TTTLayer.learner must be an equinox Module, got {type(learner).__name__}")
        self.dim, self.heads, self.init, self.inner, self.task = dim, heads, init, inner, task
        self.sequence, self.readout, self.outer_per_head = sequence, readout, False  # set once stacked, below
        dh = dim // heads
        self.nonparametric = isinstance(learner, NonParametric)
        if self.nonparametric:
            self.learner, self.fast_shape, self.W0, self.learner_outer = learner, None, None, None
        else:
            params, self.learner_outer, self.learner = split_learner(learner, outer)
            if not jax.tree_util.tree_leaves(params):
                raise SpecError(
                    f"TTTLayer.learner ({type(learner).__name__}) has no float array leaves, so "
                    "there are no fast weights W to learn; give it array fields (e.g. "
                    "W: Float[Array, 'dh dh']) or subclass tc.learners.NonParametric"
                )
            try:
                out = jax.eval_shape(lambda p: eqx.combine(p, self.inner_model())(jnp.zeros(dh)), params)
            except Exception as e:  # noqa: BLE001 - re-raised with the fix
                raise SpecError(
                    f"TTTLayer.learner ({type(learner).__name__}) must map one head's token of "
                    f"shape ({dh},) (d_h = dim/heads) to ({dh},); calling it failed: {e}"
                ) from e
            if getattr(out, "shape", None) != (dh,):
                raise SpecError(
                    f"TTTLayer.learner ({type(learner).__name__}) must map ({dh},) to ({dh},) "
                    f"(d_h = dim/heads = {dh}), but it returns {getattr(out, 'shape', out)}"
                )
            if init == "zero" and _nonzero(params):
                raise SpecError(
                    f"TTTLayer: init='zero' starts every head from W0 = 0, but the learner "
                    f"({type(learner).__name__}) holds non-zero fast weights ({_nonzero(params)}), "
                    "which would be ignored; use init='learned' to start from (and train) them, "
                    "or build the learner with zero arrays"
                )
            self.fast_shape = jax.eval_shape(lambda: params)
            if outer_per_head:
                self.learner_outer = jax.tree.map(lambda a: stack_copies(a, heads), self.learner_outer)
                self.outer_per_head = True
            self.W0 = jax.tree.map(lambda a: stack_copies(a, heads), params) if init == "learned" else None
        if self.nonparametric and inner.dtype is not None:
            raise SpecError(
                f"Inner.dtype={inner.dtype!r} sets the precision of fast weights, but "
                f"{type(learner).__name__} is non-parametric (it has none): leave Inner.dtype=None"
            )
        if self.nonparametric and inner.eta != "fixed":
            raise SpecError(
                f"Inner.eta={inner.eta!r} needs a parametric learner (a non-parametric one takes no "
                "gradient steps); use Inner(eta='fixed') with "
                f"{type(learner).__name__}"
            )
        kp, kq, kg, kh = jax.random.split(key, 4)
        bias = isinstance(task, Reconstruction) and task.bias
        self.phi = Project(dim, heads, bias=bias, key=kp)
        self.psi = None if sequence.shared_qk else Project(dim, heads, bias=bias, key=kq)
        if isinstance(task, MultiView):
            self.g, self.target = None, Project(dim, heads, key=kg)
        else:
            self.target = None
            self.g = Decoder(
                dim,
                heads,
                decoder_ln=task.decoder_ln,
                bias=task.bias,
                ln_per_head=task.ln_per_head,
                ln_eps=task.ln_eps,
                key=kg,
            )
        self.h = Output(
            dim, heads, key=kh, norm=readout.norm, gate=readout.gate, bias=readout.bias, norm_eps=readout.norm_eps
        )
        w = sequence.conv_width
        self.conv_k = None if w is None else CausalConv(w, heads, dim // heads)
        self.conv_q = None if w is None else CausalConv(w, heads, dim // heads)
        self.chunk_offset = zeros((inner.chunk,)) if inner.chunk_factor == "learned" else None
        self.eta = (
            None
            if inner.eta == "fixed"
            else StepSize(dim, heads, per_token=inner.eta == "per_token", eta_base=inner.eta_base)
        )

    # ----------------------------------------------------------------- public
    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        check_tokens(x, self.dim)
        k, q = self.keys_queries(x)  # (n, H, d_h)
        head = self._nonparametric_head if self.nonparametric else self._parametric_head
        dec, dec_axes = self.decoders()
        w = None if self.eta is None else self.eta(x)  # (H,) or (H, n)
        t, t_axis = self.targets(x)
        outer, outer_axis = self._outer()
        o = jax.vmap(head, in_axes=(0, dec_axes, None if w is None else 0, 1, 1, t_axis, outer_axis), out_axes=1)(
            self._W0(), dec, w, k, q, t, outer
        )  # (n, H, d_h)
        return self.h.tokens(o.astype(x.dtype), x)

    @property
    def multiview(self) -> bool:
        """Whether the task is a MultiView one (label view `target`, no decoder)."""
        return isinstance(self.task, MultiView)

    def keys_queries(self, x: Float[Array, "n d"]) -> tuple[Float[Array, "n heads dh"], Float[Array, "n heads dh"]]:
        """(k, q) of every token: phi(x), psi(x) per head, then the SequenceMaps (causal convolution, rotary
        positions) when the layer has them."""
        k = self.phi.tokens(x)
        q = k if self.psi is None else self.psi.tokens(x)
        if self.conv_k is not None:
            k, q = self.conv_k(k), self.conv_q(q)
        if self.sequence.rope_theta is not None:
            theta, period = self.sequence.rope_theta, self.sequence.rope_period
            k, q = rotary(k, theta, period), rotary(q, theta, period)
        return k, q

    def targets(self, x: Float[Array, "n d"]):
        """What each head reconstructs and vmap's in_axes for it: the tokens x (shared by the heads) for a
        Reconstruction task, the label view theta_V x (n, H, d_h) for a MultiView one."""
        return (self.target.tokens(x), 1) if self.multiview else (x, None)

    def chunk_factors(self) -> Float[Array, " b"] | None:
        """a_1..a_b of Inner.chunk_factor (None for "none"): 1/i, or max(1/i + chunk_offset_i, 0)."""
        if self.inner.chunk_factor == "none":
            return None
        inverse = 1.0 / np.arange(1, self.inner.chunk + 1)
        if self.chunk_offset is None:
            return jnp.asarray(inverse, jnp.result_type(float))
        return jnp.maximum(jnp.asarray(inverse, self.chunk_offset.dtype) + self.chunk_offset, 0.0)

    def _outer(self):
        """The learner's outer arrays and vmap's in_axes for them over the heads."""
        return self.learner_outer, (0 if self.outer_per_head else None)

    def inner_losses(self, x: Float[Array, "n d"]) -> Float[Array, "heads steps_plus_1"]:
        """l_k(W_t; X) for t = 0..T (before the first step and after each), per head: Figure 1 right."""
        check_tokens(x, self.dim)
        if self.nonparametric or self.inner.batching == "online":
            raise SpecError("inner_losses needs a parametric learner with batching 'full' or 'sgd'")
        k, _ = self.keys_queries(x)
        dec, dec_axes = self.decoders()
        w = None if self.eta is None else self.eta(x)
        t, t_axis = self.targets(x)
        outer, outer_axis = self._outer()
        scale = self.loss_scale

        def per_head(W0, dec, w, k, t, outer):
            W0, dec, w, k, _, xc = self._in_inner_dtype(W0, dec, w, k, k, t)
            G, c, ln = dec
            Ws = self._weights_sequence(W0, dec, w, k, xc, outer)
            compute = self._compute()
            static = as_compute(self.inner_model(outer), compute)
            return jax.vmap(
                lambda W: reconstruction_loss(as_compute(W, compute), static, G, ln, k, xc, c, scale=scale)
            )(Ws)

        return jax.vmap(per_head, in_axes=(0, dec_axes, None if w is None else 0, 1, t_axis, outer_axis))(
            self._W0(), dec, w, k, t, outer
        )

    @property
    def loss_scale(self) -> float:
        """c in l = c/(2n) sum ||.||^2: 1 (eq. 1) or 1/d_h (the released code's normalisation)."""
        return self.task.scale(self.dim // self.heads)

    def with_inner(self, **changes) -> TTTLayer:
        """The same layer (same arrays) with `Inner` fields replaced, e.g. `layer.with_inner(dtype="bfloat16")`.

        Only fields that do not change the layer's arrays may change: `dtype`, `steps`, `batching`,
        `chunk`, `optimizer` (not `eta`, which decides whether a learned step size exists)."""
        if "eta" in changes or "eta_base" in changes:
            raise SpecError(
                "TTTLayer.with_inner cannot change eta/eta_base (they decide the layer's "
                "StepSize arrays); build a new layer with Inner(eta=...)"
            )
        inner = dataclasses.replace(self.inner, **changes)
        if self.nonparametric and inner.dtype is not None:
            raise SpecError(
                f"Inner.dtype={inner.dtype!r} sets the precision of fast weights, but this "
                "layer's learner is non-parametric (it has none)"
            )
        new = object.__new__(type(self))
        for field in dataclasses.fields(self):
            object.__setattr__(new, field.name, getattr(self, field.name))
        object.__setattr__(new, "inner", inner)
        return new

    def inner_model(self, outer=None):
        """The learner without its fast weights: `eqx.combine(W, layer.inner_model())` is f(.; W).  With
        `outer_per_head`, pass one head's outer arrays (`outer`, a slice of `learner_outer`)."""
        outer = self.learner_outer if outer is None else outer
        if outer is None:
            return self.learner
        if self.outer_per_head and outer is self.learner_outer:
            raise SpecError(
                "TTTLayer.inner_model: this layer has one copy of the learner's outer arrays per head "
                "(outer_per_head=True); pass one head's, e.g. jax.tree.map(lambda a: a[k], layer.learner_outer)"
            )
        return eqx.combine(outer, self.learner)

    # ----------------------------------------------------------------- inner loop, one head
    def decoders(self):
        """Each head's decoder (G_k, c, LN_k) and vmap's in_axes for it over the heads ((None, None, None)
        for a MultiView task, which has no decoder)."""
        if self.g is None:
            return (None, None, None), (None, None, None)
        return (self.g.weight, self.g.bias, self.g.ln), (0, None, self.g.ln_axis)

    def _W0(self):
        if self.nonparametric:
            return jnp.zeros((self.heads,))  # nothing to learn; keeps vmap's in_axes uniform
        if self.init == "learned":
            return self.W0
        return jax.tree.map(lambda s: jnp.zeros((self.heads, *s.shape), s.dtype), self.fast_shape)

    def _nonparametric_head(self, _, dec, w, k, q, x, outer=None):
        G, c, ln = dec
        scale = self.loss_scale
        if G is None:  # MultiView: -grad_z scale/2 ||z - y||^2 at z = 0 is scale * y
            state = self.learner.fit(k, scale * x)
            return jax.vmap(lambda qj: self.learner.predict(state, qj))(q)
        labels = jax.vmap(
            lambda xi: -jax.grad(lambda z: scale * token_loss(decode(G, ln, z, c), xi))(jnp.zeros(k.shape[-1], x.dtype))
        )(x)
        state = self.learner.fit(k, labels)
        return jax.vmap(lambda qj: self.learner.predict(state, qj))(q)

    def _loop_inputs(self, dec, w, k, x, q=None, v=None, y=None):
        """(consts, xs) of one head's ttt_loop: the decoder and the data every step reads (consts), and
        the data split into the loop's blocks (xs; None for batching="full").  See inner_steps; `v`
        (the linear decoder's G^T (x - c)) stands in for x when given, `y` (a MultiView task's label view,
        with no decoder) too; the online chunk factors a_i (`chunk_factors`) are a constant "a"."""
        steps, b = self.inner.blocks(k.shape[0])
        if y is not None:
            data = {"k": k, "y": y, "q": q}
        elif q is None and v is None and self._folds_decoder():
            dec, maps = fold_decoder(*dec)
            if self.inner.token_chunk is None:
                data = {"k": k, **fold_targets(maps, x)}
            else:  # targets folded chunk by chunk: no (n, d_h) targets outside the chunks
                dec, data = dec._replace(maps=maps), {"k": k, "x": x}
        else:
            data = {"k": k, "x": x} if v is None else {"k": k, "v": v}
            if q is not None:
                data["q"] = q
        if w is not None:
            data["w"] = w
        if self.inner.batching == "full":
            return (dec, data), None
        split = {name: a for name, a in data.items() if a.ndim}  # per-token arrays are split
        shared = {name: a for name, a in data.items() if not a.ndim}  # a per-head eta is not
        a = self.chunk_factors() if self.inner.batching == "online" else None
        if a is not None:
            shared["a"] = a.astype(k.dtype)
        return (dec, shared), {name: a.reshape(steps, b, *a.shape[1:]) for name, a in split.items()}

    def _folds_decoder(self) -> bool:
        """Whether full-batch/SGD steps use the folded decoder (Reconstruction.loss_form="gram"): only when
        the inner loop computes in float32 or wider; with bfloat16 matmuls (Inner.dtype "bfloat16"/"mixed")
        the folded sums would lose the residual to cancellation, so every token is decoded."""
        compute = self._compute()
        if self.multiview:  # no decoder to fold
            return False
        return self.task.loss_form == "gram" and (compute is None or jnp.finfo(compute).bits >= 32)

    def _compute(self):
        """The dtype the learner sees W in (Inner.dtype), or None to follow the arrays."""
        dtypes = self.inner.dtypes()
        return None if dtypes is None else jnp.dtype(dtypes[1])

    def _in_inner_dtype(self, W0, dec, w, k, q, x):
        """W0 in the fast-weight dtype, the rest in the matmul dtype of Inner.dtype (unchanged if None)."""
        dtypes = self.inner.dtypes()
        if dtypes is None:
            return W0, dec, w, k, q, x
        weights, compute = map(jnp.dtype, dtypes)
        return (as_compute(W0, weights), *as_compute((dec, w, k, q, x), compute))

    def _parametric_head(self, W0, dec, w, k, q, x, outer=None):
        W0, dec, w, k, q, x = self._in_inner_dtype(W0, dec, w, k, q, x)
        n = x.shape[0]
        steps, _ = self.inner.blocks(n)
        compute = self._compute()
        opt, static, scale = self.inner.optimizer, as_compute(self.inner_model(outer), compute), self.loss_scale
        carry = (W0, opt.init(W0))
        nw = len(jax.tree_util.tree_leaves(W0))
        if self.inner.batching == "online":
            G, c, ln = dec
            if self.multiview:  # the label view y = theta_V x: error z - y
                consts, xs = self._loop_inputs(dec, w, k, None, q, y=x)
            elif ln is None:  # linear decoder: M and v_i = G^T (x_i - c) for all tokens at once
                M, v = linear_decoder_terms(G, c, x)
                consts, xs = self._loop_inputs(dec, w, k, None, q, v=v)
                consts = (consts[0], {**consts[1], "M": M})
            else:
                consts, xs = self._loop_inputs(dec, w, k, x, q)
            _, ys = ttt_loop(
                online_step(opt, static, scale, compute),
                consts,
                carry,
                xs,
                steps=steps,
                schedule="online",
                init=self.init,
                num_weights=nw,
            )
            return ys.reshape(n, -1)
        consts, xs = self._loop_inputs(dec, w, k, x)
        tc = self._token_chunk(n)
        (WT, _), _ = ttt_loop(
            batch_step(opt, static, scale, compute, tc),
            consts,
            carry,
            xs,
            steps=steps,
            schedule=self.inner.batching,
            init=self.init,
            num_weights=nw,
        )
        f = eqx.combine(as_compute(WT, compute), static)
        return chunked_map(jax.vmap(f), q, tc)

    def _token_chunk(self, n: int) -> int | None:
        """Inner.token_chunk, checked against n and the n/T tokens of an SGD step."""
        c = self.inner.token_chunk
        _, b = self.inner.blocks(n)
        for seen in _LENGTHS:
            seen.append((n, b))
        if c is not None and (n % c or (b > c and b % c)):
            raise SpecError(
                f"Inner.token_chunk={c} must divide the sequence length n={n}"
                + (f" and the {b} tokens of each SGD step" if b != n else "")
                + "; pick a common divisor or token_chunk=None"
            )
        return c

    def _weights_sequence(self, W0, dec, w, k, x, outer=None):
        """W_0..W_T of one head (reference path only, inputs already in the inner dtype), stacked on a
        leading axis."""
        steps, _ = self.inner.blocks(x.shape[0])
        compute = self._compute()
        opt, static = self.inner.optimizer, as_compute(self.inner_model(outer), compute)
        consts, xs = self._loop_inputs(dec, w, k, x)
        step = batch_step(opt, static, self.loss_scale, compute, self._token_chunk(x.shape[0]))

        def keep(carry, xt):
            new, _ = step(consts, carry, xt)
            return new, new[0]

        _, Ws = jax.lax.scan(keep, (W0, opt.init(W0)), xs, length=steps)
        return jax.tree.map(lambda a, w: jnp.concatenate([a[None], w]), W0, Ws)
