"""Building and measuring the suite's programs: layers, compiled figures, one (d, n) group's timing, the compile-time stack."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from . import timing
from .harness import compiled_figures, pick

if TYPE_CHECKING:  # annotations only: this module never imports suite at run time
    from .suite_config import Config

#: What a program's figures hold in results.json (the harness reads more).
FIGURE_KEYS = ("flops", "temp_bytes", "compile_s", "xla_loop")

LAYERS: dict[str, tuple[str, dict]] = {
    "self_attention": ("self_attention", {}),
    "linear_attention": ("linear_attention", {"feature_map": "identity"}),
    "linear_attention_elu1": ("linear_attention", {"feature_map": "elu1"}),
    "mttt_linear": ("mttt_linear", {}),
    "mttt_mlp_T1": ("mttt_mlp", {"steps": 1}),
    "mttt_mlp_T4_full": ("mttt_mlp", {"steps": 4, "batching": "full"}),
    "mttt_mlp_T4_sgd": ("mttt_mlp", {"steps": 4, "batching": "sgd"}),
    "mttt_kernel": ("mttt_kernel", {}),
}

# layers whose programs are timed back to back in each round (the targets compare across them)
CLUSTERS = {
    "linear_attention": "linear",
    "mttt_linear": "linear",
    "mttt_mlp_T1": "mlp",
    "mttt_mlp_T4_sgd": "mlp",
    "self_attention": "softmax",
    "mttt_kernel": "softmax",
}

# programs the targets compare: timed first in every group
TARGET_PROGRAMS = (
    ("linear_attention", "none"),
    ("mttt_linear", "default"),
    ("mttt_linear", "none"),
    ("mttt_mlp_T4_sgd", "default"),
    ("mttt_mlp_T1", "default"),
    ("mttt_mlp_T4_sgd", "none"),
    ("mttt_mlp_T1", "none"),
)


def pipelines() -> dict[str, Any]:
    """{pipeline name: `passes` argument of tc.compile}: none, each registered pass alone (the
    automatic `lower` follows it), default."""
    from ttt_compile import compiler, passes

    single = [p for p in compiler.DEFAULT if p != "lower"]
    single += [p for p in passes.available() if p not in single and p != "lower"]
    return {"none": "none", **{p: [p] for p in single}, "default": "default"}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- building programs
def build_layer(name: str, dim: int, heads: int, key):
    """The eqx.Module of benchmark layer `name` (see LAYERS)."""
    from ttt_compile.models import layers

    preset, options = LAYERS[name]
    return layers.PRESETS[preset](dim=dim, heads=heads, key=key, **options)


def program_key(prog) -> str:
    """Identity of a compiled program: hash of its final jaxpr's text and its constants' types."""
    text = str(prog.jaxpr) + repr([(np.shape(c), str(getattr(c, "dtype", ""))) for c in prog.jaxpr.consts])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def measure_program(prog, x) -> tuple[dict, dict]:
    """Compile the forward and training step of a Compiled program at x (array or ShapeDtypeStruct).
    Returns (figures {"fwd": {...}, "train": {...}}, {"fwd": thunk, "train": thunk} or {} if x is
    abstract)."""
    fwd = timing.forward_fn(prog)
    train, params = timing.train_fn(prog)
    f_fig, f_exe = compiled_figures(fwd, (x,))
    t_fig, t_exe = compiled_figures(train, (params, x))
    thunks = {}
    if isinstance(x, jax.Array):
        thunks = {"fwd": lambda: f_exe(x), "train": lambda: t_exe(params, x)}
    return {"fwd": pick(f_fig, *FIGURE_KEYS), "train": pick(t_fig, *FIGURE_KEYS)}, thunks


# --------------------------------------------------------------------------- one (d, n) group
def _priority(rec: dict, layer_cost: dict) -> tuple:
    """Timing order: the targets' programs, then each layer's none and default together (cheapest
    layer first), then the single-pass programs (cheapest first)."""
    pairs = {(rec["layer"], p) for p in rec["pipelines"]}
    if pairs & set(TARGET_PROGRAMS):
        return (0, min(TARGET_PROGRAMS.index(p) for p in pairs & set(TARGET_PROGRAMS)), 0.0)
    if {"none", "default"} & set(rec["pipelines"]):
        return (1, layer_cost.get(rec["layer"], 0.0), rec["layer"])
    return (2, rec["fig"]["fwd"]["flops"] + rec["fig"]["train"]["flops"], rec["layer"])


def _warm(thunk) -> float:
    """Seconds of one call (the program is compiled already; this also warms it up)."""
    return timing.block(thunk, 1)


def choose_timed(records: list[dict], thunks: dict, cfg: Config, peak_gflops: float, peak_block_s: float):
    """Pick the programs to time in this group's interleaved rounds and say why each other one is
    not timed.  The targets' programs come first and are timed whatever the budget (within the
    per-call and memory caps); then each layer's none and default, then the single-pass programs,
    while the estimated rounds fit the group's budget.  Returns (chosen ids, single-call seconds
    {(id, kind): s})."""
    chosen, singles = [], {}
    spent = cfg.reps * max(peak_block_s, cfg.min_block_s)
    layer_cost: dict[str, float] = {}
    for rec in records:
        if {"none", "default"} & set(rec["pipelines"]):
            layer_cost[rec["layer"]] = layer_cost.get(rec["layer"], 0.0) + rec["fig"]["train"]["flops"]
    budget_note = (
        f"the group's timing budget ({cfg.time_budget_s:.0f} s for {cfg.reps} interleaved rounds) was spent on "
        "higher-priority programs"
    )
    for rec in sorted(records, key=lambda r: _priority(r, layer_cost)):
        if rec["id"] not in thunks:
            continue
        must = _priority(rec, layer_cost)[0] == 0
        fig = rec["fig"]
        temp = fig["train"]["temp_bytes"] or 0
        if temp > cfg.max_temp_bytes:
            rec["timing_skipped"] = (
                f"train step needs {temp / 2**30:.2f} GiB of temp memory (> {cfg.max_temp_bytes / 2**30:.1f} "
                "GiB allowed on this shared machine)"
            )
            continue
        predicted = fig["train"]["flops"] / (cfg.rate_floor * peak_gflops * 1e9)
        if predicted > 4 * cfg.max_call_s:
            rec["timing_skipped"] = (
                f"train step predicted at {predicted:.1f} s per call from its FLOPs at {cfg.rate_floor:.0%} "
                f"of the {peak_gflops:.0f} GFLOP/s matmul peak; calls over {cfg.max_call_s} s are not timed"
            )
            continue
        at_peak = cfg.reps * sum(max(fig[k]["flops"] / (peak_gflops * 1e9), cfg.min_block_s) for k in ("fwd", "train"))
        if not must and spent + at_peak > cfg.time_budget_s:
            rec["timing_skipped"] = (
                f"{budget_note}; {cfg.reps} rounds of this one would take {at_peak:.0f} s even at the matmul peak"
            )
            continue
        s = {}
        for kind in ("fwd", "train"):
            s[kind] = _warm(thunks[rec["id"]][kind])
            if s[kind] > cfg.max_call_s:
                break
        if max(s.values()) > cfg.max_call_s:
            rec["timing_skipped"] = (
                f"one {max(s, key=s.get)} call takes {max(s.values()):.2f} s; calls over {cfg.max_call_s} s "
                f"are not timed ({cfg.reps} rounds would not fit the budget)"
            )
            continue
        cost = cfg.reps * sum(max(v, cfg.min_block_s) for v in s.values())
        if not must and spent + cost > cfg.time_budget_s:
            rec["timing_skipped"] = f"{budget_note}; one call takes {s['fwd']:.2f} s (fwd) / {s['train']:.2f} s (train)"
            continue
        spent += cost
        chosen.append(rec["id"])
        singles.update({(rec["id"], k): v for k, v in s.items()})
    return chosen, singles


def time_group(records: list[dict], thunks: dict, cfg: Config, peak) -> dict:
    """Interleaved timing of the chosen programs (fwd and train) and the matmul peak.  Fills each
    timed record's `rounds_s`, `wall_s`, `spread`, `gflops`, `frac_peak`; returns the group's peak figures."""
    peak_thunk, peak_flops = peak
    peak_s = min(_warm(peak_thunk) for _ in range(4))
    chosen, singles = choose_timed(records, thunks, cfg, peak_flops / peak_s / 1e9, peak_s)
    calls = {"peak": peak_thunk}
    single_s = {"peak": peak_s}
    for pid in chosen:
        for kind in ("fwd", "train"):
            calls[f"{pid}/{kind}"] = thunks[pid][kind]
            single_s[f"{pid}/{kind}"] = singles[(pid, kind)]
    clusters: dict[tuple[str, str], list[str]] = {}
    for rec in records:
        if rec["id"] in chosen:
            for kind in ("fwd", "train"):
                clusters.setdefault((CLUSTERS.get(rec["layer"], rec["layer"]), kind), []).append(f"{rec['id']}/{kind}")
    log(f"  timing {len(chosen)} programs x (fwd, train) + peak matmul, {cfg.reps} interleaved rounds")
    rounds = timing.interleaved(
        calls, cfg.reps, min_block_s=cfg.min_block_s, singles=single_s, clusters=list(clusters.values())
    )
    peak_rounds = rounds["peak"]
    for rec in records:
        if rec["id"] not in chosen:
            continue
        for kind in ("fwd", "train"):
            series = rounds[f"{rec['id']}/{kind}"]
            fig = rec["fig"][kind]
            fig["rounds_s"] = series
            fig["wall_s"] = timing.median(series)
            fig["spread"] = timing.spread(series)
            fig["gflops"] = fig["flops"] / fig["wall_s"] / 1e9
            fig["frac_peak"] = fig["flops"] / peak_flops * timing.ratio(peak_rounds, series)
    return {
        "rounds_s": peak_rounds,
        "wall_s": timing.median(peak_rounds),
        "gflops": peak_flops / timing.median(peak_rounds) / 1e9,
        "size": cfg.peak_size,
        "timed_programs": len(chosen),
    }


def run_group(cfg: Config, dim: int, heads: int, n: int, *, flops_only: bool, layer_names, pipe_names, peak) -> dict:
    """Compile and measure every (layer, pipeline) of one (d, n) shape; time the programs if not
    flops_only.  Returns {dim, heads, n, batch, flops_only, programs: [one record per distinct
    program], cells: [one per (layer, pipeline)], peak: the group's matmul peak or None}."""
    import ttt_compile as tc
    from ttt_compile.compiler import count_eqns

    pipes = pipelines()
    key = jax.random.PRNGKey(0)
    shape = (cfg.batch, n, dim)
    x = (
        jax.ShapeDtypeStruct(shape, jnp.float32)
        if flops_only
        else jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float32)
    )
    x1 = jnp.zeros((n, dim), jnp.float32)
    records, by_key, thunks, cells = [], {}, {}, []
    for lname in layer_names:
        layer = build_layer(lname, dim, heads, key)
        for pname in pipe_names:
            cell = {"layer": lname, "pipeline": pname, "dim": dim, "heads": heads, "n": n, "batch": cfg.batch}
            try:
                t0 = time.perf_counter()
                prog = tc.compile(layer, x1, passes=pipes[pname])
                cell["tc_compile_s"] = time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 - a failing pipeline is a finding, recorded
                cell["skipped"] = f"tc.compile failed: {type(e).__name__}: {str(e)[:300]}"
                log(f"  {lname:<22} {pname:<15} SKIPPED {cell['skipped']}")
                cells.append(cell)
                continue
            pkey = lname + ":" + program_key(prog)
            cell["notes"] = [f"{name}: {m}" for name, ms in prog.notes for m in ms]
            if pkey in by_key:
                rec = by_key[pkey]
                rec["pipelines"].append(pname)
                cell["program"], cell["same_program_as"] = rec["id"], rec["pipelines"][0]
                cells.append(cell)
                continue
            rec = {"id": f"{lname}/{pname}", "layer": lname, "pipelines": [pname], "eqns": count_eqns(prog.jaxpr)}
            try:
                rec["fig"], thunks[rec["id"]] = measure_program(prog, x)
            except Exception as e:  # noqa: BLE001
                cell["skipped"] = f"XLA compile/cost failed: {type(e).__name__}: {str(e)[:300]}"
                log(f"  {lname:<22} {pname:<15} SKIPPED {cell['skipped']}")
                cells.append(cell)
                continue
            if not thunks[rec["id"]]:
                del thunks[rec["id"]]
            by_key[pkey] = rec
            records.append(rec)
            cell["program"], cell["same_program_as"] = rec["id"], None
            cells.append(cell)
            f, t = rec["fig"]["fwd"], rec["fig"]["train"]
            log(
                f"  {lname:<22} {pname:<15} GFLOP fwd {f['flops'] / 1e9:9.3f} train {t['flops'] / 1e9:9.3f}  "
                f"temp MB {f['temp_bytes'] / 2**20:9.1f} {t['temp_bytes'] / 2**20:9.1f}  "
                f"compile s {f['compile_s']:.1f}+{t['compile_s']:.1f}"
            )
    group_peak = None
    if flops_only:
        for rec in records:
            rec["timing_skipped"] = f"n={n} is measured by compilation only (FLOPs, memory)"
    elif records:
        try:
            group_peak = time_group(records, thunks, cfg, peak)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory at run time: recorded, the run goes on
            for rec in records:
                rec.setdefault("timing_skipped", f"timing failed: {type(e).__name__}: {str(e)[:300]}")
            log(f"  timing FAILED: {type(e).__name__}: {str(e)[:300]}")
    thunks.clear()
    return {
        "dim": dim,
        "heads": heads,
        "n": n,
        "batch": cfg.batch,
        "flops_only": flops_only,
        "programs": records,
        "cells": cells,
        "peak": group_peak,
    }


