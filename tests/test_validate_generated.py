"""Translation validation over generated programs (issue 8, item 2).

For every generated program (tests/program_gen.py: learners from a grammar, random layer specs,
enclosing models and user transformations) and a pipeline of passes, the compiled program must agree
with the un-compiled one, in float64, on
    values        model(x)
    gradients     d/dtheta sum(sin(model(x)) * r) for every outer parameter theta
    a fresh input model(x2), and its gradients
    vmap          jax.vmap(compiled)([x, x2]), values and per-example gradients
    jit           jax.jit(jax.vmap(compiled))([x, x2]) XLA-compiled, values (every JIT_EVERY-th program).
Programs are traced to jaxprs and evaluated with NumPy (tests/np_eval.py, checked against JAX by
tests/test_np_eval.py).  Tolerance follows the program's conditioning: the same program is also
evaluated with every float64 value rounded to float32 (np_eval.in_float32) and the spread
|ref32 - ref64| of each quantity says how much rounding that quantity amplifies.  A rewrite that only
reassociates float64 arithmetic moves a quantity by about eps64/eps32 ~ 2e-9 of that spread, so the
tolerance is max(1e-9, 1e-6 * spread) (float64 programs; a program that itself computes in float32,
like the ViT's LayerNorm statistics, gets 100 * spread, capped at 1e-3).  Where float32 loses a
quantity entirely (spread > 1e-2: it no longer measures the conditioning), a finer probe rounds every
float64 value to 40 significant bits (np_eval.in_bits) and the same margin applies to its spread; where
that probe loses the quantity too (spread > 1e-2), float64 cannot resolve it (a diverging inner loop) and
the program is rejected as ill-conditioned.  A miscompile of any size above that is reported; an
ill-conditioned program is not called a miscompile.

Parametrized over `passes.available()` (each pass alone), "random" (random orders and subsets with
repeats and options) and "default".  The hypothesis seed is fixed (TTT_FUZZ_SEED to change it) and
printed; a failure prints the program and the pipeline as code.  Default run: >= 150 programs
(TTT_FUZZ_PROGRAMS to change it) of size <= 40; `-m slow`: >= 3000 of size <= 120.
`python tests/test_validate_generated.py --programs N --seed S` runs the same checks without stopping
at the first failure and prints every failure grouped by class.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import time
import traceback

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402
import program_gen as G  # noqa: E402

import ttt_compile as tc  # noqa: E402
from ttt_compile.layer import host_init  # noqa: E402

SEED = int(os.environ.get("TTT_FUZZ_SEED", "20261201"))
PURE_F64 = 1e-6  # tolerance per unit of f32-vs-f64 spread for a float64 program
MIXED = 100.0  # ... for a program that itself computes partly in float32
FLOOR, CAP = 1e-9, 1e-3
# Where the float32 probe saturates (its spread is of the size of the quantity itself, e.g. sin of an
# argument of 3e9, whose float32 ulp is 256) it no longer measures the conditioning, only that it is
# worse than float32 can see.  Such a quantity is probed again with every float64 value rounded to
# FINE_BITS significant bits; PURE_F64 is 537 * eps64 / eps32, so the same margin at FINE_BITS is
# 537 * 2^-(53 - FINE_BITS).
SATURATED = 1e-2
FINE_BITS = 40
PURE_F64_FINE = PURE_F64 * 2.0 ** (FINE_BITS - 24)
JIT_EVERY = 4  # every JIT_EVERY-th program is also run as jax.jit(jax.vmap(compiled))


# =========================================================================== evaluation
# A program's value-and-gradient (and its jax.vmap) is traced to a jaxpr and evaluated with NumPy
# (tests/np_eval.py): no XLA compile of the whole program (seconds each) and no eager per-primitive
# dispatch (what made hundreds of programs take an hour).  The user's real path, jax.jit of the compiled
# program, is XLA-compiled on every JIT_EVERY-th program (values under jax.jit(jax.vmap(.)); an XLA
# compile of the gradient as well would double the time).
def _loss(model, x, r):
    y = model(x)
    return jnp.sum(jnp.sin(y) * r), y


value_and_grad = eqx.filter_value_and_grad(_loss, has_aux=True)
pair_value_and_grad = eqx.filter_vmap(value_and_grad, in_axes=(None, 0, 0))  # per example, over [x, x2]
jit_pair_values = eqx.filter_jit(lambda model, xs: jax.vmap(model)(xs))


@dataclasses.dataclass
class Traced:
    """A program's value-and-gradient traced once (model, x, r -> y, outer gradient leaves): at x, or
    per example under jax.vmap over a stacked [x, x2] (`pair`); `run` evaluates it with NumPy."""

    closed: object
    args: list
    tree: object
    pair: bool

    def run(self, float32: bool = False, bits: int | None = None) -> dict:
        """{quantity: array}; `float32`: the same program with every float64 value in float32; `bits`:
        with every float64 value rounded to that many significant bits (np_eval.in_bits)."""
        if bits is not None:
            flat = np_eval.in_bits(self.closed, bits, *self.args)
        else:
            flat = (np_eval.in_float32 if float32 else np_eval.eval_closed)(self.closed, *self.args)
        ys, g = jax.tree_util.tree_unflatten(self.tree, flat)
        ys, g = np.asarray(ys, np.float64), [np.asarray(a, np.float64) for a in g]
        if not self.pair:
            return {"value(x)": ys, **{f"grad[{i}](x)": a for i, a in enumerate(g)}}
        out = {}
        for b, tag in enumerate(("x", "x2")):
            out[f"value({tag})"] = ys[b]
            for i, a in enumerate(g):
                out[f"grad[{i}]({tag})"] = a[b]
        return out


def trace(model, x, r, pair: bool) -> Traced:
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def fn(params, x, r):
        (_, y), g = (pair_value_and_grad if pair else value_and_grad)(eqx.combine(params, static), x, r)
        return y, jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_inexact_array))

    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(params, x, r)
    args = [np.asarray(a) for a in jax.tree_util.tree_leaves((params, x, r))]
    return Traced(closed, args, jax.tree_util.tree_structure(shapes), pair)


def stack(a, b) -> np.ndarray:
    """[a, b] stacked on the host (an eager jnp.stack compiles a program per shape)."""
    return np.stack([np.asarray(a), np.asarray(b)])


def evaluate(model, x, r) -> dict:
    """{quantity: array}: the model's value at x and its outer gradients."""
    return trace(model, x, r, pair=False).run()


