"""Issue 4: memory and throughput of the causal (online) inner loop.

Memory.  For causal MTTT-Linear (d = 256, H = 4, d_h = 64) the training step is
value_and_grad of loss(p, x) = sum(sin(layer_p(x))) with respect to the outer parameters p; we
compile it (XLA, CPU) and read `memory_analysis().temp_size_in_bytes`: the scratch memory XLA
plans for forward + backward (inputs, parameters and outputs not included).  Nothing is run, so
n = 16384 costs only a compile.  Pipelines: [lower] (no checkpoint: the backward pass keeps every
step's carry W_t and activations) and [remat(scheme), lower] for scheme sqrt / log.  With
chunk b = 1 the loop has T = n steps (the autoregressive loop of the issue); b = 16 (TTT-Linear's
mini-batch) is reported beside it, with and without the dual_form pass.

Throughput.  Tokens per second of that training step at n = 4096 (one sequence), for causal
MTTT-Linear under the default pipeline and the default pipeline with dual_form, against the
chunked O(n) causal linear attention of `models/causal.py`: all functions are compiled first, then
called in interleaved rounds inside one process (`benchmarks.timing.interleaved`, one cluster, a
fresh random order each round), and each figure is the median over rounds; the ratio is the
median of per-round ratios.

    python -m ttt_compile.benchmarks.memory_online [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import ttt_compile as tc
import ttt_compile.passes.dual_form  # noqa: F401  (registers the pass)
from ttt_compile.benchmarks import timing
from ttt_compile.benchmarks.harness import compiled_figures, pick, write_results
from ttt_compile.compiler import DEFAULT
from ttt_compile.models import layers
from ttt_compile.models.causal import causal_linear_attention

DIM, HEADS = 256, 4
ETA = 0.01
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "online"
#: The default pipeline without / with the dual form (inserted after checkpoint if DEFAULT lacks it).
WITHOUT_DUAL = tuple(p for p in DEFAULT if p != "dual_form")
WITH_DUAL = (
    DEFAULT
    if "dual_form" in DEFAULT
    else tuple(p for name in DEFAULT for p in ((name, "dual_form") if name == "remat" else (name,)))
)

MEMORY_VARIANTS = {  # name -> (chunk b, pipeline)
    "none (b=1)": (1, ["lower"]),
    "sqrt (b=1)": (1, [("remat", {"scheme": "sqrt"}), "lower"]),
    "log (b=1)": (1, [("remat", {"scheme": "log"}), "lower"]),
    "none (b=16)": (16, ["lower"]),
    "sqrt (b=16)": (16, [("remat", {"scheme": "sqrt"}), "lower"]),
    "sqrt + dual_form (b=16)": (16, [("remat", {"scheme": "sqrt"}), "dual_form", "lower"]),
    "log + dual_form (b=16)": (16, [("remat", {"scheme": "log"}), "dual_form", "lower"]),
    "default (b=1)": (1, list(DEFAULT)),
    "default (b=16)": (16, list(DEFAULT)),
    "reference: causal linear attention (chunk 64)": (64, None),
}


def ttt(chunk: int):
    return layers.mttt_linear(dim=DIM, heads=HEADS, key=jax.random.PRNGKey(0), batching="online", chunk=chunk, lr=ETA)


def train_step(model) -> tuple[Callable, object]:
    """(jit of value_and_grad of sum(sin(model_p(x))) w.r.t. the float leaves p, p)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p, x):
        return jnp.sum(jnp.sin(eqx.combine(p, static)(x)))

    return jax.jit(jax.value_and_grad(loss)), params


def compiled_memory(chunk: int, pipeline, n: int) -> dict:
    """Temp bytes of the compiled training step (nothing is executed).  pipeline None: the causal
    chunked linear attention of models/causal.py (chunk = its chunk), the reference floor."""
    x = jax.ShapeDtypeStruct((n, DIM), jnp.float32)
    t0 = time.perf_counter()
    if pipeline is None:
        prog, notes = causal_linear_attention(dim=DIM, heads=HEADS, key=jax.random.PRNGKey(0), chunk=chunk), []
    else:
        prog = tc.compile(ttt(chunk), jnp.zeros((n, DIM), jnp.float32), passes=pipeline)
        notes = [n for _, ns in prog.notes for n in ns]
    step, params = train_step(prog)
    fig, _ = compiled_figures(step, (params, x), trip_counts=False)
    return {
        **pick(fig, "temp_bytes", "argument_bytes", "output_bytes"),
        "compile_s": time.perf_counter() - t0,
        "notes": notes,
    }


def memory_table(ns: list[int], log=print) -> list[dict]:
    rows = []
    for name, (chunk, pipeline) in MEMORY_VARIANTS.items():
        for n in ns:
            r = compiled_memory(chunk, pipeline, n)
            rows.append({"variant": name, "chunk": chunk, "n": n, **r, "bytes_per_token": r["temp_bytes"] / n})
            log(
                f"  {name:<46} n={n:>6}  temp {r['temp_bytes']:>14,} B  ({r['temp_bytes'] / n:>10,.0f} B/token)"
                f"  compile {r['compile_s']:.1f}s"
            )
    for r in rows:
        prev = [p for p in rows if p["variant"] == r["variant"] and p["n"] < r["n"]]
        if prev:
            p = max(prev, key=lambda p: p["n"])
            doublings = np.log2(r["n"] / p["n"])
            r["growth_per_doubling"] = float((r["temp_bytes"] / p["temp_bytes"]) ** (1 / doublings))
        naive = [p for p in rows if p["variant"] == f"none (b={r['chunk']})" and p["n"] == r["n"]]
        if naive and r["variant"] != naive[0]["variant"]:
            r["of_naive"] = r["temp_bytes"] / naive[0]["temp_bytes"]
    return rows


