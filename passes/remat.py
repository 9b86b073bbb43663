"""remat: choose how the outer backward pass stores each inner loop (rematerialisation), by measuring.

Schemes, in order of recompute (extra forward passes of the loop in the backward pass):

    None    0        store every step's intermediates (what jax.grad does)
    "step"  1        jax.checkpoint each step: store the carry W_t per step, recompute the step
    "sqrt"  1        ~sqrt(T) checkpointed chunks of ~sqrt(T) steps
    "log"   L - 1    T factored into small primes, L nested levels

Schemes that lower to the same program for a loop (e.g. "sqrt" of a prime T is None, "log" of T = 4
is "sqrt") are one candidate.  The choice per loop of T > 1 steps:

  - `budget` (bytes) given: each candidate is measured, the compiled temp memory of the whole
    program's training step (`cost.train_temp_bytes`, XLA's memory analysis) after the structural
    rest of the default pipeline (`FINISH`), with that one loop changed; the loop gets the candidate
    with the least recompute (ties: less memory) that fits.  With several loops the combined program
    is measured and, while it does not fit, the loop whose next cheaper-in-memory candidate saves the
    most moves on.  A budget no choice meets is a SpecError naming the least memory measured.  The
    note lists every candidate's measured memory.
  - no budget (the default pipeline; nothing is compiled): "remat only when it pays".  A full-batch
    loop is rematerialised per step only when the bytes its training step stores (`cost.stored_bytes`,
    counted by tracing) exceed `factor` times those of the T = 1 program; SGD loops are left alone
    (their T steps over n/T tokens store what one full-batch step stores); online loops get "sqrt".
  - `scheme` given: that scheme for every loop of T > 1 steps, nothing measured.

Exact: changes memory and time, not values.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr

from ttt_compile.cost import stored_bytes, train_temp_bytes
from ttt_compile.ir.expand_loop import factors, remat_prediction
from ttt_compile.ir.interpreter import rewrite, rewrite_region
from ttt_compile.ir.notes import _WHERE
from ttt_compile.ir.primitive import REMAT_SCHEMES, contains_loop, info, ttt_loop_p
from ttt_compile.layer.spec import SpecError

from . import collecting_notes, get, note, register

#: the passes that finish a candidate program before its memory is measured (the default pipeline's
#: structural passes after remat; XLA does its own simplification, CSE and DCE).
FINISH = ("dual_form", "sgd_batch", "unroll", "lower")


_NO_FIT = "no scheme fits"


def _carry_bytes(eqn, li) -> int:
    avals = [v.aval for v in eqn.invars[li.num_consts : li.num_consts + li.num_carry]]
    return int(sum(np.prod(a.shape) * a.dtype.itemsize for a in avals))


def extra_forwards(steps: int, scheme: str | None) -> int:
    """Extra forward passes of the loop the backward pass makes under `scheme`."""
    if scheme is None:
        return 0
    return 1 if scheme == "step" else len(factors(steps, scheme)) - 1


def candidates(steps: int) -> list[str | None]:
    """The schemes that give different programs for a loop of `steps` steps, in REMAT_SCHEMES order."""
    seen, out = set(), []
    for s in REMAT_SCHEMES:
        fs = factors(steps, s) if s in ("sqrt", "log") else None
        key = ("step",) if s == "step" else ("none",) if s is None or fs == (steps,) else ("nest", fs)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def _loops(closed: ClosedJaxpr) -> list:
    """(eqn, the loops it is nested in) of every ttt_loop equation the interpreter reaches, at every level
    (a loop's body's loops follow it)."""
    found = []

    def rule(interp, eqn, invals):
        found.append((eqn, _WHERE.get()))
        return rewrite_region(interp, eqn, invals)  # loops nested in its body too

    rewrite(closed, {ttt_loop_p: rule})
    return found


def _note_at(where: tuple[str, ...], message: str) -> None:
    """A note about a loop found at `where` (the loops it is nested in; () at the top level)."""
    token = _WHERE.set(where)
    try:
        note(message)
    finally:
        _WHERE.reset(token)


def _mark(closed: ClosedJaxpr, choice: dict[int, str | None]) -> ClosedJaxpr:
    """`closed` with loop equation e (by id) marked remat=choice[id(e)]; other loops unchanged."""

    def rule(interp, eqn, invals):  # nested loops are marked inside the rewritten bodies: schemes compose
        if id(eqn) in choice:
            return rewrite_region(interp, eqn, invals, remat=choice[id(eqn)])
        return rewrite_region(interp, eqn, invals)

    return rewrite(closed, {ttt_loop_p: rule})


def _memory(closed: ClosedJaxpr) -> int:
    """Training-step temp memory of `closed` after the FINISH passes (their notes are not reported)."""
    with collecting_notes():
        for name in FINISH:
            closed = get(name)(closed)
    return train_temp_bytes(closed)


def _mib(b: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b:.0f} B"


def _name(s: str | None) -> str:
    return "none" if s is None else s


def _what(li) -> str:
    """A loop's kind in notes: its schedule, and its role when AD derived it (e.g. "forward full")."""
    return li.schedule if li.role == "inner" else f"{li.role} {li.schedule}"


