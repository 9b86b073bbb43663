"""Atomic, self-describing checkpoints of a pytree of arrays.

``save`` writes ``DIR/.tmp-step_SSSSSSSS-PID/{arrays.npz, meta.json}``, fsyncs the files and the
folder, then ``os.replace``-s the folder to ``DIR/step_SSSSSSSS``: a checkpoint is either complete
under its final name or absent, whatever moment the process dies at (``kill -9`` included). Leftover
temporary folders are removed by :func:`clean_partial`. Arrays are stored as raw bytes with their
dtype names, so bfloat16 optimiser moments round-trip exactly.

Test hook: the environment variable ``TTT_COMPILE_CHECKPOINT_FAULT`` = ``exit@S`` makes the writer
call ``os._exit(3)`` halfway through writing step ``S``'s checkpoint (after the arrays, before the
metadata); ``sleep@S`` makes it print ``checkpoint-fault: sleeping at step S`` to stderr and sleep
there (for a test to ``kill -9`` it).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FAULT_ENV = "TTT_COMPILE_CHECKPOINT_FAULT"
_PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into the requested structure."""


def step_dir(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"{_PREFIX}{step:08d}"


def to_host(x: Any) -> np.ndarray:
    """A (replicated or fully addressable) array as one numpy array on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(jax.device_get(x))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fault(step: int) -> None:
    action, _, at = os.environ.get(FAULT_ENV, "").partition("@")
    if not at or int(at) != step:
        return
    if action == "exit":
        os._exit(3)
    if action == "sleep":
        print(f"checkpoint-fault: sleeping at step {step}", file=sys.stderr, flush=True)
        time.sleep(3600)


def save(directory: str | os.PathLike, step: int, tree: Any, meta: dict[str, Any] | None = None, *,
         keep: int | None = None) -> Path:
    """Write ``tree``'s leaves (and JSON ``meta``) as the checkpoint of ``step``; keep the newest ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = step_dir(directory, step)
    tmp = directory / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    leaves = [to_host(x) for x in jax.tree_util.tree_leaves(tree)]
    with open(tmp / "arrays.npz", "wb") as f:
        np.savez(f, **{f"a{i}": np.frombuffer(a.tobytes(), np.uint8) for i, a in enumerate(leaves)})
        f.flush()
        os.fsync(f.fileno())
    _fault(step)
    record = {"step": step, "leaves": [{"dtype": a.dtype.name, "shape": list(a.shape)} for a in leaves],
              "meta": meta or {}}
    with open(tmp / "meta.json", "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync(tmp)
    if final.exists():
        old = directory / f".tmp-old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)
    _fsync(directory)
    if keep is not None:
        for stale in steps(directory)[:-keep]:
            shutil.rmtree(step_dir(directory, stale), ignore_errors=True)
    return final


def steps(directory: str | os.PathLike) -> list[int]:
    """Steps with a complete checkpoint in ``directory``, ascending."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name[len(_PREFIX):]) for p in directory.iterdir()
                  if p.name.startswith(_PREFIX) and (p / "meta.json").is_file())


def latest_step(directory: str | os.PathLike) -> int | None:
    found = steps(directory)
    return found[-1] if found else None


def clean_partial(directory: str | os.PathLike) -> list[Path]:
    """Remove temporary folders that a killed writer left behind; return them."""
    directory = Path(directory)
    stale = [p for p in directory.iterdir() if p.name.startswith(".tmp-")] if directory.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def read_meta(directory: str | os.PathLike, step: int) -> dict[str, Any]:
    with open(step_dir(directory, step) / "meta.json") as f:
        return json.load(f)["meta"]


def load_leaves(directory: str | os.PathLike, step: int) -> list[np.ndarray]:
    """The arrays of the checkpoint of ``step``, in the order of the saved tree's leaves."""
    path = step_dir(directory, step)
    with open(path / "meta.json") as f:
        specs = json.load(f)["leaves"]
    with np.load(path / "arrays.npz") as f:
        return [np.frombuffer(f[f"a{i}"].tobytes(), jnp.dtype(spec["dtype"])).reshape(spec["shape"])
                for i, spec in enumerate(specs)]


def restore(directory: str | os.PathLike, step: int, like: Any) -> Any:
    """The checkpoint of ``step`` as numpy leaves in the structure of ``like`` (whose leaves give the
    expected shapes and dtypes)."""
    path = step_dir(directory, step)
    leaves = load_leaves(directory, step)
    expected, treedef = jax.tree_util.tree_flatten(like)
    if len(expected) != len(leaves):
        raise CheckpointError(f"{path} holds {len(leaves)} arrays, the model of this config has "
                              f"{len(expected)}: resume with the config that wrote it")
    for i, (a, want) in enumerate(zip(leaves, expected)):
        if a.shape != tuple(np.shape(want)) or a.dtype != jnp.dtype(getattr(want, "dtype", a.dtype)):
            raise CheckpointError(f"{path}: array {i} is {a.dtype}{list(a.shape)}, the model expects "
                                  f"{want.dtype}{list(np.shape(want))}: resume with the config that wrote it")
    return jax.tree_util.tree_unflatten(treedef, leaves)
