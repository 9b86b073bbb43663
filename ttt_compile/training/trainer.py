"""The outer loop, one for every task: train a model whose attention / token-mixing layers are
(compiled) TTT layers, end to end.

    theta_s = theta_{s-1} - lr_s (adam_s(clip(g)) + (weight_decay / lr) theta_{s-1}),   g = grad L(theta; batch_s)

``L`` is the task's loss (:mod:`ttt_compile.training.tasks`), ``batch_s`` a pure function of
``(seed, s)``, the schedule and optimiser those of :mod:`ttt_compile.training.optim`, and ``theta``
float32 master weights (with ``dtype = "bfloat16"`` the forward and backward passes run on a bfloat16
copy and Adam's first moment is stored in bfloat16). Batches are split over every device of the
config's mesh; parameters and optimiser state are replicated, or sharded over its ``fsdp`` axis
(:mod:`ttt_compile.training.sharding`). With several processes (``jax.distributed``), each process
reads its own rows of every batch and the mesh spans every process's devices.

A run writes to its ``workdir``: ``config.json``; ``metrics.jsonl`` (:mod:`.metrics`); ``checkpoints/``
(orbax, :mod:`.checkpoints`): ``resume=True`` continues from the newest readable one and reproduces
the metrics of an uninterrupted run exactly; ``plots/curves.png`` and ``plots/inner_loss.png``.

Non-finite values stop the run with :class:`NonFiniteError` naming the step and the first stage
(embedding, ``blocks[i].attn`` / ``.mixer``, ``blocks[i].mlp``, head) whose outputs, or the last one
whose gradients, are not finite.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from beartype import beartype
from jax.sharding import Mesh
from jaxtyping import Array, PyTree
from tqdm.auto import tqdm

from ttt_compile import cost
from ttt_compile.configs import Config, ConfigError, data_spec, format_config, validate
from ttt_compile.training import data as data_lib
from ttt_compile.training import sharding
from ttt_compile.training.checkpoints import Checkpoints
from ttt_compile.training.metrics import MetricsLog, plot, read_metrics, write_atomic
from ttt_compile.training.optim import make_optimizer, make_schedule, plan_steps
from ttt_compile.training.tasks import Task, cast_floats, make_task

#: Config fields a resumed run may change: they do not alter the computed trajectory (``mesh``: only
#: the summation order of the reductions).
RESUMABLE_CHANGES = (
    "steps",
    "epochs",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "data_threads",
    "data_workers",
    "eval_batch_size",
    "name",
    "async_checkpoints",
    "mesh",
)


class NonFiniteError(FloatingPointError):
    """A loss, activation or gradient became NaN or infinite; the message names the step and stage."""


# ------------------------------------------------------------------------------------------- steps


def _tree_finite(tree: PyTree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(
    task: Task,
    static: PyTree,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    state_shardings: tuple[PyTree, PyTree],
) -> Callable:
    """``(params, opt_state, batch) -> (params, opt_state, metrics)`` jitted: the batch split over the
    mesh, ``params`` / ``opt_state`` with ``state_shardings`` in and out (donated), metrics replicated.
    Metrics: ``loss``, ``accuracy``, ``grad_norm``, ``finite`` (per stage, forward) and ``grad_finite``."""
    dtype = jnp.dtype(task.config.dtype)

    def loss_fn(params, batch):
        return task.loss(eqx.combine(cast_floats(params, dtype), static), batch)

    def step(params, opt_state, batch):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        grad_finite = jnp.stack([_tree_finite(t) for t in task.stage_trees(grads)])
        metrics = {
            "loss": loss,
            "accuracy": aux["accuracy"],
            "grad_norm": optax.tree.norm(grads),
            "finite": aux["finite"],
            "grad_finite": grad_finite,
        }
        return params, opt_state, metrics

    p_sh, o_sh = state_shardings
    repl = sharding.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(p_sh, o_sh, sharding.batch_sharding(mesh)),
        out_shardings=(p_sh, o_sh, repl),
        donate_argnums=(0, 1),
    )


def make_eval_step(task: Task, static: PyTree, mesh: Mesh, param_shardings: PyTree) -> Callable:
    """``(params, batch) -> task.eval_sums(model, batch)``, jitted, the sums replicated."""
    dtype = jnp.dtype(task.config.dtype)

    def step(params, batch):
        return task.eval_sums(eqx.combine(cast_floats(params, dtype), static), batch)

    return jax.jit(
        step, in_shardings=(param_shardings, sharding.batch_sharding(mesh)), out_shardings=sharding.replicated(mesh)
    )


def compiled_memory(compiled: Any, state: PyTree, batch: dict[str, Array]) -> dict[str, int]:
    """Per-device bytes of a compiled train step from XLA's memory analysis: ``argument_bytes`` (what
    one device holds of parameters, optimiser state and batch), ``temp_bytes``, and ``state_bytes``:
    the arguments without the device's rows of the batch (parameters + optimiser state)."""
    analysis = compiled.memory_analysis()
    batch_bytes = sharding.bytes_per_device(batch)
    args = int(analysis.argument_size_in_bytes)
    return {
        "argument_bytes": args,
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "batch_bytes": batch_bytes,
        "state_bytes": args - batch_bytes,
        "state_bytes_from_shards": sharding.bytes_per_device(state),
    }