@register(
    "remat",
    before=("lower", "unroll", "sgd_batch"),
    why_before="unroll/sgd_batch/lower expand the loops whose storage remat chooses",
)
def remat(
    closed: ClosedJaxpr,
    *,
    scheme: Literal["step", "sqrt", "log"] | None = None,
    budget: int | None = None,
    factor: float = 2.0,
) -> ClosedJaxpr:
    """Choose per inner loop how the outer backward pass stores it: with `budget` (bytes of compiled
    training-step temp memory) the least-recompute scheme that fits; without, rematerialise a
    full-batch loop only when it stores more than `factor` times the T = 1 program; `scheme` forces
    "step" | "sqrt" | "log" on every loop of T > 1 steps.  Exact: changes memory and time, not values."""
    if scheme not in REMAT_SCHEMES:
        raise SpecError(f"remat: scheme must be one of {REMAT_SCHEMES[1:]}, got {scheme!r}")
    if budget is not None and (scheme is not None or budget <= 0):
        raise SpecError(
            "remat: budget must be a positive number of bytes and is not combined with scheme "
            f"(got budget={budget!r}, scheme={scheme!r}); give one of them"
        )
    if factor < 1:
        raise SpecError(f"remat: factor must be >= 1 (a memory ratio), got {factor!r}")
    loops, nested = [], []
    for eqn, where in _loops(closed):
        li = info(eqn.params)
        if li.steps == 1:
            _note_at(where, f"left a {_what(li)} loop of 1 step alone: nothing to rematerialise")
        elif where:
            nested.append((eqn, li, where))
        else:
            loops.append((eqn, li))
    if scheme is None and nested:
        # A loop inside another loop's body: its storage multiplies by the outer trip counts, so it is
        # rematerialised by its kind (full: per step, online: sqrt, SGD: left alone), the schemes composing
        # with the outer loop's; a budget is measured on the top-level loops.
        marks = {}
        for eqn, li, where in nested:
            s = {"full": "step", "online": "sqrt"}.get(li.schedule)
            _note_at(
                where,
                f"{_what(li)} loop, T={li.steps}, scheme {_name(s)} (nested: by its kind)"
                + (": " + remat_prediction(dataclasses.replace(li, remat=s), _carry_bytes(eqn, li)) if s else ""),
            )
            if s is not None:
                marks[id(eqn)] = s
        closed = _mark(closed, marks) if marks else closed
        loops = [(e, info(e.params)) for e, where in _loops(closed) if not where and info(e.params).steps > 1]
    if scheme is not None:
        for eqn, li, where in nested:
            _note_at(
                where,
                f"{_what(li)} loop, T={li.steps}, scheme {scheme} (forced): "
                + remat_prediction(dataclasses.replace(li, remat=scheme), _carry_bytes(eqn, li)),
            )
        closed = _mark(closed, {id(e): scheme for e, _, _ in nested}) if nested else closed
        loops = [(e, info(e.params)) for e, where in _loops(closed) if not where and info(e.params).steps > 1]
    if not loops:
        if not contains_loop(closed):
            note("did not apply: no ttt_loop")
        return closed
    if scheme is not None:
        for eqn, li in loops:
            note(
                f"{li.schedule} loop, T={li.steps}, scheme {scheme} (forced): "
                + remat_prediction(dataclasses.replace(li, remat=scheme), _carry_bytes(eqn, li))
            )
        return _mark(closed, {id(e): scheme for e, _ in loops})

    if budget is None:
        return _by_default(closed, loops, factor)
    try:
        mem = {id(e): m for (e, _), m in zip(loops, _candidate_memory(closed, loops))}
    except Exception as e:  # noqa: BLE001 - XLA could not compile a measurement: say why
        raise SpecError(
            f"remat: budget={budget:,} bytes cannot be applied: measuring the training step "
            f"failed ({type(e).__name__}: {str(e)[:200]})"
        ) from e
    order = {
        id(e): sorted(mem[id(e)], key=lambda s, e=e, li=li: (extra_forwards(li.steps, s), mem[id(e)][s]))
        for e, li in loops
    }

    def first_within(e, limit):
        return next((s for s in order[id(e)] if mem[id(e)][s] <= limit), _NO_FIT)

    choice = {}
    for eqn, li in loops:
        least = min(mem[id(eqn)].values())
        choice[id(eqn)] = first_within(eqn, budget)
        if choice[id(eqn)] is _NO_FIT:
            raise SpecError(
                f"remat: budget={budget:,} bytes is below the least training-step temp memory any "
                f"scheme reaches for the {li.schedule} loop of T={li.steps} steps ({least:,} bytes, "
                f"measured: {_measured(mem[id(eqn)])}); raise remat_budget or make the program smaller"
            )
    combined = None
    if len(loops) > 1:
        combined = _memory(_mark(closed, choice))
        while combined > budget:
            moves = [
                (mem[id(e)][choice[id(e)]] - mem[id(e)][s], id(e), s)
                for e, _ in loops
                for s in [
                    s
                    for s in order[id(e)][order[id(e)].index(choice[id(e)]) + 1 :]
                    if mem[id(e)][s] < mem[id(e)][choice[id(e)]]
                ][:1]
            ]
            if not moves:
                raise SpecError(
                    f"remat: budget={budget:,} bytes: the {len(loops)} loops together need "
                    f"{combined:,} bytes with their least-memory schemes; raise remat_budget"
                )
            _, key, s = max(moves)
            choice[key] = s
            combined = _memory(_mark(closed, choice))
    for eqn, li in loops:
        s = choice[id(eqn)]
        note(
            f"{li.schedule} loop, T={li.steps}: chose {_name(s)} ({extra_forwards(li.steps, s)} extra forward(s), "
            f"the least recompute within budget {_mib(budget)}); compiled train temp memory: {_measured(mem[id(eqn)])}"
            + (f"; all loops together {_mib(combined)}" if combined is not None else "")
        )
    if all(s is None for s in choice.values()):
        return closed
    return _mark(closed, choice)


