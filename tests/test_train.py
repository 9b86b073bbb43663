"""The outer loop: training, metrics, checkpoints, exact resume after kill -9, errors, CLI."""

import contextlib
import io
import json
import os
import re
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

from ttt_compile.cli import main as cli_main
from ttt_compile.configs import Config, ConfigError, available, load_config, validate
from ttt_compile.training import TIMING_KEYS, CheckpointError, Checkpoints, NonFiniteError, read_metrics, train
from ttt_compile.training import checkpoints as ckpt

TEST_CONFIG = Path(__file__).with_name("digits_test_config.py")
REPO = Path(__file__).resolve().parents[1]


def small() -> Config:
    return load_config(str(TEST_CONFIG))


def main(argv):
    return cli_main(["train", *argv])


def steps_of(directory):
    checkpoints = Checkpoints(directory)
    try:
        return checkpoints.steps()
    finally:
        checkpoints.close()


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
    proc = subprocess.Popen(
        [sys.executable, "-m", "ttt_compile.cli", "train", str(TEST_CONFIG), "--workdir", str(killed)],
        env=env,
        cwd=killed,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
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
    assert re.search(r"layer +=  ?'mttt_linear'", out)  # the config is printed at start
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
    assert steps_of(workdir / "checkpoints") == [14, 16]  # keep_checkpoints = 2
    assert json.loads((workdir / "config.json").read_text())["layer"] == "mttt_linear"


def test_kill_9_during_checkpoint_write_then_resume_matches_uninterrupted(reference):
    _, out, ref_dir, proc, run = reference
    deadline = time.monotonic() + 180
    for line in proc.stderr:  # wait until the writer is inside step 6's checkpoint
        if "checkpoint-fault: sleeping at step 6" in line or time.monotonic() > deadline:
            break
    partial = list((run / "checkpoints").glob("6.orbax-checkpoint-tmp*"))
    assert partial, "the writer never reached step 6"
    assert any(p.is_file() for p in partial[0].rglob("*")), sorted(partial[0].rglob("*"))  # files half written
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert steps_of(run / "checkpoints") == [2, 4]  # step 6 never became a checkpoint
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) == 6  # logged past the checkpoint

    resumed = train(small(), workdir=run, resume=True, verbose=False, plots=False)
    assert not list((run / "checkpoints").glob("*tmp*"))
    assert f"test accuracy: {resumed['test_accuracy']:.4f}" in out
    got = deterministic(read_metrics(run / "metrics.jsonl"))
    want = deterministic(read_metrics(ref_dir / "metrics.jsonl"))
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert got == want  # bit-identical losses, accuracies, gradient norms, inner losses


def test_checkpoint_exit_mid_write_keeps_previous_and_round_trips_bfloat16(tmp_path):
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "mu": jnp.ones(3, jnp.bfloat16) / 3, "n": np.int32(7)}
    checkpoints = Checkpoints(tmp_path, keep=2)
    checkpoints.save(1, tree, {"note": "one"})
    checkpoints.wait()
    script = (
        "import sys, numpy as np; from ttt_compile.training import Checkpoints; "
        "Checkpoints(sys.argv[1]).save(2, {'w': np.zeros((2, 3), np.float32), 'mu': np.zeros(3), "
        "'n': np.int32(0)})"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env={**os.environ, ckpt.FAULT_ENV: "exit@2"}, capture_output=True
    )
    assert result.returncode == 3
    assert steps_of(tmp_path) == [1]
    back = Checkpoints(tmp_path).restore_latest(tree)
    assert back.step == 1 and back.meta == {"note": "one", "step": 1}
    assert back.state["mu"].dtype == jnp.bfloat16 and np.array_equal(back.state["mu"], np.asarray(tree["mu"]))
    assert np.array_equal(back.state["w"], tree["w"]) and back.state["n"] == 7
    for step in (2, 3, 4):
        checkpoints.save(step, tree)
    checkpoints.wait()
    assert checkpoints.steps() == [3, 4]
    checkpoints.close()


def _damage(path: Path, how: str) -> None:
    """Break a written checkpoint: truncate its array data, garble its metadata, or delete its state."""
    if how == "truncate":
        for f in (path / "state").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(f.read_bytes()[:10])
    elif how == "garble":
        (path / "meta" / "metadata").write_text("{not json")
    else:
        import shutil

        shutil.rmtree(path / "state")


