"""The pass-comparison suite: every layer preset under each pass pipeline, across sequence lengths.

For each cell (layer, pipeline, d, H, n, batch) it measures, for the batched forward pass
`vmap(prog)(x)` and for the training step `value_and_grad(sum(sin(vmap(prog)(x))))` w.r.t. the
outer parameters (both as /work/shared/checks/targets.py defines them):

- FLOPs, from XLA's cost analysis with loop trip counts accounted for (`ttt_compile.cost.of`
  whenever the compiled program still has a `while`; XLA's own count when it has none, which is
  what `cost.of` returns for such a program);
- compiled temp memory (`jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes`);
- wall-clock time: median over >= 10 interleaved rounds after warm-up (see `timing`), together
  with a 2048 x 2048 f32 matmul timed in the same rounds, which gives the achieved GFLOP/s as a
  fraction of this machine's matmul peak at that moment;
- compile times (`tc.compile`, and XLA compile of each program).

Pipelines that produce the same program (same jaxpr text) are measured once and the cell says so.
All ratios (pipeline / none, the published targets) are taken inside one run and one group of
interleaved rounds; never compare figures across runs.  Cells that cannot be measured on this
machine within the budget are recorded as skipped with the reason, never estimated.

Run: `ttt-compile bench [--quick] [--out DIR] [--only LAYER ...]`, or
`python -m ttt_compile.benchmarks.suite ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import hashlib
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from . import timing
from .harness import write_results
from .suite_config import Config
from .suite_measure import LAYERS, log, pipelines, run_group, stack_compile, warm_up
from .suite_report import add_ratios, markdown, method, targets


def _all_pipelines() -> tuple[str, ...]:
    return tuple(pipelines())


FULL = Config(
    name="full",
    dims=((384, 6), (192, 3)),
    ns=(196, 1024, 4096),
    flops_only=((192, 50176),),
    batch=8,
    layers=tuple(LAYERS),
    pipelines=(),
    sweep=((384, 196),),
    reps=10,
    min_block_s=0.05,
    time_budget_s=60.0,
    max_call_s=5.0,
    max_temp_bytes=4 << 30,
    rate_floor=0.1,
    stack=(12, 384, 6, 196),
    deadline_s=30 * 60.0,
)
QUICK = Config(
    name="quick",
    dims=((192, 3),),
    ns=(64, 256),
    flops_only=(),
    batch=8,
    layers=("linear_attention", "mttt_linear"),
    pipelines=("none", "unroll", "fold_zero_init", "default"),
    sweep=((192, 64),),
    reps=5,
    min_block_s=0.02,
    time_budget_s=6.0,
    max_call_s=0.5,
    max_temp_bytes=1 << 30,
    rate_floor=0.1,
    stack=(12, 384, 6, 196),
    stack_pipelines=("default",),
    peak_size=1024,
    warm_up=False,
)
TINY = Config(
    name="tiny",
    dims=((16, 2),),
    ns=(8,),
    flops_only=(),
    batch=2,
    layers=("linear_attention", "mttt_linear"),
    pipelines=("none", "default"),
    sweep=(),
    reps=3,
    min_block_s=0.002,
    time_budget_s=2.0,
    max_call_s=0.5,
    max_temp_bytes=1 << 28,
    rate_floor=0.01,
    stack=(1, 16, 2, 8),
    stack_pipelines=("default",),
    peak_size=256,
    warm_up=False,
)


# --------------------------------------------------------------------------- machine facts
def machine() -> dict:
    """Facts about this machine and software, for results.json."""
    import jaxlib

    model = ""
    try:
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "",
        )
    except OSError:
        pass
    return {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "processor": model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def source_state() -> dict:
    """Which compiler the figures belong to: the git commit (read-only query; None outside a
    checkout), whether tracked files differ from it, and a hash of the core sources (ttt_compile,
    passes, models) as they are on disk now."""
    import subprocess

    import ttt_compile
    from ttt_compile import models, passes

    h = hashlib.sha1()
    for pkg in (ttt_compile, passes, models):
        for f in sorted(Path(pkg.__file__).parent.glob("*.py")):
            h.update(f.name.encode() + f.read_bytes())
    root = Path(ttt_compile.__file__).resolve().parent.parent

    def git(*args):
        try:
            return subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or None
    return {
        "commit": commit,
        "tracked_changes": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None,
        "core_sources_sha1": h.hexdigest()[:16],
    }


# --------------------------------------------------------------------------- the run
def plan(cfg: Config, layer_names) -> list[tuple[int, int, int, bool, tuple[str, ...]]]:
    """(d, H, n, flops_only, pipelines) of each group, in run order."""
    everything = cfg.pipelines or _all_pipelines()
    out = []
    for dim, heads in cfg.dims:
        shapes = [(n, False) for n in cfg.ns] + [(n, True) for d, n in cfg.flops_only if d == dim]
        for n, flops_only in shapes:
            pipes = everything if (dim, n) in cfg.sweep else tuple(p for p in ("none", "default") if p in everything)
            out.append((dim, heads, n, flops_only, pipes))
    return out


def run(cfg: Config, out_dir: Path, layer_names=None) -> dict:
    """Run the suite and write results.json, results.md and the plots into out_dir."""
    from . import plots

    t_start = time.perf_counter()
    layer_names = tuple(layer_names or cfg.layers)
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = machine()
    facts["source_start"] = source_state()
    log(f"{cfg.name} suite -> {out_dir}; {facts['cpus_usable']} CPUs, jax {facts['jax']}")
    peak = timing.matmul_peak(cfg.peak_size)
    if cfg.warm_up:
        warm_up()
    stack = stack_compile(cfg) if "mttt_linear" in layer_names else None
    groups, skipped_groups = [], []
    for dim, heads, n, flops_only, pipes in plan(cfg, layer_names):
        elapsed = time.perf_counter() - t_start
        if cfg.deadline_s is not None and elapsed > cfg.deadline_s:
            skipped_groups.append(
                {
                    "dim": dim,
                    "heads": heads,
                    "n": n,
                    "flops_only": flops_only,
                    "skipped": f"not started: the run had used {elapsed:.0f} s of its {cfg.deadline_s:.0f} s budget",
                }
            )
            log(f"group d={dim} n={n} SKIPPED: {skipped_groups[-1]['skipped']}")
            continue
        log(
            f"group d={dim} H={heads} n={n} batch={cfg.batch}{' (FLOPs/memory only)' if flops_only else ''}: "
            f"{len(layer_names)} layers x {len(pipes)} pipelines  [{time.perf_counter() - t_start:.0f} s]"
        )
        g = run_group(cfg, dim, heads, n, flops_only=flops_only, layer_names=layer_names, pipe_names=pipes, peak=peak)
        add_ratios(g)
        groups.append(g)
        jax.clear_caches()
        gc.collect()
    peaks = [g["peak"]["gflops"] for g in groups if g["peak"]]
    facts["peak_gflops"] = float(np.median(peaks)) if peaks else None
    facts["peak_matmul"] = f"{cfg.peak_size}x{cfg.peak_size} f32 jnp.dot, timed in every group's interleaved rounds"
    facts["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    facts["source_end"] = source_state()
    if facts["source_end"]["core_sources_sha1"] != facts["source_start"]["core_sources_sha1"]:
        log("WARNING: the core sources changed on disk during the run (this process kept the modules it imported)")
    results = {
        "machine": facts,
        "config": dataclasses.asdict(cfg),
        "layers": {k: LAYERS[k] for k in layer_names},
        "pipelines": {k: v for k, v in pipelines().items()},
        "method": method(cfg),
        "stack_compile": stack,
        "groups": groups,
        "skipped_groups": skipped_groups,
        "targets": targets(groups, stack),
    }
    results["plots"] = [p.name for p in plots.write_all(results, out_dir)]
    results["runtime_s"] = time.perf_counter() - t_start
    write_results(out_dir, "results", results, markdown(results), log=log)
    log(f"done in {results['runtime_s']:.0f} s; {len(results['plots'])} plots")
    return results


# --------------------------------------------------------------------------- entry point
def default_out(cfg: Config) -> Path:
    """benchmarks/results/<date>[-<quick|tiny>] under the current directory if it has benchmarks/,
    else ttt-compile-bench/<date>..."""
    stamp = datetime.date.today().isoformat() + ("" if cfg.name == "full" else f"-{cfg.name}")
    base = Path("benchmarks/results") if Path("benchmarks").is_dir() else Path("ttt-compile-bench")
    return base / stamp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `ttt-compile bench` (see :func:`run_args`)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="d=192, n=64 and 256, linear attention and MTTT-Linear, "
        "4 pipelines, 5 rounds (< 2 min); add --only LAYER to pick other layers",
    )
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # a few seconds; for tests
    parser.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results/DATE)")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="LAYER",
        default=None,
        help=f"restrict to these layers (or preset names): {', '.join(LAYERS)}",
    )


def run_args(args: argparse.Namespace) -> int:
    """Run the suite the parsed options of :func:`add_arguments` describe; returns the exit status."""
    cfg = TINY if args.tiny else QUICK if args.quick else FULL
    names = cfg.layers
    if args.only:
        unknown = [o for o in args.only if not any(n == o or n.startswith(o + "_") for n in LAYERS)]
        if unknown:
            print(
                f"ttt-compile bench: unknown layer(s) {', '.join(unknown)}; choose from {', '.join(LAYERS)}",
                file=sys.stderr,
            )
            return 2
        names = tuple(n for n in LAYERS if any(n == o or n.startswith(o + "_") for o in args.only))
    run(cfg, args.out or default_out(cfg), names)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`ttt-compile bench [--quick] [--out DIR] [--only LAYER ...]`; returns the exit status."""
    from ttt_compile.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
