"""Vision Transformer with a drop-in attention layer (patch tokens or raw-pixel tokens).

The model maps one image to class logits (vmap it over a batch, Equinox style):

    z_0 = E patchify(image) + P                       E: (p*p*c) -> width,  P: (n, width)
    z_l = z_{l-1} + A_l(LN(z_{l-1}));  z_l <- z_l + MLP_l(LN(z_l))      l = 1..depth (pre-LN)
    logits = W_head LN(mean_i z_depth[i]) + b_head                    (global average pooling)

``A_l`` is any module mapping ``(n, width) -> (n, width)``: self-attention, linear attention or a TTT
layer (a preset of ``ttt_compile.models.layers``, compiled or not, or a user's own layer). With
``patch=1`` every pixel is a token (n = h*w), the paper's pixel setting; ``posemb`` is ``"learn"``
(P a parameter) or ``"sincos2d"`` (P fixed, Beyer et al. 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ttt_compile.layer.host_init import host_rng

PRESETS: dict[str, dict[str, int]] = {
    "Ti": dict(width=192, depth=12, heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, heads=12, mlp_dim=3072),
}

LayerFactory = Callable[..., eqx.Module]
"""Called as ``factory(dim=width, heads=heads, key=key)``; returns a module ``(n, dim) -> (n, dim)``."""


def patchify(image: Float[Array, "h w c"], patch: int) -> Float[Array, "n pc"]:
    """Cut an image into non-overlapping ``patch x patch`` squares, row-major: ``n = (h/p)(w/p)``,
    each flattened in (row, column, channel) order to ``p*p*c`` values."""
    h, w, c = image.shape
    x = image.reshape(h // patch, patch, w // patch, patch, c).transpose(0, 2, 1, 3, 4)
    return x.reshape((h // patch) * (w // patch), patch * patch * c)


def posemb_sincos2d(rows: int, cols: int, width: int, temperature: float = 10_000.0) -> Float[Array, "n width"]:
    """Fixed 2-d sine-cosine position embedding: with ``omega_k = temperature^(-k/(width/4 - 1))``,
    token (y, x) gets ``[sin(x omega), cos(x omega), sin(y omega), cos(y omega)]``."""
    y, x = jnp.meshgrid(jnp.arange(rows), jnp.arange(cols), indexing="ij")
    quarter = width // 4
    omega = 1.0 / temperature ** (jnp.arange(quarter) / max(quarter - 1, 1))
    y = y.reshape(-1)[:, None] * omega[None, :]
    x = x.reshape(-1)[:, None] * omega[None, :]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)


class Dense(eqx.Module):
    """``y = W x + b``."""

    weight: Float[Array, "dout din"]
    bias: Float[Array, " dout"]

    def __init__(self, din: int, dout: int, *, rng: np.random.Generator, zero: bool = False):
        """Weights ~ U(+-sqrt(6 / (din + dout))) (Glorot/Xavier uniform), or 0; bias 0."""
        bound = math.sqrt(6.0 / (din + dout))
        w = np.zeros((dout, din)) if zero else rng.uniform(-bound, bound, (dout, din))
        self.weight = jax.device_put(w.astype(np.float32))  # a host copy: jnp.asarray(w, f32) would compile a convert
        self.bias = jax.device_put(np.zeros(dout, np.float32))

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: Float[Array, " din"]) -> Float[Array, " dout"]:
        return self.weight @ x + self.bias


class LayerNorm(eqx.Module):
    """``y = (x - mean(x)) / sqrt(var(x) + eps) * gamma + beta`` over the last axis; the statistics in
    float32 whatever the compute dtype."""

    weight: Float[Array, " d"]
    bias: Float[Array, " d"]
    eps: float = eqx.field(static=True)

    def __init__(self, dim: int, eps: float = 1e-6):
        self.weight = jax.device_put(np.ones(dim, np.float32))
        self.bias = jax.device_put(np.zeros(dim, np.float32))
        self.eps = eps

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.weight.astype(jnp.float32) + self.bias.astype(jnp.float32)).astype(x.dtype)


class Mlp(eqx.Module):
    """``MLP(x) = W_2 gelu(W_1 x + b_1) + b_2`` per token."""

    fc1: Dense
    fc2: Dense

    def __init__(self, width: int, mlp_dim: int, *, rng: np.random.Generator):
        self.fc1 = Dense(width, mlp_dim, rng=rng)
        self.fc2 = Dense(mlp_dim, width, rng=rng)

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        return jax.vmap(lambda t: self.fc2(jax.nn.gelu(self.fc1(t))))(x)


class Block(eqx.Module):
    """Pre-LN transformer block: ``x + A(LN(x))``, then ``+ MLP(LN(.))``."""

    norm1: LayerNorm
    attn: eqx.Module
    norm2: LayerNorm
    mlp: Mlp

    def __init__(self, attn: eqx.Module, width: int, mlp_dim: int, *, rng: np.random.Generator):
        self.norm1 = LayerNorm(width)
        self.attn = attn
        self.norm2 = LayerNorm(width)
        self.mlp = Mlp(width, mlp_dim, rng=rng)

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        return self.trace(x)[0]

    def trace(self, x: Float[Array, "n d"]) -> tuple[Float[Array, "n d"], Bool[Array, 2]]:
        """The block's output and whether the attention and the MLP residual outputs are all finite."""
        x = x + self.attn(self.norm1(x)).astype(x.dtype)  # the residual stream keeps the compute dtype
        finite_attn = jnp.all(jnp.isfinite(x))
        x = x + self.mlp(self.norm2(x))
        return x, jnp.stack([finite_attn, jnp.all(jnp.isfinite(x))])


