"""Interleaved wall-clock timing.

Every figure the suite reports as a ratio comes from one process: the functions being compared are
called in rounds, each round timing one block of calls of every function, the functions that are
compared with each other back to back (a cluster) in random order, so a slow moment of the machine
(other jobs on the two cores) hits both sides of a ratio alike.  A ratio is the median over rounds of the per-round ratio; an absolute time is
the median over rounds of the per-call time.  Never divide figures taken in different runs.

`forward`, `train_step` and `ratio_interleaved` mirror /work/shared/checks/targets.py, so the
suite's figures and the published target checks measure the same thing.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

Thunk = Callable[[], Any]


# --------------------------------------------------------------------------- what is timed
def forward_fn(m) -> Callable:
    """The batched forward pass `x (b, n, d) -> vmap(m)(x)`, outer parameters closed over (as
    targets.forward: they are constants of the compiled program)."""
    return lambda x: jax.vmap(m)(x)


def train_fn(m) -> tuple[Callable, Any]:
    """(value_and_grad of loss(p, x) = sum(sin(vmap(m_p)(x))) w.r.t. the float leaves p, p): what one
    outer training step pays for the layer (as targets.train_step)."""
    params, static = eqx.partition(m, eqx.is_inexact_array)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("the program has no float leaves: the outer loop could not train it")

    def loss(p, x):
        return jnp.sum(jnp.sin(jax.vmap(eqx.combine(p, static))(x)))

    return jax.value_and_grad(loss), params


def forward(m) -> Callable:
    """jit'ed forward, called as f(x) (targets.forward)."""
    return jax.jit(forward_fn(m))


def train_step(m) -> Callable:
    """jit'ed training step, called as f(x) (targets.train_step)."""
    fn, params = train_fn(m)
    g = jax.jit(fn)
    return lambda x: g(params, x)


# --------------------------------------------------------------------------- timers
def block(fn: Thunk, k: int) -> float:
    """Seconds for k back-to-back calls of fn, waiting for the last result."""
    t0 = time.perf_counter()
    out = None
    for _ in range(k):
        out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - t0


def calls_per_block(single_s: float, min_block_s: float) -> int:
    """How many calls make a block of at least min_block_s, given one call takes single_s."""
    return max(1, int(math.ceil(min_block_s / max(single_s, 1e-7))))


def interleaved(
    thunks: Mapping[str, Thunk],
    reps: int,
    *,
    min_block_s: float = 0.05,
    singles: Mapping[str, float] | None = None,
    clusters: list[list[str]] | None = None,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Per-call seconds of each thunk in each of `reps` interleaved rounds.

    Thunks without a single-call estimate in `singles` are warmed up with one call (whose time is
    the estimate).  Every round then times one block of k calls of each thunk, k chosen so a block
    lasts at least min_block_s.  Thunks that will be compared belong to one of `clusters` (the
    others each form their own): a round visits the clusters in a fresh random order and times each
    cluster's thunks back to back, also in random order (seeded).  So the blocks a per-round ratio
    divides are seconds apart even when a round lasts a minute, and no two thunks are always
    neighbours in the same order: load from other jobs that changes within a round hits both."""
    names = list(thunks)
    singles = dict(singles or {})
    for name in names:
        if name not in singles:
            singles[name] = block(thunks[name], 1)
    ks = {name: calls_per_block(singles[name], min_block_s) for name in names}
    groups = [[n for n in c if n in thunks] for c in (clusters or [])]
    grouped = {n for c in groups for n in c}
    groups = [c for c in groups if c] + [[n] for n in names if n not in grouped]
    out: dict[str, list[float]] = {name: [] for name in names}
    rng = random.Random(seed)
    for _ in range(reps):
        for cluster in rng.sample(groups, len(groups)):
            for name in rng.sample(cluster, len(cluster)):
                out[name].append(block(thunks[name], ks[name]) / ks[name])
    return out


def machine_load() -> str:
    """The machine's 1-minute load average and core count, written beside timings taken now."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def median(xs) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(xs))


def ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[r] / b[r]: the interleaved ratio of two timed series."""
    if len(a) != len(b) or not a:
        raise ValueError("ratio needs two series from the same interleaved rounds")
    return median([x / y for x, y in zip(a, b)])


def ratio_quartiles(a: list[float], b: list[float]) -> tuple[float, float]:
    """(25th, 75th) percentiles over rounds of a[r] / b[r]: how much the interleaved ratio moved."""
    q25, q75 = np.percentile(np.asarray(a) / np.asarray(b), [25, 75])
    return float(q25), float(q75)


def spread(xs: list[float]) -> float:
    """Relative interquartile range (q75 - q25) / median of a timed series."""
    q25, q50, q75 = np.percentile(np.asarray(xs), [25, 50, 75])
    return float((q75 - q25) / q50) if q50 > 0 else float("nan")


def ratio_interleaved(fa: Callable, fb: Callable, x, reps: int = 11, min_block: float = 0.05) -> float:
    """targets.ratio_interleaved: median over reps of time(k calls of fa) / time(k calls of fb), both
    called on x, k shared and chosen from the faster of the two."""
    for f in (fa, fb):
        jax.block_until_ready(f(x))
    k = calls_per_block(min(block(lambda: fa(x), 1), block(lambda: fb(x), 1)), min_block)
    return median([block(lambda: fa(x), k) / block(lambda: fb(x), k) for _ in range(reps)])


# --------------------------------------------------------------------------- the machine's peak
def matmul_peak(size: int = 2048, *, seed: int = 0) -> tuple[Thunk, float]:
    """(thunk running a jit'ed size x size f32 matmul, its FLOPs 2 size^3): timed in the same rounds
    as the programs, it gives this machine's achievable matmul rate at that moment."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    a = jax.random.normal(k1, (size, size), jnp.float32)
    b = jax.random.normal(k2, (size, size), jnp.float32)
    f = jax.jit(jnp.dot).lower(a, b).compile()
    return (lambda: f(a, b)), 2.0 * size**3
