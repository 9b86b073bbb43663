"""The digits results table (issue 5): every layer in the same ViT recipe (``ttt_compile/configs/digits_*.py``),
trained on the 8x8 digits with every pixel a token (n = 64), over several seeds; plus a logistic
regression on the raw pixels as the floor. One row per layer:

    ttt-compile table digits [--seeds 0 1 2] [--steps N] [--only digits_mttt_mlp ...]
                             [--out benchmarks/results/digits] [--runs runs/digits_table]
    ttt-compile table digits --render benchmarks/results/digits/results.json --notes NOTES.md

A full run (8 layers x 3 seeds + the floor) took 32 min on a shared 2-core CPU. Without ``--out`` it
writes to ``runs/tables/digits`` (the committed results stay as they are).

Per layer: test accuracy and loss (mean ± std over the seeds), parameters, forward FLOPs per example
(XLA's cost analysis of the trained, compiled model applied to one image, loop trip counts included:
``ttt_compile.cost.of``), training wall time, throughput, final train loss and the inner-loop loss.

A seed is ``Config.seed``: it draws the model's initial weights and the order of the training
batches. The train/test split (1438 / 359 images, ``ttt_compile.training.data.load_digits``) is the same for
every seed and every row, so all rows are scored on the same 359 test images.

The floor: softmax regression ``logits = x W + b`` on the 64 standardised pixels, full-batch Adam
(optax), L2 penalty ``l2/2 ||W||^2`` chosen from ``L2_GRID`` by the accuracy on a held-out 20% of the
*training* split (drawn with the seed), then refit on the whole training split and scored once on
the test split.

Writes ``OUT/results.json``, ``OUT/results.md`` (the table, the command, the machine, and a comparison
with the paper's qualitative claims) and ``OUT/accuracy.png`` (test accuracy against the step, mean
over seeds with the min..max band). Each run's metrics, checkpoints and plots stay in
``RUNS/<config>/seed<S>/``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from ttt_compile.benchmarks.tables import provenance

TABLE = [
    "digits_linear_attention",
    "digits_linear_attention_elu1",
    "digits_mttt_linear",
    "digits_mttt_mlp",
    "digits_mttt_mlp_full4",
    "digits_mttt_mlp_sgd4",
    "digits_mttt_kernel",
    "digits_self_attention",
]
LABELS = {
    "digits_linear_attention": "linear attention (identity)",
    "digits_linear_attention_elu1": "linear attention (elu+1)",
    "digits_mttt_linear": "MTTT-Linear",
    "digits_mttt_mlp": "MTTT-MLP, T=1",
    "digits_mttt_mlp_full4": "MTTT-MLP, T=4 full batch",
    "digits_mttt_mlp_sgd4": "MTTT-MLP, T=4 SGD",
    "digits_mttt_kernel": "MTTT-Kernel (Nadaraya-Watson)",
    "digits_self_attention": "self-attention (softmax)",
}
FLOOR = "logistic regression (raw pixels)"
# The paper's qualitative claims: (left row, relation, right row).
CLAIMS = [
    ("digits_mttt_linear", "~", "digits_linear_attention"),
    ("digits_mttt_mlp", ">", "digits_mttt_linear"),
    ("digits_mttt_mlp_sgd4", ">=", "digits_mttt_mlp"),
]
# Pairs that are the same function in exact arithmetic with the same initial weights (the paper's
# equivalences; tests/test_equivalence.py): with the same seed they differ only by float rounding.
EQUIVALENT = [("digits_mttt_linear", "digits_linear_attention"), ("digits_mttt_kernel", "digits_self_attention")]
L2_GRID = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


# --------------------------------------------------------------------------------------- one run


def run(name: str, seed: int, runs: Path, steps: int | None, plots: bool = True) -> dict:
    """Train config ``name`` (a shipped config or a ``.py`` path) with ``seed`` from scratch into
    ``runs/<config.name>/seed<seed>`` and summarise it."""
    from ttt_compile.configs import load_config
    from ttt_compile.training import read_metrics, train

    config = load_config(name).replace(seed=seed)
    workdir = runs / config.name / f"seed{seed}"
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    result = train(config, workdir=workdir, steps=steps, verbose=False, plots=plots)
    wall = time.perf_counter() - t0
    records = read_metrics(workdir / "metrics.jsonl")
    train_records = [r for r in records if r["split"] == "train"]
    test_records = [r for r in records if r["split"] == "test"]
    inner = test_records[-1].get("inner_loss", {})
    return {
        "config": config.name,
        "seed": seed,
        "layer": config.layer,
        "layer_options": dict(config.layer_options),
        "steps": result["step"],
        "params": result["params"],
        "test_accuracy": result["test_accuracy"],
        "test_loss": result["test_loss"],
        "train_loss": float(np.mean([r["loss"] for r in train_records[-4:]])),
        "train_accuracy": float(np.mean([r["accuracy"] for r in train_records[-4:]])),
        "images_per_s": float(np.median([r["images_per_s"] for r in train_records[1:] or train_records])),
        "wall_s": wall,
        "loop_s": train_records[-1]["elapsed_s"],
        "inner_loss_block0": inner.get("blocks[0]"),
        "accuracy_curve": [(r["step"], r["accuracy"]) for r in test_records],
        "train_loss_curve": [(r["step"], r["loss"]) for r in train_records],
        "workdir": str(workdir),
    }


def forward_cost(name: str, seed: int, workdir: Path) -> dict:
    """XLA cost of the trained, compiled model (final checkpoint of ``workdir``) applied to one image.

    The parameters are arguments of the measured function (not constants XLA could fold)."""
    import equinox as eqx
    import jax

    from ttt_compile import cost
    from ttt_compile.configs import load_config
    from ttt_compile.training import Checkpoints, make_task
    from ttt_compile.training.optim import make_optimizer, make_schedule

    config = load_config(name).replace(seed=seed)
    task = make_task(config)
    params, static = eqx.partition(task.build(jax.random.PRNGKey(seed)), eqx.is_inexact_array)
    opt_state = make_optimizer(config, make_schedule(config, 2, 1)).init(params)
    checkpoints = Checkpoints(Path(workdir) / "checkpoints")
    params, _ = checkpoints.restore_latest((params, opt_state)).state
    checkpoints.close()
    image = np.zeros(task.data.image_shape, np.float32)
    c = cost.of(lambda p, x: eqx.combine(p, static)(x), params, image)
    return {"flops": c.flops, "bytes": c.bytes, "eqns": c.eqns}


# ------------------------------------------------------------------------------------- the floor


def logistic_regression(
    seed: int, *, steps: int = 500, lr: float = 0.05, l2_grid=L2_GRID, val_fraction: float = 0.2
) -> dict:
    """Softmax regression on the raw (standardised) pixels; L2 picked on a held-out part of the train split.

    One jitted program: fit every L2 of the grid on the training split minus a held-out ``val_fraction``
    (drawn with ``seed``; the held-out examples get weight 0), pick the L2 with the best held-out
    accuracy (ties: the larger L2), refit on the whole training split. Test data never enter it."""
    import jax
    import jax.numpy as jnp
    import optax

    from ttt_compile import cost
    from ttt_compile.configs import Config
    from ttt_compile.training.data import load_digits

    t0 = time.perf_counter()
    d = load_digits(test_fraction=Config().test_fraction)
    x_train, y_train = d["train_images"].reshape(len(d["train_images"]), -1), d["train_labels"]
    x_test, y_test = d["test_images"].reshape(len(d["test_images"]), -1), d["test_labels"]
    classes, grid = 10, jnp.asarray(l2_grid, jnp.float32)

    def forward(params, x):
        return x @ params["w"] + params["b"]

    def fit(weights, l2, key):
        def loss(params):
            ce = optax.softmax_cross_entropy_with_integer_labels(forward(params, x_train), y_train)
            return jnp.sum(weights * ce) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(params["w"] ** 2)

        params = {"w": 0.01 * jax.random.normal(key, (x_train.shape[1], classes)), "b": jnp.zeros(classes)}
        opt = optax.adam(lr)

        def step(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
        return params, losses[-1]

    @jax.jit
    def select_and_fit(held_out, key):
        fits, _ = jax.vmap(lambda l2: fit(1.0 - held_out, l2, key))(grid)
        correct = jax.vmap(lambda p: jnp.argmax(forward(p, x_train), -1) == y_train)(fits)
        val_acc = jnp.sum(correct * held_out, axis=1) / jnp.sum(held_out)
        best = jnp.argmax(val_acc + 1e-6 * jnp.arange(len(l2_grid)) / len(l2_grid))  # ties: larger L2 (grid ascending)
        params, final_loss = fit(jnp.ones_like(held_out), grid[best], key)
        return params, final_loss, val_acc, best

    perm = np.random.default_rng(seed).permutation(len(x_train))
    held_out = np.zeros(len(x_train), np.float32)
    held_out[perm[: int(round(len(x_train) * val_fraction))]] = 1.0
    params, final_loss, val_acc, best = jax.device_get(select_and_fit(held_out, jax.random.PRNGKey(seed)))
    train_pred = np.argmax(x_train @ params["w"] + params["b"], -1)
    logits = x_test @ params["w"] + params["b"]  # numpy: scored once, outside the selection
    z = logits - logits.max(-1, keepdims=True)
    test_loss = float(np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(y_test)), y_test]))
    c = cost.of(forward, params, x_test[0])
    return {
        "config": "logistic_regression",
        "seed": seed,
        "layer": "logistic_regression",
        "layer_options": {},
        "steps": steps,
        "params": int(sum(np.size(v) for v in params.values())),
        "test_accuracy": float(np.mean(np.argmax(logits, -1) == y_test)),
        "test_loss": test_loss,
        "train_accuracy": float(np.mean(train_pred == y_train)),
        "train_loss": float(final_loss),
        "l2": float(l2_grid[int(best)]),
        "val_accuracy": {f"{k:g}": float(v) for k, v in zip(l2_grid, val_acc)},
        "flops": c.flops,
        "wall_s": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------------- summaries


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarise(runs: list[dict], costs: dict[str, dict]) -> list[dict]:
    """One row per config: mean ± std over its seeds, params, FLOPs."""
    rows = []
    for name in dict.fromkeys(r["config"] for r in runs):
        rs = [r for r in runs if r["config"] == name]
        row = {
            "config": name,
            "label": LABELS.get(name, name),
            "layer": rs[0]["layer"],
            "layer_options": rs[0]["layer_options"],
            "seeds": [r["seed"] for r in rs],
            "steps": rs[0]["steps"],
            "params": rs[0]["params"],
            "flops_per_example": costs.get(name, {}).get("flops", rs[0].get("flops")),
            "per_seed_accuracy": [r["test_accuracy"] for r in rs],
        }
        for key in ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "wall_s", "images_per_s"):
            if all(key in r for r in rs):
                row[key + "_mean"], row[key + "_std"] = mean_std([r[key] for r in rs])
        inner = [r["inner_loss_block0"] for r in rs if r.get("inner_loss_block0")]
        row["inner_loss_block0_mean"] = np.mean(inner, axis=0).tolist() if inner else None
        if "l2" in rs[0]:
            row["l2_per_seed"] = [r["l2"] for r in rs]
        rows.append(row)
    return rows


def compare(rows: list[dict]) -> list[dict]:
    """The paper's claims against the rows: difference of means and its standard error over seeds.

    Verdicts (a rough rule; with 3 seeds the standard error is itself uncertain): a difference
    within 2 standard errors is "within seed noise"."""
    by = {r["config"]: r for r in rows}
    out = []
    for left, rel, right in CLAIMS:
        if left not in by or right not in by:
            continue
        a, b = by[left], by[right]
        diff = a["test_accuracy_mean"] - b["test_accuracy_mean"]
        se = math.sqrt(a["test_accuracy_std"] ** 2 / len(a["seeds"]) + b["test_accuracy_std"] ** 2 / len(b["seeds"]))
        noise = abs(diff) <= 2 * se
        if min(len(a["seeds"]), len(b["seeds"])) < 2:
            verdict = "no verdict: one seed gives no estimate of seed noise"
        elif rel == "~":
            verdict = "holds (within seed noise)" if noise else "does not hold (differ beyond seed noise)"
        elif rel == ">":
            verdict = (
                "holds"
                if diff > 0 and not noise
                else "direction holds, within seed noise"
                if diff > 0
                else "not observed (within seed noise)"
                if noise
                else "does not hold (reversed beyond seed noise)"
            )
        else:  # >=
            verdict = (
                "holds (better beyond seed noise)"
                if diff > 0 and not noise
                else "holds only as 'not worse' (within seed noise)"
                if noise
                else "does not hold (worse beyond seed noise)"
            )
        out.append(
            {
                "claim": f"{LABELS[left]} {rel} {LABELS[right]}",
                "left": left,
                "right": right,
                "relation": rel,
                "diff": diff,
                "se": se,
                "verdict": verdict,
                "seed_wins": sum(x > y for x, y in zip(a["per_seed_accuracy"], b["per_seed_accuracy"])),
                "seeds": min(len(a["seeds"]), len(b["seeds"])),
            }
        )
    return out


def rounding_divergence(runs: list[dict]) -> list[dict]:
    """For each pair of :data:`EQUIVALENT` rows and each seed both ran: the relative difference of the
    train loss at the first log, the first logged step where it exceeds 1e-3, and the final test
    accuracies: how far float32 rounding alone moves a run."""
    out = []
    for left, right in EQUIVALENT:
        for a in (r for r in runs if r["config"] == left and r.get("train_loss_curve")):
            b = next((r for r in runs if r["config"] == right and r["seed"] == a["seed"]), None)
            if b is None:
                continue
            rel = [
                (s, abs(x - y) / max(abs(y), 1e-12))
                for (s, x), (_, y) in zip(a["train_loss_curve"], b["train_loss_curve"])
            ]
            out.append(
                {
                    "left": left,
                    "right": right,
                    "seed": a["seed"],
                    "first_log_step": rel[0][0],
                    "first_log_rel_diff": rel[0][1],
                    "first_step_rel_diff_above_1e-3": next((s for s, d in rel if d > 1e-3), None),
                    "test_accuracy": [a["test_accuracy"], b["test_accuracy"]],
                }
            )
    return out


def divergence_text(pairs: list[dict]) -> str:
    if not pairs:
        return ""
    lines = [
        "| pair (same seed, same initial weights, same batches) | seed | train loss rel. diff. at first log "
        "| first logged step with rel. diff. > 1e-3 | final test accuracy (left / right) |",
        "|---|---:|---:|---:|---|",
    ]
    for p in pairs:
        step = p["first_step_rel_diff_above_1e-3"]
        lines.append(
            f"| {LABELS[p['left']]} vs {LABELS[p['right']]} | {p['seed']} | {p['first_log_rel_diff']:.1e} "
            f"(step {p['first_log_step']}) | {step if step is not None else 'never'} "
            f"| {p['test_accuracy'][0]:.4f} / {p['test_accuracy'][1]:.4f} |"
        )
    return "\n".join(lines) + "\n"


def _pm(row: dict, key: str, fmt: str) -> str:
    if key + "_mean" not in row:
        return "-"
    return f"{row[key + '_mean']:{fmt}} ± {row[key + '_std']:{fmt}}"


def _si(x: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| layer | options | test accuracy (mean ± std) | per seed | params | forward FLOPs / example "
        "| train wall s (mean ± std) | images/s | train loss | test loss | inner loss block 0, t = 0 .. T |\n"
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for r in rows:
        options = ", ".join(f"{k}={v}" for k, v in r["layer_options"].items()) or "-"
        if "l2_per_seed" in r:
            options = "L2 " + "/".join(f"{v:g}" for v in r["l2_per_seed"])
        inner = " → ".join(f"{v:.3g}" for v in r["inner_loss_block0_mean"]) if r["inner_loss_block0_mean"] else "-"
        flops = _si(r["flops_per_example"]) if r["flops_per_example"] is not None else "-"
        ips = f"{r['images_per_s_mean']:.0f}" if "images_per_s_mean" in r else "-"
        per_seed = " / ".join(f"{a:.3f}" for a in r["per_seed_accuracy"])
        lines.append(
            f"| {r['label']} | {options} | {_pm(r, 'test_accuracy', '.4f')} | {per_seed} | {r['params']:,} "
            f"| {flops} | {_pm(r, 'wall_s', '.0f')} | {ips} | {_pm(r, 'train_loss', '.3f')} "
            f"| {_pm(r, 'test_loss', '.3f')} | {inner} |"
        )
    return head + "\n".join(lines) + "\n"


def comparison_text(claims: list[dict]) -> str:
    lines = [
        "| paper's claim | difference of mean accuracy | 2 × standard error | seeds where left > right | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    if not claims:
        lines.append("| (the rows a claim compares were not all run) | | | | |")
    for c in claims:
        lines.append(
            f"| {c['claim']} | {c['diff'] * 100:+.2f} pt | {2 * c['se'] * 100:.2f} pt "
            f"| {c['seed_wins']} / {c['seeds']} | {c['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], claims: list[dict], meta: dict, notes: str = "", pairs: list[dict] = ()) -> str:
    m = meta
    steps = (
        f"{m['steps']} steps for every layer (overriding the configs' {m['config_steps']})"
        if m["steps"]
        else f"the configs' {m['config_steps']} steps"
    )
    return "\n".join(
        [
            f"# Digits at pixel level: one ViT recipe, attention layer swapped ({m['date']})",
            "",
            "8x8 digits (1797 images; a fixed 1438 / 359 train / test split shared by every row and seed), pixels "
            "standardised, every pixel a token (n = 64). Each layer sits in the same 2-block ViT (width 32, 2 heads, "
            f"MLP 64, learned position embedding, mean pooling) trained with AdamW for {steps}, batch 64, lr 3e-3 "
            "(warmup + cosine), weight decay 1e-4 (`ttt_compile/configs/_digits_base.py`), every TTT layer compiled by "
            f"the default passes. Seeds {m['seeds']} (`Config.seed`: initial weights and batch order). Mean ± sample std "
            "(ddof 1) over seeds.",
            "",
            "Columns: *params* counts every trained float; *forward FLOPs / example* is XLA's cost analysis of the trained "
            "compiled model applied to one image with loop trip counts included (`ttt_compile.cost.of`; it depends on the "
            "architecture only, measured on the first seed's model); *train wall s* is the whole `train()` call (build, "
            "compile, the training loop, evaluations every 100 steps, checkpoints) on a shared machine, so it is noisy; "
            "*images/s* the median training throughput; *train loss* the mean over the last 80 steps (for the floor: its "
            "final full-batch objective, L2 term included); *inner loss* the TTT "
            "layer's reconstruction loss before and after each inner step on the test images (block 0, mean over seeds).",
            "",
            f"The floor: softmax regression on the 64 raw pixels, full-batch Adam ({m['floor']['steps']} steps, lr "
            f"{m['floor']['lr']}), L2 on W chosen from {m['floor']['l2_grid']} by accuracy on a held-out 20% of the training split "
            "(drawn with the seed), refit on the whole training split, scored once on the test split.",
            "",
            markdown_table(rows),
            "## Against the paper's qualitative claims",
            "",
            "Difference of mean test accuracy (left row minus right row) against twice its standard error over seeds "
            f"(a rough rule: with {len(m['seeds'])} seed(s) the standard error is itself uncertain; 1 test image is "
            "0.28 pt).",
            "",
            comparison_text(claims),
            *(
                [
                    "How large is run-to-run noise beyond the seed? The paper's equivalences give an exact control: "
                    "these pairs compute the same function from the same initial weights on the same batches, so their "
                    "runs differ only by float32 rounding (a different order of the same sums), which training amplifies:",
                    "",
                    divergence_text(pairs),
                ]
                if pairs
                else []
            ),
            notes,
            "## How it was made",
            "",
            f"Command (from the repository root): `{m['command']}`",
            "",
            f"Machine: {m['machine']}; {m['cpus']} CPU cores visible ({m['cpu']}); jax {m['jax']} on {m['backend']}; "
            f"Python {m['python']}; process niceness {m['niceness']}; load average at start {m['load_start']} (other "
            f"benchmarks were running on the same cores). Total wall time {m['wall_s'] / 60:.1f} min.",
            "",
            f"Per-run metrics, checkpoints and curves: `{m.get('runs_dir', 'RUNS')}/<config>/seed<S>/` (not committed); "
            "every number above, per seed, is in `results.json`.",
            "",
        ]
    )


def plot(runs: list[dict], rows: list[dict], path: Path) -> None:
    """Test accuracy against the step, mean over seeds with the min..max band; right: the last steps, zoomed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, zoom in zip(axes, (False, True)):
        lows = []
        for row in rows:
            rs = [r for r in runs if r["config"] == row["config"] and r.get("accuracy_curve")]
            if not rs:
                ax.axhline(row["test_accuracy_mean"], color="k", ls="--", lw=1, label=f"floor: {row['label']}")
                continue
            steps = np.asarray([s for s, _ in rs[0]["accuracy_curve"]])
            acc = np.asarray([[a for _, a in r["accuracy_curve"]] for r in rs])
            keep = steps >= steps[-1] / 2 if zoom else np.ones(len(steps), bool)
            (line,) = ax.plot(steps[keep], acc.mean(0)[keep], "o-", ms=3, label=row["label"])
            ax.fill_between(steps[keep], acc.min(0)[keep], acc.max(0)[keep], color=line.get_color(), alpha=0.15)
            lows.append(acc.min(0)[keep].min())
        if zoom and lows:
            ax.set_ylim(max(0.0, min(lows) - 0.01), 1.0)
            ax.set_title("last half of training, zoomed")
        else:
            ax.set_title("8x8 digits, pixels as tokens (n = 64): mean over seeds, band = min..max", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main


def build_table(
    names: list[str],
    seeds: list[int],
    out: Path,
    runs_dir: Path,
    steps: int | None,
    *,
    floor: bool = True,
    floor_steps: int = 500,
    floor_lr: float = 0.05,
    floor_l2_grid=L2_GRID,
    run_plots: bool = True,
    notes: str = "",
    command: str | None = None,
    log=print,
) -> dict:
    """Train ``names`` x ``seeds`` (and the floor), write results.json / results.md / accuracy.png to ``out``."""
    from ttt_compile.configs import load_config

    t_start = time.perf_counter()
    meta = provenance.machine_facts()
    out.mkdir(parents=True, exist_ok=True)
    runs, costs = [], {}
    for name in names:
        for seed in seeds:
            log(f"training {name} seed {seed} ...")
            runs.append(run(name, seed, runs_dir, steps, plots=run_plots))
            r = runs[-1]
            log(f"  test accuracy {r['test_accuracy']:.4f}, {r['wall_s']:.0f} s")
            if r["config"] not in costs:  # the architecture's cost: the same for every seed
                costs[r["config"]] = forward_cost(name, seed, Path(r["workdir"]))
                log(f"  forward FLOPs / example {costs[r['config']]['flops']:.4g}")
    if floor:
        for seed in seeds:
            runs.append(logistic_regression(seed, steps=floor_steps, lr=floor_lr, l2_grid=floor_l2_grid))
            log(
                f"logistic regression seed {seed}: test accuracy {runs[-1]['test_accuracy']:.4f} "
                f"(L2 {runs[-1]['l2']:g})"
            )
    rows = summarise(runs, costs)
    for row in rows:
        if row["config"] == "logistic_regression":
            row["label"] = FLOOR
    claims = compare(rows)
    pairs = rounding_divergence(runs)
    meta.update(
        seeds=list(seeds),
        steps=steps,
        config_steps=sorted({load_config(n).steps for n in names}),
        floor={"steps": floor_steps, "lr": floor_lr, "l2_grid": list(floor_l2_grid)},
        command=command or provenance.command("digits", None),
        runs_dir=str(runs_dir),
        wall_s=time.perf_counter() - t_start,
    )
    meta["config_steps"] = "/".join(map(str, meta["config_steps"]))
    result = {"meta": meta, "rows": rows, "claims": claims, "rounding_divergence": pairs, "runs": runs}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown(rows, claims, meta, notes, pairs))
    plot(runs, rows, out / "accuracy.png")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=provenance.scratch_out("digits"),
        help="where results.{md,json} and accuracy.png go (default runs/tables/digits; the committed "
        "table is benchmarks/results/digits)",
    )
    parser.add_argument("--runs", default="runs/digits_table", help="per-run work folders (default runs/digits_table)")
    parser.add_argument("--steps", type=int, help="override every config's number of steps (the same for all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Config.seed values (default 0 1 2)")
    parser.add_argument("--only", nargs="+", choices=TABLE, help="a subset of rows")
    parser.add_argument("--no-floor", action="store_true", help="skip the logistic-regression floor")
    parser.add_argument("--notes", help="a markdown file whose text is added after the comparison")
    parser.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="train nothing: rewrite results.md and accuracy.png in --out from this results.json (e.g. to add --notes)",
    )


def run_table(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    notes = Path(args.notes).read_text() if args.notes else ""
    out = Path(args.out)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        out.mkdir(parents=True, exist_ok=True)
        pairs = saved.get("rounding_divergence", rounding_divergence(saved["runs"]))
        (out / "results.md").write_text(markdown(saved["rows"], saved["claims"], saved["meta"], notes, pairs))
        plot(saved["runs"], saved["rows"], out / "accuracy.png")
        print(f"wrote {out / 'results.md'}, {out / 'accuracy.png'} from {args.render}")
        return 0
    provenance.announce("digits", out)
    result = build_table(
        args.only or TABLE,
        args.seeds,
        out,
        Path(args.runs),
        args.steps,
        floor=not args.no_floor,
        notes=notes,
        command=provenance.command("digits", argv),
        log=lambda *a: print(*a, flush=True),
    )
    print(markdown_table(result["rows"]))
    print(comparison_text(result["claims"]))
    print(
        f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'accuracy.png'} "
        f"in {result['meta']['wall_s'] / 60:.1f} min"
    )
    return 0