# orbax leaves an asyncio callback behind when reading a truncated file fails (benign, reported at exit)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["truncate", "garble", "missing"])
def test_resume_skips_an_unreadable_newest_checkpoint_naming_it(tmp_path, how):
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.int32(7)}
    checkpoints = Checkpoints(tmp_path)
    for step in (2, 4):
        checkpoints.save(step, {**tree, "n": np.int32(step)})
    checkpoints.wait()
    _damage(tmp_path / "4", how)
    said = []
    back = checkpoints.restore_latest(tree, say=said.append)
    assert back.step == 2 and int(back.state["n"]) == 2
    assert len(said) == 1 and f"checkpoint {tmp_path / '4'} cannot be read (" in said[0]
    assert "trying the previous one" in said[0]
    _damage(tmp_path / "2", how)
    with pytest.raises(CheckpointError, match=r"no usable checkpoint in .*: .*/4 \(.*\); .*/2 \(.*\): delete"):
        checkpoints.restore_latest(tree, say=said.append)
    checkpoints.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_train_resume_falls_back_past_a_corrupt_checkpoint_and_cli_reports_none_usable(tmp_path, capsys):
    config = small().replace(steps=4, checkpoint_every=2, eval_every=4, keep_checkpoints=3)
    first = train(config, workdir=tmp_path / "a", verbose=False, plots=False)
    _damage(tmp_path / "a" / "checkpoints" / "4", "truncate")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        again = train(config, workdir=tmp_path / "a", resume=True, verbose=True, plots=False)
    text = out.getvalue()
    assert f"checkpoint {tmp_path / 'a' / 'checkpoints' / '4'} cannot be read" in text
    assert "resumed from step 2" in text
    assert again["test_accuracy"] == first["test_accuracy"]  # steps 3-4 redone exactly
    assert steps_of(tmp_path / "a" / "checkpoints") == [2, 4]
    for step in (2, 4):
        _damage(tmp_path / "a" / "checkpoints" / str(step), "garble")
    capsys.readouterr()
    assert main([str(TEST_CONFIG), "--workdir", str(tmp_path / "a"), "--steps", "4", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no usable checkpoint in" in err, err


def test_bfloat16_compute_keeps_float32_master_weights():
    import equinox as eqx

    from ttt_compile.training import make_task, sharding
    from ttt_compile.training.optim import make_optimizer, make_schedule
    from ttt_compile.training.trainer import make_train_step

    config = small().replace(dtype="bfloat16", lr=3e-3)
    task = make_task(config)
    params, static = eqx.partition(task.build(jax.random.PRNGKey(0)), eqx.is_inexact_array)
    optimizer = make_optimizer(config, make_schedule(config, 16, 1))
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    state = optimizer.init(params)
    shardings = (sharding.state_shardings(params, mesh), sharding.state_shardings(state, mesh))
    step = make_train_step(task, static, optimizer, mesh, shardings)
    params, state = sharding.place(params, shardings[0]), sharding.place(state, shardings[1])
    batch = sharding.shard_batch(task.train_batches(0, 1)[0], mesh)
    losses = []
    for _ in range(4):  # the same batch four times: the loss must fall
        params, state, metrics = step(params, state, batch)
        losses.append(float(metrics["loss"]))
        assert np.all(metrics["finite"]) and np.all(metrics["grad_finite"])
    assert losses[-1] < losses[0]
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {np.dtype("float32")}  # master weights
    mus = [s.mu for s in jax.tree_util.tree_leaves(state, is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu")]
    assert {x.dtype for x in jax.tree_util.tree_leaves(mus)} == {jnp.dtype(jnp.bfloat16)}  # Adam's first moment
    assert {
        x.dtype
        for s in jax.tree_util.tree_leaves(state, is_leaf=lambda s: hasattr(s, "nu"))
        if hasattr(s, "nu")
        for x in jax.tree_util.tree_leaves(s.nu)
    } == {np.dtype("float32")}


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
    assert not steps_of(tmp_path / "checkpoints")  # nothing non-finite was saved


@pytest.mark.parametrize("name", available())
def test_every_shipped_config_is_valid(name):
    config = validate(load_config(name), num_devices=8)
    assert config.name == name
    if name.startswith("vit_"):  # the paper's ImageNet recipes (Beyer et al. 2022)
        assert (config.batch_size, config.lr, config.weight_decay, config.warmup_steps, config.epochs) == (
            1024,
            1e-3,
            1e-4,
            10_000,
            90,
        )
        assert (224 // config.patch) ** 2 == {"vit_s16_imagenet": 196, "vit_ti_pixels_imagenet": 50176}[name]


@pytest.mark.parametrize(
    "changes, num_devices, message",
    [
        (dict(layer="mttt_lineer"), 1, r"layer='mttt_lineer' is not a layer preset: use one of .*mttt_linear"),
        (dict(patch=3), 1, r"patch=3 does not divide image_size=8: set patch to one of 1, 2, 4, 8"),
        (dict(batch_size=30), 4, r"batch_size=30 is not divisible by the 4 devices: use a multiple of 4"),
        (dict(epochs=3.0), 1, r"set exactly one of them"),
        (dict(width=30, heads=4), 1, r"width=30 is not divisible by heads=4"),
        (dict(posemb="sincos2d", width=18, heads=2), 1, r"sincos2d' needs width divisible by 4"),
        (dict(data="imagenet"), 1, r"use 'digits', 'imagenet:DIR' .*, 'text' or 'mqar'"),
        (dict(dtype="float16"), 1, r"dtype='float16' is unknown: use one of float32, bfloat16"),
        (dict(checkpoint_every=5), 1, r"checkpoint_every=5 is not a multiple of log_every=2"),
    ],
)
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
    writer = Checkpoints(tmp_path / "d" / "checkpoints")
    writer.save(4, {"x": np.zeros(1)}, {"config": small().replace(lr=0.5).to_dict()})
    writer.close()
    with pytest.raises(ConfigError, match=r"already has checkpoints \(up to step 4\): pass --resume"):
        train(small(), workdir=tmp_path / "d", verbose=False, plots=False)
    with pytest.raises(ConfigError, match=r"--resume with a changed config \(lr differ"):
        train(small(), workdir=tmp_path / "d", resume=True, verbose=False, plots=False)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: config"),
        (["digits_tiny", "--steps", "0"], "0 is not a positive integer"),
        (["digits_tiny", "--bogus"], "unrecognized arguments: --bogus"),
        (["no_such_config"], "unknown config 'no_such_config': give a .py path or one of: digits_"),
        (["digits_tiny", "--data", "mnist"], "data='mnist' is not a data set"),
    ],
)
def test_cli_bad_arguments_print_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--workdir", str(tmp_path)] if argv else argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