def evaluate_pair(model, x, x2, r, r2) -> dict:
    """jax.vmap over [x, x2]: values and per-example outer gradients at x and at the fresh input x2."""
    return trace(model, stack(x, x2), stack(r, r2), pair=True).run()


def evaluate_jit(model, x, x2) -> dict:
    """jax.jit(jax.vmap(model)) over [x, x2] (XLA-compiled: values only, to keep the compile short)."""
    ys = jit_pair_values(model, stack(x, x2))
    return {"value(x)": np.asarray(ys[0], np.float64), "value(x2)": np.asarray(ys[1], np.float64)}


def rel(a, b, floor: float) -> float:
    """max|a - b| / max(max|b|, floor); inf where a is not finite and b is."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return 0.0 if np.array_equal(a, b, equal_nan=True) else float("inf")
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), floor))


def computes_in_low_precision(closed) -> bool:
    """Whether the traced float64 program has float32/16 values of its own (e.g. f32 LayerNorm stats)."""
    low = (jnp.float32, jnp.float16, jnp.bfloat16)

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if any(getattr(v.aval, "dtype", None) in low for v in eqn.outvars):
                return True
            if any(walk(getattr(j, "jaxpr", j)) for j in jax.extend.core.jaxprs_in_params(eqn.params)):
                return True
        return False

    return walk(closed.jaxpr)


@dataclasses.dataclass
class Mismatch:
    quantity: str
    error: float
    tol: float
    spread: float

    def __str__(self):
        return f"{self.quantity}: error {self.error:.3g} > tol {self.tol:.3g} (f32 spread {self.spread:.3g})"


class IllConditioned(Exception):
    """The float64 reference itself is not finite: no meaning to keep (the program is rejected)."""


class Reference:
    """The un-compiled program's float64 evaluation, and its float32 one when a tolerance needs it."""

    def __init__(self, program: G.Program, pair: bool = True):
        """`pair`: the reference at x and x2 under jax.vmap (what a `pair` check compares with); else
        at x only (enough for a `single` check, in about half the time)."""
        self.program, self.pair = program, pair
        with jax.enable_x64(True):
            self.model, self.x, self.x2 = G.build(program)
            y = jax.eval_shape(self.model, self.x)
            kr, kr2 = jax.random.split(jax.random.PRNGKey(program.seed + 1))
            self.r, self.r2 = host_init.normal(kr, y.shape), host_init.normal(kr2, y.shape)  # float64: x64 is on
            self.traced = (
                trace(self.model, stack(self.x, self.x2), stack(self.r, self.r2), True)
                if pair
                else trace(self.model, self.x, self.r, False)
            )
        self.ref64 = self.traced.run()
        if not all(np.isfinite(v).all() for v in self.ref64.values()):
            raise IllConditioned("the float64 reference is not finite")
        self._ref32 = self._ref40 = None

    @property
    def ref32(self) -> dict:
        """The same program with every float leaf, input and intermediate value in float32."""
        if self._ref32 is None:
            self._ref32 = self.traced.run(float32=True)
        return self._ref32

    @property
    def ref40(self) -> dict:
        """The same program with every float64 value rounded to 40 significant bits (the finer probe)."""
        if self._ref40 is None:
            self._ref40 = self.traced.run(bits=FINE_BITS)
        return self._ref40


