"""The prepared accelerator benchmark: one command, bounded in time, results written as files.

    ttt-compile bench --device [--tiny] [--out DIR]
    python -m ttt_compile.benchmarks.device [--tiny] [--out DIR]

What it measures (every figure is a measurement of this run; nothing is estimated except the
self-attention memory at n = 50,176, which is computed from its formula and labelled so):

1. ViT-S/16 at 224 x 224 (n = 196 tokens, Table 1 of Sun et al. 2023), one outer training step:
   ``value_and_grad`` of the mean cross-entropy, then clip + AdamW (first moment in bf16); the
   forward and backward passes run in bfloat16 on a cast of the float32 master weights, as the
   trainer does with ``dtype="bfloat16"``. Layers: linear attention, MTTT-Linear, MTTT-MLP T=1,
   MTTT-MLP SGD T=4, self-attention (each TTT layer compiled with ``tc.compile(..., "default")``).
   Reported: images/s; FLOPs per step from XLA's cost analysis of the compiled step, with loop
   trip counts (``ttt_compile.cost``) whenever a loop survives in the compiled program; achieved
   TFLOP/s = FLOPs / (seconds per step) and its fraction of the device's bf16 peak (``PEAK_BF16``,
   by device kind; "unknown" when the kind is not in the table); peak device memory from
   ``device.memory_stats()["peak_bytes_in_use"]`` (each measurement runs in a fresh process, so
   the peak is that measurement's), or, where the backend has no memory stats (CPU), XLA's
   compiled memory analysis (arguments + outputs + temporaries).
2. ViT-Ti on raw 224 x 224 pixels (patch 1, n = 50,176 tokens; Table 3), the same training step,
   batch 1: images/s and memory per image for MTTT-Linear and MTTT-MLP. Self-attention is not
   run: its row reports the memory of the attention probabilities its backward pass keeps,
   ``depth * H * n^2`` values in the compute dtype per image (formula, not measured).
3. The causal LM layer (d = 256, H = 4, one layer, float32; training step = value_and_grad of
   ``sum(sin(layer(x)))`` over a batch of sequences) at n = 4,096 and 16,384: tokens/s of causal
   MTTT-Linear (chunk 16 and 64, default pipeline incl. ``dual_form``) and of chunked causal linear
   attention (``models/causal.py``, chunk 64).
4. Only where flax is installed and ``TTT_LM_JAX_DIR`` names a checkout of test-time-training/ttt-lm-jax
   (else recorded as skipped, with the reason): our converted TTT-Linear and TTT-MLP against the peer's
   own layers (d = 768, H = 12, n = 2,048, mini-batch 16, float32, batch 1), the training step of
   ``benchmarks/ttt_lm_jax.py`` for both, timed interleaved in one process: the per-round time ratio
   ours / peer, tokens/s, FLOPs and compiled temp memory of each.

Every measurement runs in its own subprocess under a time limit (``LIMITS``; the whole run also has
a budget, ``BUDGET_S``); one that fails, runs out of memory or out of time is recorded with its
error and the run goes on. Device, driver and library versions are recorded with the figures in
``results.json`` and ``results.md`` in ``--out``. ``--tiny`` shrinks every model and sequence to
exercise the same code paths on a CPU within a 170 s budget (its figures say nothing about an
accelerator; on a loaded 2-core machine its compiles need more: ``--budget``).

Modules: this one plans the run, runs each measurement in a child process
(``python -m ttt_compile.benchmarks.device --job SPEC``) and writes the results; `device_jobs`
holds what the child runs (the layers, sizes and peaks, `JOBS`, `run_job`); `device_report`
renders results.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .device_jobs import (  # noqa: F401  (device.X as before the split: what the child runs)
    CAUSAL,
    JOBS,
    PEAK_BF16,
    PIXEL_LAYERS,
    SIZES,
    TTT_LM_JAX,
    VIT_LAYERS,
    build_vit,
    causal_layer,
    job_causal,
    job_info,
    job_vit,
    peak_tflops,
    run_job,
    throughput,
    ttt_lm_jax_unavailable,
    vit_step,
)
from .device_report import markdown
from .harness import write_results

# --tiny is a smoke run of the code paths: its child processes ask XLA for few optimisations, which
# halves the compile times that dominate it on a CPU (recorded in results.json as "child_env").
CHILD_ENV = {"full": {}, "tiny": {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}}

BUDGET_S = {"full": 470.0, "tiny": 170.0}  # the whole run (the issue: < 8 min / < 3 min)
LIMITS = {
    "full": {"info": 60, "vit": 110, "pixels": 150, "causal": 60, "ttt_lm_jax": 150},
    "tiny": {"info": 30, "vit": 90, "pixels": 90, "causal": 60, "ttt_lm_jax": 90},
}


# ==================================================================================== the run
def attention_memory(size: dict, bytes_per_value: int = 2) -> dict:
    """The memory self-attention would need per image (formula, not measured): one layer's scores
    H n^2, and the probabilities all `depth` blocks keep for the backward pass, depth H n^2, in
    the compute dtype (bf16: 2 bytes)."""
    from_preset = {"Ti": (12, 3), "S": (12, 6)}[size["variant"]]
    depth, heads = size["dims"].get("depth", from_preset[0]), size["dims"].get("heads", from_preset[1])
    n = (size["image"] // size["patch"]) ** 2
    return {
        "status": "not run (formula)",
        "tokens": n,
        "scores_one_layer_bytes": heads * n * n * bytes_per_value,
        "memory_per_image_bytes": depth * heads * n * n * bytes_per_value,
        "formula": f"depth * H * n^2 * {bytes_per_value} B = {depth} * {heads} * {n}^2 * {bytes_per_value} B",
    }


def plan(mode: str) -> list[dict]:
    """Every measurement of the run, in order."""
    jobs = [{"part": "info", "name": "info"}]
    jobs += [{"part": "vit", "name": name, "layer": name} for name in VIT_LAYERS]
    jobs += [{"part": "pixels", "name": name, "layer": name} for name in PIXEL_LAYERS]
    jobs += [
        {"part": "causal", "name": f"{name} n={n}", "layer": name, "n": n}
        for n in SIZES[mode]["causal"]["ns"]
        for name in CAUSAL
    ]
    jobs += [
        {"part": "ttt_lm_jax", "name": f"{name} n={SIZES[mode]['ttt_lm_jax']['n']}", "layer": name}
        for name in TTT_LM_JAX
    ]
    return [{**j, "mode": mode} for j in jobs]


def _error(text: str, limit: int = 1500) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    tail = "\n".join(lines[-12:])
    return tail[-limit:] if tail else "no output"


def run_subprocess(spec: dict, limit: float, env: dict | None = None) -> dict:
    """Run one measurement in a fresh Python process (its own device memory and its own peak),
    killed after `limit` seconds; `env` is added to the environment."""
    cmd = [sys.executable, "-m", "ttt_compile.benchmarks.device", "--job", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return {
            "status": "failed",
            "error": f"timed out after {limit:.0f} s (the measurement's limit)",
            "stderr_tail": _error(err),
            "wall_s": time.perf_counter() - t0,
        }
    wall = time.perf_counter() - t0
    results = [line[len("RESULT ") :] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        return {"status": "failed", "error": f"exit status {proc.returncode}: {_error(proc.stderr)}", "wall_s": wall}
    return {**json.loads(results[-1]), "wall_s": wall}


def run(out_dir: str | os.PathLike, tiny: bool = False, log=print, budget_s: float | None = None) -> dict:
    """Run every measurement (see the module doc), write results.json and results.md to out_dir,
    and return the results. `budget_s` (default BUDGET_S) bounds the whole run: a measurement
    gets min(its limit, the time left), and none starts with less than 10 s left."""
    mode = "tiny" if tiny else "full"
    budget = BUDGET_S[mode] if budget_s is None else float(budget_s)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    deadline = t_start + budget
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "command": "ttt-compile bench --device" + (" --tiny" if tiny else ""),
        "sizes": SIZES[mode],
        "budget_s": budget,
        "limits_s": LIMITS[mode],
        "child_env": CHILD_ENV[mode],
        "info": None,
        "vit": [],
        "pixels": [],
        "causal": [],
        "ttt_lm_jax": [],
    }
    for spec in plan(mode):
        left = deadline - time.perf_counter()
        limit = min(LIMITS[mode][spec["part"]], left)
        unavailable = ttt_lm_jax_unavailable() if spec["part"] == "ttt_lm_jax" else None
        if unavailable:
            r = {"status": "skipped", "error": unavailable}
        elif limit < 10:
            r = {"status": "skipped", "error": f"the run's budget of {budget:.0f} s ran out"}
        else:
            log(f"[{time.perf_counter() - t_start:6.1f}s] {spec['part']}: {spec['name']} (limit {limit:.0f}s)")
            r = run_subprocess(spec, limit, CHILD_ENV[mode])
        if r.get("status") != "ok" and spec["part"] != "info":
            log(f"    {r['status']}: {r.get('error', '')[:300]}")
        row = {"name": spec["name"], **({"n": spec["n"]} if "n" in spec else {}), **r}
        if spec["part"] == "info":
            results["info"] = row
        else:
            results[spec["part"]].append(row)
    results["pixels"].append({"name": "self-attention", **attention_memory(SIZES[mode]["pixels"])})
    results["wall_s"] = time.perf_counter() - t_start
    write_results(out, "results", results, markdown(results), log=lambda m: log(f"{m} in {results['wall_s']:.0f} s"))
    return results


# ========================================================================================= CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="ttt-compile bench --device", description="The prepared accelerator benchmark (see the module doc)."
    )
    parser.add_argument("--tiny", action="store_true", help="small models and sequences (a CPU smoke run, ~1 min)")
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/results/device-<date>)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default: 470, --tiny 170)")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one measurement, print RESULT json
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.budget is not None and args.budget <= 0:
        parser.error(f"--budget {args.budget:g}: give a positive number of seconds")
    if args.job:
        result = run_job(json.loads(args.job))
        print("RESULT " + json.dumps({"status": "ok", **result}), flush=True)
        return 0
    out = args.out or Path(__file__).resolve().parent / "results" / (
        f"device-{datetime.date.today().isoformat()}" + ("-tiny" if args.tiny else "")
    )
    run(out, tiny=args.tiny, budget_s=args.budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
