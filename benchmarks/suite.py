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
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import timing

# name -> (preset in layers.PRESETS, options)
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


@dataclasses.dataclass(frozen=True)
class Config:
    """What one run of the suite measures and how much time it may spend."""

    name: str
    dims: tuple[tuple[int, int], ...]  # (d, H)
    ns: tuple[int, ...]  # sequence lengths measured fully
    flops_only: tuple[tuple[int, int], ...]  # (d, n) measured by compilation only (FLOPs, memory)
    batch: int
    layers: tuple[str, ...]
    pipelines: tuple[str, ...]  # run in the sweep groups
    sweep: tuple[tuple[int, int], ...]  # (d, n) groups running every pipeline; others: none, default
    reps: int  # interleaved rounds
    min_block_s: float
    time_budget_s: float  # estimated interleaved-timing seconds per (d, n) group
    max_call_s: float  # programs slower than this per call are not timed
    max_temp_bytes: int  # ... nor those whose train step needs more temp memory
    rate_floor: float  # fraction of peak assumed when predicting a call's time
    stack: tuple[int, int, int, int]  # (depth, d, H, n) of the compile-time stack
    stack_pipelines: tuple[str, ...] = ("default", "none")
    peak_size: int = 2048
    deadline_s: float | None = None  # no group starts after this many seconds of the run
    warm_up: bool = True  # compile a tiny layer first, so first-trace costs miss the stack


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


def xla_flops(exe) -> float:
    """XLA's own FLOP count of a compiled executable (a while body counted once)."""
    ca = exe.cost_analysis()
    ca = (ca[0] if ca else {}) if isinstance(ca, (list, tuple)) else (ca or {})
    return float(ca.get("flops", 0.0))


def compile_and_count(fn, args: tuple) -> tuple[dict, Any]:
    """({flops, temp_bytes, compile_s, xla_loop}, executable) of jit(fn) at args.

    FLOPs have loop trip counts accounted for: if the compiled program keeps a `while`, they come
    from `ttt_compile.cost.of(fn, *args)`; otherwise XLA's count is already exact."""
    from ttt_compile import cost

    t0 = time.perf_counter()
    exe = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    has_while = "while" in exe.as_text()
    flops = cost.of(fn, *args).flops if has_while else xla_flops(exe)
    ma = exe.memory_analysis()
    temp = int(getattr(ma, "temp_size_in_bytes", 0)) if ma is not None else None
    return {"flops": flops, "temp_bytes": temp, "compile_s": compile_s, "xla_loop": has_while}, exe


def measure_program(prog, x) -> tuple[dict, dict]:
    """Compile the forward and training step of a Compiled program at x (array or ShapeDtypeStruct).
    Returns (figures {"fwd": {...}, "train": {...}}, {"fwd": thunk, "train": thunk} or {} if x is
    abstract)."""
    fwd = timing.forward_fn(prog)
    train, params = timing.train_fn(prog)
    f_fig, f_exe = compile_and_count(fwd, (x,))
    t_fig, t_exe = compile_and_count(train, (params, x))
    thunks = {}
    if isinstance(x, jax.Array):
        thunks = {"fwd": lambda: f_exe(x), "train": lambda: t_exe(params, x)}
    return {"fwd": f_fig, "train": t_fig}, thunks


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


# --------------------------------------------------------------------------- derived figures
def _prog(group: dict, layer: str, pipeline: str) -> dict | None:
    cell = next((c for c in group["cells"] if c["layer"] == layer and c["pipeline"] == pipeline), None)
    if cell is None or "program" not in cell:
        return None
    return next(r for r in group["programs"] if r["id"] == cell["program"])


def compare(group: dict, a: tuple[str, str], b: tuple[str, str], kind: str, what: str):
    """Ratio of figure `what` ("flops" | "temp_bytes" | "wall") of program a over program b
    ((layer, pipeline) pairs) in one group; wall ratios are interleaved (median of per-round ratios).
    None if either side was not measured."""
    pa, pb = _prog(group, *a), _prog(group, *b)
    if pa is None or pb is None:
        return None
    fa, fb = pa["fig"][kind], pb["fig"][kind]
    if what == "wall":
        if "rounds_s" not in fa or "rounds_s" not in fb:
            return None
        return 1.0 if pa is pb else timing.ratio(fa["rounds_s"], fb["rounds_s"])
    if not fb.get(what):
        return None
    return fa[what] / fb[what]


def frac_peak(group: dict, a: tuple[str, str], kind: str):
    """Achieved FLOP/s of program a ((layer, pipeline)) as a fraction of the matmul's FLOP/s timed in the same
    interleaved rounds (`time_group`), or None if it was not timed."""
    pa = _prog(group, *a)
    return None if pa is None else pa["fig"][kind].get("frac_peak")