def compare(got: dict, ref: Reference, mixed: bool, how: str) -> list[Mismatch]:
    """Quantities of `got` (run `how`) outside their conditioning-relative tolerance (module doc)."""
    ref64 = ref.ref64
    if not set(got) <= set(ref64):
        return [Mismatch(f"{how} structure {sorted(set(got) - set(ref64))}", float("inf"), 0.0, 0.0)]
    scale = max((float(np.max(np.abs(v))) for v in ref64.values() if v.size), default=0.0)
    floor = max(1e-12 * scale, 1e-300)
    bad = []
    for q in got:
        err = rel(got[q], ref64[q], floor)
        if err <= FLOOR:
            continue
        spread = rel(ref.ref32[q], ref64[q], floor)
        tol = min(max(FLOOR, (MIXED if mixed else PURE_F64) * spread), CAP)
        if not err <= tol and spread > SATURATED:  # float32 lost q entirely: measure finer
            fine = rel(ref.ref40[q], ref64[q], floor)
            if fine > SATURATED:  # 40 bits lost q too: float64 cannot resolve it (e.g. a diverging inner loop)
                raise IllConditioned(f"{q}: rounding to {FINE_BITS} bits moves it by {fine:.3g}")
            tol = min(max(tol, PURE_F64_FINE * fine), CAP)
        if not err <= tol:
            bad.append(Mismatch(f"{how} {q}", err, tol, spread))
    return bad


def check(
    program: G.Program,
    pipeline,
    ref: Reference | None = None,
    jit: bool = False,
    single: bool = True,
    pair: bool = True,
) -> list[Mismatch]:
    """Compile `program` with `pipeline` and compare it with the reference; raises what compiling or
    running the compiled program raises.  `single`: run the compiled program on x; `pair`: under
    jax.vmap on [x, x2]; `jit`: also run jax.jit(jax.vmap(...)) of the real program."""
    ref = Reference(program) if ref is None else ref
    with jax.enable_x64(True):
        compiled = tc.compile(ref.model, ref.x, passes=pipeline)
        mixed = computes_in_low_precision(compiled.pipeline[0][1])  # the traced program (no cost measurement)
        bad = compare(evaluate(compiled, ref.x, ref.r), ref, mixed, "compiled") if single else []
        if pair:
            bad += compare(evaluate_pair(compiled, ref.x, ref.x2, ref.r, ref.r2), ref, mixed, "vmap(compiled)")
        if jit:
            bad += compare(evaluate_jit(compiled, ref.x, ref.x2), ref, mixed, "jit(vmap(compiled))")
    return bad


def describe(program, pipeline) -> str:
    return (
        f"seed={SEED} (TTT_FUZZ_SEED)\n  program = G.{program!r}\n  pipeline = {pipeline!r}\n"
        f"  reproduce: python -c \"import sys; sys.path.insert(0, 'tests'); import program_gen as G, "
        f"test_validate_generated as T; from program_gen import *; "
        f'print(T.check(G.{program!r}, {pipeline!r}))"'
    )


# =========================================================================== the test
KINDS = [*G.pass_names(), "random", "default"]


def pipelines(kind: str):
    if kind == "random":
        return G.random_pipelines()
    return st.just("default" if kind == "default" else [kind])


