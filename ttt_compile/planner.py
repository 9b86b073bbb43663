"""The memory plan `tc.compile(..., remat_budget=B)` makes: token chunks and remat schemes, measured.

A full-batch or SGD inner loop over n tokens holds O(n) values per step for its backward pass (the
per-token gradients of l(W; X) = 1/(2n) sum_i ||g(f(phi(x_i); W)) - x_i||^2 and the queries' outputs
h(f(psi(x_j); W_T))).  `Inner.token_chunk = c` sums the loss and maps the queries c tokens at a time,
so the backward pass holds O(c) of them; the `remat` pass chooses how each loop of T > 1 steps stores
its W_t.  Given the budget B (bytes of the program's compiled training-step temp memory,
`cost.train_temp_bytes`), the plan is chosen by measuring, never by a model of memory:

    candidates   c in (None, the largest common divisor of the traced lengths <= n / 2^k, k = 1, 2, ...)
                 for the layers that leave token_chunk unset (a chunk the user names is kept); c divides
                 every full/SGD loop's n and the n/T tokens of each SGD step, c >= MIN_CHUNK
    each         the pipeline runs with remat's budget B (the least-recompute schemes that fit) and the
                 finished program's training step is compiled (not run) and its temp memory read
    the plan     the first candidate that fits, i.e. the largest chunk (fewest sequential chunks: least
                 time); none fits -> SpecError naming the least memory measured

Exact: a token chunk and a remat scheme change memory and time, never values (validated in float64 by
tests/test_planner.py).  The report (`Compiled.pipeline[0]`'s notes, shown by `inspect`) lists every
candidate measured and the one chosen.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import jax

from .cost import train_temp_bytes
from .layer.spec import SpecError
from .layer.ttt_layer import TTTLayer, recording_lengths

MIN_CHUNK = 8  # smaller chunks cost more in loop overhead than they save in memory


def _is_layer(node) -> bool:
    return isinstance(node, TTTLayer)


def free_layers(model) -> list[TTTLayer]:
    """The TTT layers whose token chunk the planner may choose: full/SGD loops, token_chunk unset."""
    leaves = jax.tree_util.tree_leaves(model, is_leaf=_is_layer)
    return [
        node
        for node in leaves
        if _is_layer(node)
        and not node.nonparametric
        and node.inner.batching in ("full", "sgd")
        and node.inner.token_chunk is None
    ]


def with_token_chunk(model, chunk: int | None):
    """`model` with `Inner.token_chunk = chunk` in every layer `free_layers` lists (same arrays)."""
    free = {id(node) for node in free_layers(model)}

    def set_chunk(node):
        return node.with_inner(token_chunk=chunk) if _is_layer(node) and id(node) in free else node

    return jax.tree_util.tree_map(set_chunk, model, is_leaf=_is_layer)


def chunk_candidates(lengths: list[tuple[int, int]]) -> list[int | None]:
    """None, then the ladder of chunks c | gcd of every traced n and b with c <= n_max / 2^k, largest
    first, distinct, each >= MIN_CHUNK."""
    if not lengths:
        return [None]
    g = 0
    for n, b in lengths:
        g = math.gcd(g, math.gcd(n, b))
    divisors = sorted({d for i in range(1, math.isqrt(g) + 1) if g % i == 0 for d in (i, g // i)}, reverse=True)
    top = max(n for n, _ in lengths)
    out: list[int | None] = [None]
    k = 1
    while top >> k >= MIN_CHUNK:
        c = next((d for d in divisors if d <= top / 2**k), None)
        if c is None or c < MIN_CHUNK:
            break
        if c not in out:
            out.append(c)
        k += 1
    return out


def _fits_error(e: SpecError) -> bool:
    """Whether `e` is remat's "no scheme fits the budget" (the next candidate may fit)."""
    return str(e).startswith("remat: budget=")


def plan(model, args: tuple, budget: int, run: Callable) -> tuple[object, object, list[str]]:
    """(the model with its planned token chunk, `run`'s result for it, the report lines).

    `run(model, *args)` traces and compiles the model through the pipeline (with remat's budget set) and
    returns an object whose `.jaxpr` is the finished ClosedJaxpr."""
    with recording_lengths() as lengths:
        jax.eval_shape(lambda *a: model(*a), *args)
    free = free_layers(model)
    candidates = chunk_candidates(lengths) if free else [None]
    report, least = [], None
    for c in candidates:
        candidate = with_token_chunk(model, c) if c is not None else model
        try:
            out = run(candidate, *args)
        except SpecError as e:
            if not _fits_error(e):
                raise
            measured = re.search(r"\(([0-9,]+) bytes", str(e))
            if measured:
                temp = int(measured.group(1).replace(",", ""))
                least = temp if least is None else min(least, temp)
            report.append(f"token_chunk={c}: remat found no scheme within the budget ({str(e)[:160]})")
            continue
        temp = train_temp_bytes(out.jaxpr)
        least = temp if least is None else min(least, temp)
        fits = temp <= budget
        report.append(
            f"token_chunk={c}: compiled train temp memory {temp / 2**20:,.2f} MiB"
            + (" (fits)" if fits else f" > budget {budget / 2**20:,.2f} MiB")
        )
        if fits:
            lengths_text = ", ".join(sorted({f"n={n}" + (f" (b={b})" if b != n else "") for n, b in lengths}))
            head = (
                f"plan: token_chunk={c} for {len(free)} full/SGD layer(s) with token_chunk unset ({lengths_text}); "
                if free
                else "plan: no full/SGD layer with token_chunk unset; "
            )
            return candidate, out, [head + f"budget {budget / 2**20:,.2f} MiB; measured:", *report]
    raise SpecError(
        f"tc.compile: remat_budget={budget:,} bytes is below every plan measured (token chunks "
        f"{', '.join(map(str, candidates))}; least {'none compiled' if least is None else f'{least:,} bytes'}): "
        + "; ".join(report)[:600]
        + "; raise remat_budget"
    )
