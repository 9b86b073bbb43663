"""The MQAR table: recall accuracy against model width and sequence length for causal linear
attention, MTTT-Linear, MTTT-MLP (token by token, b = 1, and chunked) and softmax attention.

    ttt-compile table mqar [--steps N] [--seeds 0 1 2] [--widths 32 64] [--lengths 32 64] [--out DIR]

Each row is a shipped config (``ttt_compile/configs/mqar_*.py``, recipe in ``_mqar_base.py``); a cell
replaces its width, sequence length (N = L / 8 pairs) and seed (``_mqar_base.cell``) and trains it with
the one trainer. Task (``ttt_compile.training.mqar``): N key-value pairs, then the N keys queried
again; vocabulary 128; chance is 1/64. The MTTT rows use eta = 0.003 (the character-LM sweep's choice;
no MQAR-specific tuning). Writes ``DIR/mqar_table.json`` and ``DIR/mqar_table.md`` (default DIR
``runs/tables/mqar``; the committed table is ``benchmarks/results/online``). A full run (5 rows x 4
cells x 3 seeds) took about 43 min on a shared 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from ttt_compile.benchmarks.tables import provenance

ROWS = {
    "mqar_linear_attention": "linear attention",
    "mqar_mttt_linear": "MTTT-Linear (b=16)",
    "mqar_mttt_mlp_b1": "MTTT-MLP (b=1, T=n)",
    "mqar_mttt_mlp": "MTTT-MLP (b=16)",
    "mqar_mttt_linear_eta": "MTTT-Linear (b=16, learned eta per token)",
    "mqar_mttt_mlp_eta": "MTTT-MLP (b=16, learned eta per token)",
    "mqar_self_attention": "softmax attention",
    "mqar_mttt_nested": "two-level MTTT (b=16; MTTT-Linear inside the MLP learner)",
    "mqar_ttt_linear": "TTT-Linear (b=16, as ttt-lm-jax builds it)",
    "mqar_ttt_mlp": "TTT-MLP (b=16, as ttt-lm-jax builds it)",
}


def markdown(rows: list[dict], meta: dict) -> str:
    widths, lengths = meta["widths"], meta["lengths"]
    cols = [(w, L) for L in lengths for w in widths]
    c0 = rows[-1]["config"]  # the newest row (a merged table may hold rows of an older format)
    lines = [
        f"# MQAR recall accuracy ({meta['date']})",
        "",
        f"Mean (min..max) over seeds {meta['seeds']}; N = L/8 pairs, vocabulary {c0['vocab']}, depth "
        f"{c0['depth']}, {c0['heads']} heads, {meta['steps']} AdamW steps of batch {c0['batch_size']} "
        f"(fresh examples each step), accuracy on {c0['eval_examples']} held-out examples. "
        f"Machine: {meta.get('cpu', meta.get('machine'))}, {meta.get('cpus', '?')} CPUs (shared); total wall time "
        f"{meta['wall_s'] / 60:.1f} min. "
        "Chance is 1/64 (values are drawn from 64 ids). MTTT rows: online inner loop with eta = 0.003, "
        f"`b=1, T=n` = one token per inner step, `b=16` = chunks of 16 tokens. Command: `{meta.get('command', 'ttt-compile table mqar')}`.",
        "",
        "| model | " + " | ".join(f"d={w}, L={L} (N={L // 8})" for w, L in cols) + " |",
        "| --- | " + " | ".join("---:" for _ in cols) + " |",
    ]
    for model in meta["models"]:
        cells = []
        for w, L in cols:
            accs = [r["accuracy"] for r in rows if r["model"] == model and r["width"] == w and r["length"] == L]
            cells.append(f"{statistics.mean(accs):.3f} ({min(accs):.2f}..{max(accs):.2f})" if accs else "-")
        lines.append(f"| {ROWS.get(model, model)} | " + " | ".join(cells) + " |")
    for added in [meta[k] for k in ("learned_eta_rows",) if k in meta] + meta.get("added", []):
        lines += ["", f"Rows added {added['date']} ({added['wall_s'] / 60:.1f} min): {added['note']}."]
    return "\n".join(lines) + "\n" + cost_markdown(rows)


def cost_markdown(rows: list[dict]) -> str:
    """Per model and cell: parameters, FLOPs of one training step (trip counts included) and the
    median seconds per step over the run's logging windows (rows recorded with them only)."""
    cells = sorted(
        {(r["model"], r["width"], r["length"]) for r in rows if r.get("flops_per_step")},
        key=lambda c: (c[2], c[1], c[0]),
    )
    if not cells:
        return ""
    lines = [
        "",
        "Cost per training step (batch 32; FLOPs from XLA with loop trip counts; time: median over "
        "seeds of each run's median logging window, shared machine):",
        "",
        "| model | cell | params | MFLOP / step | ms / step |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for model, w, L in cells:
        rs = [r for r in rows if (r["model"], r["width"], r["length"]) == (model, w, L)]
        lines.append(
            f"| {ROWS.get(model, model)} | d={w}, L={L} | {rs[0]['params']:,} | "
            f"{rs[0]['flops_per_step'] / 1e6:,.1f} | {1e3 * statistics.median(r['step_s'] for r in rs):.0f} |"
        )
    return "\n".join(lines) + "\n"


def merge(saved: dict, rows: list[dict], run: dict, note: str) -> tuple[list[dict], dict]:
    """The saved table with `rows` added (a saved row of the same model, cell and seed is replaced)
    and a note of what was added, when, by which command and in how long."""
    key = lambda r: (r["model"], r["width"], r["length"], r["seed"])  # noqa: E731
    new = {key(r) for r in rows}
    meta = saved["meta"]
    meta["models"] = [*meta["models"], *[m for m in dict.fromkeys(r["model"] for r in rows) if m not in meta["models"]]]
    meta.setdefault("added", []).append(
        {
            "date": run["date"],
            "wall_s": run["wall_s"],
            "command": run["command"],
            "load_start": run["load_start"],
            "note": f"{note + '; ' if note else ''}command `{run['command']}`",
        }
    )
    return [r for r in saved["rows"] if key(r) not in new] + rows, meta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="override every run's number of steps (default 300)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--models", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument(
        "--out",
        type=Path,
        default=provenance.scratch_out("mqar"),
        help="where mqar_table.{json,md} go (default runs/tables/mqar)",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/mqar_table"), help="per-run work folders")
    parser.add_argument("--render", action="store_true", help="only rewrite mqar_table.md from OUT/mqar_table.json")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add (or replace) these runs' rows in OUT/mqar_table.json instead of starting a new table",
    )
    parser.add_argument("--note", default="", help="with --merge: what the added rows are (printed under the table)")


def run_table(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from ttt_compile.configs import load_config
    from ttt_compile.configs._mqar_base import cell
    from ttt_compile.training import read_metrics, train

    out = Path(args.out)
    if args.render:
        saved = json.loads((out / "mqar_table.json").read_text())
        (out / "mqar_table.md").write_text(markdown(saved["rows"], saved["meta"]))
        return 0
    provenance.announce("mqar", out)
    rows, t0 = [], time.perf_counter()
    for model in args.models:
        for L in args.lengths:
            for w in args.widths:
                for seed in args.seeds:
                    config = cell(load_config(model), w, L, seed)
                    workdir = args.runs / config.name
                    shutil.rmtree(workdir, ignore_errors=True)
                    t = time.perf_counter()
                    result = train(
                        config, workdir=workdir, steps=args.steps, verbose=False, plots=False, count_flops=True
                    )
                    train_logs = [r for r in read_metrics(workdir / "metrics.jsonl") if r["split"] == "train"]
                    rates = [r["sequences_per_s"] for r in train_logs[1:] or train_logs]
                    rows.append(
                        {
                            "model": ROWS[model] if args.merge else model,
                            "width": w,
                            "length": L,
                            "seed": seed,
                            "accuracy": result["test_accuracy"],
                            "final_loss": train_logs[-1]["loss"],
                            "wall_s": time.perf_counter() - t,
                            "params": result["params"],
                            "flops_per_step": result["flops_per_step"],
                            "step_s": config.batch_size / statistics.median(rates),
                            "config": config.to_dict(),
                        }
                    )
                    losses = [r["loss"] for r in train_logs]
                    print(
                        f"{model:<22} d={w:<3} L={L:<4} seed {seed}: accuracy {result['test_accuracy']:.3f} "
                        f"(loss {losses[-1]:.3f}, {time.perf_counter() - t:.0f}s)",
                        flush=True,
                    )
    meta = {
        **provenance.machine_facts(),
        "widths": args.widths,
        "lengths": args.lengths,
        "seeds": args.seeds,
        "steps": args.steps or rows[0]["config"]["steps"],
        "models": args.models,
        "command": provenance.command("mqar", argv),
        "wall_s": time.perf_counter() - t0,
    }
    if args.merge:
        rows, meta = merge(json.loads((out / "mqar_table.json").read_text()), rows, meta, args.note)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mqar_table.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "mqar_table.md").write_text(markdown(rows, meta))
    print(f"wrote {out / 'mqar_table.md'} in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0
