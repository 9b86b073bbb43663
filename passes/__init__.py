"""Named passes: each a plain function  ClosedJaxpr -> ClosedJaxpr  (+ keyword options).

The pass contract (every registered pass keeps it; the generated-program validator in
`tests/test_validate_generated.py` checks it for every name in `available()`):

1. Meaning is kept.  On every closed jaxpr a user can trace, the output computes the same values
   and, under `jax.grad`, the same outer gradients as the input, up to what the pass declares in
   `assumes` (e.g. finite values for `fold_zero_init`; float reassociation for `dual_form`).
2. A rule fires only where its algebra holds: it checks dtypes (scalar algebra is for inexact
   dtypes; integer and boolean equations are left alone or folded exactly), weak types, shapes
   and broadcasting before rewriting.  A symbolic value a pass invents (a known zero, a pending
   scalar factor, a splat) is instantiated on every path that does not consume it; it never
   reaches `bind` or the output.
3. A primitive a pass has no rule for is re-bound unchanged (`ir.interpreter.default_rule`).
   Higher-order primitives keep their semantics: `jit` is inlined; `scan`, `while`, `cond`,
   `remat` and nested `ttt_loop` bodies are rewritten inside by the same pass with their
   interfaces kept; `custom_jvp_call` keeps its jvp rule and `custom_vjp_call` its forward and
   backward rules (the pass rewrites the primal function, the rules are kept as they are).
4. A pass that finds nothing to do returns its input unchanged and says why with `note(...)`.
   A pass that cannot handle something declines (leaves it, with a note); only a bad request
   from the user (an unknown pass, a wrong option) is an error, a `SpecError` naming the pass,
   the option and the fix.
5. Ordering: each pass declares the passes it must run before (`before`: they expand or remove
   what it rewrites); `check_order` puts a warning in the report when a pipeline breaks that (the
   late pass then finds nothing to do; meaning is never affected, any order is sound).

`register` records a pass; `available()` lists them; `get(name, **options)` returns the function
with its options bound and type-checked; `DEFAULT` is the default pipeline.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable

from jax.extend.core import ClosedJaxpr

from ttt_compile.ir.notes import collecting_notes, note  # noqa: F401  (the pass contract's report channel)
from ttt_compile.layer.spec import SpecError

Pass = Callable[..., ClosedJaxpr]


@dataclasses.dataclass(frozen=True)
class Registered:
    name: str
    fn: Pass
    doc: str
    assumes: str | None
    before: tuple[str, ...] = ()  # passes this one must run before (it consumes what they expand)
    why_before: str = ""


_REGISTRY: dict[str, Registered] = {}
_ALIASES: dict[str, tuple[str, str]] = {}  # old name -> (name, why)


def register(name: str, *, assumes: str | None = None, before: tuple[str, ...] = (), why_before: str = ""):
    """Decorator: add a pass to the registry under `name`.  `before` names the passes it must precede
    (they remove what it rewrites: e.g. `lower` turns every ttt_loop into a scan); `why_before` says so."""

    def wrap(fn: Pass) -> Pass:
        text = " ".join((fn.__doc__ or "").split())
        doc = text.split(". ")[0].split(": ")[0].rstrip(".") + "." if text else ""
        _REGISTRY[name] = Registered(name, fn, doc, assumes, tuple(before), why_before)
        fn.pass_name = name
        return fn

    return wrap


def alias(old: str, new: str, why: str) -> None:
    """Keep `old` working as another name of the registered pass `new`."""
    _ALIASES[old] = (new, why)


def available() -> dict[str, str]:
    """{pass name: one-line doc} for every registered pass (aliases not included)."""
    return {n: r.doc + (f" [assumes: {r.assumes}]" if r.assumes else "") for n, r in sorted(_REGISTRY.items())}


def canonical(name: str) -> str:
    """The registered name for `name` (resolving aliases); SpecError if unknown."""
    if name in _ALIASES:
        return _ALIASES[name][0]
    if name not in _REGISTRY:
        raise SpecError(f"unknown pass {name!r}; available passes: {', '.join(sorted(_REGISTRY))}")
    return name


def _check_options(name: str, fn: Pass, options: dict) -> None:
    """Each option must be a keyword-only parameter of the pass and match its annotation."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    allowed = {p.name: p for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    for key, value in options.items():
        if key not in allowed:
            raise SpecError(f"pass {name!r} has no option {key!r}; its options are {', '.join(allowed) or 'none'}")
        hint = hints.get(key)
        if hint is not None and not _matches(value, hint):
            raise SpecError(
                f"pass {name!r}: option {key}={value!r} must be {_describe(hint)} (default {allowed[key].default!r})"
            )


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def get(name: str, **options) -> Pass:
    """The pass called `name` (or an alias of it), with `options` checked and bound."""
    real = canonical(name)
    fn = _REGISTRY[real].fn
    _check_options(real, fn, options)
    return functools.partial(fn, **options) if options else fn


def info(name: str) -> Registered:
    return _REGISTRY[canonical(name)]


def check_order(names: list[str]) -> list[str]:
    """Warnings for a pipeline that runs a pass after one it declares it must precede (`before`)."""
    names = [canonical(n) if isinstance(n, str) and (n in _REGISTRY or n in _ALIASES) else n for n in names]
    warnings = []
    for i, name in enumerate(names):
        for earlier in names[:i]:
            if earlier in _REGISTRY and name in _REGISTRY and earlier in _REGISTRY[name].before:
                warnings.append(
                    f"{name} runs after {earlier} but declares it must run before it: "
                    f"{_REGISTRY[name].why_before or 'it may find nothing to do'}"
                )
    return warnings


from .cse import cse  # noqa: E402
from .dce import dce  # noqa: E402
from .dual_form import dual_form  # noqa: E402
from .fold_zero_init import fold_zero_init  # noqa: E402
from .lower import lower  # noqa: E402
from .remat import remat  # noqa: E402
from .sgd_batch import sgd_batch  # noqa: E402
from .simplify import simplify  # noqa: E402
from .unroll import unroll  # noqa: E402

alias("checkpoint", "remat", "renamed to 'remat' (rematerialisation); 'checkpoint' also names training checkpoints")

#: The best pipeline for any spec: each pass applies only where its rewrite pays off and notes why not.
#: remat marks loops before anything expands them; dual_form and sgd_batch rewrite online/SGD loops
#: before unroll takes the rest; fold_zero_init needs the unrolled first step; simplify, cse and dce
#: clean up after it; lower turns what remains into scans.
DEFAULT = ("remat", "dual_form", "sgd_batch", "unroll", "fold_zero_init", "simplify", "cse", "dce", "lower")

__all__ = [
    "DEFAULT",
    "register",
    "alias",
    "available",
    "canonical",
    "get",
    "info",
    "note",
    "check_order",
    "collecting_notes",
    "Registered",
    "cse",
    "dce",
    "dual_form",
    "fold_zero_init",
    "lower",
    "remat",
    "sgd_batch",
    "simplify",
    "unroll",
]
