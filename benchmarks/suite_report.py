"""The suite's derived figures and text: ratios between programs, the published targets, the method, results.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import timing

if TYPE_CHECKING:  # annotations only: this module never imports suite at run time
    from .suite_config import Config


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


def method(cfg: Config) -> list[str]:
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
