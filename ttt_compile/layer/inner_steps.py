"""The inner loop's math as pure functions: the reconstruction loss and one inner step.

    l(W; X)  = c/(2b) sum_i eta_i || g(f(phi(x_i); W)) - x_i ||^2
    W_{t+1}  = W_t + u_t,   (u_t, s_{t+1}) = optimizer.update(grad l(W_t; X_t), s_t, W_t)

c is the task's normalisation (1, or 1/d_h for the released code's) and eta_i a learned step size
(per head or per token; 1 when the step size is fixed).  The data of a step is a dict with the keys
k (phi of the tokens), x (the tokens) and, with a learned step size, w (the eta_i: one per token, or
one scalar); a step gets it as the union of the loop's constants and the step's slice of xs.

With `Reconstruction(loss_form="gram")` (the default) a full-batch or SGD step does not decode the
tokens to d dimensions: `fold_decoder` writes the loss of one token as a function of z = f(k; W) in
d_h dimensions (see there), computed once per head before the loop, and the step's data carries
the folded targets p, s, t in place of x.

`compute` (a dtype or None) is the dtype the learner sees W in: W is cast to it where it is used,
so the fast weights, their gradients and updates keep their own dtype while the matmuls run in
`compute` (Inner.dtype="mixed").
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Float

from .outer_maps import decode


def token_loss(pred: Float[Array, " d"], x: Float[Array, " d"]) -> Float[Array, ""]:
    """1/2 ||g(f(phi(x))) - x||^2 for one token."""
    return 0.5 * jnp.sum((pred - x) ** 2)


def chunked_sum(fn, arrays: list, chunk: int | None):
    """sum_c fn(*arrays[c]) over consecutive chunks c of `chunk` rows (= fn(*arrays) for a sum over rows),
    each chunk under jax.checkpoint in a lax.scan: its backward pass recomputes one chunk at a time."""
    n = arrays[0].shape[0]
    if chunk is None or n <= chunk:
        return fn(*arrays)
    body = jax.checkpoint(fn)
    xs = [a.reshape(n // chunk, chunk, *a.shape[1:]) for a in arrays]
    dtype = jax.eval_shape(body, *[a[0] for a in xs]).dtype
    total, _ = jax.lax.scan(lambda acc, a: (acc + body(*a), None), jnp.zeros((), dtype), xs)
    return total


def chunked_map(fn, a, chunk: int | None):
    """fn over consecutive chunks of `chunk` rows of a, concatenated (= fn(a) for a row-wise fn), each
    chunk under jax.checkpoint in a lax.map."""
    n = a.shape[0]
    if chunk is None or n <= chunk:
        return fn(a)
    out = jax.lax.map(jax.checkpoint(fn), a.reshape(n // chunk, chunk, *a.shape[1:]))
    return out.reshape(n, *out.shape[2:])


def reconstruction_loss(
    W,
    static,
    G,
    ln,
    k: Float[Array, "b dh"],
    x: Float[Array, "b d"],
    c=None,
    *,
    scale: float = 1.0,
    w=None,
    chunk: int | None = None,
) -> Float[Array, ""]:
    """l(W; X) = scale/(2b) sum_i w_i ||g(f(k_i; W)) - x_i||^2 over the b tokens given (w_i = 1 if w is None;
    w is one weight per token or one scalar); with `chunk`, the sum over i runs `chunk` tokens at a
    time (`chunked_sum`)."""
    f = eqx.combine(W, static)
    per_token_w = w is not None and jnp.ndim(w) > 0

    def part(k, x, *wt):
        pred = jax.vmap(lambda ki: decode(G, ln, f(ki), c))(k)
        per_token = jnp.sum((pred - x) ** 2, axis=-1)
        return jnp.sum(wt[0] * per_token if wt else per_token)

    total = chunked_sum(part, [k, x, w] if per_token_w else [k, x], chunk)
    if w is not None and not per_token_w:
        total = w * total
    loss = 0.5 * total / k.shape[0]
    return loss if scale == 1.0 else scale * loss


class FoldedDecoder(NamedTuple):
    """One head's decoder g(z) = LN(G z + c) folded to d_h dimensions (see `fold_decoder`); M, m, m0 are
    None without the Decoder LN.  `maps` = (B, b, beta) when the targets are folded per chunk of tokens
    inside the loss (`folded_loss` with data k, x) instead of once for all n tokens."""

    A: Array
    a: Array
    a0: Array
    M: Array | None
    m: Array | None
    m0: Array | None
    maps: tuple | None = None


def fold_decoder(G: Float[Array, "d dh"], c, ln) -> tuple[FoldedDecoder, tuple]:
    """The decoder folded to d_h dims: (FoldedDecoder, (B, b, beta) for `fold_targets`).

    With the Decoder LN (scale gamma, offset beta, epsilon e; P = I - 11^T/d centres a vector):
    LN(u) = Gamma P u / sigma(u) + beta, and with u = G z + c, P u = Gt z + ct (Gt = P G, ct = P c), so

        ||g(z) - x||^2 = Q(z) / sigma^2 + 2 R(z; x) / sigma + ||beta - x||^2
        Q(z)     = ||B z + b||^2 = z^T A z + 2 a^T z + a0        B = Gamma Gt, b = Gamma ct,
                                                                 A = B^T B, a = B^T b, a0 = b^T b
        R(z; x)  = (B z + b)^T (beta - x) = z^T p + s            p = B^T (beta - x), s = b^T (beta - x)
        sigma^2  = ||Gt z + ct||^2 / d + e = z^T M z + 2 m^T z + m0,   M = Gt^T Gt / d, m = Gt^T ct / d,
                                                                 m0 = ||ct||^2 / d + e

    Without it (g(z) = G z + c): B = G, b = c, beta = 0, sigma = 1.  A step then costs O(d_h^2) per token
    instead of O(d d_h); the targets p, s, t = ||beta - x||^2 are one projection of the tokens, made once.
    Computed in at least float32 (as the LN is)."""
    dtype = jnp.result_type(G.dtype, jnp.float32)
    G = G.astype(dtype)
    d = G.shape[0]
    c = jnp.zeros((d,), dtype) if c is None else c.astype(dtype)
    if ln is None:
        B, b, beta = G, c, None
    else:
        Gt, ct = G - jnp.mean(G, axis=0), c - jnp.mean(c)
        gamma = None if getattr(ln, "weight", None) is None else ln.weight.astype(dtype)
        beta = None if getattr(ln, "bias", None) is None else ln.bias.astype(dtype)
        B, b = (Gt, ct) if gamma is None else (gamma[:, None] * Gt, gamma * ct)
    A, a, a0 = B.T @ B, B.T @ b, b @ b
    if ln is None:
        return FoldedDecoder(A, a, a0, None, None, None), (B, b, beta)
    M, m, m0 = Gt.T @ Gt / d, Gt.T @ ct / d, ct @ ct / d + ln.eps
    return FoldedDecoder(A, a, a0, M, m, m0), (B, b, beta)


def fold_targets(folded_maps: tuple, x: Float[Array, "n d"]) -> dict:
    """The per-token data of the folded loss: p_i = B^T (beta - x_i), s_i = b^T (beta - x_i),
    t_i = ||beta - x_i||^2 (see `fold_decoder`)."""
    B, b, beta = folded_maps
    x = x.astype(B.dtype)
    xB, xb, xx = x @ B, x @ b, jnp.sum(x * x, axis=-1)  # beta - x never materialised (beta may be per head)
    if beta is None:
        return {"p": -xB, "s": -xb, "t": xx}
    return {"p": beta @ B - xB, "s": beta @ b - xb, "t": beta @ beta - 2 * (x @ beta) + xx}


@jax.custom_jvp
def symmetric_forms(z: Float[Array, "b dh"], S: Float[Array, "k dh dh"]) -> Float[Array, "b k"]:
    """q_ik = z_i^T S_k z_i, all k from one matrix product z [P_1 .. P_k] with P_k = (S_k + S_k^T)/2
    (z^T S z = z^T P z for any S; the folded decoder's A and M are Gram matrices, P = S).  Its
    derivative uses the symmetry of P:

        dq_ik = 2 (P_k z_i) . dz_i + z_i^T dP_k z_i

    so the gradient with respect to z reuses the forward product P_k z_i (AD of the plain form would
    multiply by S_k^T a second time).  Exact for every S, to every order."""
    return _symmetric_forms(z, S)[0]


def _symmetric_forms(z, S):
    k, dh = S.shape[0], S.shape[-1]
    S = 0.5 * (S + jnp.swapaxes(S, -1, -2))
    zS = (z @ jnp.moveaxis(S, 0, 1).reshape(dh, k * dh)).reshape(*z.shape[:-1], k, dh)
    return jnp.sum(zS * z[..., None, :], axis=-1), zS


def _symmetric_forms_jvp(primals, tangents):
    z, S = primals
    dz, dS = (None if isinstance(t, SymbolicZero) else t for t in tangents)
    q, zS = _symmetric_forms(z, S)
    dq = jnp.zeros_like(q)
    if dz is not None:
        dq = dq + 2 * jnp.sum(zS * dz[..., None, :], axis=-1)
    if dS is not None:
        dq = dq + _symmetric_forms(z, dS)[0]
    return q, dq


symmetric_forms.defjvp(_symmetric_forms_jvp, symbolic_zeros=True)


def folded_sq_error(dec: FoldedDecoder, z: Float[Array, "b dh"], p, s, t) -> Float[Array, " b"]:
    """||g(z_i) - x_i||^2 of each token from the folded decoder and targets (`fold_decoder`); the two
    quadratic forms z^T A z and z^T M z come from one `symmetric_forms`."""
    z = z.astype(dec.A.dtype)
    R = jnp.sum(z * p, axis=-1) + s
    q = symmetric_forms(z, dec.A[None] if dec.M is None else jnp.stack([dec.A, dec.M]))
    Q = q[..., 0] + 2 * (z @ dec.a) + dec.a0
    if dec.M is None:
        return Q + 2 * R + t
    inv = jax.lax.rsqrt(q[..., 1] + 2 * (z @ dec.m) + dec.m0)  # 1 / sigma
    return Q * inv * inv + 2 * R * inv + t


def folded_loss(
    W, static, dec: FoldedDecoder, data: dict, *, scale: float = 1.0, w=None, chunk: int | None = None
) -> Float[Array, ""]:
    """l(W; X) = scale/(2b) sum_i w_i ||g(f(k_i; W)) - x_i||^2 from the folded decoder (= reconstruction_loss);
    with `chunk`, the sum over i runs `chunk` tokens at a time (`chunked_sum`).  Data k, p, s, t (targets
    folded once), or k, x with `dec.maps`: each chunk folds its own tokens' targets, so no (n, d_h) array
    of targets (and its cotangent) lives outside the chunks."""
    f = eqx.combine(W, static)
    per_token_w = w is not None and jnp.ndim(w) > 0

    def part(k, *rest):
        if "x" in data:
            x, *wt = rest
            targets = fold_targets(dec.maps, x)
            p, s, t = targets["p"], targets["s"], targets["t"]
        else:
            p, s, t, *wt = rest
        per_token = folded_sq_error(dec, jax.vmap(f)(k), p, s, t)
        return jnp.sum(wt[0] * per_token if wt else per_token)

    arrays = [data["k"], data["x"]] if "x" in data else [data["k"], data["p"], data["s"], data["t"]]
    total = chunked_sum(part, arrays + [w] if per_token_w else arrays, chunk)
    if w is not None and not per_token_w:
        total = w * total
    loss = 0.5 * total / data["k"].shape[0]
    return loss if scale == 1.0 else scale * loss


def step_data(consts, xt) -> tuple:
    """(decoder (G, c, ln), data dict) of one step: the loop's constants merged with the step's xs slice."""
    dec, shared = consts
    return dec, {**shared, **(xt or {})}


def as_compute(W, compute):
    """W with every float array cast to `compute` (W itself when compute is None)."""
    if compute is None:
        return W
    return jax.tree.map(lambda w: w.astype(compute) if eqx.is_inexact_array(w) else w, W)


def batch_step(
    opt: optax.GradientTransformation, static, scale: float = 1.0, compute=None, token_chunk: int | None = None
):
    """One full-batch or mini-batch step: W <- W + u, (u, s) = opt.update(grad l(W; X_t), s, W).  The loop's
    decoder is (G, c, ln) with data k, x, or a FoldedDecoder with data k, p, s, t (`fold_decoder`); the
    loss is summed `token_chunk` tokens at a time when given (`chunked_sum`)."""

    def loss(W, dec, d):
        if isinstance(dec, FoldedDecoder):
            return folded_loss(as_compute(W, compute), static, dec, d, scale=scale, w=d.get("w"), chunk=token_chunk)
        G, c, ln = dec
        return reconstruction_loss(
            as_compute(W, compute), static, G, ln, d["k"], d["x"], c, scale=scale, w=d.get("w"), chunk=token_chunk
        )

    def step(consts, carry, xt):
        dec, d = step_data(consts, xt)
        W, s = carry
        grads = jax.grad(loss)(W, dec, d)
        updates, s = opt.update(grads, s, W)
        return (optax.apply_updates(W, updates), s), None

    return step


def linear_decoder_terms(G: Float[Array, "d dh"], c, x: Float[Array, "n d"]) -> tuple[Array, Array]:
    """(M, v) with M = G^T G and v_i = G^T (x_i - c), for every token at once.  For a linear decoder
    g(z) = G z + c (no LN) the error the learner's gradient pulls back is

        e_i = d/dz 1/2 ||G z + c - x_i||^2 = G^T (G z + c - x_i) = M z - v_i,

    per token 2 d_h^2 multiply-adds on top of v (which costs what linear attention's values cost),
    instead of a decode and its transpose (4 d d_h).  v is formed as x G - c G: its backward then reads
    the input x (dG = x^T dv - c (1^T dv)) rather than keeping x - c, an (n, d) residual, alive."""
    v = x @ G
    return G.T @ G, v if c is None else v - c @ G


def decoder_error(G, ln, c, d: dict):
    """(e(z, t_i), the per-token targets t): M z - v_i when the data holds the linear decoder's (M, v)
    (`linear_decoder_terms`), else AD of 1/2 ||g(z) - x_i||^2 through the decoder."""
    if "M" in d:
        M = d["M"]
        return (lambda z, v: M @ z.astype(M.dtype) - v), d["v"]
    if "y" in d:  # a MultiView task: d/dz 1/2 ||z - y_i||^2
        return (lambda z, y: z - y.astype(z.dtype)), d["y"]
    return (lambda z, x: jax.grad(lambda z: token_loss(decode(G, ln, z, c), x))(z)), d["x"]


def online_step(opt: optax.GradientTransformation, static, scale: float = 1.0, compute=None):
    """One causal chunk of b tokens starting from weights W:
    g_i = grad scale * w_i/2 ||g(f(k_i; W)) - x_i||^2,  W_i = W + update(sum_{j<=i} g_j),  y_i = f(q_i; W_i);
    the chunk hands W_b (and its optimizer state) to the next chunk.  g_i = (dz/dW)^T e_i, the error
    e_i from `decoder_error` (closed form for a linear decoder, z - y_i for a MultiView task).  With the
    chunk factors a (data "a", Inner.chunk_factor) token i's summed gradient is a_i sum_{j<=i} g_j."""

    def step(consts, carry, xt):
        (G, c, ln), d = step_data(consts, xt)
        W, s = carry
        k, q = d["k"], d["q"]
        w = jnp.broadcast_to(d["w"], k.shape[:1]) if "w" in d else None
        error, targets = decoder_error(G, ln, c, d)

        def one(W, ki, ti, wi):
            z, pullback = jax.vjp(lambda W: eqx.combine(as_compute(W, compute), static)(ki), W)
            e = error(z, ti)
            e = e if wi is None else wi * e
            return pullback(e if scale == 1.0 else scale * e)[0]

        grads = jax.vmap(one, in_axes=(None, 0, 0, None if w is None else 0))(W, k, targets, w)
        cumulative = jax.tree.map(lambda g: jnp.cumsum(g, axis=0), grads)
        if "a" in d:
            a = d["a"]
            cumulative = jax.tree.map(lambda g: g * a.reshape(-1, *(1,) * (g.ndim - 1)).astype(g.dtype), cumulative)
        updates, states = jax.vmap(opt.update, in_axes=(0, None, None))(cumulative, s, W)
        Ws = jax.tree.map(lambda w, u: w + u, W, updates)
        y = jax.vmap(lambda Wi, qi: eqx.combine(as_compute(Wi, compute), static)(qi))(Ws, q)
        last = jax.tree.map(lambda a: a[-1], (Ws, states))
        return last, y

    return step
