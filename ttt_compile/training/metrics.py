"""What a run writes besides checkpoints: ``metrics.jsonl`` (one JSON record per line) and plots.

Train records: ``{"split": "train", "step", "loss", "accuracy", "grad_norm", "lr", "<unit>_per_s",
"elapsed_s"}`` (means over the ``log_every`` window); test records: ``{"split": "test", "step", "loss",
"accuracy", ...}`` plus the task's own fields (``inner_loss``: per block the inner-loop loss after
t = 0..T inner steps, the paper's Figure 1 right; ``perplexity``, ``bits_per_token`` for language
modelling).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

#: Metric fields that measure the machine rather than the run (left out of reproducibility checks).
TIMING_KEYS = ("images_per_s", "sequences_per_s", "elapsed_s")


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a torn last line, from a killed writer, is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLog:
    """Appends JSON records to ``path``; on resume first drops records after the resumed step."""

    def __init__(self, path: Path, *, keep_until: int | None, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = [r for r in read_metrics(path) if keep_until is not None and r["step"] <= keep_until]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()


# ------------------------------------------------------------------------------------------ plots


def plot(workdir: str | os.PathLike) -> list[Path]:
    """Draw ``plots/curves.png`` (loss and accuracy, train and test, against the step) and, where the
    layers report them, ``plots/inner_loss.png`` (inner-loop loss after t inner steps against the
    outer step, one panel per block); return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = Path(workdir)
    records = read_metrics(workdir / "metrics.jsonl")
    out_dir = workdir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot([r["step"] for r in train], [r[key] for r in train], label="train")
        ax.plot([r["step"] for r in test], [r[key] for r in test], "o-", label="test")
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(workdir.name)
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=120)
    plt.close(fig)
    written.append(out_dir / "curves.png")

    inner = [r for r in test if r.get("inner_loss")]
    if inner:
        blocks = list(inner[0]["inner_loss"])
        fig, axes = plt.subplots(1, len(blocks), figsize=(3.6 * len(blocks), 3.4), squeeze=False)
        for ax, block in zip(axes[0], blocks):
            curves = np.asarray([r["inner_loss"][block] for r in inner])  # (evals, steps+1)
            steps = [r["step"] for r in inner]
            colors = plt.cm.viridis(np.linspace(0, 0.9, curves.shape[1]))
            for t in range(curves.shape[1]):
                ax.plot(steps, curves[:, t], color=colors[t], label=f"t={t}")
            ax.set_title(block)
            ax.set_yscale("log")
            ax.set_xlabel("outer step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("inner-loop loss")
        axes[0][-1].legend(fontsize=8)
        fig.suptitle("inner-loop loss after t inner steps (Figure 1, right)")
        fig.tight_layout()
        fig.savefig(out_dir / "inner_loss.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "inner_loss.png")
    return written
