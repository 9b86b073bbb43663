"""Causal linear attention in O(n): chunked training form and an O(D) token-by-token decode form.

With keys k_i = phi(x_i), queries q_i = psi(x_i) (per head, d_h each) and values v_i = G_k^T x_i (the
transpose of the TTT decoder g, so the weights map 1:1 to `mttt_linear` and `linear_attention` built
from the same key), feature map f (identity, or elu + 1 of Katharopoulos et al. 2020):

    S_i = sum_{j<=i} f(k_j) v_j^T            (d_h x d_h per head: the recurrent state)
    z_i = sum_{j<=i} f(k_j)
    identity:  o_i = S_i^T q_i / i           (the 1/i of `linear_attention(causal=True)`)
    elu1:      o_i = S_i^T f(q_i) / (f(q_i) . z_i)
    out_i      = h(o_i)

Training form: the n tokens are cut into n/c chunks of c; within chunk C (tokens i, j in C)

    o_i = [ S_{C-1}^T f(q_i) + sum_{j in C, j<=i} (f(k_j) . f(q_i)) v_j ] / norm_i,

S_{C-1} the exclusive prefix sum of the chunks' K_C^T V_C: matrix products of size c x c and
c x d_h per chunk, so time O(n c d_h + n d_h^2) and the n/c chunk states of d_h^2 as memory
instead of the n^2 score matrix of the masked form.  `step` runs the same recurrence one token at a
time with (S, z, i) as its O(D) state.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ttt_compile.layer import Decoder, Output, Project, check_tokens
from ttt_compile.layer.spec import SpecError

FEATURE_MAPS = ("identity", "elu1")


class LinearAttentionState(NamedTuple):
    """Decode state: S (heads, d_h, d_h), z (heads, d_h), and i = tokens seen so far."""

    S: Float[Array, "heads dh dh"]
    z: Float[Array, "heads dh"]
    i: Int[Array, ""]


def feature(x: Array, feature_map: str) -> Array:
    """f(x): identity, or elu(x) + 1 (positive, so the elu1 normaliser never vanishes)."""
    return x if feature_map == "identity" else jax.nn.elu(x) + 1


def exclusive_cumsum(x: Array, axis: int = 0) -> Array:
    """y_c = sum_{c' < c} x_c' along `axis` (y_0 = 0)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 0)
    return jax.lax.slice_in_dim(jnp.cumsum(jnp.pad(x, pad), axis=axis), 0, x.shape[axis], axis=axis)


def chunked_causal(
    fq: Float[Array, "n heads dh"], fk: Float[Array, "n heads dh"], v: Float[Array, "n heads dv"], chunk: int
) -> tuple[Array, Array]:
    """(numerators sum_{j<=i} (fk_j . fq_i) v_j, denominators sum_{j<=i} fk_j . fq_i), per token and
    head, computed chunk by chunk: inter-chunk through the prefix states, intra-chunk masked."""
    n, H, dh = fq.shape
    C = n // chunk
    fq, fk, v = (a.reshape(C, chunk, H, a.shape[-1]) for a in (fq, fk, v))
    S = exclusive_cumsum(jnp.einsum("cjhk,cjhv->chkv", fk, v))  # (C, H, dh, dv)
    z = exclusive_cumsum(jnp.sum(fk, axis=1))  # (C, H, dh)
    scores = jnp.einsum("cihk,cjhk->chij", fq, fk)
    scores = jnp.where(jnp.tril(jnp.ones((chunk, chunk), bool)), scores, 0.0)
    num = jnp.einsum("chij,cjhv->cihv", scores, v) + jnp.einsum("cihk,chkv->cihv", fq, S)
    den = jnp.einsum("chij->cih", scores) + jnp.einsum("cihk,chk->cih", fq, z)
    return num.reshape(n, H, -1), den.reshape(n, H)


def scan_causal(
    fq: Float[Array, "n heads dh"], fk: Float[Array, "n heads dh"], v: Float[Array, "n heads dv"], chunk: int
) -> tuple[Array, Array]:
    """What `chunked_causal` returns, computed the standard way: ``lax.scan`` over the n/c chunks
    carrying the states (S, z) of the tokens before the chunk (heads batched inside the step):

        num_C = tril(Q_C K_C^T) V_C + Q_C S,   den_C = tril(Q_C K_C^T) 1 + Q_C z,
        S <- S + K_C^T V_C,                    z <- z + K_C^T 1.

    Only the n/c states the backward pass needs are stored, not their prefix sums over all chunks
    at once; measured the faster form (benchmarks/causal_throughput.py)."""
    n, H, dh = fq.shape
    C = n // chunk
    fq, fk, v = (a.reshape(C, chunk, H, a.shape[-1]).transpose(0, 2, 1, 3) for a in (fq, fk, v))
    mask = jnp.tril(jnp.ones((chunk, chunk), bool))

    def step(state, qkv):
        S, z = state
        q, k, vv = qkv  # (H, c, dh), (H, c, dv)
        scores = jnp.where(mask, jnp.einsum("hik,hjk->hij", q, k), 0.0)
        num = jnp.einsum("hij,hjv->hiv", scores, vv) + jnp.einsum("hik,hkv->hiv", q, S)
        den = jnp.sum(scores, axis=-1) + jnp.einsum("hik,hk->hi", q, z)
        return (S + jnp.einsum("hjk,hjv->hkv", k, vv), z + jnp.sum(k, axis=1)), (num, den)

    state = (jnp.zeros((H, dh, v.shape[-1]), fq.dtype), jnp.zeros((H, dh), fq.dtype))
    _, (num, den) = jax.lax.scan(step, state, (fq, fk, v))
    return num.transpose(0, 2, 1, 3).reshape(n, H, -1), den.transpose(0, 2, 1).reshape(n, H)


