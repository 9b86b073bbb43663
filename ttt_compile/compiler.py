"""`tc.compile`: trace a layer or model to a jaxpr with `ttt_loop` nodes, run named passes, and
return a `Compiled` equinox Module that evaluates the final program (differentiable in the
model's outer parameters, so an optax outer loop trains it)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
from jax.extend.core import ClosedJaxpr, jaxpr_as_fun

from . import passes as P
from . import planner, program_diff
from .cost import Cost, measure
from .cost import by_level as cost_by_level
from .ir.jaxpr_utils import count_eqns
from .ir.primitive import contains_loop, emitting, loop_nesting
from .layer.spec import INNER_DTYPES, SpecError
from .layer.ttt_layer import TTTLayer
from .program_diff import ProgramDiff

DEFAULT = P.DEFAULT  # the default pipeline lives with the pass contract in passes/__init__.py


class _Cache:
    """A mutable cost cache with identity hash (so the Module stays hashable under filter_jit)."""

    def __init__(self):
        self.costs: dict[int, Cost] = {}


class Compiled(eqx.Module):
    """A traced, optimised program.  `params` are the model's float leaves (the outer parameters)."""

    params: Any
    jaxpr: ClosedJaxpr = eqx.field(static=True)
    in_tree: Any = eqx.field(static=True)
    in_avals: tuple = eqx.field(static=True)
    out_tree: Any = eqx.field(static=True)
    pipeline: tuple = eqx.field(static=True)  # (pass name, ClosedJaxpr, notes)
    _cache: _Cache = eqx.field(static=True)

    def __call__(self, *args):
        leaves, tree = jax.tree_util.tree_flatten(args)
        avals = tuple((tuple(jax.numpy.shape(x)), jax.numpy.result_type(x)) for x in leaves)
        if tree != self.in_tree or avals != self.in_avals:
            raise ValueError(
                "the compiled program was traced for inputs "
                + _fmt(self.in_avals)
                + " but got "
                + _fmt(avals)
                + "; compile again with an example of the new shape: tc.compile(model, x)"
            )
        out = jaxpr_as_fun(self.jaxpr)(*jax.tree_util.tree_leaves(self.params), *leaves)
        return jax.tree_util.tree_unflatten(self.out_tree, out)

    @property
    def stages(self) -> list[tuple[str, ClosedJaxpr, Cost]]:
        """[(pass name, program after it, its Cost)]; the first stage is the traced program."""
        out = []
        for i, (name, jaxpr, _) in enumerate(self.pipeline):
            if i not in self._cache.costs:
                self._cache.costs[i] = measure(jaxpr)
            out.append((name, jaxpr, self._cache.costs[i]))
        return out

    @property
    def notes(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(name, notes) for name, _, notes in self.pipeline]

    def diff(self, stage: str | int) -> ProgramDiff:
        """What pass `stage` (its name, or its index in `stages`) changed: equations removed, added and
        rewritten between the program before it and after it (`print(prog.diff("simplify"))`)."""
        names = [name for name, _, _ in self.pipeline]
        if isinstance(stage, str):
            if stage not in names or stage == "trace":
                raise SpecError(f"Compiled.diff: no pass stage {stage!r}; stages are {', '.join(names[1:])}")
            stage = names.index(stage)
        if not isinstance(stage, int) or not 1 <= stage < len(names):
            raise SpecError(f"Compiled.diff: stage index must be in 1..{len(names) - 1}, got {stage!r}")
        return program_diff.diff(self.pipeline[stage - 1][1], self.pipeline[stage][1])

    def report(self, jaxprs: bool = False) -> str:
        """Per stage: equations, FLOPs, bytes accessed, compiled temp memory, the ttt_loops left (as a
        nesting: `{ }` holds the loops in a loop's body) and the pass's notes (a note about a nested
        loop starts with its level and the loops around it)."""
        lines = [f"{'stage':<16}{'eqns':>7}{'FLOPs':>14}{'bytes':>14}{'temp bytes':>14}"]
        for (name, jaxpr, cost), (_, notes) in zip(self.stages, self.notes):
            lines.append(f"{name:<16}{cost.eqns:>7}{cost.flops:>14.4g}{cost.bytes:>14.4g}{cost.temp_bytes:>14,}")
            nesting = loop_nesting(jaxpr)
            if nesting:
                lines.append(f"{'':<4}loops: {nesting}")
            if "{" in nesting and name == "trace":  # nested loops as written: where the FLOPs are, by level
                levels = ", ".join(f"level {k} {f:.4g}" for k, f in enumerate(cost_by_level(jaxpr)))
                lines.append(f"{'':<4}FLOPs by loop level: {levels}")
            lines.extend(f"{'':<4}- {n}" for n in notes)
            if jaxprs:
                lines.append(str(jaxpr))
        return "\n".join(lines)


