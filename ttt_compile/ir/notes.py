"""The report channel: what a pass says about one run (why it did not apply, what it declined)."""
from __future__ import annotations

import contextlib
import contextvars

_NOTES: contextvars.ContextVar[list | None] = contextvars.ContextVar("ttt_compile_notes", default=None)


def note(message: str) -> None:
    """Say something about this pass run for the report; dropped when nobody collects."""
    notes = _NOTES.get()
    if notes is not None and message not in notes:
        notes.append(message)


@contextlib.contextmanager
def collecting_notes():
    """Collect the notes said inside the block into the yielded list."""
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)
