"""Figures of a suite run (matplotlib, Agg backend), drawn from the results dict only.

- time_vs_n_d{d}.png:    wall-clock median (fwd, train) vs n, one panel per layer, none vs default;
- memory_vs_n_d{d}.png:  compiled temp memory (fwd, train) vs n, same layout (includes the
                         compile-only lengths);
- flops_vs_n_d{d}.png:   FLOPs (fwd, train) vs n, same layout;
- flops_ratio_d{d}_n{n}.png: FLOPs of each pipeline / none, per layer, at each sweep shape.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

STYLE = {"none": ("tab:red", "none (naive JAX)"), "default": ("tab:blue", "default")}


def _figure(value, groups, dim):
    """{layer: {pipeline: {kind: [(n, v)]}}} of value(program_fig) over the groups with this dim."""
    out: dict = {}
    for g in groups:
        if g["dim"] != dim:
            continue
        progs = {r["id"]: r for r in g["programs"]}
        for c in g["cells"]:
            if c["pipeline"] not in STYLE or "program" not in c:
                continue
            for kind in ("fwd", "train"):
                v = value(progs[c["program"]]["fig"][kind])
                if v is not None:
                    out.setdefault(c["layer"], {}).setdefault(c["pipeline"], {}).setdefault(kind, []).append(
                        (g["n"], v)
                    )
    return out


def _panels(data, title, ylabel, path: Path) -> Path | None:
    if not data:
        return None
    names = list(data)
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ns = sorted({n for kinds in data[name].values() for pts in kinds.values() for n, _ in pts})
        for pipe, kinds in data[name].items():
            color, label = STYLE[pipe]
            for kind, style in (("fwd", "--"), ("train", "-")):
                pts = sorted(kinds.get(kind, []))
                if pts:
                    ax.plot(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        style,
                        marker="o",
                        color=color,
                        label=f"{label}, {kind}",
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ns, [str(n) for n in ns], fontsize=8)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if len(ns) == 1:
            ax.set_xlim(ns[0] / 2, ns[0] * 2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("n (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def flops_ratio(group: dict, path: Path) -> Path | None:
    """Bars: FLOPs (fwd and train) of every pipeline / none, per layer, in one group."""
    layers = list(dict.fromkeys(c["layer"] for c in group["cells"]))
    pipes = [p for p in dict.fromkeys(c["pipeline"] for c in group["cells"]) if p != "none"]
    if not layers or not pipes:
        return None
    fig, axes = plt.subplots(2, 1, figsize=(min(16, max(8, 0.22 * len(layers) * len(pipes))), 7), squeeze=False)
    width = 0.8 / len(pipes)
    cmap = plt.get_cmap("tab10")
    for ax, kind in zip(axes[:, 0], ("fwd", "train")):
        for j, pipe in enumerate(pipes):
            xs, ys = [], []
            for i, layer in enumerate(layers):
                c = next((c for c in group["cells"] if c["layer"] == layer and c["pipeline"] == pipe), None)
                v = c and c.get("vs_none", {}).get(f"flops_{kind}")
                if v is not None:
                    xs.append(i + (j - (len(pipes) - 1) / 2) * width)
                    ys.append(v)
            ax.bar(xs, ys, width, label=pipe, color=cmap(j % 10))
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=20, fontsize=8)
        ax.set_ylabel(f"FLOPs {kind} / none")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=min(len(pipes), 4), loc="lower left", framealpha=0.9)
    fig.suptitle(
        f"FLOPs per pipeline / naive (none), d={group['dim']} H={group['heads']} n={group['n']} batch {group['batch']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(results: dict, out_dir: Path) -> list[Path]:
    """Write every figure of `results` into out_dir; returns the paths written."""
    groups = results["groups"]
    written = []
    for dim in dict.fromkeys(g["dim"] for g in groups):
        for stem, value, ylabel, title in (
            ("time_vs_n", lambda f: f.get("wall_s") and f["wall_s"] * 1e3, "ms (median)", "wall-clock"),
            ("memory_vs_n", lambda f: f["temp_bytes"] and f["temp_bytes"] / 2**20, "temp MiB", "compiled temp memory"),
            ("flops_vs_n", lambda f: f["flops"] / 1e9, "GFLOP", "FLOPs (trip counts included)"),
        ):
            p = _panels(
                _figure(value, groups, dim),
                f"{title} vs n, d={dim}, batch {groups[0]['batch']} (dashed: forward, solid: train step)",
                ylabel,
                out_dir / f"{stem}_d{dim}.png",
            )
            if p:
                written.append(p)
    for g in groups:
        if len({c["pipeline"] for c in g["cells"]}) > 2:
            p = flops_ratio(g, out_dir / f"flops_ratio_d{g['dim']}_n{g['n']}.png")
            if p:
                written.append(p)
    return written