FORMS = {"scan": scan_causal, "prefix": chunked_causal}


class CausalLinearAttention(eqx.Module):
    """Causal linear attention (see the module doc): `__call__` chunked O(n), `step` recurrent O(D)."""

    phi: Project
    psi: Project
    g: Decoder
    h: Output
    dim: int = eqx.field(static=True)
    heads: int = eqx.field(static=True)
    chunk: int = eqx.field(static=True)
    feature_map: str = eqx.field(static=True)
    form: str = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        chunk: int = 64,
        feature_map: str = "identity",
        form: str = "scan",
        key: PRNGKeyArray,
    ):
        if not isinstance(dim, int) or not isinstance(heads, int) or dim < 1 or heads < 1 or dim % heads:
            raise SpecError(
                f"causal_linear_attention: heads must divide dim (both positive ints), got dim={dim!r}, heads={heads!r}"
            )
        if feature_map not in FEATURE_MAPS:
            raise SpecError(f"causal_linear_attention: feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        if form not in FORMS:
            raise SpecError(f"causal_linear_attention: form must be one of {tuple(FORMS)}, got {form!r}")
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise SpecError(f"causal_linear_attention: chunk must be a positive int, got {chunk!r}")
        kp, kq, kg, kh = jax.random.split(key, 4)  # the split of Attention and TTTLayer
        self.phi, self.psi = Project(dim, heads, key=kp), Project(dim, heads, key=kq)
        self.g = Decoder(dim, heads, decoder_ln=False, key=kg)
        self.h = Output(dim, heads, key=kh)
        self.dim, self.heads, self.chunk, self.feature_map, self.form = dim, heads, chunk, feature_map, form

    def values(self, x: Float[Array, "n d"]) -> Float[Array, "n heads dh"]:
        """v_i = G_k^T x_i per head."""
        return jnp.einsum("hdk,nd->nhk", self.g.weight, x)

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        check_tokens(x, self.dim)
        n = x.shape[0]
        c = min(self.chunk, n)
        if n % c:
            raise SpecError(
                f"causal_linear_attention: chunk={self.chunk} must divide the sequence length "
                f"n={n}; pick a divisor of n or pad the sequence"
            )
        fq = feature(self.psi.tokens(x), self.feature_map)
        fk = feature(self.phi.tokens(x), self.feature_map)
        num, den = FORMS[self.form](fq, fk, self.values(x), c)
        if self.feature_map == "identity":
            den = jnp.broadcast_to(jnp.arange(1, n + 1, dtype=num.dtype)[:, None], den.shape)
        return self.h.tokens(num / den[..., None])

    # ----------------------------------------------------------------- recurrent form
    def init_state(self, dtype=jnp.float32) -> LinearAttentionState:
        return linear_attention_state(self.dim, self.heads, dtype)

    def step(
        self, state: LinearAttentionState, x: Float[Array, " d"]
    ) -> tuple[Float[Array, " d"], LinearAttentionState]:
        """One token of the recurrence (see `linear_attention_step`)."""
        return linear_attention_step(self, self.feature_map, state, x)


def linear_attention_step(
    layer, feature_map: str, state: LinearAttentionState, x: Float[Array, " d"]
) -> tuple[Float[Array, " d"], LinearAttentionState]:
    """One token of causal linear attention for any layer with phi, psi, g, h (this module or
    `layers.Attention`): S += f(k) v^T, z += f(k), i += 1, o = S^T f(q) / (i or f(q) . z)."""
    fk, fq = feature(layer.phi(x), feature_map), feature(layer.psi(x), feature_map)
    v = jnp.einsum("hdk,d->hk", layer.g.weight, x)
    S = state.S + jnp.einsum("hk,hv->hkv", fk, v)
    z = state.z + fk
    i = state.i + 1
    num = jnp.einsum("hk,hkv->hv", fq, S)
    den = i.astype(num.dtype) if feature_map == "identity" else jnp.einsum("hk,hk->h", fq, z)[:, None]
    return layer.h(num / den), LinearAttentionState(S, z, i)


def linear_attention_state(dim: int, heads: int, dtype=jnp.float32) -> LinearAttentionState:
    """The empty recurrent state: S = 0, z = 0, i = 0."""
    dh = dim // heads
    return LinearAttentionState(
        jnp.zeros((heads, dh, dh), dtype), jnp.zeros((heads, dh), dtype), jnp.zeros((), jnp.int32)
    )


def causal_linear_attention(
    *, dim: int, heads: int, key: PRNGKeyArray, chunk: int = 64, feature_map: str = "identity", form: str = "scan"
) -> CausalLinearAttention:
    """Chunked O(n) causal linear attention (options: chunk, feature_map "identity" | "elu1", form
    "scan" (lax.scan over chunks carrying the state) | "prefix" (all chunk states by a prefix sum));
    same weights and outputs as `layers.linear_attention(causal=True)` built from the same key."""
    return CausalLinearAttention(dim, heads, chunk=chunk, feature_map=feature_map, form=form, key=key)


__all__ = [
    "CausalLinearAttention",
    "LinearAttentionState",
    "causal_linear_attention",
    "chunked_causal",
    "scan_causal",
    "feature",
    "exclusive_cumsum",
    "linear_attention_step",
    "linear_attention_state",
]