def check_finite(step: int, metrics: dict[str, Any], names: Sequence[str]) -> None:
    """Raise :class:`NonFiniteError` if step ``step``'s loss, activations or gradients are not finite.

    Activations: the first stage in forward order with a non-finite output is where the values broke.
    Gradients: back-propagation runs head to embedding, so the last stage with non-finite gradients
    is where they broke (every earlier stage inherits them)."""
    loss = float(metrics["loss"])
    forward, backward = np.asarray(metrics["finite"]), np.asarray(metrics["grad_finite"])
    hint = "lower lr, set grad_clip, or use dtype='float32'"
    if not forward.all():
        where = names[int(np.argmin(forward))]
        raise NonFiniteError(
            f"non-finite values at step {step}: loss {loss}; the first stage with "
            f"non-finite outputs is {where} ({hint})"
        )
    if not math.isfinite(loss):
        raise NonFiniteError(
            f"non-finite loss {loss} at step {step}; all activations are finite, so the loss itself overflowed ({hint})"
        )
    if not backward.all():
        where = names[len(backward) - 1 - int(np.argmin(backward[::-1]))]
        raise NonFiniteError(
            f"non-finite gradients at step {step}, starting in {where} (loss {loss} is finite; {hint})"
        )


def evaluate(task: Task, params: PyTree, eval_step: Callable, batches: Any, mesh: Mesh, threads: int) -> dict:
    """The task's evaluation (:meth:`Task.eval_result`) of the sums over every test batch."""
    total: dict[str, Any] | None = None
    reader = data_lib.iterate(batches, 0, len(batches), threads=threads)
    try:
        for batch in reader:
            out = sharding.to_host(eval_step(params, sharding.shard_batch(batch, mesh)))
            total = out if total is None else jax.tree_util.tree_map(np.add, total, out)
    finally:
        reader.close()
    return task.eval_result(total)


# -------------------------------------------------------------------------------------------- run


def check_resumable(saved: dict[str, Any], config: Config) -> None:
    """Refuse to resume with a config that would change the trajectory (the data set may move)."""
    now = config.to_dict()
    changed = sorted(
        k
        for k in now
        if k not in RESUMABLE_CHANGES
        and saved.get(k) != now[k]
        and not (k == "data" and k in saved and data_spec(saved[k])[0] == data_spec(now[k])[0])
    )
    if changed:
        raise ConfigError(
            f"--resume with a changed config ({', '.join(changed)} differ from the checkpoint): "
            "resume with the config that wrote it, or start a new --workdir"
        )


