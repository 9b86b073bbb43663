"""A causal language model with a drop-in token mixer, and its O(D)-state decode path.

One sequence of token ids (t_1..t_n) -> next-token logits (vmap it over a batch, Equinox style):

    z_0[i] = E[t_i] + P[i] (+ E_prev[t_{i-1}] with prev_token=True, 0 for i = 1)
    z_l    = z_{l-1} + A_l(LN(z_{l-1}));   z_l <- z_l + MLP_l(LN(z_l))          l = 1..depth (pre-LN)
    logits = LN(z_depth) E^T                                                    (tied output head)

A_l is a causal mixer mapping (n, d) -> (n, d): a TTT layer with batching="online" (causal TTT),
`causal.CausalLinearAttention`, or `layers.Attention` with causal=True (softmax or linear).
`prev_token` adds the previous token's embedding to each position (a token shift, as RWKV's or
the short convolutions of Zoology's baselines) so one layer can bind a key to the value after it.

Decode: `init_state()` and `step(state, token) -> (logits, state)` run the same model one token at
a time with per-layer state of a size independent of the position (O(D)):

    TTT layer (online, chunk b)   W_c (the chunk-start fast weights, per head), the optimizer state at
                                  the chunk start, A = sum of this chunk's token gradients taken at
                                  W_c, and p = position within the chunk.  Token t:
                                      A += grad l(W_c; x_t),  (u, s) = opt.update(A, s_c, W_c),
                                      W_t = W_c + u,  y_t = f(q_t; W_t);
                                  at the chunk's last token W_c, s_c <- W_t, s and A <- 0
                                  (exactly the online schedule of `TTTLayer`), with the
                                  chunk factor a_p on A, the label view of a MultiView task, the
                                  last w - 1 keys/queries for SequenceMaps' convolutions and the
                                  position t for its rotary embedding.
    linear attention              S = sum_j f(k_j) v_j^T, z = sum_j f(k_j), i  (`causal.py`)
    softmax attention             a key/value cache of max_len tokens (O(max_len D): softmax has no
                                  constant-size state; it is here as the baseline)

`decode(tokens)` equals `__call__(tokens)` (the chunked training form) token for token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ttt_compile.layer import TTTLayer, decode, token_loss
from ttt_compile.layer.host_init import layer_norm, linear, normal
from ttt_compile.layer.outer_maps import rotary_frequencies, rotate
from ttt_compile.layer.spec import SpecError

from .causal import CausalLinearAttention, linear_attention_state, linear_attention_step
from .layers import Attention

MixerFactory = Callable[..., eqx.Module]
"""Called as ``factory(dim=width, heads=heads, key=key)``; returns a causal module (n, d) -> (n, d)."""


# --------------------------------------------------------------------------- decode states
class TTTState(NamedTuple):
    """Online TTT decode state (per head, stacked on axis 0): chunk-start weights W_c, optimizer
    state s_c at the chunk start, A = this chunk's summed gradients, p = position in the chunk."""

    W: Any
    opt: Any
    A: Any
    p: Int[Array, ""]
    conv: Any = None  # SequenceMaps(conv_width=w): the last w - 1 keys and queries before the convolutions
    t: Any = None  # the absolute position (rotary positions)


class KVCache(NamedTuple):
    """Softmax-attention decode state: keys and values of the tokens so far, i of them."""

    K: Float[Array, "max_len heads dh"]
    V: Float[Array, "max_len heads dh"]
    i: Int[Array, ""]


class LMState(NamedTuple):
    """The whole model's decode state: one state per block, the previous token, the position t."""

    layers: tuple
    prev: Int[Array, ""]
    t: Int[Array, ""]


def chunk_start_weights(layer: TTTLayer):
    """W0 of every head (stacked on axis 0): the learned W0, or zeros for init="zero"."""
    if layer.init == "learned":
        return layer.W0
    return jax.tree.map(lambda s: jnp.zeros((layer.heads, *s.shape), s.dtype), layer.fast_shape)


def ttt_init_state(layer: TTTLayer) -> TTTState:
    W = chunk_start_weights(layer)
    conv = None
    if layer.conv_k is not None:  # the last w - 1 keys and queries before the convolutions, zeros at the start
        empty = jnp.zeros((layer.conv_k.kernel.shape[0] - 1, *layer.conv_k.bias.shape), layer.conv_k.bias.dtype)
        conv = (empty, empty)
    return TTTState(
        W,
        jax.vmap(layer.inner.optimizer.init)(W),
        jax.tree.map(jnp.zeros_like, W),
        jnp.zeros((), jnp.int32),
        conv,
        jnp.zeros((), jnp.int32),
    )


