"""Several processes (jax.distributed over localhost, CPU collectives over gloo): 2 processes x 2 forced
host devices train like 1 process x 4 devices; kill one process mid-run, restart both with --resume,
and the run finishes with the metrics of an uninterrupted one. Each process reads only its own rows
of every batch (the data pipelines slice by process; see ttt_compile.training.data / sequences)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ttt_compile.training import TIMING_KEYS, read_metrics
from ttt_compile.training.checkpoints import FAULT_ENV

CONFIG = """from ttt_compile.configs import load_config


def get_config():
    return load_config({base!r}).replace(name="digits_mp", steps=8, checkpoint_every=2, eval_every=4, keep_checkpoints=3)
"""
BASE = str(Path(__file__).with_name("digits_test_config.py"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def _train(config: Path, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ttt_compile.cli", "train", str(config), "--workdir", str(workdir), *extra]


def _two_processes(config: Path, workdir: Path, *extra: str, faults=(None, None)) -> list[subprocess.Popen]:
    port = _port()
    procs = []
    for pid in (0, 1):
        env = _env(2, **({FAULT_ENV: faults[pid]} if faults[pid] else {}))
        cmd = _train(
            config,
            workdir,
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            "2",
            "--process-id",
            str(pid),
            *extra,
        )
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs, timeout=600):
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


def _metrics(workdir: Path):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(workdir / "metrics.jsonl")]


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_after_a_kill(tmp_path):
    config = tmp_path / "digits_mp.py"
    config.write_text(CONFIG.format(base=BASE))
    single = subprocess.Popen(
        _train(config, tmp_path / "single"), env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _finish([single])
    multi = _two_processes(config, tmp_path / "multi")
    (out0, _), (out1, _) = _finish(multi)
    assert "4 device(s) [cpu], mesh {'data': 4}, 2 process(es)" in out0  # one global mesh
    assert "test accuracy" in out0 and "test accuracy" not in out1  # the lead process reports

    one, two = _metrics(tmp_path / "single"), _metrics(tmp_path / "multi")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [2, 4, 4, 6, 8, 8]
    diffs = [abs(a[k] - b[k]) for a, b in zip(one, two) for k in ("loss", "accuracy", "grad_norm") if k in a]
    print("max |single - multi-process| over the logged metrics:", max(diffs))
    assert max(diffs) <= 1e-5

    # kill process 1 inside its step-6 checkpoint write; process 0 then waits at orbax's barrier
    killed = _two_processes(config, tmp_path / "killed", faults=(None, "sleep@6"))
    deadline = time.monotonic() + 300
    for line in killed[1].stderr:
        if "checkpoint-fault: sleeping at step 6" in line or time.monotonic() > deadline:
            break
    os.kill(killed[1].pid, signal.SIGKILL)
    killed[1].wait()
    killed[0].kill()
    killed[0].communicate()
    checkpoints = sorted(int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir() if p.name.isdigit())
    assert checkpoints == [2, 4]
    (out0, _), _ = _finish(_two_processes(config, tmp_path / "killed", "--resume"))
    assert "resumed from step 4" in out0
    assert _metrics(tmp_path / "killed") == two  # nothing lost: the same trajectory as the uninterrupted run
