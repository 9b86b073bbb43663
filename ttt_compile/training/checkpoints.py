"""Training checkpoints with orbax-checkpoint: atomic, optionally asynchronous, the newest N kept,
restored onto the current mesh, written and read by every process of a multi-process run.

A checkpoint of step ``s`` is the folder ``DIR/s`` holding two items: ``state`` (the pytree of
arrays: parameters and optimiser state, each array written by the processes that own its shards)
and ``meta`` (JSON: the config, the run length, ...). Orbax writes into a temporary folder and
renames it when every item is complete, so a step folder is either complete or absent whatever
moment a process dies at (``kill -9`` included); :meth:`Checkpoints.steps` lists only complete ones.

:meth:`Checkpoints.restore_latest` tries the newest step first; a checkpoint whose files cannot be
read (truncated, deleted, garbled) is reported by path and reason, and the previous complete one is
tried, so one bad write costs at most ``checkpoint_every`` steps. Only if no checkpoint is usable does
it raise :class:`CheckpointError`, naming every path it tried and why each failed.

Test hook: the environment variable ``TTT_COMPILE_CHECKPOINT_FAULT`` = ``sleep@S`` makes the writer of
step ``S``'s ``meta`` item print ``checkpoint-fault: sleeping at step S`` to stderr and sleep (for a
test to ``kill -9`` it mid-write); ``exit@S`` makes it call ``os._exit(3)`` there.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jaxtyping import PyTree

FAULT_ENV = "TTT_COMPILE_CHECKPOINT_FAULT"


class CheckpointError(RuntimeError):
    """No checkpoint can be restored (the message names each one tried and why it failed)."""


def _fault(step: int) -> None:
    action, _, at = os.environ.get(FAULT_ENV, "").partition("@")
    if not at or int(at) != step:
        return
    if action == "exit":
        os._exit(3)
    if action == "sleep":
        print(f"checkpoint-fault: sleeping at step {step}", file=sys.stderr, flush=True)
        time.sleep(3600)


class _MetaHandler(ocp.JsonCheckpointHandler):
    """orbax's JSON item handler with the test hook :data:`FAULT_ENV` before the write."""

    async def _save_fn(self, x, directory):
        _fault(int(x.get("step", -1)))
        await super()._save_fn(x, directory)


def _quiet_failed_reads() -> None:
    """After a failed read, orbax leaves parallel reads of the same files behind; asyncio would print
    their errors (``Future exception was never retrieved``, or ``Event loop is closed`` when a read
    finishes after orbax closed its loop) although the reason was reported once already."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    _ignore_closed_loop_errors()


def _ignore_closed_loop_errors() -> None:
    if getattr(sys.unraisablehook, "_ttt_quiet", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    hook._ttt_quiet = True
    sys.unraisablehook = hook


def _reason(error: BaseException) -> str:
    """One line: the exception type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


@dataclass
class Restored:
    """A restored checkpoint: its step, the state pytree and the JSON metadata."""

    step: int
    state: PyTree
    meta: dict[str, Any]


class Checkpoints:
    """The checkpoints of one run under ``directory`` (an orbax ``CheckpointManager``).

    ``keep``: how many of the newest checkpoints survive; ``asynchronous``: ``save`` returns once the
    arrays are copied off the devices and the files are written in the background (the next ``save``,
    :meth:`wait` or :meth:`close` waits for it).
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int | None = None, asynchronous: bool = False):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True, cleanup_tmp_directories=True
        )
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        state, meta = ocp.StandardCheckpointHandler(), _MetaHandler()
        for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
            registry.add("state", args, state)
        for args in (ocp.args.JsonSave, ocp.args.JsonRestore):
            registry.add("meta", args, meta)
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state: PyTree, meta: dict[str, Any] | None = None) -> None:
        """Write ``state`` (a pytree of arrays, sharded or not) and JSON ``meta`` as step ``step``."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({**(meta or {}), "step": step})
        )
        self._manager.save(step, args=args, force=True)

    def wait(self) -> None:
        """Block until every started save is complete on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def read_meta(self, step: int) -> dict[str, Any]:
        return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore(self, step: int, like: PyTree) -> Restored:
        """Step ``step`` with the structure, shapes, dtypes and shardings of ``like`` (arrays or
        ``jax.ShapeDtypeStruct`` with a ``sharding``): arrays land directly on the current mesh."""
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), like
        )
        out = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        return Restored(step, out["state"], dict(out["meta"]))

    def restore_latest(
        self, like: PyTree, *, check: Callable[[dict[str, Any]], None] | None = None, say: Callable[[str], None] = print
    ) -> Restored | None:
        """The newest checkpoint that can be read (``None`` when there is none at all).

        ``check(meta)`` may refuse a readable checkpoint by raising (e.g. a config mismatch): that error
        propagates, as it is not a damaged file. A checkpoint that fails to read is reported through
        ``say`` and skipped; if every one fails, :class:`CheckpointError` names them all."""
        _ignore_closed_loop_errors()  # installed before reading: a read may fail while another is in flight
        steps = self.steps()
        failures = []
        for step in reversed(steps):
            try:
                meta = self.read_meta(step)
            except Exception as e:  # noqa: BLE001 - any damage to the files: report and fall back
                _quiet_failed_reads()
                failures.append(f"{self.path(step)} ({_reason(e)})")
                say(f"checkpoint {self.path(step)} cannot be read ({_reason(e)}): trying the previous one")
                continue
            if check is not None:
                check(meta)
            try:
                return self.restore(step, like)
            except Exception as e:  # noqa: BLE001
                _quiet_failed_reads()
                failures.append(f"{self.path(step)} ({_reason(e)})")
                say(f"checkpoint {self.path(step)} cannot be read ({_reason(e)}): trying the previous one")
        if failures:
            raise CheckpointError(
                f"no usable checkpoint in {self.directory}: "
                + "; ".join(failures)
                + ": delete the damaged ones, or start a new --workdir"
            )
        return None

    def delete_after(self, step: int) -> list[int]:
        """Delete the checkpoints newer than ``step`` (the damaged ones a resumed run skipped)."""
        newer = [s for s in self.steps() if s > step]
        for s in newer:
            self._manager.delete(s)
        return newer
