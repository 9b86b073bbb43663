"""The memory planner on raw pixels: MTTT at n = 224 * 224 = 50,176 tokens (ViT-Ti's layer, d = 192,
H = 3, float32) compiled with `tc.compile(layer, x, remat_budget=B)`, B = `--budget` times linear
attention's training-step temp memory (default 2), no chunk size named by the user.

Reported per layer: the plan the planner chose (token chunk and remat notes), every candidate it
measured, the planned program's compiled training-step temp memory against the budget and against
the unplanned default pipeline, the planning time, and the time cost of the plan: the training step
with the plan against the unplanned one, run and timed interleaved in one process (median and IQR of
the per-round ratio, `benchmarks.timing`).  Memory is XLA's `memory_analysis().temp_size_in_bytes`
of the compiled step (compiled, not run).

    python -m ttt_compile.benchmarks.planner [--n 50176] [--budget 2] [--rounds 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

import ttt_compile as tc
from ttt_compile.models import layers

from . import timing
from .harness import compiled_figures, write_results

DIM, HEADS = 192, 3  # ViT-Ti's attention layer
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "planner"
LAYERS = {
    "MTTT-MLP T=1": ("mttt_mlp", {"steps": 1}),
    "MTTT-MLP SGD T=4": ("mttt_mlp", {"steps": 4, "batching": "sgd"}),
    "MTTT-Linear": ("mttt_linear", {}),
}


def _step(layer):
    """(jit'ed value_and_grad of sum(sin(layer(x))) w.r.t. the float leaves, those leaves)."""
    params, static = eqx.partition(layer, eqx.is_inexact_array)

    def loss(p, x):
        return jnp.sum(jnp.sin(eqx.combine(p, static)(x)))

    return jax.value_and_grad(loss), params


def _lowered(layer, x):
    """(lowered training step of `layer` at x, its parameters)."""
    fn, params = _step(layer)
    return jax.jit(fn).lower(params, x), params


def temp_bytes(layer, x) -> int:
    """Compiled training-step temp memory of `layer` at x (compiled, not run)."""
    fn, params = _step(layer)
    return compiled_figures(fn, (params, x))[0]["temp_bytes"]


def run(n: int, budget_factor: float, rounds: int, log=print) -> dict:
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(jax.random.PRNGKey(1), (n, DIM), jnp.float32)
    linear = tc.compile(layers.linear_attention(dim=DIM, heads=HEADS, key=key), x)
    reference = temp_bytes(linear, x)
    budget = int(budget_factor * reference)
    log(f"linear attention n={n}: {reference / 2**30:.3f} GiB; budget {budget_factor} x = {budget / 2**30:.3f} GiB")
    rows, thunks, clusters = [], {}, []
    for name, (preset, options) in LAYERS.items():
        layer = layers.get(preset)(dim=DIM, heads=HEADS, key=key, **options)
        unplanned = tc.compile(layer, x)
        t0 = time.perf_counter()
        planned = tc.compile(layer, x, remat_budget=budget)
        plan_s = time.perf_counter() - t0
        notes = list(planned.pipeline[0][2])
        remat = [f"{s}: {m}" for s, _, ms in planned.pipeline[1:] if s == "remat" for m in ms]
        row = {
            "layer": name,
            "n": n,
            "plan": notes[0],
            "candidates": notes[1:],
            "remat_notes": remat,
            "planning_s": plan_s,
            "unplanned_temp_bytes": temp_bytes(unplanned, x),
            "planned_temp_bytes": temp_bytes(planned, x),
            "budget_bytes": budget,
        }
        row["fits"] = row["planned_temp_bytes"] <= budget
        rows.append(row)
        log(
            f"  {name}: {row['plan']}\n    unplanned {row['unplanned_temp_bytes'] / 2**30:.3f} GiB -> planned "
            f"{row['planned_temp_bytes'] / 2**30:.3f} GiB ({row['planned_temp_bytes'] / reference:.2f} x linear "
            f"attention), planning {plan_s:.0f} s"
        )
        lowered = {tag: _lowered(prog, x) for tag, prog in (("unplanned", unplanned), ("planned", planned))}
        row["same_program"] = lowered["planned"][0].as_text() == lowered["unplanned"][0].as_text()
        if rounds and not row["same_program"]:  # the same HLO is the same step: nothing to time
            for tag, (low, params) in lowered.items():
                exe = low.compile()
                thunks[f"{name} {tag}"] = lambda exe=exe, params=params: exe(params, x)
            clusters.append([f"{name} unplanned", f"{name} planned"])
    if rounds:
        times = timing.interleaved(thunks, rounds, min_block_s=0.5, clusters=clusters)
        for row, (base, plan) in zip([r for r in rows if not r["same_program"]], clusters, strict=True):
            row["s_unplanned"] = timing.median(times[base])
            row["s_planned"] = timing.median(times[plan])
            row["time_ratio"] = timing.ratio(times[plan], times[base])
            row["time_ratio_iqr"] = list(timing.ratio_quartiles(times[plan], times[base]))
            log(f"  {row['layer']}: planned / unplanned step time {row['time_ratio']:.3f}")
    return {
        "n": n,
        "dim": DIM,
        "heads": HEADS,
        "linear_attention_temp_bytes": reference,
        "budget_factor": budget_factor,
        "rounds": rounds,
        "load": timing.machine_load(),
        "rows": rows,
    }


def markdown(r: dict) -> str:
    lines = [
        f"# Memory planner at n = {r['n']:,} (d = {r['dim']}, H = {r['heads']}, float32, one image, one layer)",
        "",
        f"Budget: {r['budget_factor']} x linear attention's training-step temp memory "
        f"({r['linear_attention_temp_bytes'] / 2**30:.3f} GiB) = {r['budget_factor'] * r['linear_attention_temp_bytes'] / 2**30:.3f} GiB. "
        f"`tc.compile(layer, x, remat_budget=budget)`, no token chunk named. Timed: {r['rounds']} interleaved rounds, "
        f"{r['load']}.",
        "",
        "| layer | unplanned GiB | planned GiB | x linear attn | fits | plan | planning s | time planned / unplanned (IQR) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        plan = row["plan"].split(";")[0].removeprefix("plan: ")
        t = (
            f"{row['time_ratio']:.3f} ({row['time_ratio_iqr'][0]:.3f}-{row['time_ratio_iqr'][1]:.3f})"
            if "time_ratio" in row
            else ("1 (the unplanned program: same HLO)" if row["same_program"] else "-")
        )
        lines.append(
            f"| {row['layer']} | {row['unplanned_temp_bytes'] / 2**30:.3f} | {row['planned_temp_bytes'] / 2**30:.3f} | "
            f"{row['planned_temp_bytes'] / r['linear_attention_temp_bytes']:.2f} | {'yes' if row['fits'] else 'NO'} | "
            f"{plan} | {row['planning_s']:.0f} | {t} |"
        )
    lines += ["", "Candidates measured:", ""]
    for row in r["rows"]:
        lines.append(f"- {row['layer']}: " + "; ".join(row["candidates"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=224 * 224)
    ap.add_argument("--budget", type=float, default=2.0, help="times linear attention's temp memory")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (0: memory only)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    r = run(args.n, args.budget, args.rounds)
    r["command"] = "python -m ttt_compile.benchmarks.planner " + " ".join(argv or [])
    write_results(args.out, "results", r, markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
