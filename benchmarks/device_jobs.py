"""The device benchmark's measurements (`device`), each run in its own child process: what is
measured (the layers, the model sizes, the bf16 peaks), the jobs (`job_info`, `job_vit`,
`job_causal`; `JOBS`, `run_job`) and what they build and time.

Imports no jax at module level (each job imports what it needs), so the parent process that
imports this for `plan` stays light.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time

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
        "ttt_lm_jax": dict(dim=768, heads=12, n=2048, batch=1),
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
        "ttt_lm_jax": dict(dim=32, heads=2, n=64, batch=1),
        "min_block_s": 0.02,
        "rounds": 3,
    },
}


def peak_tflops(device_kind: str) -> float | None:
    """The bf16 peak of `device_kind` from PEAK_BF16, or None when it is not in the table."""
    return next((peak for name, peak in PEAK_BF16 if name.lower() in device_kind.lower()), None)


# ===================================================================================== info
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


# ===================================================================================== ViT (parts 1, 2)
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
    r = throughput(step, (params, opt_state, images, labels), b, 2, spec["mode"])
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


# ===================================================================================== causal LM layer (part 3)
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
    r = throughput(step, (params, x), b * n, 0, spec["mode"])
    r["tokens_per_s"] = r.pop("items_per_s")
    r.update(batch=b, compute_dtype="float32", pass_notes=notes)
    return r


# ===================================================================================== vs the ttt-lm-jax peer (part 4)
#: Row name -> kind of `benchmarks.ttt_lm_jax` (our converted layer against the peer's).
TTT_LM_JAX = {"TTT-Linear vs ttt-lm-jax": "linear", "TTT-MLP vs ttt-lm-jax": "mlp"}
#: The environment variable naming a checkout of test-time-training/ttt-lm-jax.
TTT_LM_JAX_ENV = "TTT_LM_JAX_DIR"


def ttt_lm_jax_unavailable() -> str | None:
    """Why part 4 cannot run here (no flax, no peer checkout named by TTT_LM_JAX_DIR), or None."""
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("flax") is None:
        return "flax is not installed (pip install -e '.[released]')"
    path = os.environ.get(TTT_LM_JAX_ENV)
    if not path:
        return f"{TTT_LM_JAX_ENV} is not set (name a checkout of test-time-training/ttt-lm-jax)"
    if not (Path(path) / "ttt" / "models" / "ttt_layer.py").is_file():
        return f"{TTT_LM_JAX_ENV}={path} has no ttt/models/ttt_layer.py"
    return None


def job_ttt_lm_jax(spec: dict) -> dict:
    """Our converted TTT-Linear / TTT-MLP against the peer layer, interleaved (part 4): the training
    step of `benchmarks.ttt_lm_jax` (value_and_grad of sum(sin(layer(x))), x (1, n, d), float32)."""
    import jax
    import jax.numpy as jnp

    from . import ttt_lm_jax as tlj
    from . import ttt_lm_jax_peer

    size = SIZES[spec["mode"]]["ttt_lm_jax"]
    kind, dim, heads, n = TTT_LM_JAX[spec["layer"]], size["dim"], size["heads"], size["n"]
    module = ttt_lm_jax_peer.load_peer(os.environ[TTT_LM_JAX_ENV])
    x = jax.random.normal(jax.random.PRNGKey(1), (size["batch"], n, dim), jnp.float32)
    t0 = time.perf_counter()
    p = tlj.pair(module, kind, dim, heads, x)
    same = tlj.check_same(p, kind, dim, heads, x)
    if not same["output"] <= tlj.MAX_OUTPUT_ERR:
        raise RuntimeError(f"ours and the peer differ: max rel. output error {same['output']:.2e}")
    build_s = time.perf_counter() - t0
    r = tlj.compare_steps(p, x, reps=SIZES[spec["mode"]]["rounds"], min_block_s=SIZES[spec["mode"]]["min_block_s"])
    r.update(
        kind=kind,
        dim=dim,
        heads=heads,
        n=n,
        batch=size["batch"],
        tokens_per_s_ours=size["batch"] * n / r["ours"]["wall_s"],
        tokens_per_s_peer=size["batch"] * n / r["peer"]["wall_s"],
        same=same,
        build_s=build_s,
        peer_checkout=tlj.peer_facts(os.environ[TTT_LM_JAX_ENV]),
        compute_dtype="float32",
        pass_notes=tlj.remat_notes(p["prog"]),
    )
    return r


JOBS = {"info": job_info, "vit": job_vit, "pixels": job_vit, "causal": job_causal, "ttt_lm_jax": job_ttt_lm_jax}


def run_job(spec: dict) -> dict:
    return JOBS[spec["part"]](spec)


# ===================================================================================== figures of a job
def throughput(fn, args, items: int, state_args: int, mode: str) -> dict:
    """Compile jit'ed fn on args and read its figures (`harness.compiled_figures`: FLOPs with loop
    trip counts, compiled memory), then time it (`timing.interleaved`, one thunk, SIZES[mode]'s
    rounds and block length): the first `state_args` arguments are threaded through the calls (they
    are donated), `items` images or tokens per call.  Peak memory: the device's own peak where the
    backend reports one, else the compiled total."""
    import jax

    from . import timing
    from .harness import compiled_figures

    fig, compiled = compiled_figures(fn, args)
    state, rest = list(args[:state_args]), args[state_args:]

    def call():
        out = compiled(*state, *rest)
        state[:] = out[:state_args]
        return out

    per_call = timing.interleaved({"step": call}, SIZES[mode]["rounds"], min_block_s=SIZES[mode]["min_block_s"])
    s = timing.median(per_call["step"])
    peak = peak_tflops(jax.devices()[0].device_kind)
    tflops = fig["flops"] / s / 1e12
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        memory = {"peak_bytes": int(stats["peak_bytes_in_use"]), "memory_source": "device.memory_stats()"}
    else:
        source = "compiled memory analysis (arguments + outputs + temp; no device stats)"
        memory = {"peak_bytes": fig["total_bytes"], "memory_source": source}
    return {
        "status": "ok",
        "compile_s": fig["compile_s"],
        "s_per_step": s,
        "s_per_step_rounds": per_call["step"],
        "items_per_s": items / s,
        "flops_per_step": fig["flops"],
        "flops_source": fig["flops_source"],
        "tflops": tflops,
        "peak_bf16_tflops": peak,
        "fraction_of_peak": (tflops / peak) if peak else "unknown",
        "compiled_temp_bytes": fig["temp_bytes"],
        "compiled_total_bytes": fig["total_bytes"],
        **memory,
    }
