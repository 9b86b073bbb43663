"""The digits results table: every layer in the same ViT recipe (``ttt_compile/configs/digits_*.py``),
trained on the 8x8 digits with pixels as tokens; one row per layer.

    python scripts/digits_table.py [--out DIR] [--steps N] [--only digits_mttt_mlp ...]

Writes ``DIR/results.json``, ``DIR/results.md`` (the table) and ``DIR/accuracy.png`` (test accuracy
against the step, one line per layer); each run's metrics, checkpoints and plots stay in
``DIR/<config>/``.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ttt_compile.configs import available, load_config
from ttt_compile.train import read_metrics, train

TABLE = ["digits_self_attention", "digits_linear_attention", "digits_linear_attention_elu1", "digits_mttt_linear",
         "digits_mttt_mlp", "digits_mttt_mlp_sgd4", "digits_mttt_kernel"]


def run(name: str, out: Path, steps: int | None) -> dict:
    """Train one config from scratch and summarise it."""
    config = load_config(name)
    workdir = out / name
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    result = train(config, workdir=workdir, steps=steps, verbose=False)
    wall = time.perf_counter() - t0
    records = read_metrics(workdir / "metrics.jsonl")
    train_records = [r for r in records if r["split"] == "train"]
    test_records = [r for r in records if r["split"] == "test"]
    inner = test_records[-1].get("inner_loss", {})
    return {
        "config": name, "layer": config.layer, "layer_options": dict(config.layer_options),
        "steps": result["step"], "params": result["params"],
        "test_accuracy": result["test_accuracy"], "test_loss": result["test_loss"],
        "train_loss": float(np.mean([r["loss"] for r in train_records[-4:]])),
        "images_per_s": float(np.median([r["images_per_s"] for r in train_records[1:]])),
        "wall_s": wall,
        "inner_loss_block0": inner.get("blocks[0]"),
        "accuracy_curve": [(r["step"], r["accuracy"]) for r in test_records],
    }


def markdown(rows: list[dict]) -> str:
    head = ("| layer | options | params | test accuracy | test loss | train loss | images/s | wall s "
            "| inner loss block 0, t = 0 .. T |\n|---|---|---:|---:|---:|---:|---:|---:|---|\n")
    lines = []
    for r in rows:
        options = ", ".join(f"{k}={v}" for k, v in r["layer_options"].items()) or "-"
        inner = " -> ".join(f"{v:.3g}" for v in r["inner_loss_block0"]) if r["inner_loss_block0"] else "-"
        lines.append(f"| {r['layer']} | {options} | {r['params']:,} | {r['test_accuracy']:.4f} | {r['test_loss']:.4f} "
                     f"| {r['train_loss']:.4f} | {r['images_per_s']:.0f} | {r['wall_s']:.0f} | {inner} |")
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        steps, acc = zip(*r["accuracy_curve"])
        options = ",".join(f"{v}" for v in r["layer_options"].values())
        ax.plot(steps, acc, "o-", label=r["layer"] + (f" ({options})" if options else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax.set_title("8x8 digits, pixels as tokens (n = 64): one ViT recipe, layers swapped")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/digits_table", help="output folder (default runs/digits_table)")
    parser.add_argument("--steps", type=int, help="override every config's number of steps")
    parser.add_argument("--only", nargs="+", choices=[n for n in available() if n in TABLE], help="a subset of rows")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.only or TABLE:
        print(f"training {name} ...", flush=True)
        rows.append(run(name, out, args.steps))
        print(f"  test accuracy {rows[-1]['test_accuracy']:.4f} in {rows[-1]['wall_s']:.0f} s", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "python": sys.version.split()[0]}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    table = markdown(rows)
    (out / "results.md").write_text(f"# Digits results ({meta['date']}, {meta['machine']})\n\n{table}")
    plot(rows, out / "accuracy.png")
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'accuracy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