def run_generated(kind: str, examples: int, max_size: int, shapes=None) -> int:
    """Check `examples` generated programs with pipelines of `kind`; returns how many were validated."""
    validated = []
    hseed = SEED + sum(map(ord, kind))

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=False,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hyp_seed(hseed)
    @given(G.programs(max_size=max_size, shapes=shapes), pipelines(kind))
    def one(program, pipeline):
        try:
            i = len(validated)  # alternate the unbatched and the vmapped evaluation (each halves the time)
            pair = i % 2 == 0
            bad = check(program, pipeline, Reference(program, pair), jit=i % JIT_EVERY == 0, single=not pair, pair=pair)
        except IllConditioned:
            reject()
        except Exception as e:  # noqa: BLE001 - re-raised with the program that caused it
            raise AssertionError(f"CRASH {type(e).__name__}: {str(e)[:400]}\n{describe(program, pipeline)}") from e
        assert not bad, "MISMATCH " + "; ".join(map(str, bad)) + "\n" + describe(program, pipeline)
        validated.append(program)
        if len(validated) % 50 == 0:  # progress of long (-m slow) runs, seen with -s
            print(f"[validate_generated] {kind}: {len(validated)} programs validated", flush=True)
            # drop compiled executables: a -m slow run compiled ~350 jit programs in one process and
            # XLA's CPU compiler then aborted / segfaulted (as conftest's per-module clearing explains)
            jax.clear_caches()

    print(f"[validate_generated] {kind}: hypothesis seed {hseed} (TTT_FUZZ_SEED={SEED})")
    one()
    return len(validated)


