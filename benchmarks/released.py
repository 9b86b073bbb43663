"""Side by side with the released MTTT layer (test-time-training/mttt, `inner_loop.TTTLayer`).

The released code is imported at run time from a checkout the caller names (`--released-dir`,
e.g. a clone outside this repository: `git clone https://github.com/test-time-training/mttt
/tmp/mttt`); none of it is part of this project.  It needs flax (`pip install flax`).

For each variant (the released configs of MTTT-Linear, MTTT-MLP T=1, full-batch T=4, SGD T=4) and
each n, in one process:

1. build the released layer (`inner_loop.TTTLayer(width=d, num_heads=H, config)`), initialise it, and
   load the same parameters into ours (`ttt_compile.layer.released.from_released`), compiled with the
   default pipeline (`tc.compile`);
2. check they compute the same outputs and training-step gradients (the SGD variant with the released
   token shuffle fixed to the identity order for this check only: our SGD blocks are contiguous);
3. training step = value_and_grad of sum(sin(layer(x))) w.r.t. the layer's parameters (the released
   layer: all parameters it trains; with `train_init=False`, MTTT-Linear, its frozen zero W0 is
   excluded, as ours has no W0 then), x of shape (B, n, d);
4. XLA FLOPs (cost analysis with loop trip counts, `harness.compiled_figures`) and compiled temp memory
   of both steps, and wall time: `benchmarks.timing.interleaved`, ours and the released step timed back
   to back in random order in every round together with a 2048^2 f32 matmul; the ratio is the median
   of per-round ratios (quartiles beside it), the achieved FLOP/s of each step is its FLOPs over its
   time, as a fraction of the matmul's FLOP/s in the same rounds.

Run: `python -m ttt_compile.benchmarks.released --released-dir /tmp/mttt [--ns 196 1024] [--reps 15]
[--out benchmarks/results/released]`; writes released.json and released.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.util
import os
import subprocess
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import timing
from .harness import compiled_figures, pick, write_results


@dataclasses.dataclass(frozen=True)
class Variant:
    """One released configuration (`config.inner.TTT` of the released config files / README)."""

    name: str
    inner_encoder: str  # "mlp_1" (linear) or "mlp_2" (MLP, hidden 4 d_h)
    inner_lr: tuple[float, ...]  # one step size per inner step (T = its length)
    sgd: bool
    decoder_ln: bool
    encoder_bias: bool
    encoder_init: str
    train_init: bool

    def config(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(
            inner_encoder=self.inner_encoder,
            inner_itr=len(self.inner_lr),
            inner_lr=self.inner_lr,
            train_init=self.train_init,
            inner_encoder_init=self.encoder_init,
            inner_encoder_bias=self.encoder_bias,
            decoder_LN=self.decoder_ln,
            SGD=self.sgd,
        )


_MLP = dict(inner_encoder="mlp_2", decoder_ln=True, encoder_bias=True, encoder_init="xavier_uniform", train_init=True)
VARIANTS = {
    "mttt_linear": Variant(
        "MTTT-Linear",
        "mlp_1",
        (1.0,),
        False,
        decoder_ln=False,
        encoder_bias=False,
        encoder_init="zero",
        train_init=False,
    ),
    "mttt_mlp_T1": Variant("MTTT-MLP T=1", inner_lr=(1.0,), sgd=False, **_MLP),
    "mttt_mlp_T4_full": Variant("MTTT-MLP full-batch T=4", inner_lr=(1.0,) * 4, sgd=False, **_MLP),
    "mttt_mlp_T4_sgd": Variant("MTTT-MLP SGD T=4", inner_lr=(1.0,) * 4, sgd=True, **_MLP),
}


def log(msg: str) -> None:
    print(f"[released {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the released code
def import_released(released_dir: Path):
    """The released `inner_loop` module, imported from `released_dir` (a checkout of the released repo)."""
    path = Path(released_dir) / "inner_loop.py"
    if not path.is_file():
        raise SystemExit(
            f"--released-dir {released_dir}: no inner_loop.py there; clone "
            "https://github.com/test-time-training/mttt and pass its folder"
        )
    try:
        import flax  # noqa: F401
    except ImportError:
        raise SystemExit("the released layer needs flax: pip install flax") from None
    spec = importlib.util.spec_from_file_location("released_inner_loop", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def released_commit(released_dir: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(released_dir), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@contextmanager
def identity_shuffle(module):
    """Within the block, the released SGD step's token shuffle keeps the tokens in order (its uniform
    noise becomes increasing), so its T mini-batches are our contiguous blocks.  For checking values only."""

    def increasing(key, shape, dtype=jnp.float32, *args, **kwargs):
        return jnp.broadcast_to(jnp.arange(shape[-1], dtype=dtype), shape)

    with mock.patch.object(module.jax.random, "uniform", increasing):
        yield


def released_step(module, variant: Variant, dim: int, heads: int, x, seed: int = 0):
    """(step(p, x) -> (loss, grads), trained parameters p, all parameters) of the released layer."""
    layer = module.TTTLayer(width=dim, num_heads=heads, config=variant.config())
    key = jax.random.PRNGKey(seed)
    params = layer.init({"params": key, "idx": key}, x)["params"]
    params = _perturb(params, jax.random.PRNGKey(seed + 1))
    frozen = {} if variant.train_init else {k: v for k, v in params.items() if k.startswith("inner_Dense")}
    trained = {k: v for k, v in params.items() if k not in frozen}
    rng = {"idx": jax.random.PRNGKey(seed + 2)}

    def loss(p, x):
        y, _ = layer.apply({"params": {**p, **frozen}}, x, rngs=rng)
        return jnp.sum(jnp.sin(y))

    return jax.value_and_grad(loss), trained, params, layer


def _perturb(params, key):
    """Every parameter moved off its initial value (LN scale 1, zero biases) except a zero W0 the
    variant freezes, so every term of the layer counts in the value check.  The tree keeps its form."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for i, (path, v) in enumerate(leaves):
        frozen_zero = "inner_Dense" in jax.tree_util.keystr(path) and not bool(jnp.any(v != 0))
        out.append(v if frozen_zero else v + 0.1 * jax.random.normal(jax.random.fold_in(key, i), v.shape, v.dtype))
    return jax.tree_util.tree_unflatten(tree, out)