def _candidate_memory(closed: ClosedJaxpr, loops) -> list[dict]:
    """For each (eqn, li) in loops: {scheme: compiled train temp bytes of the whole program with that
    loop under that scheme (other loops as they are)}."""
    return [{s: _memory(_mark(closed, {id(eqn): s})) for s in candidates(li.steps)} for eqn, li in loops]


def candidate_memory(closed: ClosedJaxpr) -> list[dict]:
    """{scheme: compiled training-step temp bytes} for each loop of T > 1 steps that remat reaches,
    measured as remat with a budget measures them."""
    loops = [(e, info(e.params)) for e, where in _loops(closed) if not where]
    return _candidate_memory(closed, [(e, li) for e, li in loops if li.steps > 1])


def _loop_program(eqn, steps: int) -> ClosedJaxpr:
    """The loop equation alone as a program (its operands are the inputs), run for `steps` steps
    (xs cut to their first `steps` blocks)."""
    li = info(eqn.params)
    avals = [v.aval for v in eqn.invars]
    k = li.num_consts + li.num_carry
    avals = [a if i < k else a.update(shape=(steps, *a.shape[1:])) for i, a in enumerate(avals)]
    params = {**eqn.params, "steps": steps, "remat": None}
    return jax.make_jaxpr(lambda *a: ttt_loop_p.bind(*a, **params))(
        *[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
    )


def _stored(closed: ClosedJaxpr) -> int:
    with collecting_notes():
        for name in FINISH:
            closed = get(name)(closed)
    return stored_bytes(closed)


def _by_default(closed: ClosedJaxpr, loops, factor: float) -> ClosedJaxpr:
    """No budget: full-batch loops are rematerialised per step only when the bytes the backward pass
    stores exceed `factor` times those of the T = 1 program (this program with the loop run for one
    step: stored bytes add up, so  S(T=1) = S(program) - S(loop) + S(loop, one step)); SGD loops are
    left alone (their T steps over n/T tokens each store what one full-batch step stores); online loops
    get "sqrt" (T = n/chunk carries).  Stored bytes are counted by tracing (`cost.stored_bytes`), so
    the default pipeline compiles nothing here."""
    choice = {}
    whole = None
    for eqn, li in loops:
        if li.schedule == "sgd":
            note(
                f"left an sgd loop of {li.steps} steps alone: each step sees n/T tokens, so storing all "
                "steps costs what the T = 1 program's one step costs (give remat a budget to measure it)"
            )
            continue
        if li.schedule != "full":
            choice[id(eqn)] = "sqrt"
            note(
                f"{li.schedule} loop, T={li.steps}, scheme sqrt: "
                + remat_prediction(dataclasses.replace(li, remat="sqrt"), _carry_bytes(eqn, li))
            )
            continue
        try:
            whole = _stored(closed) if whole is None else whole
            one = whole - _stored(_loop_program(eqn, li.steps)) + _stored(_loop_program(eqn, 1))
        except Exception as e:  # noqa: BLE001 - e.g. a while_loop has no reverse mode: decline, say why
            note(
                f"left a full loop of {li.steps} steps alone: counting what its backward pass stores failed "
                f"({type(e).__name__}: {str(e)[:200]})"
            )
            continue
        ratio = whole / max(one, 1)
        s = "step" if ratio > factor else None
        if s is not None:
            choice[id(eqn)] = s
        note(
            f"full loop, T={li.steps}, {'scheme step' if s else 'not rematerialised'}: the backward "
            f"pass stores {_mib(whole)} un-rematerialised, {ratio:.2f}x the T = 1 program's {_mib(one)} "
            f"({'>' if s else '<='} factor {factor:g}); "
            + remat_prediction(dataclasses.replace(li, remat=s), _carry_bytes(eqn, li))
        )
    return _mark(closed, choice) if choice else closed


def _measured(mem: dict) -> str:
    return ", ".join(f"{_name(s)} {_mib(b)}" for s, b in mem.items())