def ttt_key_query(layer: TTTLayer, state: TTTState, x: Float[Array, " d"]):
    """(k, q, conv buffers) of token x at position state.t: phi/psi, then SequenceMaps' causal convolutions
    (over the buffered w - 1 previous tokens) and rotary positions, as `TTTLayer.keys_queries`."""
    k = layer.phi(x)
    q = k if layer.psi is None else layer.psi(x)
    conv = state.conv
    if layer.conv_k is not None:
        window_k, window_q = jnp.concatenate([conv[0], k[None]]), jnp.concatenate([conv[1], q[None]])
        k = jnp.einsum("whk,whk->hk", layer.conv_k.kernel, window_k) + layer.conv_k.bias
        q = jnp.einsum("whk,whk->hk", layer.conv_q.kernel, window_q) + layer.conv_q.bias
        conv = (window_k[1:], window_q[1:])
    if layer.sequence.rope_theta is not None:
        period = layer.sequence.rope_period
        pos = state.t if period is None else state.t % period
        angle = pos.astype(k.dtype) * jnp.asarray(rotary_frequencies(k.shape[-1], layer.sequence.rope_theta), k.dtype)
        cos, sin = jnp.cos(angle)[None], jnp.sin(angle)[None]
        k, q = rotate(k[None], cos, sin)[0], rotate(q[None], cos, sin)[0]
    return k, q, conv


def ttt_step(layer: TTTLayer, state: TTTState, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], TTTState]:
    """One token of the online inner loop (see the module doc), all heads at once."""
    opt, b = layer.inner.optimizer, layer.inner.chunk
    k, q, conv = ttt_key_query(layer, state, x)  # (heads, d_h)
    dec, dec_axes = layer.decoders()
    scale = layer.loss_scale
    w = None if layer.eta is None else layer.eta(x[None]).reshape(layer.heads)  # eta_k(x) per head
    target = layer.target(x) if layer.multiview else None  # the label view, (heads, d_h)
    factors = layer.chunk_factors()  # a_1..a_b of Inner.chunk_factor, or None
    outer, outer_axis = layer.learner_outer, (0 if layer.outer_per_head else None)

    def head(Wc, s, A, dec, w, k, q, y, outer):
        G, c, ln = dec
        static = layer.inner_model(outer)

        def loss(W):
            loss_t = token_loss(decode(G, ln, eqx.combine(W, static)(k), c), x if y is None else y)
            loss_t = loss_t if w is None else w * loss_t
            return loss_t if scale == 1.0 else scale * loss_t

        g = jax.grad(loss)(Wc)
        A = jax.tree.map(jnp.add, A, g)
        summed = A if factors is None else jax.tree.map(lambda a: factors[state.p].astype(a.dtype) * a, A)
        u, s_new = opt.update(summed, s, Wc)
        Wt = jax.tree.map(lambda w, du: w + du, Wc, u)
        return eqx.combine(Wt, static)(q), Wt, s_new, A

    in_axes = (0, 0, 0, dec_axes, None if w is None else 0, 0, 0, None if target is None else 0, outer_axis)
    y, Wt, s_new, A = jax.vmap(head, in_axes=in_axes)(state.W, state.opt, state.A, dec, w, k, q, target, outer)
    last = state.p == b - 1
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(last, n, o), new, old)  # noqa: E731
    new = TTTState(
        keep(Wt, state.W),
        keep(s_new, state.opt),
        jax.tree.map(lambda a: jnp.where(last, jnp.zeros_like(a), a), A),
        jnp.where(last, 0, state.p + 1).astype(jnp.int32),
        conv,
        state.t + 1,
    )
    return layer.h(y, x), new


def kv_init_state(layer: Attention, max_len: int, dtype=jnp.float32) -> KVCache:
    dh = layer.dim // layer.heads
    z = jnp.zeros((max_len, layer.heads, dh), dtype)
    return KVCache(z, z, jnp.zeros((), jnp.int32))


