"""The memory planner (tc.compile(..., remat_budget=B), ttt_compile.planner): it picks the largest token
chunk whose measured program fits, keeps a chunk the user named, says what it measured, fails clearly
when nothing fits, and every plan it picks has the uncompiled program's values and outer gradients
(float64)."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

import ttt_compile as tc
from ttt_compile import planner
from ttt_compile.cost import train_temp_bytes
from ttt_compile.models import layers

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402

KEY = jax.random.PRNGKey(0)
N = 64  # tokens of the validated plans (candidates: no chunk, 32, 16, 8)


def test_chunk_candidates_divide_every_length_and_halve():
    assert planner.chunk_candidates([(1024, 1024)]) == [None, 512, 256, 128, 64, 32, 16, 8]
    # SGD over 96 tokens in 4 steps: chunks divide 96 and the 24 tokens of a step
    assert planner.chunk_candidates([(96, 24)]) == [None, 24, 12]
    assert planner.chunk_candidates([(50176, 50176)])[:4] == [None, 25088, 12544, 6272]
    assert planner.chunk_candidates([]) == [None]


@pytest.mark.parametrize(
    "preset,options,fraction",  # fraction: the budget over the unplanned program's memory (below what remat
    # alone reaches: remat's schemes bring an SGD loop to 0.5 of it here; chunks of 8 tokens to 0.32)
    [("mttt_mlp", {"steps": 1, "batching": "full"}, 0.6), ("mttt_mlp", {"steps": 2, "batching": "sgd"}, 0.35)],
)
def test_planned_program_fits_and_equals_the_uncompiled_one_in_float64(preset, options, fraction):
    with jax.enable_x64(True):
        layer = layers.get(preset)(dim=16, heads=2, key=KEY, **options)
        x = jax.random.normal(jax.random.fold_in(KEY, 1), (N, 16), jnp.float64)
        unplanned = train_temp_bytes(tc.compile(layer, x).jaxpr)
        budget = int(fraction * unplanned)
        planned = tc.compile(layer, x, remat_budget=budget)
        notes = planned.pipeline[0][2]
        chosen = int(notes[0].split("token_chunk=")[1].split()[0])
        assert chosen in planner.chunk_candidates([(N, N // options["steps"])])[1:], notes
        assert train_temp_bytes(planned.jaxpr) <= budget
        none = next(n for n in notes if n.startswith("token_chunk=None"))
        assert "> budget" in none or "no scheme within the budget" in none, notes
        v = np_eval.compare(layer, planned, x)  # values and outer gradients, evaluated with NumPy
    assert v.value_error <= 1e-10 and v.grad_error <= 1e-9, v


def test_a_program_that_fits_keeps_no_chunk_and_a_named_chunk_is_kept():
    layer = layers.get("mttt_mlp")(dim=16, heads=2, key=KEY, steps=1, batching="full")
    x = jax.random.normal(KEY, (128, 16))
    roomy = tc.compile(layer, x, remat_budget=2**40)
    assert roomy.pipeline[0][2][0].startswith("plan: token_chunk=None")
    named = layers.get("mttt_mlp")(dim=16, heads=2, key=KEY, steps=1, batching="full", token_chunk=32)
    assert planner.free_layers(named) == []
    out = tc.compile(named, x, remat_budget=2**40)
    assert out.pipeline[0][2][0].startswith("plan: no full/SGD layer with token_chunk unset")


def test_a_budget_nothing_meets_names_the_least_memory_measured():
    layer = layers.get("mttt_mlp")(dim=16, heads=2, key=KEY, steps=1, batching="full")
    x = jax.random.normal(KEY, (32, 16))
    with pytest.raises(
        tc.SpecError, match=r"remat_budget=1,000 bytes is below every plan measured .*least [0-9,]+ bytes"
    ):
        tc.compile(layer, x, remat_budget=1000)


def test_trainer_config_takes_a_budget_or_derives_one_from_the_device():
    from ttt_compile import configs
    from ttt_compile.training import tasks

    base = configs.load_config("vit_ti_pixels_imagenet")
    assert base.remat_budget == "auto"  # raw pixels need no hand-named chunk
    c = base.replace(batch_size=8)
    mem = tasks.device_memory_bytes()
    assert tasks.remat_budget(c, depth=12, num_devices=2) == int(0.5 * mem / (12 * 4))
    assert tasks.remat_budget(c.replace(remat_budget=123_456), depth=12) == 123_456
    assert tasks.remat_budget(c.replace(remat_budget=None), depth=12) is None
    for bad, field in ((-5, "remat_budget=-5"), ("lots", "remat_budget='lots'")):
        with pytest.raises(configs.ConfigError, match=field):
            configs.validate(c.replace(remat_budget=bad, data="digits"), image_size=224)
