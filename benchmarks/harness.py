"""The harness every benchmark uses: compile a function and read its figures, time it (`timing`), write its results.

Imports nothing heavy at module level (jax is imported where a figure is read), so a parent process that
only writes results (`device.run`) or a CPU-only benchmark (`imagenet_pipeline`) stays light.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

#: `flops_source` of a figure dict: where its FLOP count came from.
XLA_SOURCE = "XLA cost analysis (no loop in the compiled program)"
LOOP_SOURCE = "ttt_compile.cost (XLA, loop trip counts)"
XLA_LOOP_ONCE_SOURCE = "XLA cost analysis (a loop body counted once)"


def xla_flops(exe) -> float:
    """XLA's own FLOP count of a compiled executable (a while body counted once)."""
    ca = exe.cost_analysis()
    ca = (ca[0] if ca else {}) if isinstance(ca, (list, tuple)) else (ca or {})
    return float(ca.get("flops", 0.0))


def compiled_figures(fn, args: tuple, *, trip_counts: bool = True) -> tuple[dict, Any]:
    """(figures, executable) of `fn` compiled at `args` (arrays or ShapeDtypeStructs; compiled, not run).

    `fn` is jit'ed here unless it is jit'ed already (then its own options, e.g. donated arguments, hold).
    Figures: ``flops`` with loop trip counts accounted for (if the compiled program keeps a ``while``,
    ``ttt_compile.cost.of(fn, *args)``; otherwise XLA's count, already exact; ``trip_counts=False``
    keeps XLA's count either way, for callers that only read memory), ``flops_source``, ``xla_loop``
    (a while survived), ``compile_s``, and XLA's compiled memory analysis: ``temp_bytes``,
    ``argument_bytes``, ``output_bytes``, ``alias_bytes`` and ``total_bytes`` (temp + arguments +
    outputs - aliased), each None where the backend has no memory analysis."""
    import jax

    from ttt_compile import cost

    lower = fn.lower if hasattr(fn, "lower") else jax.jit(fn).lower
    t0 = time.perf_counter()
    exe = lower(*args).compile()
    compile_s = time.perf_counter() - t0
    has_while = "while" in exe.as_text()
    if has_while and trip_counts:
        flops, source = cost.of(fn, *args).flops, LOOP_SOURCE
    else:
        flops, source = xla_flops(exe), XLA_LOOP_ONCE_SOURCE if has_while else XLA_SOURCE
    ma = exe.memory_analysis()
    mem = dict.fromkeys(("temp_bytes", "argument_bytes", "output_bytes", "alias_bytes", "total_bytes"))
    if ma is not None:
        mem.update(
            temp_bytes=int(getattr(ma, "temp_size_in_bytes", 0)),
            argument_bytes=int(getattr(ma, "argument_size_in_bytes", 0)),
            output_bytes=int(getattr(ma, "output_size_in_bytes", 0)),
            alias_bytes=int(getattr(ma, "alias_size_in_bytes", 0)),
        )
        mem["total_bytes"] = mem["temp_bytes"] + mem["argument_bytes"] + mem["output_bytes"] - mem["alias_bytes"]
    return {"flops": flops, "flops_source": source, "xla_loop": has_while, "compile_s": compile_s, **mem}, exe


def pick(figures: dict, *keys: str) -> dict:
    """The named entries of a figures dict (what a benchmark writes to its JSON)."""
    return {k: figures[k] for k in keys}


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def write_results(out, stem: str, result: dict, markdown: str, log=print) -> None:
    """Write ``out/stem.json`` (the figures, with the command and machine that made them; numpy
    scalars as numbers) and ``out/stem.md`` (their rendering)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    log(f"wrote {out / stem}.json and {stem}.md")