# --------------------------------------------------------------------------- ours
def our_step(variant: Variant, params, x):
    """(step(p, x), p) of our layer loaded from the released parameters, compiled by tc.compile."""
    import ttt_compile as tc
    from ttt_compile.layer.released import from_released

    layer = from_released(params, inner_lr=variant.inner_lr, sgd=variant.sgd, train_init=variant.train_init)
    prog = tc.compile(layer, x[0])
    fn, p = timing.train_fn(prog)
    return fn, p, prog


# --------------------------------------------------------------------------- figures
#: What each side's row keeps of `harness.compiled_figures` (FLOPs with loop trip counts).
FIGURES = ("flops", "temp_bytes", "compile_s")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def check_same(module, variant: Variant, layer_r, params_r, prog, x) -> dict:
    """Max relative errors (float32) between the two layers at the same parameters: outputs, and the
    training step's loss and gradients.  The released gradients are mapped to our parameters by the
    same conversion as the parameters (`from_released` only transposes and reshapes, a linear map)."""
    from ttt_compile.layer.released import from_released

    rng = {"idx": jax.random.PRNGKey(0)}
    with identity_shuffle(module):
        y_r = jax.jit(lambda p, x: layer_r.apply({"params": p}, x, rngs=rng)[0])(params_r, x)
        loss_r, g_r = jax.jit(
            jax.value_and_grad(lambda p: jnp.sum(jnp.sin(layer_r.apply({"params": p}, x, rngs=rng)[0])))
        )(params_r)
    step_o, p_o = timing.train_fn(prog)
    loss_o, g_o = jax.jit(step_o)(p_o, x)
    if not variant.train_init:  # ours has no W0 then: the released gradient of its frozen W0 is not compared
        g_r = {k: (jax.tree.map(jnp.zeros_like, v) if k.startswith("inner_Dense") else v) for k, v in g_r.items()}
    as_ours = from_released(
        jax.tree.map(np.asarray, g_r), inner_lr=variant.inner_lr, sgd=variant.sgd, train_init=variant.train_init
    )
    want = jax.tree_util.tree_leaves(eqx.partition(as_ours, eqx.is_inexact_array)[0])
    got = jax.tree_util.tree_leaves(g_o)
    if len(want) != len(got):
        raise AssertionError(f"{variant.name}: {len(got)} gradient leaves in ours, {len(want)} in the released map")
    y_o = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))(prog, x)
    return {
        "output": rel_err(y_o, y_r),
        "loss": rel_err(loss_o, loss_r),
        "grads": max(rel_err(a, b) for a, b in zip(got, want)),
    }


