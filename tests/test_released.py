"""The released parametrisation, exactly: `from_released` loads the parameters of the released MTTT
layer (test-time-training/mttt, inner_loop.TTTLayer) and computes its outputs and inner losses.

The fixtures in tests/fixtures/mttt_released_*.npz were produced by running the released code (see
tests/fixtures/mttt_released.md); every parameter was moved off its initial value so that each term
(biases, per-head LN) counts."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ttt_compile as tc
from ttt_compile.layer.released import from_released, layer_params
from ttt_compile.layer.spec import SpecError
from ttt_compile.validate import relative_error

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
META = json.loads((FIXTURES / "mttt_released.json").read_text())


def _load(name):
    data = np.load(FIXTURES / f"mttt_released_{name}.npz")
    params = {k[len("params/") :]: data[k] for k in data.files if k.startswith("params/")}
    return params, data, META["cases"][name]["config"]


@pytest.mark.parametrize("name", sorted(META["cases"]))
def test_from_released_matches_the_released_layer(name):
    params, data, cfg = _load(name)
    layer = from_released(
        params, inner_lr=cfg["inner_lr"], sgd=cfg["SGD"], train_init=cfg["inner_encoder_init"] != "zero"
    )
    x = jnp.asarray(data["x"])
    if cfg["SGD"]:
        # the released SGD step takes the tokens in a shuffled order (the fixture fixed the draw, shared by
        # the heads); the layer's contiguous blocks of that order are the same mini-batches
        x = x[:, data["order"]]
    assert x.dtype == jnp.float32 and layer.phi.weight.dtype == jnp.float32
    y = jax.jit(jax.vmap(layer))(x)
    want_y = data["y"][:, data["order"]] if cfg["SGD"] else data["y"]
    assert relative_error(y, want_y) <= 1e-5
    losses = jax.jit(jax.vmap(layer.inner_losses))(x).sum(axis=1).mean(axis=0)  # sum over heads, mean over batch
    want = data["inner_losses"]
    if cfg["SGD"]:  # the released step losses are on the mini-batch of the step; the last is on all tokens
        losses, want = losses[-1:], want[-1:]
    assert relative_error(losses, want) <= 1e-5, (losses, want)
    compiled = tc.compile(layer, x[0])
    assert relative_error(jax.vmap(compiled)(x), want_y) <= 1e-5


def test_from_released_reads_a_checkpoint_with_a_prefix():
    params, data, cfg = _load("mlp")
    ckpt = {f"params/Transformer/encoderblock_{i}/TTTLayer_0/{k}": v for i in (0, 1) for k, v in params.items()}
    with pytest.raises(SpecError, match="2 TTT layers"):
        layer_params(ckpt)
    layer = from_released(ckpt, prefix="params/Transformer/encoderblock_1/TTTLayer_0")
    assert relative_error(jax.vmap(layer)(jnp.asarray(data["x"])), data["y"]) <= 1e-5
    with pytest.raises(SpecError, match="inner_lr"):
        from_released(params, inner_lr=1.0)
    with pytest.raises(SpecError, match="train_init"):
        from_released(params, train_init=False)