def wall_ratio_iqr(group: dict, a: tuple[str, str], b: tuple[str, str], kind: str):
    """(q25, q75) over rounds of the per-round wall ratio a / b, or None."""
    pa, pb = _prog(group, *a), _prog(group, *b)
    if pa is None or pb is None or "rounds_s" not in pa["fig"][kind] or "rounds_s" not in pb["fig"][kind]:
        return None
    return timing.ratio_quartiles(pa["fig"][kind]["rounds_s"], pb["fig"][kind]["rounds_s"])


def add_ratios(group: dict) -> None:
    """Each cell gets `vs_none`: its figures over those of the same layer's `none` pipeline."""
    for cell in group["cells"]:
        if "program" not in cell:
            continue
        base = (cell["layer"], "none")
        me = (cell["layer"], cell["pipeline"])
        cell["vs_none"] = {
            f"{what}_{kind}": compare(group, me, base, kind, what)
            for what in ("flops", "temp_bytes", "wall")
            for kind in ("fwd", "train")
        }


def _target_row(tid, label, shape, none, default, goal, limit, iqr=None, at_least=False):
    met = None if default is None else bool(default >= limit if at_least else default <= limit)
    row = {"id": tid, "target": label, "shape": shape, "none": none, "default": default, "goal": goal, "met": met}
    if iqr:
        row["iqr"] = iqr  # {pipeline: (q25, q75) of the per-round ratios}
    return row


def targets(groups: list[dict], stack: dict | None) -> list[dict]:
    """The published targets, each with pipeline `none` beside `default`, per measured shape."""
    rows = []
    for g in groups:
        shape = f"d={g['dim']} H={g['heads']} n={g['n']}"
        base = ("linear_attention", "none")
        for kind in ("fwd", "train"):
            vals = {p: compare(g, ("mttt_linear", p), base, kind, "flops") for p in ("none", "default")}
            rows.append(
                _target_row(
                    1,
                    f"FLOPs {kind}: mttt_linear / linear_attention(identity)",
                    shape,
                    vals["none"],
                    vals["default"],
                    "<= 1.01",
                    1.01,
                )
            )
        if not g["flops_only"]:
            for kind in ("fwd", "train"):
                pairs = {p: (("mttt_linear", p), base) for p in ("none", "default")}
                vals = {p: compare(g, *ab, kind, "wall") for p, ab in pairs.items()}
                iqr = {p: wall_ratio_iqr(g, *ab, kind) for p, ab in pairs.items()}
                rows.append(
                    _target_row(
                        1,
                        f"wall {kind}: mttt_linear / linear_attention(identity)",
                        shape,
                        vals["none"],
                        vals["default"],
                        "<= 1.05",
                        1.05,
                        iqr,
                    )
                )
            pairs = {p: (("mttt_mlp_T4_sgd", p), ("mttt_mlp_T1", p)) for p in ("none", "default")}
            vals = {p: compare(g, *ab, "train", "wall") for p, ab in pairs.items()}
            iqr = {p: wall_ratio_iqr(g, *ab, "train") for p, ab in pairs.items()}
            rows.append(
                _target_row(
                    2,
                    "train wall: mttt_mlp SGD T=4 / full T=1",
                    shape,
                    vals["none"],
                    vals["default"],
                    "<= 1.05",
                    1.05,
                    iqr,
                )
            )
            for layer in ("mttt_mlp_T1", "mttt_mlp_T4_full", "mttt_mlp_T4_sgd"):
                vals = {p: frac_peak(g, (layer, p), "train") for p in ("none", "default")}
                rows.append(
                    _target_row(
                        5,
                        f"train FLOP/s / f32 matmul FLOP/s (same rounds): {layer}",
                        shape,
                        vals["none"],
                        vals["default"],
                        ">= 0.5",
                        0.5,
                        at_least=True,
                    )
                )
        vals = {
            p: compare(g, ("mttt_mlp_T4_full", p), ("mttt_mlp_T1", p), "train", "temp_bytes")
            for p in ("none", "default")
        }
        rows.append(
            _target_row(
                3, "train temp memory: mttt_mlp full T=4 / T=1", shape, vals["none"], vals["default"], "<= 2", 2.0
            )
        )
    if stack:
        d, h, n, depth = stack["dim"], stack["heads"], stack["n"], stack["depth"]
        get = lambda p: stack.get(p, {}).get("total_s")  # noqa: E731
        rows.append(
            _target_row(
                4,
                f"compile s (tc.compile + jit fwd+bwd), {depth}-layer mttt_linear stack",
                f"d={d} H={h} n={n} batch={stack['batch']}",
                get("none"),
                get("default"),
                "< 60 s",
                60.0,
            )
        )
    return [r for r in rows if r["none"] is not None or r["default"] is not None]


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
        _warm_up()
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
        "method": _method(cfg),
        "stack_compile": stack,
        "groups": groups,
        "skipped_groups": skipped_groups,
        "targets": targets(groups, stack),
    }
    results["plots"] = [p.name for p in plots.write_all(results, out_dir)]
    results["runtime_s"] = time.perf_counter() - t_start
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (out_dir / "results.md").write_text(markdown(results))
    log(f"done in {results['runtime_s']:.0f} s: {out_dir / 'results.json'}, results.md, {len(results['plots'])} plots")
    return results


