"""Causal MTTT-Linear (dual form) against the strongest chunked causal linear attention we could write.

Training step (as everywhere in the benchmarks): ``value_and_grad`` of ``sum(sin(layer(x)))`` with
respect to the layer's float leaves, one sequence x of shape (n, d), d = 256, H = 4, n = 4096,
float32, jit-compiled.  Measured in one process, interleaved (`benchmarks.timing.interleaved`, the
layers in one cluster so each round times them seconds apart); tokens/s is n over the median
seconds per step, "x baseline" the median over rounds of baseline time / layer time.

FLOPs: XLA's cost analysis of the compiled training step with loop bodies multiplied by their trip
counts (`ttt_compile.cost.measure`).  "FLOP bound" is the speed a layer would reach at the
baseline's FLOP/s: baseline FLOPs / layer FLOPs; "of bound" is the measured ratio over that bound
(the layer's FLOP/s relative to the baseline's).

Baselines (`models.causal.causal_linear_attention`, identity feature map, the weights of
`mttt_linear` built from the same key):
  - scan, chunk c: ``lax.scan`` over chunks carrying the d_h x d_h state (heads batched in the step),
    masked Q K^T within the chunk -- the standard form; chunk 64 is the fastest we measured
    (also tried: chunks 32 and 128, heads vmapped instead of batched, the prefix-sum form);
  - prefix, chunk 64: every chunk's state by a prefix sum over chunks (the earlier reference).
MTTT-Linear: ``layers.mttt_linear(batching="online", chunk=b, lr=0.01)``, default pipeline (remat
"sqrt", dual_form, ...), and chunk 16 without remat (what the sqrt scheme's recompute costs).

    python -m ttt_compile.benchmarks.causal_throughput [--n 4096] [--rounds 9] [--out DIR]
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
from ttt_compile.compiler import DEFAULT
from ttt_compile.models import layers
from ttt_compile.models.causal import causal_linear_attention

from . import timing
from .harness import write_results

DIM, HEADS, ETA = 256, 4, 0.01
BASELINE = "causal linear attention, scan, chunk 64"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "online"


def models(x) -> dict:
    key = jax.random.PRNGKey(0)

    def la(chunk, form):
        return causal_linear_attention(dim=DIM, heads=HEADS, key=key, chunk=chunk, form=form)

    def mttt(chunk, passes="default"):
        layer = layers.mttt_linear(dim=DIM, heads=HEADS, key=key, batching="online", chunk=chunk, lr=ETA)
        return tc.compile(layer, x, passes=passes)

    return {
        BASELINE: la(64, "scan"),
        "causal linear attention, scan, chunk 16": la(16, "scan"),
        "causal linear attention, prefix, chunk 64": la(64, "prefix"),
        "MTTT-Linear, chunk 16, default pipeline": mttt(16),
        "MTTT-Linear, chunk 16, default pipeline without remat": mttt(16, [p for p in DEFAULT if p != "remat"]),
        "MTTT-Linear, chunk 64, default pipeline": mttt(64),
    }


def train_step(model):
    """(value_and_grad of sum(sin(model_p(x))) w.r.t. the float leaves p, p)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p, x):
        return jnp.sum(jnp.sin(eqx.combine(p, static)(x)))

    return jax.value_and_grad(loss), params


def run(n: int, rounds: int, log=print) -> dict:
    x = jax.random.normal(jax.random.PRNGKey(1), (n, DIM), jnp.float32)
    thunks, flops = {}, {}
    for name, m in models(x).items():
        fn, params = train_step(m)
        c = cost.measure(jax.make_jaxpr(fn)(params, x))
        flops[name] = c.flops
        step = jax.jit(fn)
        thunks[name] = lambda step=step, params=params: step(params, x)
        log(f"  {name:<46} train step {c.flops / 1e9:7.3f} GFLOP, temp {c.temp_bytes / 2**20:6.1f} MiB")
    times = timing.interleaved(thunks, rounds, min_block_s=0.3, clusters=[list(thunks)])
    rows = []
    for name, ts in times.items():
        speed = timing.ratio(times[BASELINE], ts)
        bound = flops[BASELINE] / flops[name]
        q25, q75 = timing.ratio_quartiles(times[BASELINE], ts)
        rows.append(
            {
                "layer": name,
                "tokens_per_s": n / timing.median(ts),
                "gflop": flops[name] / 1e9,
                "x_baseline": speed,
                "x_baseline_iqr": [q25, q75],
                "flop_bound": bound,
                "of_bound": speed / bound,
            }
        )
        log(f"  {name:<46} {rows[-1]['tokens_per_s']:>9,.0f} tok/s  x{speed:.3f}  (FLOP bound x{bound:.3f})")
    return {"n": n, "rounds": rounds, "rows": rows}


def markdown(result: dict) -> str:
    lines = [
        f"# Causal MTTT-Linear vs chunked causal linear attention, training step ({result['date']})",
        "",
        f"Command: `{result['command']}`. Machine: {result['machine']}, {result.get('load', 'loaded: 2 cores shared by 4 jobs')} ("
        f"ratios are interleaved in one process); jax {result['jax']}. d = {DIM}, H = {HEADS}, n = {result['n']}, "
        f"one sequence, float32; median of {result['rounds']} interleaved rounds.",
        "",
        f'Baseline: **{BASELINE}** (`models.causal`, `form="scan"`: lax.scan over chunks carrying the '
        "d_h x d_h state, heads batched in the step, masked Q K^T within a chunk): the fastest form we measured. "
        "FLOPs: XLA cost analysis of the training step, loop trip counts included (`ttt_compile.cost`). "
        "FLOP bound = baseline FLOPs / layer FLOPs (the speed at the baseline's FLOP/s).",
        "",
        "| layer | train GFLOP | tokens / s | x baseline (IQR) | FLOP bound | of bound |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        q25, q75 = r["x_baseline_iqr"]
        lines.append(
            f"| {r['layer']} | {r['gflop']:.2f} | {r['tokens_per_s']:,.0f} | {r['x_baseline']:.3f} "
            f"({q25:.2f}-{q75:.2f}) | {r['flop_bound']:.3f} | {r['of_bound']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    command = (
        "python -m ttt_compile.benchmarks.causal_throughput"
        + (f" --n {args.n}" if args.n != 4096 else "")
        + (f" --rounds {args.rounds}" if args.rounds != 9 else "")
    )
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": f"{platform.machine()} CPU",
        "jax": jax.__version__,
        **run(args.n, args.rounds),
        "load": timing.machine_load(),
    }
    write_results(args.out, "causal_throughput", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