def _abstract(tree: PyTree, shardings: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


@beartype
def train(
    config: Config,
    *,
    data: str | None = None,
    workdir: str | os.PathLike | None = None,
    steps: int | None = None,
    resume: bool = False,
    devices: Sequence[Any] | None = None,
    verbose: bool = True,
    plots: bool = True,
    count_flops: bool = False,
) -> dict[str, Any]:
    """Train ``config`` and return ``{"step", "test_loss", "test_accuracy", "test", "params", "workdir",
    "memory", "flops_per_step"}``.

    ``data`` overrides ``config.data``; ``steps`` overrides the run's length (the warmup is scaled by
    the same factor); ``resume`` continues from the newest readable checkpoint in ``workdir`` (default
    ``runs/<config.name>``); ``devices`` (default: every device of every process) carry the mesh;
    ``verbose`` prints the config, progress bars and evaluations; ``plots`` draws ``plots/*.png``;
    ``count_flops`` counts one training step's FLOPs (`ttt_compile.cost`: XLA's count with loop trip
    counts; one more compile of the step), else ``flops_per_step`` is None.
    """
    if data is not None:
        config = config.replace(data=data)
    devices = list(devices if devices is not None else jax.devices())
    validate(config, num_devices=len(devices))
    lead = jax.process_index() == 0
    say = (lambda *a: print(*a, flush=True)) if (verbose and lead) else (lambda *a: None)
    workdir = Path(workdir if workdir is not None else Path("runs") / config.name)

    task = make_task(config, len(devices))
    total, warmup = plan_steps(config, task.train_size, steps)
    mesh = sharding.make_mesh(config.mesh, devices)
    say(f"config {config.name}:\n{format_config(config)}")
    say(
        f"{task.describe()}; {total} steps (warmup {warmup}) on {len(devices)} device(s) [{devices[0].platform}], "
        f"mesh {dict(mesh.shape)}, {jax.process_count()} process(es)"
    )

    checkpoints = Checkpoints(
        workdir / "checkpoints", keep=config.keep_checkpoints, asynchronous=config.async_checkpoints
    )
    existing = checkpoints.steps()
    if existing and not resume:
        raise ConfigError(
            f"{workdir} already has checkpoints (up to step {existing[-1]}): pass --resume to "
            "continue, or choose an empty --workdir"
        )

    model = task.build(jax.random.PRNGKey(config.seed))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    schedule = make_schedule(config, total, warmup)
    optimizer = make_optimizer(config, schedule)
    opt_state = optimizer.init(params)
    shardings = (sharding.state_shardings(params, mesh), sharding.state_shardings(opt_state, mesh))
    names = task.stage_names(model)

    start = 0
    if resume and existing:

        def check(meta: dict[str, Any]) -> None:
            check_resumable(meta.get("config", {}), config)

        restored = checkpoints.restore_latest(_abstract((params, opt_state), shardings), check=check, say=say)
        (params, opt_state), start = restored.state, restored.step
        if restored.meta.get("total_steps", total) != total:
            say(
                f"note: the checkpoint belongs to a {restored.meta['total_steps']}-step run, resumed as a "
                f"{total}-step run: the learning-rate schedule differs from here on (pass the same --steps to "
                "continue exactly)"
            )
        dropped = checkpoints.delete_after(start)
        if dropped:
            say(f"deleted the unreadable checkpoint(s) of step(s) {', '.join(map(str, dropped))}")
        say(f"resumed from step {start} ({checkpoints.path(start)})")
    else:
        if resume:
            say(f"no checkpoint in {checkpoints.directory}: starting from step 0")
        params, opt_state = sharding.place(params, shardings[0]), sharding.place(opt_state, shardings[1])
    if lead:
        workdir.mkdir(parents=True, exist_ok=True)
        write_atomic(workdir / "config.json", json.dumps(config.to_dict(), indent=1) + "\n")
    log = MetricsLog(workdir / "metrics.jsonl", keep_until=start, enabled=lead)

    train_step = make_train_step(task, static, optimizer, mesh, shardings)
    eval_step = make_eval_step(task, static, mesh, shardings[0])
    process = (jax.process_index(), jax.process_count())
    train_data, eval_data = task.train_batches(*process), task.eval_batches(*process)

    last_eval: dict[str, Any] = {}
    if start >= total:
        last_eval = next((r for r in reversed(read_metrics(workdir / "metrics.jsonl")) if r["split"] == "test"), {})
    bar = tqdm(
        total=total,
        initial=start,
        desc=config.name,
        unit="step",
        dynamic_ncols=True,
        disable=not (verbose and lead),
        smoothing=0.1,
    )
    window, window_start, window_step = [], time.perf_counter(), start
    pending: tuple[int, dict[str, Array]] | None = None
    batches = data_lib.iterate(train_data, start, total, threads=config.data_threads, workers=config.data_workers)
    rate_key = f"{task.unit}_per_s"
    t_run = time.perf_counter()
    memory: dict[str, int] = {}
    flops = None
    try:
        for step in range(start + 1, total + 1):
            batch = sharding.shard_batch(next(batches), mesh)
            if not memory:  # compiled ahead of time, so that its memory analysis is recorded
                if count_flops:
                    flops = cost.of(train_step, params, opt_state, batch).flops
                    say(f"FLOPs per training step: {flops:.4g}")
                train_step = train_step.lower(params, opt_state, batch).compile()
                memory = compiled_memory(train_step, (params, opt_state), batch)
                say(
                    f"per-device memory: parameters + optimiser state {memory['state_bytes']:,} B, "
                    f"step temporaries {memory['temp_bytes']:,} B"
                )
            params, opt_state, metrics = train_step(params, opt_state, batch)
            if pending is not None:  # checked one step late, so the device is never idle waiting for it
                check_finite(pending[0], sharding.to_host(pending[1]), names)
            pending = (step, metrics)
            window.append(metrics)
            bar.update(1)
            boundary = step == total
            if step % config.log_every == 0 or boundary:
                check_finite(step, sharding.to_host(metrics), names)
                host = sharding.to_host(window)
                record = {k: float(np.mean([v[k] for v in host])) for k in ("loss", "accuracy", "grad_norm")}
                elapsed = time.perf_counter() - window_start
                rate = (step - window_step) * config.batch_size / elapsed
                log.write(
                    {
                        "split": "train",
                        "step": step,
                        **record,
                        "lr": float(schedule(step - 1)),
                        rate_key: rate,
                        "elapsed_s": time.perf_counter() - t_run,
                    }
                )
                bar.set_postfix(loss=f"{record['loss']:.4f}", rate=f"{rate:.0f}/s")
                window, window_start, window_step = [], time.perf_counter(), step
            if step % config.eval_every == 0 or boundary:
                check_finite(step, sharding.to_host(metrics), names)
                last_eval = evaluate(task, params, eval_step, eval_data, mesh, config.data_threads)
                log.write({"split": "test", "step": step, **last_eval})
                if verbose and lead:
                    bar.write(f"step {step}: test loss {last_eval['loss']:.4f}, accuracy {last_eval['accuracy']:.4f}")
                window_start = time.perf_counter()  # evaluation is not training throughput
            if step % config.checkpoint_every == 0 or boundary:
                check_finite(step, sharding.to_host(metrics), names)
                checkpoints.save(
                    step, (params, opt_state), {"config": config.to_dict(), "data": config.data, "total_steps": total}
                )
                window_start = time.perf_counter()  # nor is writing a checkpoint
        checkpoints.wait()
    finally:
        bar.close()
        batches.close()
        checkpoints.close()
    if lead and plots:
        for path in plot(workdir):
            say(f"wrote {path}")
    accuracy = last_eval.get("accuracy", float("nan"))
    say(f"test accuracy: {accuracy:.4f}")
    return {
        "step": total,
        "test_loss": last_eval.get("loss", float("nan")),
        "test_accuracy": accuracy,
        "test": last_eval,
        "params": sum(x.size for x in jax.tree_util.tree_leaves(params)),
        "memory": memory,
        "flops_per_step": flops,
        "workdir": str(workdir),
        "model": eqx.combine(params, static),
    }
