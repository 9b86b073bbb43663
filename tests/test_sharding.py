"""Data parallelism: on 4 (forced host) CPU devices the sharded run equals the single-device run."""
import json
import os
import subprocess
import sys
from pathlib import Path

TEST_CONFIG = Path(__file__).with_name("digits_test_config.py")

SCRIPT = r"""
import json, sys
import jax, numpy as np
from jax.sharding import PartitionSpec
from ttt_compile import checkpoint as ckpt
from ttt_compile import data as data_lib
from ttt_compile.configs import ConfigError, load_config
from ttt_compile.train import TIMING_KEYS, make_mesh, read_metrics, shard_batch, train

workdir = sys.argv[2]
config = load_config(sys.argv[1]).replace(patch=1, steps=4, eval_every=4, checkpoint_every=4)
out = {"devices": jax.device_count()}
batch = data_lib.train_batches(data_lib.load(config), batch_size=config.batch_size, seed=0)[0]
sharded = shard_batch(batch, make_mesh())
out["batch_split"] = sharded["image"].sharding.spec == PartitionSpec("data")
out["shard_shapes"] = sorted({tuple(s.data.shape) for s in sharded["image"].addressable_shards})
runs = {}
for name, devices in (("one", jax.devices()[:1]), ("four", jax.devices())):
    train(config, workdir=f"{workdir}/{name}", devices=devices, verbose=False, plots=False)
    records = read_metrics(f"{workdir}/{name}/metrics.jsonl")
    runs[name] = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]
out["metrics"] = runs
one, four = (ckpt.load_leaves(f"{workdir}/{n}/checkpoints", 4) for n in ("one", "four"))
diffs = [float(np.max(np.abs(x - y), initial=0.0)) for x, y in zip(one, four) if x.dtype.kind == "f"]
out["max_param_diff"] = max(diffs)
try:
    train(config.replace(batch_size=30), workdir=f"{workdir}/bad", verbose=False, plots=False)
except ConfigError as e:
    out["error"] = str(e)
print("RESULT " + json.dumps(out))
"""


def test_sharded_training_equals_single_device(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(TEST_CONFIG), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["devices"] == 4
    assert out["batch_split"] and out["shard_shapes"] == [[8, 8, 8, 1]]  # 32 images: 8 per device
    one, four = out["metrics"]["one"], out["metrics"]["four"]
    assert [r["step"] for r in one] == [r["step"] for r in four] == [2, 4, 4]
    for r1, r4 in zip(one, four):
        for key in ("loss", "accuracy", "grad_norm") if r1["split"] == "train" else ("loss", "accuracy"):
            assert abs(r1[key] - r4[key]) <= 1e-5 * max(1.0, abs(r1[key])), (key, r1, r4)
    assert out["max_param_diff"] < 1e-5  # after 4 AdamW steps of lr <= 1e-2: summation order only
    assert out["error"] == "batch_size=30 is not divisible by the 4 devices: use a multiple of 4"
