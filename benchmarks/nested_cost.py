"""What a two-level learner costs: FLOPs and time of one training step of the MQAR and character-LM
models with a two-level MTTT mixer against MTTT-Linear, MTTT-MLP and softmax attention, and where the
two-level layer's FLOPs are, level by level.

Training step: ``value_and_grad`` of the task's loss w.r.t. every float leaf of the model (what the
trainer differentiates; the outer optimizer's update is left out, it is the same for every mixer), on
one batch of the task, jit-compiled, float32.  FLOPs: XLA's cost analysis with loop trip counts
(`ttt_compile.cost.measure`).  Time: median over interleaved rounds in one process
(`benchmarks.timing.interleaved`, all models in one cluster); "x MTTT-MLP" is the median over rounds
of time / MTTT-MLP's time.  Levels (`ttt_compile.cost.by_level`): the mixer alone on one sequence,
traced with its loops as `ttt_loop`s (before any pass): level 0 outside every loop, level 1 inside the
online inner loop, level 2 inside the learner's own TTT layer; forward and training step.

    python -m ttt_compile.benchmarks.nested_cost [--rounds 7] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

import ttt_compile as tc
from ttt_compile import cost
from ttt_compile.configs import load_config
from ttt_compile.models import layers

from . import timing
from .harness import write_results

SETTINGS = {
    "mqar": ("mqar_mttt_linear", "mqar_mttt_mlp", "mqar_mttt_nested", "mqar_self_attention"),
    "lm": ("lm_mttt_linear", "lm_mttt_mlp", "lm_mttt_nested", "lm_self_attention"),
}
REFERENCE = "mttt_mlp"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "nested"


def train_step(config):
    """(jit'ed value_and_grad of the task loss, params, one batch) for a shipped config."""
    from ttt_compile.training import data as data_lib
    from ttt_compile.training.tasks import make_task

    task = make_task(config, 1)
    params, static = eqx.partition(task.build(jax.random.PRNGKey(config.seed)), eqx.is_inexact_array)
    batches = data_lib.iterate(task.train_batches(0, 1), 0, 1, threads=1)
    batch = jax.tree.map(jnp.asarray, next(batches))
    batches.close()

    def loss(p, b):
        return task.loss(eqx.combine(p, static), b)[0]

    return jax.value_and_grad(loss), params, batch


def levels(config) -> dict:
    """FLOPs by loop level of the config's mixer alone on one sequence: forward and training step."""
    layer = layers.get(config.layer)(
        dim=config.width, heads=config.heads, key=jax.random.PRNGKey(0), **config.layer_options
    )
    x = jax.random.normal(jax.random.PRNGKey(1), (config.seq_len, config.width))
    params, static = eqx.partition(layer, eqx.is_inexact_array)

    def fwd(p):
        return eqx.combine(p, static)(x)

    def grad(p):
        return jax.grad(lambda q: jnp.sum(jnp.sin(fwd(q))))(p)

    with tc.emitting():
        return {
            "forward": cost.by_level(jax.make_jaxpr(fwd)(params)),
            "train": cost.by_level(jax.make_jaxpr(grad)(params)),
        }


def run(rounds: int, log=print) -> dict:
    out = {}
    for setting, names in SETTINGS.items():
        thunks, rows = {}, {}
        for name in names:
            config = load_config(name)
            fn, params, batch = train_step(config)
            c = cost.measure(jax.make_jaxpr(fn)(params, batch))
            step = jax.jit(fn)
            thunks[name] = lambda step=step, params=params, batch=batch: step(params, batch)
            rows[name] = {
                "layer": config.layer,
                "params": sum(a.size for a in jax.tree_util.tree_leaves(params)),
                "gflop": c.flops / 1e9,
                "temp_mib": c.temp_bytes / 2**20,
            }
            if config.layer.startswith("mttt"):
                rows[name]["levels"] = levels(config)
            log(
                f"  {name:<22} {rows[name]['params']:>8,} params  {c.flops / 1e9:8.3f} GFLOP  "
                f"temp {c.temp_bytes / 2**20:7.1f} MiB  levels {rows[name].get('levels', {}).get('train', '-')}"
            )
        times = timing.interleaved(thunks, rounds, min_block_s=0.3, clusters=[list(thunks)])
        ref = next(n for n in names if load_config(n).layer == REFERENCE)
        for name, ts in times.items():
            rows[name]["ms"] = 1e3 * timing.median(ts)
            rows[name]["x_mlp"] = timing.ratio(ts, times[ref])
            rows[name]["x_mlp_iqr"] = list(timing.ratio_quartiles(ts, times[ref]))
            log(f"  {name:<22} {rows[name]['ms']:8.1f} ms/step  x{rows[name]['x_mlp']:.2f} MTTT-MLP")
        out[setting] = {"batch": load_config(names[0]).batch_size, "rows": rows}
    return {"rounds": rounds, "settings": out}


def markdown(result: dict) -> str:
    lines = [
        f"# Two-level MTTT: cost of a training step ({result['date']})",
        "",
        f"Command: `{result['command']}`. Machine: {result['machine']}; jax {result['jax']}; load at start "
        f"{result['load']}. Models: the shipped configs (`ttt_compile/configs/{{mqar,lm}}_*.py`) at their "
        f"default cell; one batch; value_and_grad of the task loss, float32, jit; median of {result['rounds']} "
        "interleaved rounds. FLOPs: XLA cost analysis with loop trip counts (`ttt_compile.cost`).",
        "",
    ]
    for setting, s in result["settings"].items():
        lines += [
            f"## {setting} (batch {s['batch']})",
            "",
            "| config | mixer | params | GFLOP / step | temp MiB | ms / step | x MTTT-MLP (IQR) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, r in s["rows"].items():
            q25, q75 = r["x_mlp_iqr"]
            lines.append(
                f"| {name} | {r['layer']} | {r['params']:,} | {r['gflop']:.3f} | {r['temp_mib']:.1f} | "
                f"{r['ms']:.1f} | {r['x_mlp']:.2f} ({q25:.2f}-{q75:.2f}) |"
            )
        lines += [
            "",
            "FLOPs of the mixer alone on one sequence, by loop level (0: outside loops, 1: in the online "
            "inner loop, 2: in the learner's own TTT layer):",
            "",
            "| config | forward, by level | training step, by level |",
            "| --- | --- | --- |",
        ]
        for name, r in s["rows"].items():
            if "levels" in r:
                f = ", ".join(f"{v / 1e6:.2f}M" for v in r["levels"]["forward"])
                t = ", ".join(f"{v / 1e6:.2f}M" for v in r["levels"]["train"])
                lines.append(f"| {name} | {f} | {t} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    import os

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    command = "python -m ttt_compile.benchmarks.nested_cost" + (f" --rounds {args.rounds}" if args.rounds != 7 else "")
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "jax": jax.__version__,
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        **run(args.rounds),
    }
    write_results(args.out, "nested_cost", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
