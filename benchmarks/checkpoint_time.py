"""How long a training checkpoint blocks the loop: orbax writing synchronously vs asynchronously.

    python -m ttt_compile.benchmarks.checkpoint_time [--mb 64] [--repeats 5]

A state of ``--mb`` MB of float32 arrays (shaped like a ViT's: a few large matrices, many vectors)
is saved ``--repeats`` times by each mode, interleaved; per save: ``blocked_s``, the time until
``save`` returns (what the training loop waits), and ``done_s``, until the files are complete. Prints
one JSON object with the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax
import numpy as np


def state(mb: float) -> dict:
    """~``mb`` MB of float32: 3 matrices of equal share and 64 vectors of 1024."""
    rng = np.random.default_rng(0)
    side = int((mb * 2**20 / 4 / 3) ** 0.5)
    tree = {f"w{i}": rng.standard_normal((side, side), np.float32) for i in range(3)}
    tree.update({f"b{i}": rng.standard_normal(1024).astype(np.float32) for i in range(64)})
    return jax.device_put(tree)


def measure(mb: float, repeats: int) -> dict:
    from ttt_compile.training import Checkpoints

    tree = state(mb)
    nbytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(tree))
    times = {"blocking": [], "async": []}
    with tempfile.TemporaryDirectory() as tmp:
        managers = {mode: Checkpoints(f"{tmp}/{mode}", keep=2, asynchronous=mode == "async") for mode in times}
        for step in range(1, repeats + 1):
            for mode, manager in managers.items():
                t0 = time.perf_counter()
                manager.save(step, tree)
                blocked = time.perf_counter() - t0
                manager.wait()
                times[mode].append((blocked, time.perf_counter() - t0))
        for manager in managers.values():
            manager.close()
    return {
        "state_mb": nbytes / 2**20,
        "repeats": repeats,
        **{
            mode: {"blocked_s": statistics.median(b for b, _ in v), "done_s": statistics.median(d for _, d in v)}
            for mode, v in times.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=64.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.mb, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