def _fmt(avals) -> str:
    return ", ".join(f"{dt}{list(s)}" for s, dt in avals) or "()"


def resolve(passes) -> list[tuple[str, Callable]]:
    """'default' | 'none' | a sequence of names, (name, options) pairs or pass functions."""
    if isinstance(passes, str):
        if passes == "default":
            passes = DEFAULT
        elif passes == "none":
            passes = ()
        else:
            passes = [p.strip() for p in passes.split(",") if p.strip()]
    if not isinstance(passes, Sequence):
        raise SpecError(f"passes must be 'default', 'none' or a list of pass names, got {type(passes).__name__}")
    out = []
    for p in passes:
        if isinstance(p, str):
            out.append((P.canonical(p), P.get(p)))
        elif isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], dict):
            out.append((P.canonical(p[0]), P.get(p[0], **p[1])))
        elif callable(p):
            fn = p.func if isinstance(p, functools.partial) else p
            out.append((getattr(fn, "pass_name", getattr(fn, "__name__", "pass")), p))
        else:
            raise SpecError(
                f"passes: {p!r} is not a pass name, a (name, options) pair or a function; "
                f"available passes: {', '.join(P.available())}"
            )
    return out


def trace(model, *args) -> tuple[ClosedJaxpr, Any, Any, Any]:
    """The model's program with `ttt_loop` equations: inputs are (float leaves of model, *args)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    p_leaves, p_tree = jax.tree_util.tree_flatten(params)
    a_leaves, a_tree = jax.tree_util.tree_flatten(args)
    out_tree = []

    def fn(*leaves):
        p = jax.tree_util.tree_unflatten(p_tree, leaves[: len(p_leaves)])
        a = jax.tree_util.tree_unflatten(a_tree, leaves[len(p_leaves) :])
        out, tree = jax.tree_util.tree_flatten(eqx.combine(p, static)(*a))
        out_tree.append(tree)
        return out

    with emitting():
        closed = jax.make_jaxpr(fn)(*p_leaves, *a_leaves)
    return closed, params, a_tree, out_tree[0]


def with_remat_budget(pipeline: list[tuple[str, Callable]], budget: int) -> list[tuple[str, Callable]]:
    """The pipeline with the `remat` stage's `budget` option set (its other options kept)."""
    if not any(name == "remat" for name, _ in pipeline):
        raise SpecError(
            "tc.compile: remat_budget is given but the pipeline has no 'remat' pass; "
            "add 'remat' to passes (it must run before unroll/sgd_batch/lower)"
        )
    out = []
    for name, fn in pipeline:
        if name == "remat":
            options = dict(fn.keywords) if isinstance(fn, functools.partial) else {}
            fn = P.get("remat", **{**options, "budget": budget})
        out.append((name, fn))
    return out


