"""Named passes: each a plain function  ClosedJaxpr -> ClosedJaxpr  (+ keyword options).

`register` records a pass under its name with a one-line doc and what it assumes;
`available()` lists them; `get(name, **options)` returns the function with its options bound.
A pass that finds nothing to do returns its input unchanged and says why with `note(...)`,
which the pass manager shows in the report.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Callable

from jax.extend.core import ClosedJaxpr

from ttt_compile.spec import SpecError

Pass = Callable[..., ClosedJaxpr]


@dataclasses.dataclass(frozen=True)
class Registered:
    name: str
    fn: Pass
    doc: str
    assumes: str | None


_REGISTRY: dict[str, Registered] = {}
_NOTES: contextvars.ContextVar[list | None] = contextvars.ContextVar("ttt_compile_notes", default=None)


def register(name: str, *, assumes: str | None = None):
    """Decorator: add a pass to the registry under `name`."""
    def wrap(fn: Pass) -> Pass:
        text = " ".join((fn.__doc__ or "").split())
        doc = text.split(". ")[0].split(": ")[0].rstrip(".") + "." if text else ""
        _REGISTRY[name] = Registered(name, fn, doc, assumes)
        fn.pass_name = name
        return fn
    return wrap


def available() -> dict[str, str]:
    """{pass name: one-line doc} for every registered pass."""
    return {n: r.doc + (f" [assumes: {r.assumes}]" if r.assumes else "") for n, r in sorted(_REGISTRY.items())}


def get(name: str, **options) -> Pass:
    """The pass called `name`, with `options` bound."""
    if name not in _REGISTRY:
        raise SpecError(f"unknown pass {name!r}; available passes: {', '.join(sorted(_REGISTRY))}")
    fn = _REGISTRY[name].fn
    return functools.partial(fn, **options) if options else fn


def info(name: str) -> Registered:
    get(name)
    return _REGISTRY[name]


def note(message: str) -> None:
    """Say something about this pass run for the report (e.g. why it did not apply)."""
    notes = _NOTES.get()
    if notes is not None:
        notes.append(message)


@contextlib.contextmanager
def collecting_notes():
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


from .checkpoint import checkpoint  # noqa: E402
from .cse import cse  # noqa: E402
from .dce import dce  # noqa: E402
from .dual_form import dual_form  # noqa: E402
from .fold_zero_init import fold_zero_init  # noqa: E402
from .lower import lower  # noqa: E402
from .sgd_batch import sgd_batch  # noqa: E402
from .simplify import simplify  # noqa: E402
from .unroll import unroll  # noqa: E402
