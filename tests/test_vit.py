"""The ViT: tokens (patches / raw pixels), position embeddings, presets, drop-in attention layers."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ttt_compile as tc
from ttt_compile.configs import load_config
from ttt_compile.models import layers
from ttt_compile.models.vit import PRESETS, ViT, patchify, posemb_sincos2d, stage_names, vit
from ttt_compile.training.tasks import CompiledLayer, compile_layers

KEY = jax.random.PRNGKey(0)


def small_vit(layer, **kw):
    args = dict(image_size=8, channels=1, num_classes=10, patch=1, width=16, depth=2, heads=2, mlp_dim=32)
    return ViT(layer=layer, key=KEY, **{**args, **kw})


def test_patchify_is_row_major_squares_and_pixels_are_tokens():
    image = jnp.arange(4 * 6 * 2, dtype=jnp.float32).reshape(4, 6, 2)
    patches = patchify(image, 2)
    assert patches.shape == (6, 8)
    np.testing.assert_array_equal(patches[1].reshape(2, 2, 2), image[0:2, 2:4])  # second patch of row 0
    np.testing.assert_array_equal(patches[3].reshape(2, 2, 2), image[2:4, 0:2])  # first patch of row 1
    np.testing.assert_array_equal(patchify(image, 1), image.reshape(24, 2))  # pixels as tokens


def test_sincos2d_position_embedding():
    pe = posemb_sincos2d(3, 4, 8)
    assert pe.shape == (12, 8)
    np.testing.assert_allclose(pe[0], [0, 0, 1, 1, 0, 0, 1, 1], atol=1e-7)  # (y, x) = (0, 0)
    np.testing.assert_allclose(pe[1, 0], np.sin(1.0), rtol=1e-6)  # x = 1, omega_0 = 1
    np.testing.assert_allclose(pe[4, 4], np.sin(1.0), rtol=1e-6)  # y = 1, omega_0 = 1
    assert len({tuple(np.round(r, 5)) for r in np.asarray(pe)}) == 12  # every position distinct


@pytest.mark.parametrize(
    "variant, width, mlp_dim, heads", [("Ti", 192, 768, 3), ("S", 384, 1536, 6), ("B", 768, 3072, 12)]
)
def test_presets_have_the_standard_sizes(variant, width, mlp_dim, heads):
    assert PRESETS[variant] == dict(width=width, depth=12, heads=heads, mlp_dim=mlp_dim)
    seen = []

    def factory(*, dim, heads, key):
        seen.append((dim, heads))
        return layers.self_attention(dim=dim, heads=heads, key=key)

    shape = eqx.filter_eval_shape(
        lambda: vit(
            variant, image_size=224, channels=3, num_classes=1000, patch=16, posemb="sincos2d", layer=factory, key=KEY
        )
    )
    assert seen == [(width, heads)] * 12 and shape.num_tokens == 196
    assert shape.pos is None  # sincos2d is fixed, not a parameter
    count = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree))  # noqa: E731
    attention = sum(count(b.attn) for b in shape.blocks)
    d = width  # embedding + 12 x (2 LayerNorms + MLP) + final LayerNorm + head
    expected = (16 * 16 * 3 * d + d) + 12 * (4 * d + 2 * d * mlp_dim + mlp_dim + d) + (2 * d + d * 1000 + 1000)
    assert count(shape) - attention == expected


def test_a_ttt_preset_drops_in_trains_and_vmaps():
    model = small_vit(layers.mttt_linear)
    model = eqx.tree_at(lambda m: m.head.weight, model, jax.random.normal(KEY, (10, 16)))  # head starts at 0
    images = jax.random.normal(KEY, (3, 8, 8, 1))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p):
        logits = jax.vmap(eqx.combine(p, static))(images)
        return jnp.mean(logits**2), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert np.isfinite(value) and logits.shape == (3, 10)
    attn_grads = jax.tree_util.tree_leaves(grads.blocks[0].attn)
    assert attn_grads and all(np.all(np.isfinite(g)) for g in attn_grads)
    assert max(float(jnp.max(jnp.abs(g))) for g in attn_grads) > 0


def test_layer_argument_factory_module_or_sequence_and_user_ttt_layer():
    user = tc.TTTLayer(
        16,
        2,
        tc.learners.Linear(8),
        init="zero",
        task=tc.Reconstruction(decoder_ln=False),
        inner=tc.Inner(steps=2, batching="sgd", optimizer=optax.sgd(0.5)),
        key=KEY,
    )
    shared = small_vit(user)  # one module: copied into every block (same start, trained separately)
    assert shared.blocks[0].attn is user and shared.blocks[1].attn is user
    k1, k2 = jax.random.split(KEY)
    listed = small_vit([layers.mttt_linear(dim=16, heads=2, key=k1), layers.self_attention(dim=16, heads=2, key=k2)])
    assert isinstance(listed.blocks[1].attn, layers.Attention)
    image = jax.random.normal(KEY, (8, 8, 1))
    out_shared, out_listed, losses = eqx.filter_jit(lambda a, b, x: (a(x), b(x), a.inner_losses(x)))(
        shared, listed, image
    )
    assert np.all(np.isfinite(out_shared)) and np.all(np.isfinite(out_listed))
    assert [x.shape for x in losses] == [(2, 3), (2, 3)]  # heads x (steps + 1)
    assert all(np.all(np.isfinite(x)) for x in losses)
    kernel = small_vit(layers.mttt_kernel)  # a non-parametric learner reports no inner losses
    assert eqx.filter_eval_shape(kernel.inner_losses, image) == (None, None)
    with pytest.raises(ValueError, match="got 1 attention layers for depth=2"):
        small_vit([user])


def test_patch_tokens_and_learned_vs_sincos_positions():
    model = small_vit(layers.self_attention, image_size=(8, 4), patch=2, posemb="sincos2d")
    assert model.grid == (4, 2) and model.num_tokens == 8 and model.pos is None
    assert eqx.filter_jit(model.tokens)(jnp.ones((8, 4, 1))).shape == (8, 16)
    with pytest.raises(ValueError, match="patch=3 does not divide the image size 8x8"):
        small_vit(layers.self_attention, patch=3)


def test_compiled_layers_match_the_reference_and_expose_inner_losses():
    config = load_config("digits_tiny").replace(width=16, heads=2, depth=2, mlp_dim=32)
    model = small_vit(layers.mttt_linear)
    compiled = compile_layers(model, lambda m: [b.attn for b in m.blocks], model.num_tokens, 16, config)
    assert all(isinstance(b.attn, CompiledLayer) for b in compiled.blocks)
    images = jax.random.normal(KEY, (4, 8, 8, 1))
    run = eqx.filter_jit(lambda m, x: (jax.vmap(m)(x), m.inner_losses(x[0])))
    (y_ref, ref), (y_got, got) = run(model, images), run(compiled, images)
    np.testing.assert_allclose(y_got, y_ref, rtol=1e-5, atol=1e-5)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-6)
    # same outer parameters: the compiled model's float leaves are the source's
    assert len(jax.tree_util.tree_leaves(eqx.filter(compiled, eqx.is_inexact_array))) == len(
        jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    )


def test_trace_reports_the_first_non_finite_stage():
    model = small_vit(layers.mttt_linear)
    broken = eqx.tree_at(lambda m: m.blocks[1].attn.h.bias, model, model.blocks[1].attn.h.bias.at[0].set(jnp.inf))
    trace = eqx.filter_jit(lambda m: m.trace(jnp.ones((8, 8, 1)))[1])
    finite = trace(broken)
    names = stage_names(model, "mttt_linear")
    assert names[int(np.argmin(finite))] == "blocks[1].attn (layer mttt_linear)"
    assert trace(model).all()