def _attention_layers(
    layer: LayerFactory | eqx.Module | Sequence[eqx.Module], *, depth: int, width: int, heads: int, key: PRNGKeyArray
) -> list[eqx.Module]:
    """One attention module per block: a factory is called once per block with its own key, a module
    is copied into every block (same initial values, trained separately), a sequence is used as is."""
    if isinstance(layer, eqx.Module):
        if not callable(layer):
            raise TypeError(f"layer {type(layer).__name__} is not callable: it must map (n, dim) -> (n, dim)")
        return [layer] * depth
    if isinstance(layer, Sequence):
        if len(layer) != depth:
            raise ValueError(f"got {len(layer)} attention layers for depth={depth}: give one per block")
        return list(layer)
    if callable(layer):
        return [layer(dim=width, heads=heads, key=k) for k in jax.random.split(key, depth)]
    raise TypeError(f"layer must be a factory, a module or a sequence of modules, not {type(layer).__name__}")


class ViT(eqx.Module):
    """ViT classifier over one image ``(h, w, c)`` -> logits ``(num_classes,)``; see the module doc."""

    embed: Dense
    pos: Float[Array, "n width"] | None
    blocks: tuple[Block, ...]
    norm: LayerNorm
    head: Dense
    patch: int = eqx.field(static=True)
    grid: tuple[int, int] = eqx.field(static=True)
    posemb: str = eqx.field(static=True)

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        channels: int,
        num_classes: int,
        patch: int,
        width: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        layer: LayerFactory | eqx.Module | Sequence[eqx.Module],
        posemb: str = "learn",
        key: PRNGKeyArray,
    ):
        rows, cols = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if rows % patch or cols % patch:
            raise ValueError(f"patch={patch} does not divide the image size {rows}x{cols}")
        if posemb not in ("learn", "sincos2d"):
            raise ValueError(f"posemb={posemb!r}: use 'learn' or 'sincos2d'")
        self.patch = patch
        self.grid = (rows // patch, cols // patch)
        self.posemb = posemb
        n = self.grid[0] * self.grid[1]
        rng = host_rng(key)  # the ViT's own weights are drawn on the host: building them compiles nothing
        self.embed = Dense(patch * patch * channels, width, rng=rng)
        self.pos = (
            jax.device_put((rng.standard_normal((n, width)) / math.sqrt(width)).astype(np.float32))
            if posemb == "learn"
            else None
        )
        attns = _attention_layers(layer, depth=depth, width=width, heads=heads, key=key)
        self.blocks = tuple(Block(a, width, mlp_dim, rng=rng) for a in attns)
        self.norm = LayerNorm(width)
        self.head = Dense(width, num_classes, rng=rng, zero=True)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def tokens(self, image: Float[Array, "h w c"]) -> Float[Array, "n width"]:
        """``z_0 = E patchify(image) + P``."""
        z = jax.vmap(self.embed)(patchify(image, self.patch))
        pos = self.pos if self.pos is not None else posemb_sincos2d(*self.grid, z.shape[-1])
        return z + pos.astype(z.dtype)

    def logits(self, z: Float[Array, "n width"]) -> Float[Array, " classes"]:
        """``W_head LN(mean_i z_i) + b_head``."""
        return self.head(self.norm(jnp.mean(z, axis=0)))

    def trace(self, image: Float[Array, "h w c"]) -> tuple[Float[Array, " classes"], Bool[Array, " stages"]]:
        """Logits, and per stage of :func:`stage_names` (embedding; each block's attention and MLP;
        head) whether all of that stage's outputs are finite."""
        z = self.tokens(image)
        finite = [jnp.all(jnp.isfinite(z))[None]]
        for block in self.blocks:
            z, ok = block.trace(z)
            finite.append(ok)
        out = self.logits(z)
        finite.append(jnp.all(jnp.isfinite(out))[None])
        return out, jnp.concatenate(finite)

    def __call__(self, image: Float[Array, "h w c"]) -> Float[Array, " classes"]:
        z = self.tokens(image)
        for block in self.blocks:
            z = block(z)
        return self.logits(z)

    def inner_losses(self, image: Float[Array, "h w c"]) -> tuple[Float[Array, "heads steps"] | None, ...]:
        """Per block, the attention layer's ``inner_losses(LN(z))`` (the inner-loop reconstruction loss
        before step 1 and after each step, per head) where the layer reports them, else ``None``
        (no such method, or a layer whose spec has none: a non-parametric learner, the online loop)."""
        from ttt_compile.layer.spec import SpecError

        z = self.tokens(image)
        out = []
        for block in self.blocks:
            fn = inner_losses_method(block.attn)
            try:
                out.append(None if fn is None else fn(block.norm1(z)))
            except SpecError:
                out.append(None)
            z = block(z)
        return tuple(out)

    def has_inner_losses(self) -> bool:
        return any(inner_losses_method(b.attn) is not None for b in self.blocks)


def inner_losses_method(layer: Any) -> Callable[[Array], Array] | None:
    """The layer's ``inner_losses`` bound method, or ``None`` when it has none."""
    fn = getattr(layer, "inner_losses", None)
    return fn if callable(fn) else None


def stage_names(model: ViT, layer_name: str | None = None) -> list[str]:
    """Names of the stages of :meth:`ViT.trace` / :func:`stage_trees`: ``embed``, then per block
    ``blocks[i].attn`` (suffixed `` (layer NAME)`` when ``layer_name`` is given) and
    ``blocks[i].mlp``, then ``head``."""
    suffix = f" (layer {layer_name})" if layer_name else ""
    names = ["embed"]
    for i in range(len(model.blocks)):
        names += [f"blocks[{i}].attn{suffix}", f"blocks[{i}].mlp"]
    return [*names, "head"]


def stage_trees(tree: ViT) -> list[Any]:
    """A ViT-shaped pytree (the model, its gradients, ...) cut into the stages of :func:`stage_names`."""
    stages: list[Any] = [(tree.embed, tree.pos)]
    for b in tree.blocks:
        stages += [(b.norm1, b.attn), (b.norm2, b.mlp)]
    return [*stages, (tree.norm, tree.head)]


def vit(
    variant: str,
    *,
    image_size: int | tuple[int, int],
    channels: int,
    num_classes: int,
    patch: int,
    layer: LayerFactory | eqx.Module | Sequence[eqx.Module],
    posemb: str = "learn",
    key: PRNGKeyArray,
    **overrides: int,
) -> ViT:
    """A ViT preset (``"Ti"``, ``"S"``, ``"B"``; Dosovitskiy et al. 2021) with optional overrides of
    ``width``, ``depth``, ``heads``, ``mlp_dim``."""
    if variant not in PRESETS:
        raise ValueError(f"unknown ViT preset {variant!r}: use one of {', '.join(PRESETS)}")
    unknown = set(overrides) - set(PRESETS[variant])
    if unknown:
        raise TypeError(f"unknown ViT option(s) {', '.join(sorted(unknown))}")
    dims = {**PRESETS[variant], **{k: v for k, v in overrides.items() if v is not None}}
    return ViT(
        image_size=image_size,
        channels=channels,
        num_classes=num_classes,
        patch=patch,
        layer=layer,
        posemb=posemb,
        key=key,
        **dims,
    )
