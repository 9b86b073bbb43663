"""Side by side with the peer TTT layers of test-time-training/ttt-lm-jax (`ttt/models/ttt_layer.py`:
`TTTLinear`, `TTTMLP`; Sun et al. 2024, "Learning to (Learn at Test Time)").

The peer code is imported at run time from a checkout the caller names (`--peer-dir`, e.g.
/work/scratch/ttt-lm-jax, a checkout of commit 6f529b124c7fb5879b33c06926408b15add1d82f outside this
repository) by `benchmarks.ttt_lm_jax_peer.load_peer`; none of it is part of this project.  It needs
flax (`pip install -e '.[released]'`).

For each learner (kind "linear": TTT-Linear, "mlp": TTT-MLP), each width d (heads H = d / 64) and
each sequence length n, in one process:

1. build the peer layer (`ttt_lm_jax_peer.peer_config`: mini_batch_size b = 16, max_sequence_length n,
   remat_mini_batch_group_size 4 as in the peer's 125M ... 1.3B configs, ttt_base_lr 1.0, float32),
   initialise it and move every parameter off its initial value (`ttt_lm_jax_peer.perturb`); load the
   same parameters into ours (`ttt_compile.layer.ttt_lm_jax.from_ttt_lm_jax`), compiled with the
   default pipeline (`tc.compile(layer, x[0], passes="default")`);
2. check they compute the same outputs, training-step loss and gradients (max relative error, float32;
   the peer gradients mapped to our parameters by the same conversion as the parameters, a linear
   map); an output error above 1e-4 aborts the row with a message;
3. training step = value_and_grad of sum(sin(layer(x))) w.r.t. all the layer's parameters (the peer:
   every flax parameter; ours: every float leaf of the compiled module, `timing.train_fn`, vmapped over
   the batch), x of shape (B = 1, n, d), positions 0..n-1;
4. XLA FLOPs (cost analysis with loop trip counts, `harness.compiled_figures`) and compiled temp memory
   of both steps, and wall time: `benchmarks.timing.interleaved`, ours and the peer step timed back to
   back in random order in every round together with a 2048^2 f32 matmul (after one warm-up call
   each); the time ratio is the median of per-round ratios ours / peer (quartiles beside it), the
   achieved FLOP/s of each step is its FLOPs over its time, as a fraction of the matmul's FLOP/s in
   the same rounds.

Targets (stated in ttt_lm_jax.md, checked per row): ours <= 0.8 of the peer's time and <= the peer's
compiled temp memory.

Run: `python -m ttt_compile.benchmarks.ttt_lm_jax --peer-dir /work/scratch/ttt-lm-jax [--dims 256 768]
[--ns 2048 4096] [--kinds linear mlp] [--reps 5] [--out benchmarks/results/ttt_lm_jax]`; writes
ttt_lm_jax.json and ttt_lm_jax.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import timing
from . import ttt_lm_jax_peer as peer
from .harness import compiled_figures, pick, write_results

#: Our kind -> the row label.
LABELS = {"linear": "TTT-Linear", "mlp": "TTT-MLP"}
#: The fixed settings of every row (the peer's 125M config values where it has them).
MINI_BATCH = 16
BASE_LR = 1.0
HEAD_DIM = 64
BATCH = 1
#: The peer commit the fixtures (tests/fixtures/ttt_lm_jax.json) were written from; recorded when the
#: checkout is no git repository but its ttt_layer.py has the fixtures' sha256.
FIXTURE_META = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ttt_lm_jax.json"
#: Targets of the comparison (per row).
TARGET_TIME_RATIO = 0.8
TARGET_TEMP_RATIO = 1.0
#: Max relative output error (float32) below which a row is timed.
MAX_OUTPUT_ERR = 1e-4
#: What each side's row keeps of `harness.compiled_figures` (FLOPs with loop trip counts).
FIGURES = ("flops", "flops_source", "xla_loop", "temp_bytes", "total_bytes")


def log(msg: str) -> None:
    print(f"[ttt_lm_jax {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the peer checkout
def peer_facts(peer_dir: Path) -> dict:
    """Commit (git, or the fixtures' commit when the layer file's sha256 matches theirs) and the sha256
    of the peer's ttt/models/ttt_layer.py."""
    layer_file = Path(peer_dir) / "ttt" / "models" / "ttt_layer.py"
    sha = hashlib.sha256(layer_file.read_bytes()).hexdigest() if layer_file.is_file() else None
    commit, source = None, None
    try:
        out = subprocess.run(
            ["git", "-C", str(peer_dir), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout.strip():
            commit, source = out.stdout.strip(), "git rev-parse HEAD"
    except (OSError, subprocess.SubprocessError):
        pass
    if commit is None and sha is not None and FIXTURE_META.is_file():
        meta = json.loads(FIXTURE_META.read_text())
        if meta.get("file_sha256") == sha:
            commit, source = meta.get("peer_commit"), "ttt_layer.py sha256 equal to tests/fixtures/ttt_lm_jax.json's"
    return {"peer_dir": str(peer_dir), "peer_commit": commit, "peer_commit_source": source, "layer_sha256": sha}


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("jax", "jaxlib", "flax", "equinox"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------- the two training steps
def peer_step(module, kind: str, dim: int, heads: int, x, seed: int = 0):
    """(step(p, x) -> (loss, grads), params, layer, config) of the peer layer at perturbed parameters."""
    n = x.shape[1]
    config = peer.peer_config(width=dim, heads=heads, mini_batch_size=MINI_BATCH, n=n, base_lr=BASE_LR)
    layer = peer.build(module, kind, config)
    k_init, k_perturb = jax.random.split(jax.random.PRNGKey(seed))
    params = peer.perturb(peer.init_params(layer, x, k_init), k_perturb)

    def loss(p, x):
        return jnp.sum(jnp.sin(peer.apply_first(layer, p, x)))

    return jax.value_and_grad(loss), params, layer, config


def convert(params, kind: str, dim: int, heads: int):
    """Our TTTLayer computing the peer layer's function at `params` (`from_ttt_lm_jax`)."""
    from ttt_compile.layer.ttt_lm_jax import from_ttt_lm_jax

    return from_ttt_lm_jax(
        jax.tree.map(np.asarray, params), kind=kind, width=dim, heads=heads, mini_batch_size=MINI_BATCH, base_lr=BASE_LR
    )


def our_step(params, kind: str, dim: int, heads: int, x):
    """(step(p, x), p, prog) of our layer loaded from the peer parameters, compiled by tc.compile."""
    import ttt_compile as tc

    prog = tc.compile(convert(params, kind, dim, heads), x[0], passes="default")
    fn, p = timing.train_fn(prog)
    return fn, p, prog


def pair(module, kind: str, dim: int, heads: int, x, seed: int = 0) -> dict:
    """Both training steps of one row: {"peer": (step, params), "ours": (step, params), "prog", "layer",
    "params"}; the entry point the device benchmark reuses."""
    step_p, params_p, layer_p, config = peer_step(module, kind, dim, heads, x, seed)
    step_o, params_o, prog = our_step(params_p, kind, dim, heads, x)
    return {
        "peer": (step_p, params_p),
        "ours": (step_o, params_o),
        "prog": prog,
        "layer": layer_p,
        "config": config,
    }


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def check_same(p: dict, kind: str, dim: int, heads: int, x) -> dict:
    """Max relative errors (float32) of ours vs the peer at the same parameters: outputs, and the
    training step's loss and gradients.  The peer gradients are mapped to our parameters by
    `from_ttt_lm_jax` (transposes and reshapes: linear); None where the leaves do not pair up."""
    (step_p, params_p), (step_o, params_o), prog, layer = p["peer"], p["ours"], p["prog"], p["layer"]
    y_p = jax.jit(lambda q, x: peer.apply_first(layer, q, x))(params_p, x)
    y_o = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))(prog, x)
    out = {"output": rel_err(y_o, y_p)}
    if not out["output"] <= MAX_OUTPUT_ERR:
        return out
    loss_p, g_p = jax.jit(step_p)(params_p, x)
    loss_o, g_o = jax.jit(step_o)(params_o, x)
    out["loss"] = rel_err(loss_o, loss_p)
    want = jax.tree_util.tree_leaves(eqx.partition(convert(g_p, kind, dim, heads), eqx.is_inexact_array)[0])
    got = jax.tree_util.tree_leaves(g_o)
    shapes_pair = len(want) == len(got) and all(a.shape == b.shape for a, b in zip(got, want))
    out["grads"] = max(rel_err(a, b) for a, b in zip(got, want)) if shapes_pair else None
    return out


def remat_notes(prog) -> list[str]:
    """The notes of the default pipeline's passes (which dual form, which remat scheme, ...)."""
    return [f"{stage}: {n}" for stage, ns in prog.notes for n in ns]


def compare_steps(p: dict, x, *, reps: int, min_block_s: float, peak=None) -> dict:
    """Figures of both training steps of `pair(...)` at x: `harness.compiled_figures` (FLOPs with loop
    trip counts, compiled temp memory) and `timing.interleaved` rounds (ours, the peer and, if given,
    the matmul `peak` = (thunk, FLOPs) back to back in random order), the per-round ratio ours / peer
    (median and quartiles), the temp-memory ratio and whether the targets are met."""
    (step_p, p_p), (step_o, p_o) = p["peer"], p["ours"]
    (fig_p, exe_p), (fig_o, exe_o) = compiled_figures(step_p, (p_p, x)), compiled_figures(step_o, (p_o, x))
    log(
        f"  ours {fig_o['flops'] / 1e9:.2f} GFLOP, {fig_o['temp_bytes'] / 2**20:.1f} MiB temp; "
        f"peer {fig_p['flops'] / 1e9:.2f} GFLOP, {fig_p['temp_bytes'] / 2**20:.1f} MiB temp"
    )
    thunks = {"ours": lambda: exe_o(p_o, x), "peer": lambda: exe_p(p_p, x)}
    if peak is not None:
        thunks["peak"] = peak[0]
    t0 = time.perf_counter()
    rounds = timing.interleaved(thunks, reps, min_block_s=min_block_s, clusters=[list(thunks)])
    timing_s = time.perf_counter() - t0
    ratio = timing.ratio(rounds["ours"], rounds["peer"])
    q25, q75 = timing.ratio_quartiles(rounds["ours"], rounds["peer"])
    temp_ratio = fig_o["temp_bytes"] / max(fig_p["temp_bytes"], 1)
    out = {
        "ratio": ratio,
        "ratio_q25": q25,
        "ratio_q75": q75,
        "temp_ratio": temp_ratio,
        "flops_ratio": fig_o["flops"] / fig_p["flops"],
        "time_target_met": ratio <= TARGET_TIME_RATIO,
        "memory_target_met": temp_ratio <= TARGET_TEMP_RATIO,
        "timing_s": timing_s,
    }
    if peak is not None:
        out["peak_gflops"] = peak[1] / timing.median(rounds["peak"]) / 1e9
    for side, fig, series in (("ours", fig_o, rounds["ours"]), ("peer", fig_p, rounds["peer"])):
        out[side] = {
            **pick(fig, *FIGURES),
            "wall_s": timing.median(series),
            "spread": timing.spread(series),
            "gflops": fig["flops"] / timing.median(series) / 1e9,
            "rounds_s": series,
        }
        if peak is not None:
            out[side]["frac_peak"] = fig["flops"] / peak[1] * timing.ratio(rounds["peak"], series)
    return out


# --------------------------------------------------------------------------- the run
def measure(module, kind: str, dim: int, heads: int, n: int, reps: int, min_block_s: float, peak) -> dict:
    """One row: values checked, FLOPs, temp memory, interleaved times of both training steps."""
    x = jax.random.normal(jax.random.PRNGKey(1000 + n + dim), (BATCH, n, dim), jnp.float32)
    row = {"kind": kind, "label": LABELS.get(kind, kind), "dim": dim, "heads": heads, "n": n}
    t0 = time.perf_counter()
    p = pair(module, kind, dim, heads, x)
    row["remat_group"] = p["config"].remat_mini_batch_group_size
    row["pass_notes"] = remat_notes(p["prog"])
    row["our_report"] = p["prog"].report()
    same = check_same(p, kind, dim, heads, x)
    row["same"] = same
    if not same["output"] <= MAX_OUTPUT_ERR:
        row["status"] = f"aborted: max rel. output error {same['output']:.2e} > {MAX_OUTPUT_ERR:g}"
        log(f"d={dim} n={n} {row['label']}: {row['status']}")
        return row
    log(f"d={dim} n={n} {row['label']}: rel. errors {same}")
    row |= compare_steps(p, x, reps=reps, min_block_s=min_block_s, peak=peak)
    row["setup_s"] = time.perf_counter() - t0 - row["timing_s"]
    row["status"] = "ok"
    row["load_end"] = timing.machine_load()
    log(
        f"  time ours/peer {row['ratio']:.3f} ({row['ratio_q25']:.2f}-{row['ratio_q75']:.2f}); ours "
        f"{row['ours']['wall_s'] * 1e3:.0f} ms, peer {row['peer']['wall_s'] * 1e3:.0f} ms; temp ratio "
        f"{row['temp_ratio']:.2f}; {row['load_end']}"
    )
    return row


def run(peer_dir: Path, *, dims, ns, kinds, reps: int, min_block_s: float) -> dict:
    """Measure every (d, n, kind); returns the results dict (rows and facts)."""
    module = peer.load_peer(peer_dir)
    facts = peer_facts(peer_dir)
    log(f"peer ttt_layer.py from {peer_dir} (commit {facts['peer_commit']}); {versions()}")
    peak = timing.matmul_peak(2048)
    rows = []
    for dim in dims:
        if dim % HEAD_DIM:
            raise SystemExit(f"--dims {dim}: not a multiple of the head size {HEAD_DIM}")
        for n in ns:
            for kind in kinds:
                rows.append(measure(module, kind, dim, dim // HEAD_DIM, n, reps, min_block_s, peak))
                jax.clear_caches()
                gc.collect()
    return {
        **facts,
        "versions": versions(),
        "batch": BATCH,
        "mini_batch_size": MINI_BATCH,
        "base_lr": BASE_LR,
        "head_dim": HEAD_DIM,
        "dims": list(dims),
        "ns": list(ns),
        "kinds": list(kinds),
        "reps": reps,
        "min_block_s": min_block_s,
        "targets": {"time_ratio_at_most": TARGET_TIME_RATIO, "temp_ratio_at_most": TARGET_TEMP_RATIO},
        "rows": rows,
    }


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(res: dict) -> str:
    """ttt_lm_jax.md: the side-by-side table."""
    m = res["machine"]
    v = res["versions"]
    lines = [
        f"# Training step: ttt-compile vs the peer TTT-Linear / TTT-MLP of ttt-lm-jax ({res['date']})",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Peer code: test-time-training/ttt-lm-jax `ttt/models/ttt_layer.py` (`TTTLinear`, `TTTMLP`), commit "
        f"{res['peer_commit'] or '?'} ({res['peer_commit_source'] or 'unknown'}; sha256 "
        f"{(res['layer_sha256'] or '?')[:16]}...), imported unchanged at run time from {res['peer_dir']} "
        "(`benchmarks/ttt_lm_jax_peer.py`), not part of this repository. Ours: commit "
        f"{res['source']['commit'] or '?'}{' with uncommitted changes' if res['source']['tracked_changes'] else ''}, "
        "`tc.compile(from_ttt_lm_jax(params), x[0], passes='default')`.",
        "",
        f"Versions: jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, equinox {v['equinox']}. Machine: "
        f"{m['processor']}, {m['cpus_usable']} usable CPUs ({m['backend']}); load average at start "
        f"{m['loadavg_start'][0]:.2f}, end {res['loadavg_end'][0]:.2f}: the machine was shared with other jobs "
        "(the interleaved per-round ratio absorbs load that hits both sides alike).",
        "",
        f"Training step = value_and_grad of sum(sin(layer(x))) w.r.t. all the layer's parameters, x (B={res['batch']}, "
        f"n, d), H = d / {res['head_dim']}, mini_batch_size {res['mini_batch_size']}, ttt_base_lr {res['base_lr']}, "
        "peer remat_mini_batch_group_size 4 (its 125M config), float32, parameters moved off their init "
        "(`ttt_lm_jax_peer.perturb`). Time ratio: median over "
        f"{res['reps']} interleaved rounds of the per-round ratio ours/peer (25th-75th percentile in brackets), "
        "both steps and a 2048^2 f32 matmul timed back to back in random order in each round after one "
        "warm-up call each. FLOPs: XLA cost analysis with loop trip counts. Memory: compiled temp bytes of "
        "the training step. % peak: the step's FLOPs / its time, over the matmul's FLOP/s in the same rounds. "
        "Values: max relative error of ours vs the peer: outputs / training-step loss / gradients.",
        "",
        f"Targets: ours <= {res['targets']['time_ratio_at_most']} of the peer's time, and ours <= the peer's "
        "compiled temp memory.",
        "",
        "| learner | d | H | n | time ours/peer | ours ms | peer ms | GFLOP ours | GFLOP peer | temp MiB ours | "
        "temp MiB peer | temp ratio | % peak ours | % peak peer | rel. err out / loss / grad | time target | "
        "memory target |",
        "|" + "---|" * 17,
    ]
    for r in res["rows"]:
        head = f"| {r['label']} | {r['dim']} | {r['heads']} | {r['n']} |"
        if r.get("status") != "ok":
            lines.append(head + f" {r.get('status')} |" + " - |" * 12)
            continue
        o, q, s = r["ours"], r["peer"], r["same"]
        grads = "-" if s.get("grads") is None else f"{s['grads']:.1e}"
        lines.append(
            head + f" **{r['ratio']:.3f}** ({r['ratio_q25']:.2f}-{r['ratio_q75']:.2f}) | "
            f"{o['wall_s'] * 1e3:.0f} | {q['wall_s'] * 1e3:.0f} | {o['flops'] / 1e9:.2f} | {q['flops'] / 1e9:.2f} | "
            f"{o['temp_bytes'] / 2**20:.1f} | {q['temp_bytes'] / 2**20:.1f} | {r['temp_ratio']:.2f} | "
            f"{100 * o['frac_peak']:.0f} | {100 * q['frac_peak']:.0f} | "
            f"{s['output']:.1e} / {s['loss']:.1e} / {grads} | {_met(r['time_target_met'])} | "
            f"{_met(r['memory_target_met'])} |"
        )
    ok = [r for r in res["rows"] if r.get("status") == "ok"]
    if ok:
        lines += [
            "",
            f"Time target met in {sum(r['time_target_met'] for r in ok)} of {len(ok)} rows, memory target in "
            f"{sum(r['memory_target_met'] for r in ok)} of {len(ok)}.",
        ]
    lines += ["", "## What the default pipeline did (pass notes per row)", ""]
    for r in res["rows"]:
        lines.append(f"- {r['label']} d={r['dim']} n={r['n']}: " + ("; ".join(r.get("pass_notes", [])) or "-"))
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .suite import machine, source_state

    ap = argparse.ArgumentParser(prog="python -m ttt_compile.benchmarks.ttt_lm_jax", description=__doc__.split("\n")[0])
    ap.add_argument("--peer-dir", type=Path, required=True, help="a checkout of test-time-training/ttt-lm-jax")
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 768], help="widths d (H = d / 64)")
    ap.add_argument("--ns", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--kinds", nargs="+", default=list(LABELS), choices=list(LABELS))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--min-block", type=float, default=0.2, help="seconds per timed block")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ttt_lm_jax"))
    args = ap.parse_args(argv)
    facts, source = machine(), source_state()
    t0 = time.perf_counter()
    res = run(args.peer_dir, dims=args.dims, ns=args.ns, kinds=args.kinds, reps=args.reps, min_block_s=args.min_block)
    res |= {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": facts,
        "machine_load_end": timing.machine_load(),
        "source": source,
        "loadavg_end": list(os.getloadavg()),
        "wall_s": time.perf_counter() - t0,
        "command": "python -m ttt_compile.benchmarks.ttt_lm_jax " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    write_results(args.out, "ttt_lm_jax", res, markdown(res), log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