# --------------------------------------------------------------------------- the compile-time stack
def make_stack(depth: int, dim: int, heads: int, key):
    """A ViT-shaped stack: `depth` pre-LayerNorm residual blocks x <- x + mttt_linear(LN(x))."""
    import equinox as eqx

    from ttt_compile.models import layers

    class Stack(eqx.Module):
        norms: list
        blocks: list

        def __call__(self, x):
            for ln, blk in zip(self.norms, self.blocks):
                x = x + blk(jax.vmap(ln)(x))
            return x

    keys = jax.random.split(key, depth)
    return Stack(
        [eqx.nn.LayerNorm(dim) for _ in range(depth)], [layers.mttt_linear(dim=dim, heads=heads, key=k) for k in keys]
    )


def stack_compile(cfg: Config) -> dict:
    """Seconds to tc.compile the stack and XLA-compile its training step (forward + backward), per
    pipeline (none, default), then one step run to check the loss is finite."""
    import ttt_compile as tc

    depth, dim, heads, n = cfg.stack
    stack = make_stack(depth, dim, heads, jax.random.PRNGKey(0))
    x1 = jnp.zeros((n, dim), jnp.float32)
    xb = jax.random.normal(jax.random.PRNGKey(1), (cfg.batch, n, dim), jnp.float32)
    out = {"depth": depth, "dim": dim, "heads": heads, "n": n, "batch": cfg.batch}
    for pname in cfg.stack_pipelines:
        try:
            t0 = time.perf_counter()
            prog = tc.compile(stack, x1, passes=pname)
            t1 = time.perf_counter()
            fn, params = timing.train_fn(prog)
            exe = jax.jit(fn).lower(params, xb).compile()
            t2 = time.perf_counter()
            loss, _ = exe(params, xb)
            out[pname] = {
                "tc_compile_s": t1 - t0,
                "jit_compile_s": t2 - t1,
                "total_s": t2 - t0,
                "loss_finite": bool(np.isfinite(float(loss))),
            }
        except Exception as e:  # noqa: BLE001
            out[pname] = {"skipped": f"{type(e).__name__}: {str(e)[:300]}"}
        log(f"stack {depth}x mttt_linear d={dim} n={n} {pname}: {out[pname]}")
    return out


def warm_up() -> None:
    """One tiny tc.compile + jit, so import and first-trace costs do not land on the timed stack."""
    import ttt_compile as tc
    from ttt_compile.models import layers

    m = layers.mttt_linear(dim=8, heads=2, key=jax.random.PRNGKey(0))
    prog = tc.compile(m, jnp.zeros((4, 8)), passes="default")
    fn, params = timing.train_fn(prog)
    jax.jit(fn).lower(params, jnp.zeros((1, 4, 8))).compile()