# --------------------------------------------------------------------------- the run
def run(released_dir: Path, *, ns, variants, batch: int, dim: int, heads: int, reps: int, min_block_s: float) -> dict:
    """Measure every (n, variant); returns the results dict (rows and facts)."""
    module = import_released(released_dir)
    commit = released_commit(released_dir)
    log(f"released inner_loop.py from {released_dir} (commit {commit}); jax {jax.__version__}")
    peak_thunk, peak_flops = timing.matmul_peak(2048)
    rows = []
    for n in ns:
        x = jax.random.normal(jax.random.PRNGKey(n), (batch, n, dim), jnp.float32)
        for name in variants:
            rows.append(
                measure(module, VARIANTS[name], name, x, dim, heads, reps, min_block_s, (peak_thunk, peak_flops))
            )
            jax.clear_caches()
            gc.collect()
    return {
        "released_commit": commit,
        "released_dir": str(released_dir),
        "batch": batch,
        "dim": dim,
        "heads": heads,
        "ns": list(ns),
        "reps": reps,
        "min_block_s": min_block_s,
        "rows": rows,
    }


def measure(module, v: Variant, name: str, x, dim: int, heads: int, reps: int, min_block_s: float, peak) -> dict:
    """One row: values checked, FLOPs, temp memory, interleaved times of both training steps."""
    peak_thunk, peak_flops = peak
    n = x.shape[1]
    step_r, p_r, all_r, layer_r = released_step(module, v, dim, heads, x)
    step_o, p_o, prog = our_step(v, all_r, x)
    same = check_same(module, v, layer_r, all_r, prog, x)
    (fig_r, exe_r), (fig_o, exe_o) = compiled_figures(step_r, (p_r, x)), compiled_figures(step_o, (p_o, x))
    log(
        f"n={n} {v.name}: ours {fig_o['flops'] / 1e9:.2f} GFLOP, {fig_o['temp_bytes'] / 2**20:.1f} MiB; "
        f"released {fig_r['flops'] / 1e9:.2f} GFLOP, {fig_r['temp_bytes'] / 2**20:.1f} MiB; rel. errors {same}"
    )
    thunks = {"ours": lambda: exe_o(p_o, x), "released": lambda: exe_r(p_r, x), "peak": peak_thunk}
    rounds = timing.interleaved(thunks, reps, min_block_s=min_block_s, clusters=[["ours", "released", "peak"]])
    ratio = timing.ratio(rounds["ours"], rounds["released"])
    q25, q75 = timing.ratio_quartiles(rounds["ours"], rounds["released"])
    row = {
        "variant": name,
        "label": v.name,
        "n": n,
        "ratio": ratio,
        "ratio_q25": q25,
        "ratio_q75": q75,
        "peak_gflops": peak_flops / timing.median(rounds["peak"]) / 1e9,
        "same": same,
        "temp_ratio": fig_o["temp_bytes"] / max(fig_r["temp_bytes"], 1),
        "flops_ratio": fig_o["flops"] / fig_r["flops"],
    }
    for side, fig, series in (("ours", fig_o, rounds["ours"]), ("released", fig_r, rounds["released"])):
        row[side] = {
            **pick(fig, *FIGURES),
            "wall_s": timing.median(series),
            "spread": timing.spread(series),
            "gflops": fig["flops"] / timing.median(series) / 1e9,
            "frac_peak": fig["flops"] / peak_flops * timing.ratio(rounds["peak"], series),
            "rounds_s": series,
        }
    log(
        f"  time ours/released {ratio:.3f} ({q25:.2f}-{q75:.2f}); ours {row['ours']['wall_s'] * 1e3:.1f} ms "
        f"({row['ours']['frac_peak']:.2f} of peak), released {row['released']['wall_s'] * 1e3:.1f} ms "
        f"({row['released']['frac_peak']:.2f}); peak {row['peak_gflops']:.0f} GFLOP/s"
    )
    return row


