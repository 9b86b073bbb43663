"""Reconstruction(loss_form="gram"): the decoder folded to d_h dimensions computes the same layer as
decoding every token (loss_form="direct"), values and outer gradients, in float64; and the compiled
program of the folded form passes translation validation."""

import copy
import dataclasses
import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import ttt_compile as tc
from ttt_compile.layer.inner_steps import fold_decoder, fold_targets, folded_sq_error, symmetric_forms
from ttt_compile.layer.outer_maps import decode
from ttt_compile.layer.spec import Reconstruction, SpecError
from ttt_compile.models import layers
from ttt_compile.validate import relative_error

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402

# (preset, options, also run the translation validator on the compiled program)
CASES = [
    ("mttt_mlp", {"steps": 1}, False),
    ("mttt_mlp", {"steps": 3}, True),
    ("mttt_mlp", {"steps": 2, "batching": "sgd"}, True),
    ("mttt_mlp", {"parametrisation": "paper", "decoder_ln": True, "eta": "per_token"}, False),
    ("mttt_mlp", {"parametrisation": "paper", "decoder_ln": False, "bias": True}, False),
    ("mttt_linear", {"steps": 2}, False),
    ("mttt_mlp", {"steps": 2, "batching": "sgd", "token_chunk": 2}, True),
]  # targets folded per chunk


def _f64(m):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, m)


def _perturbed(m, key):
    """Every float leaf moved off its initial value (LN scale 1, zero biases) so every term counts."""
    leaves, tree = jax.tree_util.tree_flatten(m)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        a + 0.3 * jax.random.normal(k, a.shape, a.dtype) if eqx.is_inexact_array(a) else a for a, k in zip(leaves, keys)
    ]
    return jax.tree_util.tree_unflatten(tree, leaves)


def _with_form(m, form):
    out = copy.copy(m)
    object.__setattr__(out, "task", dataclasses.replace(m.task, loss_form=form))
    return out


@pytest.mark.parametrize("name,options,compiled", CASES)
def test_gram_form_is_the_direct_form(name, options, compiled):
    with jax.enable_x64(True):
        m = _f64(layers.get(name)(dim=12, heads=3, key=jax.random.PRNGKey(0), **options))
        if name == "mttt_mlp":
            m = _perturbed(m, jax.random.PRNGKey(1))
        x = jax.random.normal(jax.random.PRNGKey(2), (8, 12), jnp.float64)
        assert m.task.loss_form == "gram"
        v = np_eval.compare(_with_form(m, "direct"), m, x)
        assert v.ok(1e-10), v
        losses = eqx.filter_jit(lambda m, x: m.inner_losses(x))
        assert relative_error(losses(m, x), losses(_with_form(m, "direct"), x)) <= 1e-10
        if compiled:
            v = np_eval.compare(m, tc.compile(m, x), x)
            assert v.ok(1e-9), v


@pytest.mark.parametrize("ln", [False, True])
def test_folded_error_is_the_decoded_error(ln):
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.PRNGKey(3), 6)
        d, dh = 12, 4
        G = jax.random.normal(k[0], (d, dh), jnp.float64)
        c = jax.random.normal(k[1], (d,), jnp.float64)
        norm = None
        if ln:
            norm = eqx.nn.LayerNorm(d, eps=1e-3, dtype=jnp.float64)
            norm = eqx.tree_at(
                lambda n: (n.weight, n.bias),
                norm,
                (jax.random.normal(k[2], (d,), jnp.float64), jax.random.normal(k[3], (d,), jnp.float64)),
            )
        z = jax.random.normal(k[4], (5, dh), jnp.float64)
        x = jax.random.normal(k[5], (5, d), jnp.float64)
        dec, maps = fold_decoder(G, c, norm)
        t = fold_targets(maps, x)
        want = jnp.sum((jax.vmap(lambda zi: decode(G, norm, zi, c))(z) - x) ** 2, axis=-1)
        assert relative_error(folded_sq_error(dec, z, t["p"], t["s"], t["t"]), want) <= 1e-12


def test_symmetric_forms_derivatives_are_the_plain_forms():
    """symmetric_forms' own JVP (2 P z . dz + z^T dP z, P the symmetric part of S) equals AD of
    sum((z S) * z) for any S: first derivatives in z and S, a JVP, and the second derivatives the outer
    loop takes of an inner gradient."""
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.PRNGKey(4), 3)
        z = jax.random.normal(k[0], (5, 4), jnp.float64)
        S = jax.random.normal(k[1], (2, 4, 4), jnp.float64)  # not symmetric
        r = jax.random.normal(k[2], (5, 2), jnp.float64)

        def plain(z, S):
            return jnp.einsum("bi,kij,bj->bk", z, S, z)

        def weighted(q):
            return lambda z, S: jnp.sum(r * q(z, S))

        def inner(q):
            return lambda z, S: jnp.sum(jnp.sin(jax.grad(weighted(q))(z, S)))

        assert relative_error(symmetric_forms(z, S), plain(z, S)) <= 1e-14
        assert relative_error(jax.jvp(symmetric_forms, (z, S), (z, S))[1], jax.jvp(plain, (z, S), (z, S))[1]) <= 1e-13
        for argnums in (0, 1):
            got, want = jax.grad(weighted(symmetric_forms), argnums)(z, S), jax.grad(weighted(plain), argnums)(z, S)
            assert relative_error(got, want) <= 1e-13
            got, want = jax.grad(inner(symmetric_forms), argnums)(z, S), jax.grad(inner(plain), argnums)(z, S)
            assert relative_error(got, want) <= 1e-12


def test_loss_form_is_checked():
    with pytest.raises(SpecError, match="loss_form"):
        Reconstruction(loss_form="dual")
