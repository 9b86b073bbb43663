"""What one run of the pass-comparison suite measures (`Config`; the presets FULL, QUICK and TINY are
in `suite`): plain data read by `suite`, `suite_measure` and `suite_report`."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
    """What one run of the suite measures and how much time it may spend."""

    name: str
    dims: tuple[tuple[int, int], ...]  # (d, H)
    ns: tuple[int, ...]  # sequence lengths measured fully
    flops_only: tuple[tuple[int, int], ...]  # (d, n) measured by compilation only (FLOPs, memory)
    batch: int
    layers: tuple[str, ...]
    pipelines: tuple[str, ...]  # run in the sweep groups
    sweep: tuple[tuple[int, int], ...]  # (d, n) groups running every pipeline; others: none, default
    reps: int  # interleaved rounds
    min_block_s: float
    time_budget_s: float  # estimated interleaved-timing seconds per (d, n) group
    max_call_s: float  # programs slower than this per call are not timed
    max_temp_bytes: int  # ... nor those whose train step needs more temp memory
    rate_floor: float  # fraction of peak assumed when predicting a call's time
    stack: tuple[int, int, int, int]  # (depth, d, H, n) of the compile-time stack
    stack_pipelines: tuple[str, ...] = ("default", "none")
    peak_size: int = 2048
    deadline_s: float | None = None  # no group starts after this many seconds of the run
    warm_up: bool = True  # compile a tiny layer first, so first-trace costs miss the stack