def markdown(res: dict) -> str:
    """released.md: the side-by-side table."""
    lines = [
        f"# Training step: ttt-compile vs the released MTTT layer ({res['date']})",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Released code: test-time-training/mttt `inner_loop.py`, commit {res['released_commit']} (imported at "
        f"run time from {res['released_dir']}, not part of this repository). Ours: commit "
        f"{res['source']['commit'] or '?'}{' with uncommitted changes' if res['source']['tracked_changes'] else ''}, "
        "`tc.compile(from_released(params), x)` with the default pipeline.",
        "",
        f"Machine: {res['machine']['processor']}, {res['machine']['cpus_usable']} usable CPUs, jax "
        f"{res['machine']['jax']}; load average at start {res['machine']['loadavg_start'][0]:.2f}, end "
        f"{res['loadavg_end'][0]:.2f}: the machine was shared with other jobs.",
        "",
        f"Training step = value_and_grad of sum(sin(layer(x))) w.r.t. the layer's parameters, x (B={res['batch']}, "
        f"n, d={res['dim']}), H={res['heads']}, float32. Time ratio: median over {res['reps']} interleaved rounds "
        "of the per-round ratio ours/released (25th-75th percentile in brackets), both steps and a 2048^2 f32 "
        "matmul timed back to back in random order in each round. FLOPs: XLA cost analysis with loop trip "
        "counts. Memory: compiled temp bytes. % peak: the step's FLOPs / its time, over the matmul's FLOP/s "
        "in the same rounds. Values: max relative error of ours vs the released outputs / gradients "
        "(SGD: released shuffle fixed to the identity order for the check).",
        "",
        "| variant | n | time ours/released | ours ms | released ms | GFLOP ours | GFLOP released | "
        "temp MiB ours | temp MiB released | temp ratio | % peak ours | % peak released | peak GFLOP/s | "
        "rel. err out / grad |",
        "|" + "---|" * 14,
    ]
    for r in res["rows"]:
        o, q = r["ours"], r["released"]
        lines.append(
            f"| {r['label']} | {r['n']} | **{r['ratio']:.3f}** ({r['ratio_q25']:.2f}-{r['ratio_q75']:.2f}) | "
            f"{o['wall_s'] * 1e3:.1f} | {q['wall_s'] * 1e3:.1f} | {o['flops'] / 1e9:.2f} | {q['flops'] / 1e9:.2f} | "
            f"{o['temp_bytes'] / 2**20:.1f} | {q['temp_bytes'] / 2**20:.1f} | {r['temp_ratio']:.2f} | "
            f"{100 * o['frac_peak']:.0f} | {100 * q['frac_peak']:.0f} | {r['peak_gflops']:.0f} | "
            f"{r['same']['output']:.1e} / {r['same']['grads']:.1e} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .suite import machine, source_state

    ap = argparse.ArgumentParser(prog="python -m ttt_compile.benchmarks.released", description=__doc__.split("\n")[0])
    ap.add_argument("--released-dir", type=Path, required=True, help="a checkout of test-time-training/mttt")
    ap.add_argument("--ns", type=int, nargs="+", default=[196, 1024])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--min-block", type=float, default=0.2, help="seconds per timed block")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/released"))
    args = ap.parse_args(argv)
    facts, source = machine(), source_state()
    res = run(
        args.released_dir,
        ns=args.ns,
        variants=args.variants,
        batch=args.batch,
        dim=args.dim,
        heads=args.heads,
        reps=args.reps,
        min_block_s=args.min_block,
    )
    res |= {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": facts,
        "source": source,
        "loadavg_end": list(os.getloadavg()),
        "command": "python -m ttt_compile.benchmarks.released " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    write_results(args.out, "released", res, markdown(res), log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
