"""Memory of the raw-pixel ViT (Table 3 of Sun et al. 2023) at n = 224 * 224 = 50,176 tokens, per image,
from XLA's compiled memory analysis (the program is lowered and compiled, never run).

What is compiled: one layer's training step, ViT-Ti's attention layer (d = 192, H = 3, d_h = 64) on
one image's tokens x (n, d) in float32: ``value_and_grad`` of ``sum(sin(layer(x)))`` with respect
to the layer's outer parameters (as the benchmark suite and issue 11 define the training step).
Reported: ``temp_size_in_bytes`` (what XLA plans for the forward and backward pass: activations,
stored inner-loop state, scores) and arguments + outputs. With ``--model`` also the whole ViT-Ti
training step (12 blocks, batch 1) as ``ttt-compile bench --device`` runs it, compiled, not run.

Pipelines: ``tc.compile(layer, x, passes=...)`` with the default pipeline without ``remat``, and
with ``remat`` forced to the per-step scheme (``("remat", {"scheme": "step"})``; the default
choice leaves T = 1 loops and SGD loops alone). Layers: linear attention (the O(n) reference),
MTTT-Linear, MTTT-MLP T=1, MTTT-MLP SGD T=4 (each also with ``token_chunk=784``: the loss and the
queries' outputs evaluated 784 tokens at a time, each chunk rematerialised; 784 divides n and the
n/4 tokens of an SGD step) and self-attention.

Time cost of token_chunk (``--time N``): the training step of MTTT-MLP with and without
token_chunk at n = N, run and timed interleaved in one process (`benchmarks.timing`).

    python -m ttt_compile.benchmarks.pixels [--n 50176] [--time N] [--reuse-model] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

import ttt_compile as tc
from ttt_compile.benchmarks.harness import compiled_figures, write_results
from ttt_compile.compiler import DEFAULT
from ttt_compile.models import layers

DIM, HEADS, DEPTH = 192, 3, 12  # ViT-Ti
N = 224 * 224
TOKEN_CHUNK = 784  # divides n = 50176 (64 chunks) and an SGD step's n/4 (16)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "pixels"
LAYERS = {
    "linear attention": ("linear_attention", {}),
    "MTTT-Linear": ("mttt_linear", {}),
    "MTTT-MLP T=1": ("mttt_mlp", {"steps": 1}),
    f"MTTT-MLP T=1, token_chunk={TOKEN_CHUNK}": ("mttt_mlp", {"steps": 1, "token_chunk": TOKEN_CHUNK}),
    "MTTT-MLP SGD T=4": ("mttt_mlp", {"steps": 4, "batching": "sgd"}),
    f"MTTT-MLP SGD T=4, token_chunk={TOKEN_CHUNK}": (
        "mttt_mlp",
        {"steps": 4, "batching": "sgd", "token_chunk": TOKEN_CHUNK},
    ),
    "self-attention": ("self_attention", {}),
}
WITHOUT_REMAT = tuple(p for p in DEFAULT if p != "remat")
PIPELINES = {
    "default without remat": list(WITHOUT_REMAT),
    "default, remat per step": [("remat", {"scheme": "step"}), *WITHOUT_REMAT],
}


def step_memory(layer, n: int, passes) -> dict:
    """Compiled memory of value_and_grad(sum(sin(layer(x)))) for x (n, DIM) float32 (not run)."""
    x = jax.ShapeDtypeStruct((n, DIM), jnp.float32)
    t0 = time.perf_counter()
    notes: list[str] = []
    if isinstance(layer, tc.TTTLayer):
        layer = tc.compile(layer, jnp.zeros((n, DIM), jnp.float32), passes=passes)
        notes = [f"{name}: {note}" for name, ns in layer.notes for note in ns]
    params, static = eqx.partition(layer, eqx.is_inexact_array)

    def loss(p, x):
        return jnp.sum(jnp.sin(eqx.combine(p, static)(x)))

    return {**_memory(jax.value_and_grad(loss), (params, x)), "compile_s": time.perf_counter() - t0, "notes": notes}


def _memory(fn, args) -> dict:
    """temp and arguments + outputs bytes of `fn` compiled at `args` (`harness.compiled_figures`, not run)."""
    fig, _ = compiled_figures(fn, args, trip_counts=False)
    return {"temp_bytes": fig["temp_bytes"], "argument_output_bytes": fig["argument_bytes"] + fig["output_bytes"]}


def time_cost(n: int, rounds: int = 7, log=print) -> dict:
    """Seconds per training step of MTTT-MLP (T=1 and SGD T=4, default pipeline) with and without
    token_chunk at n tokens, timed interleaved in one process; ratio = median over rounds."""
    from . import timing

    x = jax.random.normal(jax.random.PRNGKey(1), (n, DIM), jnp.float32)
    thunks, clusters = {}, []
    for variant, options in (("T=1", {"steps": 1}), ("SGD T=4", {"steps": 4, "batching": "sgd"})):
        names = []
        for chunk in (None, TOKEN_CHUNK):
            layer = layers.mttt_mlp(dim=DIM, heads=HEADS, key=jax.random.PRNGKey(0), token_chunk=chunk, **options)
            params, static = eqx.partition(tc.compile(layer, x), eqx.is_inexact_array)
            step = jax.jit(jax.value_and_grad(lambda p, x, static=static: jnp.sum(jnp.sin(eqx.combine(p, static)(x)))))
            name = f"{variant}, token_chunk={chunk}"
            thunks[name] = lambda step=step, params=params: step(params, x)
            names.append(name)
        clusters.append(names)
    times = timing.interleaved(thunks, rounds, min_block_s=0.3, clusters=clusters)
    rows = []
    for base, chunked in clusters:
        r = {
            "variant": base.split(",")[0],
            "n": n,
            "s_without": timing.median(times[base]),
            "s_with": timing.median(times[chunked]),
            "ratio": timing.ratio(times[chunked], times[base]),
            "ratio_iqr": list(timing.ratio_quartiles(times[chunked], times[base])),
        }
        rows.append(r)
        log(f"  time MTTT-MLP {r['variant']} n={n}: token_chunk / none = {r['ratio']:.3f}")
    return {"n": n, "rounds": rounds, "token_chunk": TOKEN_CHUNK, "rows": rows, "load": timing.machine_load()}


def model_memory(name: str) -> dict:
    """Compiled memory of the whole ViT-Ti training step at 224 x 224 raw pixels, batch 1, as
    `ttt-compile bench --device` runs it (bf16 compute, f32 master weights, AdamW; TTT layers
    compiled with the default pipeline): lowered and compiled, not run."""
    from .device_jobs import SIZES, VIT_LAYERS, build_vit, vit_step

    size = SIZES["full"]["pixels"]
    preset, options = VIT_LAYERS[name]
    t0 = time.perf_counter()
    model, _ = build_vit(size, preset, options, jnp.bfloat16)
    step, params, opt_state = vit_step(model, jnp.bfloat16)
    images = jax.ShapeDtypeStruct((size["batch"], size["image"], size["image"], 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((size["batch"],), jnp.int32)
    return {
        "layer": name,
        "tokens": model.num_tokens,
        "batch": size["batch"],
        **_memory(step, (params, opt_state, images, labels)),
        "compile_s": time.perf_counter() - t0,
    }


MODEL_LAYERS = ("linear attention", "MTTT-Linear", "MTTT-MLP T=1", "MTTT-MLP SGD T=4", "self-attention")


def table(n: int, log=print) -> list[dict]:
    rows = []
    for name, (preset, options) in LAYERS.items():
        layer = layers.get(preset)(dim=DIM, heads=HEADS, key=jax.random.PRNGKey(0), **options)
        pipelines = PIPELINES if isinstance(layer, tc.TTTLayer) else {"(no inner loop)": None}
        for pipeline, passes in pipelines.items():
            r = step_memory(layer, n, passes)
            rows.append({"layer": name, "pipeline": pipeline, "n": n, **r})
            log(f"  {name:<18} {pipeline:<24} temp {r['temp_bytes'] / 2**30:9.3f} GiB  compile {r['compile_s']:.0f}s")
    return rows


def markdown(result: dict) -> str:
    n = result["n"]
    rows = result["rows"]
    ref = next(r["temp_bytes"] for r in rows if r["layer"] == "linear attention")
    lines = [
        f"# Raw-pixel ViT-Ti memory per image at n = {n:,} ({result['date']})",
        "",
        f"Command: `{result['command']}`"
        + (
            f" (layer rows: `{result['layers_command']}`, {result['layers_date']})"
            if "layers_command" in result
            else ""
        )
        + f". Machine: {result['machine']}; jax {result['jax']}. Compile only "
        "(XLA CPU `memory_analysis()`), nothing run.",
        "",
        f"One layer's training step per image: `value_and_grad(sum(sin(layer(x))))` w.r.t. the layer's "
        f"outer parameters, x of shape ({n}, {DIM}) float32, ViT-Ti layer d = {DIM}, H = {HEADS}.",
        "",
        "| layer | pipeline | temp memory per image | x linear attention | args + outputs | compile s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['pipeline']} | {r['temp_bytes'] / 2**30:.3f} GiB | "
            f"{r['temp_bytes'] / ref:.1f} | {r['argument_output_bytes'] / 2**20:.1f} MiB | {r['compile_s']:.0f} |"
        )
    if result.get("model"):
        lines += [
            "",
            f"Whole ViT-Ti training step at 224 x 224 raw pixels (n = 50,176), batch 1, as "
            "`ttt-compile bench --device` runs it: bf16 compute, f32 master weights, AdamW, TTT layers "
            f"compiled with the default pipeline (remat included), {DEPTH} blocks, no block rematerialisation"
            + (
                f" (these rows compiled {result['model_date']}, token_chunk not set)"
                if result.get("model_date")
                else ""
            )
            + ":",
            "",
            "| layer | temp memory per image | arguments + outputs | compile s |",
            "| --- | ---: | ---: | ---: |",
        ]
        for r in result["model"]:
            if "error" in r:
                lines.append(f"| {r['layer']} | failed: {r['error']} | - | - |")
            else:
                lines.append(
                    f"| {r['layer']} | {r['temp_bytes'] / 2**30:.2f} GiB | "
                    f"{r['argument_output_bytes'] / 2**20:.0f} MiB | {r['compile_s']:.0f} |"
                )
    if result.get("time"):
        t = result["time"]
        lines += [
            "",
            f"Time cost of token_chunk={t['token_chunk']}: MTTT-MLP training step (default pipeline) run at "
            f"n = {t['n']:,} on this CPU ({t.get('load', 'load not recorded')}), {t['rounds']} interleaved rounds "
            f"({t['date']}):",
            "",
            "| layer | s / step without | s / step with | with / without (IQR) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for r in t["rows"]:
            lines.append(
                f"| MTTT-MLP {r['variant']} | {r['s_without']:.3f} | {r['s_with']:.3f} | {r['ratio']:.2f} "
                f"({r['ratio_iqr'][0]:.2f}-{r['ratio_iqr'][1]:.2f}) |"
            )
    lines += ["", "Pass notes (remat):"]
    for r in rows:
        for note in r["notes"]:
            if note.startswith("remat"):
                lines.append(f"- {r['layer']}, {r['pipeline']}: {note}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=N, help="tokens per image (default 224*224)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--model", action="store_true", help="also compile the whole ViT-Ti step (n = 50176)")
    parser.add_argument("--reuse-layers", action="store_true", help="keep the layer rows of OUT/pixels.json")
    parser.add_argument("--reuse-model", action="store_true", help="keep the whole-model rows of OUT/pixels.json")
    parser.add_argument(
        "--time",
        type=int,
        default=None,
        metavar="N",
        help="also time the training step with and without token_chunk at n = N tokens",
    )
    args = parser.parse_args(argv)
    command = (
        "python -m ttt_compile.benchmarks.pixels"
        + (f" --n {args.n}" if args.n != N else "")
        + (" --model" if args.model else "")
        + (" --reuse-layers" if args.reuse_layers else "")
        + (" --reuse-model" if args.reuse_model else "")
        + (f" --time {args.time}" if args.time else "")
    )
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": f"{platform.machine()} CPU",
        "jax": jax.__version__,
        "dim": DIM,
        "heads": HEADS,
        "n": args.n,
        "default_pipeline": list(DEFAULT),
    }
    if args.reuse_layers:
        old = json.loads((args.out / "pixels.json").read_text())
        result.update(rows=old["rows"], layers_command=old["command"], layers_date=old["date"])
    else:
        result["rows"] = table(args.n)
    if args.reuse_model:
        old = json.loads((args.out / "pixels.json").read_text())
        result.update({k: old[k] for k in ("model", "model_date") if k in old})
    if args.time:
        result["time"] = {
            **time_cost(args.time),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
    if args.model:
        result["model"] = []
        for name in MODEL_LAYERS:
            try:
                result["model"].append(model_memory(name))
            except Exception as e:  # noqa: BLE001 - recorded, the table goes on
                result["model"].append({"layer": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            print(f"  model {name}: {result['model'][-1]}", flush=True)
        result["model_date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_results(args.out, "pixels", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