def with_inner_dtype(model, dtype: str):
    """`model` with `Inner.dtype = dtype` in every parametric TTTLayer it holds (as a pytree node):
    "float32", "bfloat16" (fast weights, gradients, updates and matmuls in bf16) or "mixed" (f32 fast
    weights, bf16 matmuls).  Non-parametric layers (no fast weights) are left as they are."""
    if dtype not in INNER_DTYPES:
        raise SpecError(
            f"tc.compile: inner_dtype must be None or one of {', '.join(map(repr, INNER_DTYPES))}, got {dtype!r}"
        )
    found = []

    def cast(node):
        if isinstance(node, TTTLayer) and not node.nonparametric:
            found.append(node)
            return node.with_inner(dtype=dtype)
        return node

    out = jax.tree_util.tree_map(cast, model, is_leaf=lambda node: isinstance(node, TTTLayer))
    if not found:
        raise SpecError(
            f"tc.compile: inner_dtype={dtype!r} sets the precision of TTT layers' inner loops, but "
            f"the model ({type(model).__name__}) holds no parametric TTTLayer; drop inner_dtype"
        )
    return out


def compile(
    model: Callable,
    *args,
    passes="default",
    inner_dtype: str | None = None,  # noqa: A001
    remat_budget: int | None = None,
) -> Compiled:
    """Trace `model(*args)` (any eqx.Module, TTT layers anywhere inside), run `passes`, return a
    `Compiled` module.  A `lower` stage is appended if a ttt_loop survives the given passes.

    `inner_dtype` ("float32" | "bfloat16" | "mixed"), optional, overrides `Inner.dtype` of every TTT
    layer in the model for this program (same parameters; the outputs keep the input's dtype).
    `remat_budget` (bytes of compiled training-step temp memory) plans memory (ttt_compile.planner):
    the token chunk of every full/SGD loop that leaves `Inner.token_chunk` unset, and through the `remat`
    pass each inner loop's storage scheme, the least costly measured plan that fits; the first stage's
    notes list every candidate measured."""
    if not callable(model):
        raise SpecError(f"tc.compile: model must be callable (an eqx.Module), got {type(model).__name__}")
    if inner_dtype is not None:
        model = with_inner_dtype(model, inner_dtype)
    pipeline = resolve(passes)
    if remat_budget is None:
        return _compile(model, args, pipeline)
    pipeline = with_remat_budget(pipeline, remat_budget)
    _, out, report = planner.plan(model, args, remat_budget, lambda m, *a: _compile(m, a, pipeline))
    name, closed, notes = out.pipeline[0]
    return dataclasses.replace(out, pipeline=((name, closed, (*report, *notes)), *out.pipeline[1:]))


def _compile(model, args: tuple, pipeline: list[tuple[str, Callable]]) -> Compiled:
    """Trace `model(*args)` and run `pipeline` on it (tc.compile without its options)."""
    closed, params, a_tree, out_tree = trace(model, *args)
    stages = [("trace", closed, ())]
    order = P.check_order([name for name, _ in pipeline])
    for i, (name, fn) in enumerate(pipeline):
        with P.collecting_notes() as notes:
            notes.extend(w for w in order if i == 0)
            closed = fn(closed)
        if not isinstance(closed, ClosedJaxpr):
            raise TypeError(f"pass {name!r} returned {type(closed).__name__}, not a ClosedJaxpr")
        stages.append((name, closed, tuple(notes)))
    if contains_loop(closed):
        with P.collecting_notes() as notes:
            closed = P.lower(closed)
        stages.append(("lower", closed, ("appended: a ttt_loop remained after the given passes", *notes)))
    a_leaves = jax.tree_util.tree_leaves(args)
    in_avals = tuple((tuple(jax.numpy.shape(x)), jax.numpy.result_type(x)) for x in a_leaves)
    return Compiled(
        params=params,
        jaxpr=closed,
        in_tree=a_tree,
        in_avals=in_avals,
        out_tree=out_tree,
        pipeline=tuple(stages),
        _cache=_Cache(),
    )


__all__ = ["compile", "Compiled", "DEFAULT", "resolve", "trace", "count_eqns"]