# Default run total: issue 8 asks for >= 150 programs in about 5 minutes.  Measured here (2026-12-01,
# idle 2-core machine) 154 programs (14 per kind) take 230 s: tracing each program's value-and-gradient
# dominates, NumPy evaluation (np_eval) is 0.02-0.3 s a program.
PROGRAMS = int(os.environ.get("TTT_FUZZ_PROGRAMS", "150"))
DEFAULT_PER_KIND = -(-PROGRAMS // len(KINDS))
SLOW_PER_KIND = -(-3000 // len(KINDS))  # >= 3000 with -m slow
DEFAULT_MAX_SIZE, SLOW_MAX_SIZE = 40, 120  # program size bound (program_gen.size)


@pytest.mark.parametrize("kind", KINDS)
def test_generated_programs(kind):
    n = run_generated(kind, DEFAULT_PER_KIND + 1, DEFAULT_MAX_SIZE)
    assert n >= DEFAULT_PER_KIND, f"only {n} programs validated for {kind}; need {DEFAULT_PER_KIND}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_generated_programs_slow(kind):
    n = run_generated(kind, SLOW_PER_KIND + 20, SLOW_MAX_SIZE)
    assert n >= SLOW_PER_KIND, f"only {n} programs validated for {kind}; need {SLOW_PER_KIND}"


# =========================================================================== survey mode
def classify(exc_or_bad) -> str:
    if isinstance(exc_or_bad, Exception):
        msg = str(exc_or_bad).strip().splitlines()[0] if str(exc_or_bad).strip() else ""
        return f"CRASH {type(exc_or_bad).__name__}: {msg[:160]}"
    return "MISMATCH " + ", ".join(sorted({m.quantity.split("[")[0] for m in exc_or_bad}))


def survey(programs: int, seed: int, kinds=None, max_size: int = 60) -> None:
    """Run `programs` generated programs through every pipeline kind without stopping; group failures."""
    kinds = kinds or KINDS
    failures = collections.defaultdict(list)
    counts = collections.Counter()
    t0 = time.time()

    def record(cls, program, pipeline, detail):
        if cls not in failures:
            print(
                f"\n+++ new class: {cls}\n  program = G.{program!r}\n  pipeline = {pipeline!r}\n"
                f"  {detail.strip()[-900:]}",
                flush=True,
            )
        failures[cls].append((program, pipeline, detail))

    @settings(
        max_examples=programs,
        deadline=None,
        derandomize=False,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hyp_seed(seed)
    @given(G.programs(max_size=max_size), st.data())
    def one(program, data):
        t1 = time.time()
        try:
            ref = Reference(program)
        except IllConditioned:
            counts["rejected"] += 1
            return
        except Exception as e:  # noqa: BLE001
            record("REFERENCE " + classify(e), program, None, traceback.format_exc(limit=-3))
            return
        for kind in kinds:
            pipeline = data.draw(pipelines(kind))
            counts[kind] += 1
            try:
                bad = check(program, pipeline, ref, jit=kind == "default")
                if bad:
                    record(classify(bad), program, pipeline, "; ".join(map(str, bad)))
                else:
                    counts["ok"] += 1
            except Exception as e:  # noqa: BLE001
                record(classify(e), program, pipeline, traceback.format_exc(limit=-4))
        print(
            f"[{time.time() - t0:.0f}s] {sum(counts[k] for k in kinds)} checks, {len(failures)} classes; "
            f"last: {program.kind} size {G.size(program)} in {time.time() - t1:.0f}s",
            flush=True,
        )

    one()
    print(f"{sum(counts[k] for k in kinds)} checks in {time.time() - t0:.0f}s: {dict(counts)}")
    for cls, cases in sorted(failures.items(), key=lambda kv: -len(kv[1])):
        print(f"\n=== {len(cases)} x {cls}")
        for program, pipeline, detail in sorted(cases, key=lambda c: len(repr(c[0])))[:2]:
            print(f"  program = G.{program!r}\n  pipeline = {pipeline!r}\n  {detail.strip()[-900:]}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--kinds", nargs="*", default=None)
    ap.add_argument("--max-size", type=int, default=60)
    a = ap.parse_args()
    survey(a.programs, a.seed, a.kinds, a.max_size)


# =========================================================================== the validator is not vacuous
P = jax.extend.core.primitives


def _broken_pass(rules):
    from ttt_compile.ir.interpreter import rewrite

    def broken(closed):
        return rewrite(closed, rules)

    return broken


def _inline_custom_rules(interp, eqn, invals):
    """A miscompile of the gradient only: a custom_jvp/custom_vjp replaced by its primal program."""
    return interp.eval_closed(eqn.params["call_jaxpr"], invals)


def _nudge_tanh(interp, eqn, invals):
    """A miscompile of the values by one part in 1e7: tanh(x) * (1 + 1e-7)."""
    return [interp.bind(eqn, invals)[0] * (1 + 1e-7)]


CANARY = G.Program(
    "layer",
    (
        G.LayerSpec(
            heads=2,
            dh=3,
            steps=2,
            batching="full",
            chunk=1,
            init="learned",
            decoder_ln=False,
            optimizer="sgd",
            schedule="const",
            lr=0.2,
            ops=(("linear",), ("act", "tanh"), ("act", "half_grad"), ("act", "clip_grad")),
        ),
    ),
    n=5,
    seed=7,
)


def test_the_validator_catches_miscompiles():
    """The comparison sees a value error of 1e-7 relative, and gradient-only errors (custom rules lost)."""
    ref = Reference(CANARY)
    assert check(CANARY, ["lower"], ref, jit=True) == []
    bad = check(
        CANARY,
        [_broken_pass({P.custom_vjp_call_p: _inline_custom_rules, P.custom_jvp_call_p: _inline_custom_rules}), "lower"],
        ref,
    )
    assert bad and all("grad" in m.quantity for m in bad), bad
    bad = check(CANARY, [_broken_pass({P.tanh_p: _nudge_tanh}), "lower"], ref)
    assert any("value" in m.quantity for m in bad), bad


# Found by the -m slow run (2026-12-02, simplify kind; seed 3 since the inputs are drawn on the host,
# 2026-12-07): the model's outputs reach 9e7, so the outer gradients carry cos(y) with y ~ 9e7: float32
# loses them entirely (spread up to 4.2), float64 keeps about 7 digits.  The 40-bit probe measures
# 1.1e-3, so this is conditioning, not a miscompile; a 1e-3 error would still be reported.
SATURATED_PROGRAM = G.Program(
    kind="stack",
    layers=(
        *[
            G.LayerSpec(
                heads=1,
                dh=12,
                steps=5,
                batching="full",
                chunk=1,
                init="zero",
                decoder_ln=False,
                optimizer="nesterov",
                schedule="const",
                lr=0.2,
                ops=(("residual", (("bias",),)), ("index", "trunc"), ("bias",), ("linear",)),
                outer=(0, 2),
                eta="fixed",
                released=False,
            )
        ]
        * 2,
        G.LayerSpec(
            heads=1,
            dh=12,
            steps=1,
            batching="full",
            chunk=1,
            init="zero",
            decoder_ln=False,
            optimizer="sgd",
            schedule="const",
            lr=0.2,
            ops=(("ttt", "full", 1), ("bias",)),
            outer=(),
            eta="fixed",
            released=False,
        ),
    ),
    n=9,
    wrapper="filter_jit",
    int_side=False,
    seed=3,
)


def test_a_quantity_float32_cannot_resolve_is_probed_finer():
    ref = Reference(SATURATED_PROGRAM, pair=False)
    assert max(rel(ref.ref32[q], ref.ref64[q], 1e-300) for q in ref.ref64) > SATURATED
    assert check(SATURATED_PROGRAM, ["simplify"], ref, pair=False) == []
    # ... and it excuses only conditioning: matmuls nudged by 1e-9 move y by ~3, which it reports
    bad = check(SATURATED_PROGRAM, [_broken_pass({P.dot_general_p: _nudge_dot}), "simplify"], ref, pair=False)
    assert any("grad" in m.quantity and m.spread > SATURATED for m in bad), bad


def _nudge_dot(interp, eqn, invals):
    return [interp.bind(eqn, invals)[0] * (1 + 1e-9)]
