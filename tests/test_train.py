"""The outer loop: training, metrics, checkpoints, exact resume after kill -9, errors, CLI."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttt_compile import checkpoint as ckpt
from ttt_compile.configs import Config, ConfigError, available, load_config, validate
from ttt_compile.train import TIMING_KEYS, NonFiniteError, main, read_metrics, train

TEST_CONFIG = Path(__file__).with_name("digits_test_config.py")
REPO = Path(__file__).resolve().parents[1]


def small() -> Config:
    return load_config(str(TEST_CONFIG))


def deterministic(records):
    """Metric records without the fields that measure the machine (throughput, wall time)."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 16-step run of the test config through the command-line entry point; and,
    started first so that it runs alongside on the second core, a run of the same config in a
    subprocess that stops inside the write of its step-6 checkpoint (see the kill -9 test)."""
    workdir, killed = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("killed")
    env = {**os.environ, ckpt.FAULT_ENV: "sleep@6", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ttt_compile.train", str(TEST_CONFIG), "--workdir", str(killed)],
                            env=env, cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = main([str(TEST_CONFIG), "--workdir", str(workdir)])
        yield code, out.getvalue(), workdir, proc, killed
    finally:
        proc.kill()
        proc.wait()


def test_tiny_config_trains_loss_falls_and_writes_outputs(reference):
    code, out, workdir, _, _ = reference
    assert code == 0
    assert "layer            = 'mttt_linear'" in out  # the config is printed at start
    assert out.strip().splitlines()[-1].startswith("test accuracy: 0.")
    records = read_metrics(workdir / "metrics.jsonl")
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(train_losses) == 8
    assert np.mean(train_losses[-2:]) < np.mean(train_losses[:2]) - 0.1
    test = [r for r in records if r["split"] == "test"]
    assert [r["step"] for r in test] == [4, 8, 12, 16]
    assert test[-1]["accuracy"] > 0.2  # 10 classes: chance is 0.1
    # MTTT-Linear runs one inner step: the loss before and after it, per block (Figure 1, right)
    assert set(test[-1]["inner_loss"]) == {"blocks[0]", "blocks[1]"}
    assert len(test[-1]["inner_loss"]["blocks[0]"]) == 2
    assert all(r["images_per_s"] > 0 for r in records if r["split"] == "train")
    assert (workdir / "plots" / "curves.png").stat().st_size > 1000
    assert (workdir / "plots" / "inner_loss.png").stat().st_size > 1000
    assert ckpt.steps(workdir / "checkpoints") == [14, 16]  # keep_checkpoints = 2
    assert json.loads((workdir / "config.json").read_text())["layer"] == "mttt_linear"


def test_kill_9_during_checkpoint_write_then_resume_matches_uninterrupted(reference):
    _, out, ref_dir, proc, run = reference
    deadline = time.monotonic() + 180
    for line in proc.stderr:  # wait until the writer is inside step 6's checkpoint
        if "checkpoint-fault: sleeping at step 6" in line or time.monotonic() > deadline:
            break
    partial = list((run / "checkpoints").glob(".tmp-step_00000006-*"))
    assert partial and (partial[0] / "arrays.npz").exists(), "the writer never reached step 6"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert ckpt.steps(run / "checkpoints") == [2, 4]  # step 6 never became a checkpoint
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) == 6  # logged past the checkpoint

    resumed = train(small(), workdir=run, resume=True, verbose=False, plots=False)
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert f"test accuracy: {resumed['test_accuracy']:.4f}" in out
    got = deterministic(read_metrics(run / "metrics.jsonl"))
    want = deterministic(read_metrics(ref_dir / "metrics.jsonl"))
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert got == want  # bit-identical losses, accuracies, gradient norms, inner losses


def test_checkpoint_exit_mid_write_keeps_previous_and_round_trips_bfloat16(tmp_path):
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "mu": jnp.ones(3, jnp.bfloat16) / 3,
            "n": np.int32(7)}
    ckpt.save(tmp_path, 1, tree)
    script = ("import sys, numpy as np; from ttt_compile import checkpoint as c; "
              "c.save(sys.argv[1], 2, {'w': np.zeros((2, 3), np.float32), 'mu': np.zeros(3), 'n': np.int32(0)})")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env={**os.environ, ckpt.FAULT_ENV: "exit@2"})
    assert result.returncode == 3
    assert ckpt.steps(tmp_path) == [1] and ckpt.latest_step(tmp_path) == 1
    assert [p.name.split("-")[1] for p in ckpt.clean_partial(tmp_path)] == ["step_00000002"]
    back = ckpt.restore(tmp_path, 1, tree)
    assert back["mu"].dtype == jnp.bfloat16 and np.array_equal(back["mu"], np.asarray(tree["mu"]))
    assert np.array_equal(back["w"], tree["w"]) and back["n"] == 7
    with pytest.raises(ckpt.CheckpointError, match="resume with the config that wrote it"):
        ckpt.restore(tmp_path, 1, {"w": np.zeros((3, 3), np.float32), "mu": tree["mu"], "n": tree["n"]})
    for step in (2, 3, 4):
        ckpt.save(tmp_path, step, tree, keep=2)
    assert ckpt.steps(tmp_path) == [3, 4]


def test_bfloat16_compute_keeps_float32_master_weights():
    from ttt_compile import data as data_lib
    from ttt_compile.train import build_model, make_mesh, make_optimizer, make_schedule, make_train_step, \
        replicate, shard_batch, split_model

    config = small().replace(dtype="bfloat16", lr=3e-3)
    dataset = data_lib.load(config)
    params, static = split_model(build_model(config, dataset, jax.random.PRNGKey(0)))
    optimizer = make_optimizer(config, make_schedule(config, 16, 1))
    mesh = make_mesh(jax.devices()[:1])
    step = make_train_step(static, optimizer, mesh, jnp.bfloat16)
    params, state = replicate(params, mesh), replicate(optimizer.init(params), mesh)
    batch = shard_batch(data_lib.train_batches(dataset, batch_size=config.batch_size, seed=0)[0], mesh)
    losses = []
    for _ in range(4):  # the same batch four times: the loss must fall
        params, state, metrics = step(params, state, batch)
        losses.append(float(metrics["loss"]))
        assert np.all(metrics["finite"]) and np.all(metrics["grad_finite"])
    assert losses[-1] < losses[0]
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {np.dtype("float32")}  # master weights
    mus = [s.mu for s in jax.tree_util.tree_leaves(state, is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu")]
    assert {x.dtype for x in jax.tree_util.tree_leaves(mus)} == {jnp.dtype(jnp.bfloat16)}  # Adam's first moment
    assert {x.dtype for s in jax.tree_util.tree_leaves(state, is_leaf=lambda s: hasattr(s, "nu"))
            if hasattr(s, "nu") for x in jax.tree_util.tree_leaves(s.nu)} == {np.dtype("float32")}


class _LogLayer(eqx.Module):
    """y = log(scale) * x: finite for scale = 1, NaN for scale = -1."""

    scale: jax.Array

    def __call__(self, x):
        return jnp.log(self.scale) * x


_calls = []


def nan_in_second_block(*, dim, heads, key):
    """A layer factory whose second layer (blocks[1]) outputs NaN."""
    _calls.append(dim)
    return _LogLayer(jnp.array(1.0 if len(_calls) % 2 else -1.0))


def test_nonfinite_values_stop_with_the_step_and_the_layer(tmp_path):
    _calls.clear()
    config = small().replace(layer=f"{__name__}:nan_in_second_block", layer_options={}, passes=None, grad_clip=None)
    with pytest.raises(NonFiniteError, match=r"at step 1\b.*blocks\[1\]\.attn \(layer .*nan_in_second_block\)"):
        train(config, workdir=tmp_path, verbose=False, plots=False)
    assert not ckpt.steps(tmp_path / "checkpoints")  # nothing non-finite was saved


@pytest.mark.parametrize("name", available())
def test_every_shipped_config_is_valid(name):
    config = validate(load_config(name), num_devices=8)
    assert config.name == name
    if name.startswith("vit_"):  # the paper's ImageNet recipes (Beyer et al. 2022)
        assert (config.batch_size, config.lr, config.weight_decay, config.warmup_steps, config.epochs) == \
            (1024, 1e-3, 1e-4, 10_000, 90)
        assert (224 // config.patch) ** 2 == {"vit_s16_imagenet": 196, "vit_ti_pixels_imagenet": 50176}[name]


@pytest.mark.parametrize("changes, num_devices, message", [
    (dict(layer="mttt_lineer"), 1, r"layer='mttt_lineer' is not a layer preset: use one of .*mttt_linear"),
    (dict(patch=3), 1, r"patch=3 does not divide image_size=8: set patch to one of 1, 2, 4, 8"),
    (dict(batch_size=30), 4, r"batch_size=30 is not divisible by the 4 devices: use a multiple of 4"),
    (dict(epochs=3.0), 1, r"set exactly one of them"),
    (dict(width=30, heads=4), 1, r"width=30 is not divisible by heads=4"),
    (dict(posemb="sincos2d", width=18, heads=2), 1, r"sincos2d' needs width divisible by 4"),
    (dict(data="imagenet"), 1, r"use 'digits' or 'imagenet:DIR'"),
    (dict(dtype="float16"), 1, r"dtype='float16' is unknown: use one of float32, bfloat16"),
    (dict(checkpoint_every=5), 1, r"checkpoint_every=5 is not a multiple of log_every=2"),
])
def test_bad_configs_raise_errors_naming_field_and_fix(changes, num_devices, message):
    with pytest.raises(ConfigError, match=message):
        validate(small().replace(**changes), num_devices=num_devices)


def test_bad_runs_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) widht"):
        small().replace(widht=3)
    with pytest.raises(ConfigError, match=r"layer_options=\{'stepz': 2\}.*unknown option"):
        train(small().replace(layer_options={"stepz": 2}), workdir=tmp_path / "a", verbose=False, plots=False)
    with pytest.raises(ConfigError, match=r"warmup_steps=2 leaves no step"):
        train(small().replace(steps=2), workdir=tmp_path / "b", verbose=False, plots=False)
    with pytest.raises(ConfigError, match=r"does not exist: an ImageNet directory needs train/<class>"):
        train(small(), data=f"imagenet:{tmp_path / 'missing'}", workdir=tmp_path / "c", verbose=False, plots=False)
    ckpt.save(tmp_path / "d" / "checkpoints", 4, {"x": np.zeros(1)}, {"config": small().replace(lr=0.5).to_dict()})
    with pytest.raises(ConfigError, match=r"already has checkpoints \(up to step 4\): pass --resume"):
        train(small(), workdir=tmp_path / "d", verbose=False, plots=False)
    with pytest.raises(ConfigError, match=r"--resume with a changed config \(lr differ"):
        train(small(), workdir=tmp_path / "d", resume=True, verbose=False, plots=False)


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: config"),
    (["digits_tiny", "--steps", "0"], "0 is not a positive integer"),
    (["digits_tiny", "--bogus"], "unrecognized arguments: --bogus"),
    (["no_such_config"], "unknown config 'no_such_config': give a .py path or one of: digits_"),
    (["digits_tiny", "--data", "mnist"], "data='mnist' is not a data set"),
])
def test_cli_bad_arguments_print_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--workdir", str(tmp_path)] if argv else argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