def kv_step(layer: Attention, state: KVCache, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], KVCache]:
    """Softmax attention of token i over the cached tokens 0..i."""
    k, q = layer.phi(x), layer.psi(x)
    v = jnp.einsum("hdk,d->hk", layer.g.weight, x)
    K, V = state.K.at[state.i].set(k), state.V.at[state.i].set(v)
    s = jnp.einsum("mhk,hk->hm", K, q) / math.sqrt(q.shape[-1])
    s = jnp.where(jnp.arange(K.shape[0]) <= state.i, s, -jnp.inf)
    o = jnp.einsum("hm,mhk->hk", jax.nn.softmax(s, axis=-1), V)
    return layer.h(o), KVCache(K, V, state.i + 1)


def check_causal(mixer: Any) -> None:
    """A mixer an LM may use: one whose output at i reads no token after i."""
    if isinstance(mixer, TTTLayer):
        if mixer.inner.batching != "online" or mixer.nonparametric:
            raise SpecError(
                f"CausalLM: a TTT layer with batching={mixer.inner.batching!r} reads future tokens; "
                "build it with batching='online' (e.g. layers.mttt_linear(..., batching='online', "
                "chunk=16))"
            )
    elif isinstance(mixer, Attention):
        if not mixer.causal:
            raise SpecError(
                "CausalLM: an attention layer with causal=False reads future tokens; build it with causal=True"
            )
    elif not isinstance(mixer, CausalLinearAttention):
        raise SpecError(
            f"CausalLM: unknown mixer {type(mixer).__name__}; use an online TTT layer, "
            "causal.causal_linear_attention or a causal layers.Attention"
        )


def mixer_init_state(mixer: Any, max_len: int):
    if isinstance(mixer, TTTLayer):
        return ttt_init_state(mixer)
    if isinstance(mixer, CausalLinearAttention) or (isinstance(mixer, Attention) and mixer.kind != "softmax"):
        return linear_attention_state(mixer.dim, mixer.heads)
    return kv_init_state(mixer, max_len)


def mixer_step(mixer: Any, state, x: Float[Array, " d"]):
    if isinstance(mixer, TTTLayer):
        return ttt_step(mixer, state, x)
    if isinstance(mixer, CausalLinearAttention):
        return mixer.step(state, x)
    if mixer.kind != "softmax":
        return linear_attention_step(mixer, mixer.kind, state, x)
    return kv_step(mixer, state, x)


