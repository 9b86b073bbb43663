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

Every measurement runs in its own subprocess under a time limit (``LIMITS``; the whole run also has
a budget, ``BUDGET_S``); one that fails, runs out of memory or out of time is recorded with its
error and the run goes on. Device, driver and library versions are recorded with the figures in
``results.json`` and ``results.md`` in ``--out``. ``--tiny`` shrinks every model and sequence to
exercise the same code paths on a CPU within a 170 s budget (its figures say nothing about an
accelerator; on a loaded 2-core machine its compiles need more: ``--budget``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Dense (no sparsity) bfloat16 matrix throughput in TFLOP/s from the vendors' data sheets, matched
# as a substring of `jax.devices()[0].device_kind`, first match wins (specific names first).
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("TPU v6 lite", 918.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5", 459.0),
    ("TPU v4", 275.0),
)
# --tiny is a smoke run of the code paths: its child processes ask XLA for few optimisations, which
# halves the compile times that dominate it on a CPU (recorded in results.json as "child_env").
CHILD_ENV = {"full": {}, "tiny": {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}}

BUDGET_S = {"full": 470.0, "tiny": 170.0}  # the whole run (the issue: < 8 min / < 3 min)
LIMITS = {
    "full": {"info": 60, "vit": 110, "pixels": 150, "causal": 60},
    "tiny": {"info": 30, "vit": 90, "pixels": 90, "causal": 60},
}

VIT_LAYERS: dict[str, tuple[str, dict]] = {  # row name -> (preset, options)
    "linear attention": ("linear_attention", {}),
    "MTTT-Linear": ("mttt_linear", {}),
    "MTTT-MLP T=1": ("mttt_mlp", {"steps": 1}),
    "MTTT-MLP SGD T=4": ("mttt_mlp", {"steps": 4, "batching": "sgd"}),
    "self-attention": ("self_attention", {}),
}
PIXEL_LAYERS = ("MTTT-Linear", "MTTT-MLP T=1")
CAUSAL: dict[str, dict] = {  # row name -> layer
    "MTTT-Linear chunk 16 (dual form)": {"kind": "mttt_linear", "chunk": 16},
    "MTTT-Linear chunk 64 (dual form)": {"kind": "mttt_linear", "chunk": 64},
    "chunked causal linear attention (chunk 64)": {"kind": "causal_linear_attention", "chunk": 64},
}

SIZES = {  # the models of each part at full size and --tiny
    "full": {
        "vit": dict(variant="S", image=224, patch=16, classes=1000, batch=128, dims={}),
        "pixels": dict(variant="Ti", image=224, patch=1, classes=1000, batch=1, dims={}),
        "causal": dict(dim=256, heads=4, ns=(4096, 16384), batch=8),
        "min_block_s": 0.5,
        "rounds": 5,
    },
    "tiny": {
        "vit": dict(
            variant="S", image=32, patch=8, classes=10, batch=4, dims=dict(width=48, depth=1, heads=3, mlp_dim=96)
        ),
        "pixels": dict(
            variant="Ti", image=12, patch=1, classes=10, batch=1, dims=dict(width=24, depth=1, heads=3, mlp_dim=48)
        ),
        "causal": dict(dim=32, heads=2, ns=(128, 256), batch=1),
        "min_block_s": 0.02,
        "rounds": 3,
    },
}


# ===================================================================================== child side
def _versions() -> dict:
    import importlib.metadata as md

    import jax

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "equinox", "optax", "numpy", "ttt-compile"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    for dist in md.distributions():  # accelerator plugins: jax-cuda12-plugin, libtpu, ...
        name = dist.metadata["Name"] or ""
        if name.lower().startswith(("jax-cuda", "jax_cuda", "libtpu", "jax-rocm", "jax_rocm")):
            out[name] = dist.version
    out["jax_backend"] = jax.default_backend()
    return out


def _nvidia_smi() -> str | None:
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def peak_tflops(device_kind: str) -> float | None:
    """The bf16 peak of `device_kind` from PEAK_BF16, or None when it is not in the table."""
    return next((peak for name, peak in PEAK_BF16 if name.lower() in device_kind.lower()), None)


def job_info(_: dict) -> dict:
    """The device, its driver and the library versions."""
    import jax

    d = jax.devices()[0]
    stats = d.memory_stats() or {}
    try:
        platform_version = d.client.platform_version
    except AttributeError:
        platform_version = None
    return {
        "device_kind": d.device_kind,
        "platform": d.platform,
        "device_count": jax.device_count(),
        "platform_version": platform_version,
        "memory_limit_bytes": stats.get("bytes_limit"),
        "nvidia_smi": _nvidia_smi(),
        "peak_bf16_tflops": peak_tflops(d.device_kind),
        "host": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPU cores",
        "versions": _versions(),
    }


def _factory(preset: str, options: dict):
    from ttt_compile.models import layers

    make = layers.get(preset)
    return lambda *, dim, heads, key: make(dim=dim, heads=heads, key=key, **options)


def build_vit(size: dict, preset: str, options: dict, dtype):
    """The ViT of `size` with every block's attention layer compiled once by
    ``tc.compile(layer, x, "default")`` (traced in `dtype`) and the program shared by all blocks
    (the jaxpr takes the parameters as inputs), each block keeping its own float32 parameters."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import ttt_compile as tc
    from ttt_compile.models.vit import vit

    model = vit(
        size["variant"],
        image_size=size["image"],
        channels=3,
        num_classes=size["classes"],
        patch=size["patch"],
        layer=_factory(preset, options),
        key=jax.random.PRNGKey(0),
        posemb="sincos2d" if size["patch"] > 1 else "learn",
        **size["dims"],
    )
    first = model.blocks[0].attn
    if not isinstance(first, tc.TTTLayer):  # the attention baselines have no inner loop
        return model, []
    cast = lambda t, dt: jax.tree_util.tree_map(lambda a: a.astype(dt) if eqx.is_inexact_array(a) else a, t)  # noqa: E731
    example = jnp.zeros((model.num_tokens, model.embed.out_features), dtype)
    prog = tc.compile(cast(first, dtype), example, passes="default")
    notes = [f"{name}: {n}" for name, ns in prog.notes for n in ns]
    attns = [
        eqx.tree_at(lambda c: c.params, prog, cast(eqx.partition(b.attn, eqx.is_inexact_array)[0], jnp.float32))
        for b in model.blocks
    ]
    return eqx.tree_at(lambda m: [b.attn for b in m.blocks], model, attns), notes


def vit_step(model, dtype):
    """(jit'ed step(params, opt_state, images, labels) -> (params, opt_state, loss), params,
    opt_state): clip(1) + AdamW(1e-3, decay 1e-4, mu in bf16) on float32 master weights, the
    forward/backward pass in `dtype`."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=1e-4, mu_dtype=jnp.bfloat16))

    def loss(p, images, labels):
        m = eqx.combine(jax.tree_util.tree_map(lambda a: a.astype(dtype), p), static)
        logits = jax.vmap(m)(images.astype(dtype)).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def step(p, s, images, labels):
        value, grads = jax.value_and_grad(loss)(p, images, labels)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    return jax.jit(step, donate_argnums=(0, 1)), params, optimizer.init(params)


def _flops(fn, args, compiled) -> tuple[float, str]:
    """FLOPs of one call: XLA's count of the compiled program, or, when a loop survives in it (XLA
    counts a loop body once), `ttt_compile.cost` with trip counts."""
    import jax

    from ttt_compile import cost

    ca = compiled.cost_analysis()
    ca = (ca[0] if ca else {}) if isinstance(ca, (list, tuple)) else (ca or {})
    if "while" not in compiled.as_text():
        return float(ca.get("flops", 0.0)), "XLA cost analysis (no loop in the compiled program)"
    return cost.measure(jax.make_jaxpr(fn)(*args)).flops, "ttt_compile.cost (XLA, loop trip counts)"


def _memory(compiled) -> dict:
    import jax

    ma = compiled.memory_analysis()
    out = {
        "compiled_temp_bytes": int(ma.temp_size_in_bytes) if ma is not None else None,
        "compiled_total_bytes": (
            int(ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes)
            if ma is not None
            else None
        ),
    }
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        out.update(peak_bytes=int(stats["peak_bytes_in_use"]), memory_source="device.memory_stats()")
    else:
        out.update(
            peak_bytes=out["compiled_total_bytes"],
            memory_source="compiled memory analysis (arguments + outputs + temp; no device stats)",
        )
    return out


def _time(call, min_block_s: float, rounds: int) -> tuple[float, list[float]]:
    """Median seconds per call over `rounds` blocks of k calls (k: a block lasts >= min_block_s);
    `call()` returns what to wait for."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(call())
    k = max(1, int(min_block_s / max(time.perf_counter() - t0, 1e-6)) + 1)
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = None
        for _ in range(k):
            out = call()
        jax.block_until_ready(out)
        per_call.append((time.perf_counter() - t0) / k)
    return sorted(per_call)[len(per_call) // 2], per_call


def _throughput(fn, args, items: int, state_args: int, min_block_s: float, rounds: int) -> dict:
    """Compile fn on args, count its FLOPs and memory, time it: the first `state_args` arguments are
    threaded through the calls (they are donated), `items` images or tokens per call."""
    import jax

    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops, flops_source = _flops(fn, args, compiled)
    state = list(args[:state_args])
    rest = args[state_args:]

    def call():
        out = compiled(*state, *rest)
        state[:] = out[:state_args]
        return out

    s, per_call = _time(call, min_block_s, rounds)
    kind = jax.devices()[0].device_kind
    peak = peak_tflops(kind)
    tflops = flops / s / 1e12
    return {
        "status": "ok",
        "compile_s": compile_s,
        "s_per_step": s,
        "s_per_step_rounds": per_call,
        "items_per_s": items / s,
        "flops_per_step": flops,
        "flops_source": flops_source,
        "tflops": tflops,
        "peak_bf16_tflops": peak,
        "fraction_of_peak": (tflops / peak) if peak else "unknown",
        **_memory(compiled),
    }


def job_vit(spec: dict) -> dict:
    """One ViT training step (part 1 or 2)."""
    import jax
    import jax.numpy as jnp

    size = SIZES[spec["mode"]][spec["part"]]
    preset, options = VIT_LAYERS[spec["layer"]]
    dtype = jnp.bfloat16
    t0 = time.perf_counter()
    model, notes = build_vit(size, preset, options, dtype)
    step, params, opt_state = vit_step(model, dtype)
    build_s = time.perf_counter() - t0
    b, side = size["batch"], size["image"]
    images = jax.random.normal(jax.random.PRNGKey(1), (b, side, side, 3), jnp.float32)
    labels = jnp.arange(b, dtype=jnp.int32) % size["classes"]
    r = _throughput(
        step,
        (params, opt_state, images, labels),
        b,
        2,
        SIZES[spec["mode"]]["min_block_s"],
        SIZES[spec["mode"]]["rounds"],
    )
    r["images_per_s"] = r.pop("items_per_s")
    r.update(
        batch=b,
        tokens=model.num_tokens,
        build_s=build_s,
        compute_dtype="bfloat16",
        master_dtype="float32",
        memory_per_image_bytes=r["peak_bytes"] / b if r["peak_bytes"] else None,
        pass_notes=notes,
    )
    return r


def causal_layer(spec: dict, dim: int, heads: int, n: int):
    import jax
    import jax.numpy as jnp

    import ttt_compile as tc
    from ttt_compile.models import layers
    from ttt_compile.models.causal import causal_linear_attention

    layer = CAUSAL[spec["layer"]]
    key = jax.random.PRNGKey(0)
    if layer["kind"] == "causal_linear_attention":
        return causal_linear_attention(dim=dim, heads=heads, key=key, chunk=min(layer["chunk"], n)), []
    m = layers.mttt_linear(dim=dim, heads=heads, key=key, batching="online", chunk=layer["chunk"], lr=0.01)
    prog = tc.compile(m, jnp.zeros((n, dim), jnp.float32), passes="default")
    return prog, [f"{name}: {note}" for name, ns in prog.notes for note in ns]


def job_causal(spec: dict) -> dict:
    """Training step of one causal layer over a batch of sequences (part 3)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    size = SIZES[spec["mode"]]["causal"]
    n, b = spec["n"], size["batch"]
    model, notes = causal_layer(spec, size["dim"], size["heads"], n)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p, x):
        return jnp.sum(jnp.sin(jax.vmap(eqx.combine(p, static))(x)))

    step = jax.jit(jax.value_and_grad(loss))
    x = jax.random.normal(jax.random.PRNGKey(1), (b, n, size["dim"]), jnp.float32)
    r = _throughput(step, (params, x), b * n, 0, SIZES[spec["mode"]]["min_block_s"], SIZES[spec["mode"]]["rounds"])
    r["tokens_per_s"] = r.pop("items_per_s")
    r.update(batch=b, compute_dtype="float32", pass_notes=notes)
    return r