# --------------------------------------------------------------------------- throughput
def throughput(n: int, rounds: int, log=print) -> dict:
    key = jax.random.PRNGKey(1)
    x = jax.random.normal(key, (n, DIM), jnp.float32)
    models = {
        "causal linear attention (chunk 64)": causal_linear_attention(dim=DIM, heads=HEADS, key=key, chunk=64),
        "MTTT-Linear b=16, default without dual_form": tc.compile(ttt(16), x, passes=list(WITHOUT_DUAL)),
        "MTTT-Linear b=16, default with dual_form": tc.compile(ttt(16), x, passes=list(WITH_DUAL)),
        "MTTT-Linear b=64, default with dual_form": tc.compile(ttt(64), x, passes=list(WITH_DUAL)),
        "MTTT-Linear b=1 (T=n), default": tc.compile(ttt(1), x, passes=list(WITH_DUAL)),
    }
    fns = {}
    for name, m in models.items():
        step, params = train_step(m)
        fns[name] = lambda step=step, params=params: step(params, x)
    t0 = time.perf_counter()
    for fn in fns.values():  # compile each step first: the block sizes come from a warm call
        jax.block_until_ready(fn())
    times = timing.interleaved(fns, rounds, min_block_s=0.2, clusters=[list(fns)])
    base = "causal linear attention (chunk 64)"
    rows = []
    for name, ts in times.items():
        ratio = timing.ratio(times[base], ts)  # median of t_base / t: the speed ratio
        rows.append(
            {
                "variant": name,
                "s_per_step": timing.median(ts),
                "tokens_per_s": n / timing.median(ts),
                "throughput_vs_linear_attention": ratio,
            }
        )
        log(f"  {name:<42} {n / timing.median(ts):>10,.0f} tok/s   x{ratio:.3f} of linear attention")
    return {"n": n, "rounds": rounds, "wall_s": time.perf_counter() - t0, "rows": rows}


# --------------------------------------------------------------------------- report
def markdown(result: dict) -> str:
    mem = result["memory"]
    lines = [
        f"# Issue 4: causal inner loop, memory and throughput ({result['date']})",
        "",
        f"Machine: {result['machine']}; jax {result['jax']}; causal MTTT-Linear d={DIM}, H={HEADS}, "
        f"d_h={DIM // HEADS}, W0=0, plain GD (eta = {ETA}). Default pipeline: "
        f"{', '.join(result.get('default_pipeline', DEFAULT))}.",
        "",
        "## Compiled temp memory of one training step (value_and_grad of sum(sin(layer(x)))), XLA CPU",
        "",
        "Bytes are XLA's `memory_analysis().temp_size_in_bytes` after compiling (not run). "
        "Growth: temp-bytes ratio per doubling of n (geometric mean over the step to this n). "
        "`none` keeps every step's fast weights for the backward pass (H d_h^2 = "
        f"{HEADS * (DIM // HEADS) ** 2:,} floats = {4 * HEADS * (DIM // HEADS) ** 2:,} B per step, plus their "
        "cotangents); `sqrt` / `log` keep ~2 sqrt(T) / ~2 log2(T) of them and recompute the rest. What "
        "remains per token is activation memory of O(d) floats per token (inputs, keys, queries, outputs and "
        "their cotangents), the same kind the causal linear-attention reference keeps. `default` is "
        '`tc.compile`\'s default pipeline; "of naive" divides by the `none` row of the same chunk and n '
        "(the token-by-token scan that stores every W_t, for b = 1).",
        "",
        "| variant | n | temp bytes | bytes / token | growth per doubling | of naive (same b) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in mem:
        g = f"{r['growth_per_doubling']:.2f}" if "growth_per_doubling" in r else "-"
        of = f"{r['of_naive']:.4f}" if "of_naive" in r else "-"
        row = f"| {r['variant']} | {r['n']} | {r['temp_bytes']:,} | {r['bytes_per_token']:,.0f} | {g} | {of} |"
        lines.append(row)
    tp = result.get("throughput")
    if tp:
        lines += [
            "",
            f"## Training-step throughput at n = {tp['n']} (one sequence, interleaved, "
            f"median of {tp['rounds']} rounds)",
            "",
            "| variant | tokens / s | x causal linear attention |",
            "| --- | ---: | ---: |",
        ]
        for r in tp["rows"]:
            lines.append(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['throughput_vs_linear_attention']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 256, 1024 and 4 timing rounds")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument(
        "--reuse-memory",
        action="store_true",
        help="keep the memory rows of OUT/memory_online.json (explicit pipelines) and re-time only",
    )
    args = ap.parse_args(argv)
    ns = [256, 1024] if args.quick else [1024, 2048, 4096, 8192, 16384]
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {jax.device_count()} device(s)",
        "jax": jax.__version__,
        "dim": DIM,
        "heads": HEADS,
        "default_pipeline": list(DEFAULT),
    }
    if args.reuse_memory:
        result["memory"] = json.loads((args.out / "memory_online.json").read_text())["memory"]
    else:
        print("memory (compile only):")
        result["memory"] = memory_table(ns)
    if not args.no_throughput:
        print("throughput (fwd + bwd):")
        result["throughput"] = throughput(1024 if args.quick else 4096, 4 if args.quick else args.rounds)
    write_results(args.out, "memory_online", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