# --------------------------------------------------------------------------- the model
def _layer_norm(ln: eqx.nn.LayerNorm, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
    return jax.vmap(ln)(x)


class Mlp(eqx.Module):
    """MLP(x) = W_2 gelu(W_1 x + b_1) + b_2 per token."""

    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __init__(self, width: int, hidden: int, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.fc1, self.fc2 = linear(width, hidden, key=k1), linear(hidden, width, key=k2)

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, " d"]:
        return self.fc2(jax.nn.gelu(self.fc1(x)))


class LMBlock(eqx.Module):
    """Pre-LN block: x + A(LN(x)), then + MLP(LN(.))."""

    norm1: eqx.nn.LayerNorm
    mixer: eqx.Module
    norm2: eqx.nn.LayerNorm
    mlp: Mlp

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        return self.trace(x)[0]

    def trace(self, x: Float[Array, "n d"]) -> tuple[Float[Array, "n d"], Bool[Array, 2]]:
        """The block's output and whether the mixer and the MLP residual outputs are all finite."""
        x = x + self.mixer(_layer_norm(self.norm1, x))
        finite_mixer = jnp.all(jnp.isfinite(x))
        x = x + jax.vmap(self.mlp)(_layer_norm(self.norm2, x))
        return x, jnp.stack([finite_mixer, jnp.all(jnp.isfinite(x))])

    def step(self, state, x: Float[Array, " d"]):
        y, state = mixer_step(self.mixer, state, self.norm1(x))
        x = x + y
        return x + self.mlp(self.norm2(x)), state


class CausalLM(eqx.Module):
    """Causal LM over one sequence of token ids (see the module doc)."""

    embed: Float[Array, "vocab d"]
    prev: Float[Array, "vocab d"] | None
    pos: Float[Array, "max_len d"]
    blocks: tuple[LMBlock, ...]
    norm: eqx.nn.LayerNorm
    vocab: int = eqx.field(static=True)
    max_len: int = eqx.field(static=True)

    def __init__(
        self,
        *,
        vocab: int,
        width: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        max_len: int,
        mixer: MixerFactory | Sequence[eqx.Module],
        prev_token: bool = False,
        key: PRNGKeyArray,
    ):
        for name, v in (
            ("vocab", vocab),
            ("width", width),
            ("depth", depth),
            ("heads", heads),
            ("mlp_dim", mlp_dim),
            ("max_len", max_len),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SpecError(f"CausalLM: {name} must be a positive int, got {v!r}")
        ke, kp, kq, km, kb = jax.random.split(key, 5)
        mixers = (
            list(mixer)
            if isinstance(mixer, Sequence)
            else [mixer(dim=width, heads=heads, key=k) for k in jax.random.split(km, depth)]
        )
        if len(mixers) != depth:
            raise SpecError(f"CausalLM: got {len(mixers)} mixers for depth={depth}; give one per block")
        for m in mixers:
            check_causal(m)
        self.embed = normal(ke, (vocab, width), 1 / math.sqrt(width))
        self.prev = normal(kq, (vocab, width), 1 / math.sqrt(width)) if prev_token else None
        self.pos = normal(kp, (max_len, width), 0.02)
        self.blocks = tuple(
            LMBlock(layer_norm(width), m, layer_norm(width), Mlp(width, mlp_dim, key=k))
            for m, k in zip(mixers, jax.random.split(kb, depth))
        )
        self.norm = layer_norm(width)
        self.vocab, self.max_len = vocab, max_len

    # ----------------------------------------------------------------- training form
    def tokens(self, ids: Int[Array, " n"]) -> Float[Array, "n d"]:
        """z_0 = E[t_i] + P[i] (+ E_prev[t_{i-1}])."""
        _check_ids(ids, self.max_len)
        z = self.embed[ids] + self.pos[: ids.shape[0]]
        if self.prev is not None:
            shifted = jnp.concatenate([jnp.zeros((1, z.shape[1]), z.dtype), self.prev[ids[:-1]]])
            z = z + shifted
        return z

    def logits(self, z: Float[Array, "n d"]) -> Float[Array, "n vocab"]:
        """LN(z) E^T (the head is tied to the embedding)."""
        return _layer_norm(self.norm, z) @ self.embed.T

    def __call__(self, ids: Int[Array, " n"]) -> Float[Array, "n vocab"]:
        return self.trace(ids)[0]

    def trace(self, ids: Int[Array, " n"]) -> tuple[Float[Array, "n vocab"], Bool[Array, " stages"]]:
        """Logits, and per stage of :func:`stage_names` (embedding; each block's mixer and MLP; head)
        whether all of that stage's outputs are finite."""
        z = self.tokens(ids)
        finite = [jnp.all(jnp.isfinite(z))[None]]
        for block in self.blocks:
            z, ok = block.trace(z)
            finite.append(ok)
        out = self.logits(z)
        finite.append(jnp.all(jnp.isfinite(out))[None])
        return out, jnp.concatenate(finite)

    # ----------------------------------------------------------------- decode form
    def init_state(self) -> LMState:
        """The state before the first token (every layer's state empty, t = 0)."""
        return LMState(
            tuple(mixer_init_state(b.mixer, self.max_len) for b in self.blocks),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
        )

    def step(self, state: LMState, token: Int[Array, ""]) -> tuple[Float[Array, " vocab"], LMState]:
        """Logits for the next token after `token` (at position state.t), and the new state."""
        self.check_state(state)
        t = eqx.error_if(
            state.t,
            state.t >= self.max_len,
            f"CausalLM.step: decoding past max_len={self.max_len} tokens; build the model with a larger max_len",
        )
        z = self.embed[token] + self.pos[jnp.minimum(t, self.max_len - 1)]
        if self.prev is not None:
            z = z + jnp.where(t > 0, 1.0, 0.0) * self.prev[state.prev]
        states = []
        for block, s in zip(self.blocks, state.layers):
            z, s = block.step(s, z)
            states.append(s)
        logits = self.norm(z) @ self.embed.T
        return logits, LMState(tuple(states), jnp.asarray(token, jnp.int32), t + 1)

    def decode(self, ids: Int[Array, " n"], state: LMState | None = None) -> Float[Array, "n vocab"]:
        """Logits of every position, one token at a time through `step` (a lax.scan)."""
        _check_ids(ids, self.max_len)
        state = self.init_state() if state is None else state
        _, logits = jax.lax.scan(lambda s, tok: self.step(s, tok)[::-1], state, ids)
        return logits

    def check_state(self, state: Any) -> None:
        """Raise a ValueError naming the first leaf whose structure or shape does not fit this model."""
        want = jax.eval_shape(self.init_state)
        got_leaves, got_tree = jax.tree_util.tree_flatten(state)
        want_leaves, want_tree = jax.tree_util.tree_flatten(want)
        if got_tree != want_tree:
            raise ValueError(
                f"CausalLM.step: the decode state has structure {got_tree}, but this model's is "
                f"{want_tree}; create it with model.init_state()"
            )
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(want)[0]]
        for path, g, w in zip(paths, got_leaves, want_leaves):
            if jnp.shape(g) != w.shape or jnp.result_type(g) != w.dtype:
                raise ValueError(
                    f"CausalLM.step: decode state leaf {path} has shape {tuple(jnp.shape(g))} "
                    f"{jnp.result_type(g)}, this model needs {tuple(w.shape)} {w.dtype}; create "
                    "it with model.init_state() of the same model"
                )

    def generate(
        self, prompt: Int[Array, " p"], steps: int, *, key: PRNGKeyArray, temperature: float = 1.0
    ) -> Int[Array, " steps"]:
        """Sample `steps` tokens after `prompt` (temperature 0: greedy)."""
        _check_ids(prompt, self.max_len)
        if prompt.shape[0] + steps > self.max_len:
            raise ValueError(
                f"CausalLM.generate: prompt of {prompt.shape[0]} + {steps} steps exceeds max_len={self.max_len}"
            )
        state, logits = jax.lax.scan(lambda s, tok: self.step(s, tok)[::-1], self.init_state(), prompt)
        last = logits[-1]

        def sample(carry, k):
            s, lg = carry
            tok = (jnp.argmax(lg) if temperature == 0 else jax.random.categorical(k, lg / temperature)).astype(
                jnp.int32
            )
            lg, s = self.step(s, tok)
            return (s, lg), tok

        _, out = jax.lax.scan(sample, (state, last), jax.random.split(key, steps))
        return out


def stage_names(model: CausalLM, layer_name: str | None = None) -> list[str]:
    """Names of the stages of :meth:`CausalLM.trace` / :func:`stage_trees`: ``embed``, per block
    ``blocks[i].mixer`` (suffixed `` (layer NAME)`` when given) and ``blocks[i].mlp``, ``head``."""
    suffix = f" (layer {layer_name})" if layer_name else ""
    names = ["embed"]
    for i in range(len(model.blocks)):
        names += [f"blocks[{i}].mixer{suffix}", f"blocks[{i}].mlp"]
    return [*names, "head"]


def stage_trees(tree: CausalLM) -> list[Any]:
    """A CausalLM-shaped pytree (the model, its gradients, ...) cut into the stages of :func:`stage_names`
    (the tied embedding counts as the embedding stage)."""
    stages: list[Any] = [(tree.embed, tree.prev, tree.pos)]
    for b in tree.blocks:
        stages += [(b.norm1, b.mixer), (b.norm2, b.mlp)]
    return [*stages, tree.norm]


def _check_ids(ids: Any, max_len: int) -> None:
    if not hasattr(ids, "shape") or jnp.ndim(ids) != 1 or not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
        raise TypeError(
            f"CausalLM: expected a 1-d integer array of token ids, got "
            f"{getattr(ids, 'dtype', type(ids).__name__)}{list(jnp.shape(ids))}; "
            "for a batch use jax.vmap(model)(ids)"
        )
    if ids.shape[0] > max_len:
        raise ValueError(
            f"CausalLM: sequence of {ids.shape[0]} tokens exceeds max_len={max_len}; build the "
            "model with a larger max_len"
        )


def causal_lm(
    *,
    vocab: int,
    width: int,
    depth: int,
    heads: int,
    mlp_dim: int | None = None,
    max_len: int,
    mixer: MixerFactory | Sequence[eqx.Module],
    prev_token: bool = False,
    key: PRNGKeyArray,
) -> CausalLM:
    """A CausalLM (mlp_dim defaults to 4 * width)."""
    return CausalLM(
        vocab=vocab,
        width=width,
        depth=depth,
        heads=heads,
        mlp_dim=mlp_dim or 4 * width,
        max_len=max_len,
        mixer=mixer,
        prev_token=prev_token,
        key=key,
    )


__all__ = [
    "CausalLM",
    "LMBlock",
    "LMState",
    "TTTState",
    "KVCache",
    "causal_lm",
    "ttt_init_state",
    "ttt_step",
    "kv_step",
    "check_causal",
    "chunk_start_weights",
]
