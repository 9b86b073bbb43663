"""What every results table records about how it was made: the machine, the software, the command,
the wall time; where it writes by default (a scratch folder, never the committed results); and how
long a full run took when the committed table was made."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

#: Wall time of a full run of each table as committed (2-core shared CPU; measured by the table
#: makers themselves: meta.wall_s of benchmarks/results/{digits,online}/*.json, and for lm the sum
#: of its rows' wall_s).
FULL_RUN_MIN = {"digits": 32, "lm": 8, "mqar": 43}


def scratch_out(table: str) -> Path:
    """The default output folder: ``runs/tables/<table>`` under the current directory."""
    return Path("runs") / "tables" / table


def machine_facts() -> dict:
    """Date, platform, CPU model and count, Python / JAX versions, backend, niceness, load."""
    import jax

    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.platform(),
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "niceness": os.nice(0),
        "load_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def command(table: str, argv: list[str] | None) -> str:
    """The command line that reproduces this run (niceness included)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["table", table]:  # called through ttt-compile: sys.argv holds the subcommand
        argv = argv[2:]
    line = " ".join(["ttt-compile", "table", table, *map(shlex.quote, argv)])
    return f"nice -n {os.nice(0)} {line}" if os.nice(0) else line


def announce(table: str, out: Path, say=print) -> None:
    say(
        f"table {table}: writing to {out} (a full run took about {FULL_RUN_MIN[table]} min on a shared 2-core CPU)",
        flush=True,
    )
