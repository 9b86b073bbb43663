"""Several devices: on 4 (forced host) CPU devices, data parallelism equals the single-device run,
and FSDP (parameters and optimiser state sharded over an "fsdp" axis) equals data parallelism while
each device holds a quarter of the state (XLA's compiled memory analysis)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TEST_CONFIG = Path(__file__).with_name("digits_test_config.py")

SCRIPT = r"""
import json, sys
import equinox as eqx, jax, numpy as np
from jax.sharding import PartitionSpec
from ttt_compile.configs import ConfigError, load_config
from ttt_compile.training import TIMING_KEYS, Checkpoints, make_task, read_metrics, train
from ttt_compile.training.sharding import make_mesh, param_spec, shard_batch

workdir = sys.argv[2]
config = load_config(sys.argv[1]).replace(patch=1, steps=4, eval_every=4, checkpoint_every=4)
out = {"devices": jax.device_count()}
sharded = shard_batch(make_task(config).train_batches(0, 1)[0], make_mesh())
out["batch_split"] = sharded["image"].sharding.spec == PartitionSpec(("data",))
out["shard_shapes"] = sorted({tuple(s.data.shape) for s in sharded["image"].addressable_shards})
out["specs"] = [list(param_spec(s, 4)) for s in [(16, 32), (32, 16), (10,), (), (6, 8)]]
runs, memory, leaves = {}, {}, {}
for name, devices, mesh in (("one", jax.devices()[:1], {"data": -1}), ("four", jax.devices(), {"data": -1}),
                            ("fsdp", jax.devices(), {"data": -1, "fsdp": 4})):
    result = train(config.replace(mesh=mesh), workdir=f"{workdir}/{name}", devices=devices, verbose=False,
                   plots=False)
    memory[name] = result["memory"]
    records = read_metrics(f"{workdir}/{name}/metrics.jsonl")
    runs[name] = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]
    leaves[name] = [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(result["model"], eqx.is_inexact_array))]
out["metrics"], out["memory"] = runs, memory
# the FSDP run's last checkpoint restored onto a data-parallel mesh (nothing left to train: restore only)
back = train(config, workdir=f"{workdir}/fsdp", resume=True, verbose=False, plots=False)
arrays = jax.tree_util.tree_leaves(eqx.filter(back["model"], eqx.is_inexact_array))
out["restored_count"] = [len(arrays), len(leaves["fsdp"])]
out["restored_equal"] = all(np.array_equal(np.asarray(a), b) for a, b in zip(arrays, leaves["fsdp"]))
out["restored_replicated"] = all(x.sharding.is_fully_replicated for x in arrays)
out["max_param_diff"] = {f"{m}-{n}": max(float(np.max(np.abs(a - b), initial=0.0))
                                         for a, b in zip(leaves[m], leaves[n])) for m, n in (("one", "four"), ("four", "fsdp"))}
try:
    train(config.replace(batch_size=30), workdir=f"{workdir}/bad", verbose=False, plots=False)
except ConfigError as e:
    out["error"] = str(e)
try:
    train(config.replace(mesh={"data": -1, "fsdp": 3}), workdir=f"{workdir}/bad2", verbose=False, plots=False)
except ConfigError as e:
    out["mesh_error"] = str(e)
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharding")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(TEST_CONFIG), str(tmp)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def _close(runs_a, runs_b):
    assert [r["step"] for r in runs_a] == [r["step"] for r in runs_b] == [2, 4, 4]
    for ra, rb in zip(runs_a, runs_b):
        for key in ("loss", "accuracy", "grad_norm") if ra["split"] == "train" else ("loss", "accuracy"):
            assert abs(ra[key] - rb[key]) <= 1e-5 * max(1.0, abs(ra[key])), (key, ra, rb)


def test_data_parallel_training_equals_single_device(four_devices):
    out = four_devices
    assert out["devices"] == 4
    assert out["batch_split"] and out["shard_shapes"] == [[8, 8, 8, 1]]  # 32 images: 8 per device
    _close(out["metrics"]["one"], out["metrics"]["four"])
    assert out["max_param_diff"]["one-four"] < 5e-5  # after 4 AdamW steps of lr <= 1e-2: summation order only
    assert out["error"] == "batch_size=30 is not divisible by the 4 devices: use a multiple of 4"


def test_fsdp_equals_data_parallel_with_a_quarter_of_the_state_per_device(four_devices):
    out = four_devices
    # the largest dimension divisible by the axis size; replicated when none is
    assert out["specs"] == [[None, "fsdp"], ["fsdp", None], [], [], [None, "fsdp"]]
    _close(out["metrics"]["four"], out["metrics"]["fsdp"])
    print("memory per device (bytes):", json.dumps({"data": out["memory"]["four"], "fsdp": out["memory"]["fsdp"]}))
    print("max |param difference|:", json.dumps(out["max_param_diff"]))
    print(
        "max |metric difference| fsdp vs data:",
        max(
            abs(a[k] - b[k])
            for a, b in zip(out["metrics"]["four"], out["metrics"]["fsdp"])
            for k in ("loss", "accuracy", "grad_norm")
            if k in a
        ),
    )
    # Adam divides by sqrt(v) ~ |g| in its first steps, so rounding-level differences of the gradients
    # move a parameter by up to ~ lr * 1e-3; a wrong shard or a missing gather would move it by ~ lr
    assert out["max_param_diff"]["four-fsdp"] < 5e-5
    dp, fsdp = out["memory"]["four"], out["memory"]["fsdp"]
    for m in (dp, fsdp):  # XLA's per-device argument size = this device's shards of the state + its rows
        assert m["state_bytes"] == m["state_bytes_from_shards"], m
    ratio = dp["state_bytes"] / fsdp["state_bytes"]
    assert 3.8 < ratio <= 4.0, (ratio, dp, fsdp)  # a few small arrays (e.g. the 10-class head bias) stay whole
    assert out["restored_count"][0] == out["restored_count"][1] > 10
    assert out["restored_equal"] and out["restored_replicated"]  # restored onto the current (data) mesh
    assert "mesh={'data': -1, 'fsdp': 3} needs a multiple of 3 devices, 4 are present" in out["mesh_error"]
    np.testing.assert_equal(dp["batch_bytes"], fsdp["batch_bytes"])
