"""The report channel: what a pass says about one run (why it did not apply, what it declined)."""

from __future__ import annotations

import contextlib
import contextvars

_NOTES: contextvars.ContextVar[list | None] = contextvars.ContextVar("ttt_compile_notes", default=None)


_WHERE: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("ttt_compile_where", default=())


def note(message: str) -> None:
    """Say something about this pass run for the report; dropped when nobody collects.  Said while a
    pass works inside a loop body (`inside`), the note names the loops it is nested in."""
    notes = _NOTES.get()
    where = _WHERE.get()
    if where:
        message = f"[level {len(where)}, in {' > '.join(where)}] {message}"
    if notes is not None and message not in notes:
        notes.append(message)


@contextlib.contextmanager
def inside(loop: str):
    """Notes said in this block are about a loop nested in the body of `loop` (e.g. "inner loop T=2")."""
    token = _WHERE.set((*_WHERE.get(), loop))
    try:
        yield
    finally:
        _WHERE.reset(token)


@contextlib.contextmanager
def collecting_notes():
    """Collect the notes said inside the block into the yielded list."""
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)