JOBS = {"info": job_info, "vit": job_vit, "pixels": job_vit, "causal": job_causal}


def run_job(spec: dict) -> dict:
    return JOBS[spec["part"]](spec)


# ==================================================================================== parent side
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
    }
    for spec in plan(mode):
        left = deadline - time.perf_counter()
        limit = min(LIMITS[mode][spec["part"]], left)
        if limit < 10:
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
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results))
    log(f"wrote {out / 'results.json'} and {out / 'results.md'} in {results['wall_s']:.0f} s")
    return results


# ======================================================================================= report
def _num(x, fmt: str = ",.1f", none: str = "-") -> str:
    if x is None:
        return none
    if isinstance(x, str):
        return x
    return format(x, fmt)


def _gib(b) -> str:
    if b is None:
        return "-"
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.2f} MiB"


def _model(size: dict) -> str:
    """'ViT-S/16', with the overridden dimensions of a --tiny model."""
    shrunk = ", ".join(f"{k} {v}" for k, v in size["dims"].items())
    return f"ViT-{size['variant']}/{size['patch']}" + (f" (shrunk: {shrunk})" if shrunk else "")


def _status(r: dict) -> str:
    return "ok" if r.get("status") == "ok" else f"{r.get('status')}: {r.get('error', '')}".replace("\n", " ")[:200]


