"""Joining a multi-process run (``jax.distributed``): one coordinator address, a process count and
this process's id, from arguments or the environment (``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). On CPU the processes exchange collectives over gloo.

Call :func:`initialize` before anything touches a device; afterwards ``jax.devices()`` lists every
process's devices and the trainer builds one mesh over them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax

from ttt_compile.configs import ConfigError

ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


@dataclass(frozen=True)
class Cluster:
    """Where the coordinator listens (``host:port``, served by process 0), how many processes join,
    and which one this is (0 .. num_processes - 1)."""

    coordinator: str
    num_processes: int
    process_id: int


def _int(name: str, value: str | int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def cluster(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: dict[str, str] | None = None,
) -> Cluster | None:
    """The cluster the arguments (falling back on the environment) describe; ``None`` for a
    single-process run (nothing given, or one process)."""
    env = os.environ if environ is None else environ
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    values = {k: v if v is not None else env.get(ENV[k]) for k, v in given.items()}
    if all(v is None for v in values.values()):
        return None
    missing = [f"--{k.replace('_', '-')} / {ENV[k]}" for k, v in values.items() if v is None]
    if missing:
        raise ConfigError(
            f"a multi-process run needs all of coordinator, process count and id: set {', '.join(missing)}"
        )
    n, i = _int("num_processes", values["num_processes"]), _int("process_id", values["process_id"])
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"process_id={i} with num_processes={n}: ids run from 0 to num_processes - 1")
    host, sep, port = str(values["coordinator"]).rpartition(":")
    if not (sep and host and port.isdigit()):
        raise ConfigError(f"coordinator={values['coordinator']!r} must be host:port (process 0's address)")
    return None if n == 1 else Cluster(str(values["coordinator"]), n, i)


def initialize(c: Cluster | None) -> None:
    """Join ``c`` (nothing for a single-process run); on CPU use gloo for cross-process collectives."""
    if c is None or jax.distributed.is_initialized():
        return
    if os.environ.get("JAX_PLATFORMS", "cpu").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=c.coordinator, num_processes=c.num_processes, process_id=c.process_id
    )
