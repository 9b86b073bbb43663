"""The MQAR table (issue 4): recall accuracy against model width and sequence length for causal
linear attention, MTTT-Linear, MTTT-MLP (token by token, b = 1, and chunked) and softmax attention,
over 3 seeds (tiny models, a few hundred steps each, sized to finish in about 20 minutes on 2 CPU
cores).

    python scripts/mqar_table.py [--steps N] [--seeds 0 1 2] [--widths 32 64] [--lengths 32 64] [--out DIR]

Task (`ttt_compile.mqar`): N = L / 8 key-value pairs, then the N keys queried again (in a random
order, at random positions); vocabulary 128.  Every model: causal LM of depth 1 (one mixer + MLP)
with the previous-token embedding (a token shift, so one layer can bind a key to the next token),
AdamW; accuracy on 256 held-out examples.  The MTTT rows use the inner step eta = 0.003 that the
character-LM sweep (scripts/lm_table.py --sweep) picked; no MQAR-specific tuning.  The learned-eta rows
gate it per token, eta_k(x) = 0.006 sigmoid(theta_k . x + b_k), starting at 0.003 (tc.Inner(eta="per_token")).  Chance is 1/64.  Writes DIR/mqar_table.json and DIR/mqar_table.md
(default DIR: benchmarks/results/online).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import jax

from ttt_compile.lm_train import MQARConfig, train_mqar

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "online"

MODELS = {
    "linear attention": dict(mixer="linear_attention", chunk=16),
    "MTTT-Linear (b=16)": dict(mixer="mttt_linear", chunk=16, inner_lr=0.003),
    "MTTT-MLP (b=1, T=n)": dict(mixer="mttt_mlp", chunk=1, inner_lr=0.003),
    "MTTT-MLP (b=16)": dict(mixer="mttt_mlp", chunk=16, inner_lr=0.003),
    "MTTT-Linear (b=16, learned eta per token)": dict(mixer="mttt_linear", chunk=16, inner_lr=0.003, eta="per_token"),
    "MTTT-MLP (b=16, learned eta per token)": dict(mixer="mttt_mlp", chunk=16, inner_lr=0.003, eta="per_token"),
    "softmax attention": dict(mixer="softmax", chunk=16),
}
BASE = dict(depth=1, heads=2, batch=32, steps=300, lr=3e-3, warmup=30, vocab=128, prev_token=True, eval_examples=256)


def config(model: str, width: int, length: int, seed: int, steps: int) -> MQARConfig:
    return MQARConfig(**{**BASE, **MODELS[model], "steps": steps}, width=width, mlp_dim=2 * width,
                      seq_len=length, num_pairs=length // 8, seed=seed)


def markdown(rows: list[dict], meta: dict) -> str:
    widths, lengths = meta["widths"], meta["lengths"]
    cols = [(w, L) for L in lengths for w in widths]
    lines = [f"# MQAR recall accuracy ({meta['date']})", "",
             f"Mean (min..max) over seeds {meta['seeds']}; N = L/8 pairs, vocabulary {BASE['vocab']}, depth "
             f"{BASE['depth']}, {BASE['heads']} heads, {meta['steps']} AdamW steps of batch {BASE['batch']} "
             f"(fresh examples each step), accuracy on {BASE['eval_examples']} held-out examples. "
             f"Machine: {meta['machine']}; total wall time {meta['wall_s'] / 60:.1f} min. Chance is 1/64 "
             "(values are drawn from 64 ids). MTTT rows: online inner loop with eta = 0.003 (the character-LM "
             "sweep's choice), `b=1, T=n` = one token per inner step, `b=16` = chunks of 16 tokens.", "",
             "| model | " + " | ".join(f"d={w}, L={L} (N={L // 8})" for w, L in cols) + " |",
             "| --- | " + " | ".join("---:" for _ in cols) + " |"]
    for model in meta["models"]:
        cells = []
        for w, L in cols:
            accs = [r["accuracy"] for r in rows if r["model"] == model and r["width"] == w and r["length"] == L]
            cells.append(f"{statistics.mean(accs):.3f} ({min(accs):.2f}..{max(accs):.2f})" if accs else "-")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    extra = meta.get("learned_eta_rows")
    if extra:
        def seeds(model):
            return " / ".join(f"{r['accuracy']:.3f}" for r in sorted(rows, key=lambda r: r["seed"])
                              if r["model"] == model and (r["width"], r["length"]) == (64, 64))
        lines += ["", f"Learned-eta rows ({extra['date']}, {extra['wall_s'] / 60:.1f} min): {extra['note']}. "
                  "Per seed at d=64, L=64 (seeds " + ", ".join(map(str, meta["seeds"])) + "): "
                  + "; ".join(f"{m}: {seeds(m)}" for m in meta["models"] if m.startswith("MTTT") and "b=16" in m)
                  + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=BASE["steps"])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--widths", type=int, nargs="*", default=[32, 64])
    ap.add_argument("--lengths", type=int, nargs="*", default=[32, 64])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--render", action="store_true", help="only rewrite mqar_table.md from DIR/mqar_table.json")
    args = ap.parse_args(argv)
    if args.render:
        saved = json.loads((args.out / "mqar_table.json").read_text())
        (args.out / "mqar_table.md").write_text(markdown(saved["rows"], saved["meta"]))
        return 0
    rows, t0 = [], time.perf_counter()
    for model in args.models:
        for L in args.lengths:
            for w in args.widths:
                for seed in args.seeds:
                    c = config(model, w, L, seed, args.steps)
                    t = time.perf_counter()
                    r = train_mqar(c)
                    r.pop("program")
                    rows.append({"model": model, "width": w, "length": L, "seed": seed, "accuracy": r["accuracy"],
                                 "final_loss": r["losses"][-1][1], "wall_s": time.perf_counter() - t,
                                 "steps_per_s": r["steps_per_s"], "config": r["config"]})
                    print(f"{model:<22} d={w:<3} L={L:<4} seed {seed}: accuracy {r['accuracy']:.3f} "
                          f"(loss {r['losses'][-1][1]:.3f}, {time.perf_counter() - t:.0f}s)", flush=True)
    meta = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} CPU, 2 cores (shared)",
            "jax": jax.__version__, "widths": args.widths, "lengths": args.lengths, "seeds": args.seeds,
            "steps": args.steps, "models": args.models, "wall_s": time.perf_counter() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mqar_table.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / "mqar_table.md").write_text(markdown(rows, meta))
    print(f"wrote {args.out / 'mqar_table.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