def _warm_up() -> None:
    """One tiny tc.compile + jit, so import and first-trace costs do not land on the timed stack."""
    import ttt_compile as tc
    from ttt_compile.models import layers

    m = layers.mttt_linear(dim=8, heads=2, key=jax.random.PRNGKey(0))
    prog = tc.compile(m, jnp.zeros((4, 8)), passes="default")
    fn, params = timing.train_fn(prog)
    jax.jit(fn).lower(params, jnp.zeros((1, 4, 8))).compile()


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def _method(cfg: Config) -> list[str]:
    return [
        "forward = jit(vmap(prog))(x); train = jit(value_and_grad(sum(sin(vmap(prog)(x))))) w.r.t. the float "
        "leaves, as /work/shared/checks/targets.py",
        "FLOPs: XLA cost analysis with loop trip counts (ttt_compile.cost.of when a while loop survives XLA)",
        "temp memory: compiled memory_analysis().temp_size_in_bytes",
        f"wall: median of {cfg.reps} interleaved rounds after warm-up, blocks of >= {cfg.min_block_s} s; ratios are "
        "medians of per-round ratios inside one group of rounds of this run; never compare across runs",
        "in each round the programs compared with each other (one layer's pipelines; linear_attention with "
        "mttt_linear; mttt_mlp T=1 with SGD T=4; self_attention with mttt_kernel), forward and train separately, are "
        "timed back to back in random order, the clusters also in random order",
        f"peak: {cfg.peak_size}^2 f32 matmul timed in the same rounds; frac_peak = achieved / that peak",
        "pipelines producing the same program (identical jaxpr) are measured once ('same program as')",
        f"single-pass pipelines run at (d, n) in {list(cfg.sweep) or 'none of the shapes'}; elsewhere none and default "
        "only (compiling ~30 programs per shape does not fit one run's budget on this machine)",
        f"compile-only shapes (FLOPs, memory; no timing): (d, n) in {list(cfg.flops_only) or 'none'}",
        "compile-time stack: measured "
        + (
            "after a warm-up compile of a tiny layer"
            if cfg.warm_up
            else "first thing in the process (includes one-time first-trace costs)"
        ),
        "no new shape group starts after "
        + (f"{cfg.deadline_s:.0f} s of the run" if cfg.deadline_s else "any time")
        + " (those not started are listed as not measured)",
        f"timing budget per (d, n) group: ~{cfg.time_budget_s:.0f} s of interleaved rounds (the targets' programs are "
        f"timed regardless); calls over {cfg.max_call_s} s and train steps over {cfg.max_temp_bytes / 2**30:.1f} GiB "
        "temp memory are not timed",
    ]


# --------------------------------------------------------------------------- markdown
def _f(v, fmt="{:.3g}", none="—"):
    return none if v is None else fmt.format(v)


def _mb(v):
    return _f(None if v is None else v / 2**20, "{:.1f}")


def _ms(fig):
    return _f(fig.get("wall_s") and fig["wall_s"] * 1e3, "{:.2f}")