def markdown(results: dict) -> str:
    info = results.get("info") or {}
    v = info.get("versions") or {}
    s = results["sizes"]
    lines = [
        f"# Device benchmark ({results['mode']}, {results['date']})",
        "",
        f"Command: `{results['command']}`. Wall time {results['wall_s']:.0f} s (budget {results['budget_s']:.0f} s; "
        f"limits per measurement {results['limits_s']}).",
        "",
    ]
    if info.get("status") == "ok":
        lines += [
            f"Device: {info['device_kind']} ({info['platform']}, {info['device_count']} device(s); "
            f"platform version {info.get('platform_version')}; nvidia-smi: {info.get('nvidia_smi')}; "
            f"memory limit {_gib(info.get('memory_limit_bytes'))}); host {info.get('host')}.",
            "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
            f"bf16 peak used for the fraction: {_num(info.get('peak_bf16_tflops'), '.0f', 'unknown')} TFLOP/s "
            "(vendor data sheet, dense; 'unknown' when the device kind is not in the table).",
            "",
        ]
    else:
        lines += [f"Device information: {_status(info)}", ""]
    if results["mode"] == "tiny":
        lines += [
            "**--tiny**: shrunken models and sequences for a CPU smoke run; the figures describe "
            "nothing about an accelerator or the paper's models.",
            "",
        ]
    vs = s["vit"]
    lines += [
        f"## {_model(vs)} at {vs['image']}x{vs['image']}: one training step "
        f"(batch {vs['batch']}, bf16 compute, f32 master weights, AdamW)",
        "",
        "| layer | images/s | TFLOP/s | fraction of peak | GFLOP/step | peak memory | compile s | status |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results["vit"]:
        ok = r.get("status") == "ok"
        lines.append(
            f"| {r['name']} | {_num(r.get('images_per_s')) if ok else '-'} | "
            f"{_num(r.get('tflops'), '.3f') if ok else '-'} | "
            f"{_num(r.get('fraction_of_peak'), '.3f') if ok else '-'} | "
            f"{_num(r['flops_per_step'] / 1e9, ',.4g') if ok else '-'} | "
            f"{_gib(r.get('peak_bytes')) if ok else '-'} | {_num(r.get('compile_s')) if ok else '-'} | "
            f"{_status(r)} |"
        )
    ps = s["pixels"]
    n_pix = (ps["image"] // ps["patch"]) ** 2
    lines += [
        "",
        f"## {_model(ps)} on raw {ps['image']}x{ps['image']} pixels (n = {n_pix:,}): training step, "
        f"batch {ps['batch']}",
        "",
        "| layer | images/s | memory per image | TFLOP/s | compile s | status |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results["pixels"]:
        if r.get("status") == "ok":
            lines.append(
                f"| {r['name']} | {_num(r['images_per_s'], ',.3f')} | {_gib(r['memory_per_image_bytes'])} | "
                f"{_num(r['tflops'], '.3f')} | {_num(r['compile_s'])} | ok |"
            )
        elif "formula" in r:
            lines.append(
                f"| {r['name']} | not run | {_gib(r['memory_per_image_bytes'])} (attention "
                f"probabilities kept for backward: {r['formula']}; one layer's scores "
                f"{_gib(r['scores_one_layer_bytes'])}) | - | - | {r['status']} |"
            )
        else:
            lines.append(f"| {r['name']} | - | - | - | - | {_status(r)} |")
    cs = s["causal"]
    lines += [
        "",
        f"## Causal LM layer (d = {cs['dim']}, H = {cs['heads']}, float32): training step over "
        f"{cs['batch']} sequence(s)",
        "",
        "| layer | n | tokens/s | x chunked causal linear attention | TFLOP/s | peak memory | status |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    base = {
        r["n"]: r.get("tokens_per_s")
        for r in results["causal"]
        if r["name"].startswith("chunked") and r.get("status") == "ok"
    }
    for r in results["causal"]:
        ok = r.get("status") == "ok"
        rel = r["tokens_per_s"] / base[r["n"]] if ok and base.get(r["n"]) else None
        lines.append(
            f"| {r['name'].rsplit(' n=', 1)[0]} | {r['n']:,} | {_num(r.get('tokens_per_s'), ',.0f') if ok else '-'} | "
            f"{_num(rel, '.3f')} | {_num(r.get('tflops'), '.3f') if ok else '-'} | "
            f"{_gib(r.get('peak_bytes')) if ok else '-'} | {_status(r)} |"
        )
    lines += [
        "",
        "Memory: `device.memory_stats()['peak_bytes_in_use']` of the measurement's own process where the "
        "backend reports it, else XLA's compiled memory analysis (arguments + outputs + temp). FLOPs: XLA "
        "cost analysis of the compiled step, loop trip counts included (`ttt_compile.cost`).",
    ]
    return "\n".join(lines) + "\n"


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