def markdown(results: dict) -> str:
    """results.md: machine, method, Targets (none beside default), one table per (d, n) group."""
    m = results["machine"]
    lines = [
        f"# ttt-compile pass-comparison benchmark ({results['config']['name']} run, {m['date']})",
        "",
        f"Machine: {m['processor']} ({m['cpus_usable']} usable CPUs of {m['cpu_count']}), {m['platform']}; "
        f"jax {m['jax']} / jaxlib {m['jaxlib']} ({m['backend']}); load average at start "
        f"{_f(m['loadavg_start'] and m['loadavg_start'][0], '{:.2f}')}, end {_f(m['loadavg_end'] and m['loadavg_end'][0], '{:.2f}')} "
        "(other jobs shared the machine). "
        f"Matmul peak ({m['peak_matmul']}): {_f(m['peak_gflops'], '{:.1f}')} GFLOP/s (median over groups). "
        f"Suite runtime {results['runtime_s']:.0f} s.",
        "",
        f"Compiler: commit {_f(m['source_start']['commit'], '{:.12}')}"
        f"{' with uncommitted changes' if m['source_start']['tracked_changes'] else ''}, core sources sha1 "
        f"{m['source_start']['core_sources_sha1']}"
        + (
            ""
            if m["source_end"]["core_sources_sha1"] == m["source_start"]["core_sources_sha1"]
            else " (the sources on disk changed during the run; the run used the modules imported at its start)"
        )
        + ".",
        "",
        "Method:",
        "",
    ]
    lines += [f"- {s}" for s in results["method"]]
    lines += [
        "",
        "## Targets",
        "",
        "Ratios inside this run (wall: median of per-round ratios in the interleaved rounds of the same group, "
        "with the 25th–75th percentile of those per-round ratios in brackets). Baseline linear_attention "
        "is its `none` program (plain JAX). 'met' refers to the `default` pipeline.",
        "",
        "| # | target | shape | none | default | goal | met (default) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["targets"]:
        fmt = "{:.1f} s" if r["id"] == 4 else "{:.3f}"
        cell = {
            p: _f(r[p], fmt) + (f" ({r['iqr'][p][0]:.2f}–{r['iqr'][p][1]:.2f})" if r.get("iqr", {}).get(p) else "")
            for p in ("none", "default")
        }
        lines.append(
            f"| {r['id']} | {r['target']} | {r['shape']} | {cell['none']} | {cell['default']} | "
            f"{r['goal']} | {'—' if r['met'] is None else ('yes' if r['met'] else '**no**')} |"
        )
    if results.get("skipped_groups"):
        lines += ["", "Shapes not measured in this run:", ""]
        lines += [f"- d={g['dim']}, H={g['heads']}, n={g['n']}: {g['skipped']}" for g in results["skipped_groups"]]
    st = results.get("stack_compile")
    if st:
        lines += [
            "",
            f"Compile-time stack: {st['depth']} pre-LN residual mttt_linear blocks, d={st['dim']}, "
            f"H={st['heads']}, n={st['n']}, batch {st['batch']}:",
            "",
        ]
        for p in ("none", "default"):
            if p not in st:
                continue
            s = st[p]
            lines.append(
                f"- {p}: "
                + (
                    s["skipped"]
                    if "skipped" in s
                    else f"tc.compile {s['tc_compile_s']:.2f} s + jit fwd+bwd {s['jit_compile_s']:.2f} s "
                    f"= {s['total_s']:.2f} s (one step run, loss finite: {s['loss_finite']})"
                )
            )
    for g in results["groups"]:
        lines += [
            "",
            f"## d={g['dim']}, H={g['heads']}, n={g['n']}, batch {g['batch']}"
            + (" (FLOPs and memory from compilation only)" if g["flops_only"] else ""),
            "",
        ]
        if g["peak"]:
            lines.append(
                f"Peak matmul in these rounds: {g['peak']['gflops']:.1f} GFLOP/s; "
                f"{g['peak']['timed_programs']} programs timed."
            )
            lines.append("")
        lines += [
            "| layer | pipeline | same program as | eqns | GFLOP fwd | GFLOP train | FLOPs fwd / none | "
            "FLOPs train / none | fwd ms | train ms | fwd time / none | train time / none | temp fwd MiB | "
            "temp train MiB | train GFLOP/s | train % peak | XLA compile s (fwd+train) |",
            "|" + "---|" * 17,
        ]
        skipped = []
        for c in g["cells"]:
            if "program" not in c:
                lines.append(f"| {c['layer']} | {c['pipeline']} | skipped: {c['skipped']} |" + " |" * 14)
                continue
            rec = next(r for r in g["programs"] if r["id"] == c["program"])
            f, t, v = rec["fig"]["fwd"], rec["fig"]["train"], c["vs_none"]
            lines.append(
                f"| {c['layer']} | {c['pipeline']} | {c['same_program_as'] or ''} | {rec['eqns']} | "
                f"{f['flops'] / 1e9:.4g} | {t['flops'] / 1e9:.4g} | {_f(v['flops_fwd'], '{:.3f}')} | "
                f"{_f(v['flops_train'], '{:.3f}')} | {_ms(f)} | {_ms(t)} | {_f(v['wall_fwd'], '{:.3f}')} | "
                f"{_f(v['wall_train'], '{:.3f}')} | {_mb(f['temp_bytes'])} | {_mb(t['temp_bytes'])} | "
                f"{_f(t.get('gflops'), '{:.1f}')} | {_f(t.get('frac_peak') and 100 * t['frac_peak'], '{:.1f}')} | "
                f"{f['compile_s']:.1f}+{t['compile_s']:.1f} |"
            )
            if c["same_program_as"] is None and "timing_skipped" in rec and not g["flops_only"]:
                skipped.append(f"- {rec['id']}: not timed: {rec['timing_skipped']}")
        if skipped:
            lines += ["", "Not timed in this group:", ""] + skipped
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in results.get("plots", [])), ""]
    return "\n".join(lines)


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
