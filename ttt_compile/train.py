"""The outer loop: train a ViT whose attention layers are (compiled) TTT layers, end to end.

    theta_{s} = theta_{s-1} - lr_s (adam_s(g) + (weight_decay / lr) theta_{s-1}),   g = grad_theta L(theta; batch_s)
    L(theta; batch) = 1/B sum_i CE(softmax(ViT_theta(x_i)), y_i)

``batch_s`` is a pure function of ``(seed, s)`` (see :mod:`ttt_compile.data`), the learning rate a
linear warmup then cosine decay, and ``theta`` holds float32 master weights (with ``dtype =
"bfloat16"`` the forward and backward passes run on a bfloat16 copy and Adam's first moment is
stored in bfloat16). Batches are split over all devices (``Mesh`` axis ``"data"``), parameters are
replicated. A run writes to its ``workdir``:

- ``config.json``: the config;
- ``metrics.jsonl``: one JSON record per line: ``{"split": "train", "step", "loss", "accuracy",
  "grad_norm", "lr", "images_per_s", ...}`` every ``log_every`` steps (means over the window) and
  ``{"split": "test", "step", "loss", "accuracy", "inner_loss": {block: [l_0, ..., l_T]}}`` every
  ``eval_every`` steps, where ``l_t`` is a TTT layer's inner reconstruction loss after ``t`` inner
  steps (mean over heads and test images; the paper's Figure 1, right);
- ``checkpoints/step_SSSSSSSS``: parameters and optimiser state (atomic, see
  :mod:`ttt_compile.checkpoint`); ``--resume`` continues from the newest one and reproduces the
  metrics of an uninterrupted run exactly;
- ``plots/curves.png`` and ``plots/inner_loss.png``.

Non-finite values stop the run with :class:`NonFiniteError` naming the step and the first stage
(embedding, ``blocks[i].attn``, ``blocks[i].mlp``, head) whose outputs, or the last one whose
gradients, are not finite.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, PyTree
from tqdm.auto import tqdm

from ttt_compile import checkpoint as ckpt
from ttt_compile import data as data_lib
from ttt_compile.configs import Config, ConfigError, data_spec, format_config, load_config, validate
from ttt_compile.models.vit import ViT, LayerFactory, stage_names, stage_trees

TIMING_KEYS = ("images_per_s", "elapsed_s")
"""Metric fields that measure the machine rather than the run (left out of reproducibility checks)."""

# Config fields a resumed run may change: they do not alter the computed trajectory.
_RESUMABLE_CHANGES = ("steps", "epochs", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                      "data_threads", "data_workers", "eval_batch_size", "name")


class NonFiniteError(FloatingPointError):
    """A loss, activation or gradient became NaN or infinite; the message names the step and stage."""


# ------------------------------------------------------------------------------------------ model


def resolve_layer(name: str) -> Callable[..., eqx.Module]:
    """The layer factory a config names: a preset of ``ttt_compile.models.layers`` or ``module:attr``."""
    module_name, sep, attr = name.partition(":")
    if not sep:
        from ttt_compile.models import layers

        if name not in layers.PRESETS:
            raise ConfigError(f"layer={name!r} is not a layer preset: use one of {', '.join(layers.PRESETS)} "
                              "or 'module:attr' naming a layer factory")
        return layers.PRESETS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"layer={name!r}: cannot import {module_name} ({e}): fix the module path") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"layer={name!r}: {module_name} has no layer factory {attr!r}: "
                          "use a preset name or 'module:attr' of a callable")
    return factory


def cast_floats(tree: PyTree, dtype: Any) -> PyTree:
    """Every floating-point array leaf of ``tree`` cast to ``dtype`` (other leaves unchanged)."""
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree)


def _passes_arg(passes: str | Sequence[str]) -> str | list[str]:
    return passes if isinstance(passes, str) else list(passes)


class CompiledLayer(eqx.Module):
    """A layer compiled by ``tc.compile`` together with the non-float part of its source module, so
    that diagnostics of the source (``inner_losses``) run on the trained parameters.

    Its float leaves are exactly the compiled program's (the outer parameters)."""

    compiled: eqx.Module
    source: Any

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        return self.compiled(x)

    @property
    def inner_losses(self) -> Callable[[Array], Array] | None:
        """The source layer's ``inner_losses`` on the current parameters (None if it has none)."""
        fn = getattr(eqx.combine(self.compiled.params, self.source), "inner_losses", None)
        return fn if callable(fn) else None


def layer_factory(config: Config) -> LayerFactory:
    """``factory(dim=, heads=, key=)``: the config's layer built with its ``layer_options``."""
    from ttt_compile.layer.spec import SpecError

    make = resolve_layer(config.layer)
    options = dict(config.layer_options)

    def factory(*, dim: int, heads: int, key: Any) -> eqx.Module:
        try:
            inspect.signature(make).bind(dim=dim, heads=heads, key=key, **options)
            return make(dim=dim, heads=heads, key=key, **options)
        except (TypeError, SpecError) as e:
            raise ConfigError(f"layer={config.layer!r} with layer_options={options}: {e}") from e

    return factory


def compile_layers(model: ViT, config: Config) -> ViT:
    """Every block's attention layer compiled with ``tc.compile(layer, x, passes=config.passes)`` on an
    ``(n_tokens, width)`` example in the compute dtype, its float leaves kept in float32 (the master
    weights), and wrapped in :class:`CompiledLayer`."""
    import ttt_compile as tc

    dtype = jnp.dtype(config.dtype)
    example = np.random.default_rng(0).standard_normal((model.num_tokens, model.embed.out_features)).astype(dtype)
    compiled_layers = []
    for block in model.blocks:
        params, source = eqx.partition(cast_floats(block.attn, dtype), eqx.is_inexact_array)
        compiled = tc.compile(eqx.combine(params, source), example, passes=_passes_arg(config.passes))
        compiled_layers.append(CompiledLayer(cast_floats(compiled, jnp.float32), source))
    return eqx.tree_at(lambda m: [b.attn for b in m.blocks], model, compiled_layers)


def build_model(config: Config, data: data_lib.Data, key: Any) -> ViT:
    """The config's ViT for ``data``'s image shape and classes, its attention layers compiled by
    :func:`compile_layers` unless ``passes`` is None.

    (Built eagerly: the per-primitive executables this needs are cached across models, while a
    jitted constructor would be compiled anew for every config.)"""
    rows, cols, channels = data.image_shape
    model = ViT(image_size=(rows, cols), channels=channels, num_classes=data.num_classes, patch=config.patch,
                posemb=config.posemb, layer=layer_factory(config), key=key, **config.model_dims())
    return model if config.passes is None else compile_layers(model, config)


def split_model(model: ViT) -> tuple[PyTree, PyTree]:
    """``(params, static)``: the float arrays (the outer-loop parameters) and everything else."""
    return eqx.partition(model, eqx.is_inexact_array)


# -------------------------------------------------------------------------------------- optimiser


def total_steps(config: Config, train_size: int) -> int:
    """``steps``, or ``ceil(epochs * train_size / batch_size)``."""
    if config.steps is not None:
        return config.steps
    return math.ceil(config.epochs * train_size / config.batch_size)


def make_schedule(config: Config, steps: int, warmup: int) -> optax.Schedule:
    """``lr_s = lr s / warmup`` for ``s < warmup``, then ``lr (1 + cos(pi (s - warmup) / (steps - warmup))) / 2``."""
    return optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup, steps, end_value=0.0)


def decay_mask(params: PyTree) -> PyTree:
    """Weight decay on weight matrices (ndim >= 2) but not on biases, norms or position embeddings."""
    mask = jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)
    if isinstance(params, ViT) and params.pos is not None:
        mask = eqx.tree_at(lambda m: m.pos, mask, False)
    return mask


def make_optimizer(config: Config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with decoupled decay ``weight_decay / lr`` (so the applied
    decay is ``weight_decay * lr_s / lr``), first moment in bfloat16 when ``dtype = "bfloat16"``."""
    mu_dtype = jnp.bfloat16 if config.dtype == "bfloat16" else None
    adamw = optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay / config.lr,
                        mu_dtype=mu_dtype, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw) if config.grad_clip else adamw


# ------------------------------------------------------------------------------------------- steps


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis (``"data"``) mesh over ``devices`` (default: every device of every process)."""
    return Mesh(np.asarray(list(devices if devices is not None else jax.devices())), ("data",))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's share of a global batch as global arrays split along the batch axis."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """``tree`` on every device of ``mesh``; weakly typed leaves (``jnp.array(1.0)``) made strong, so that
    the first update (whose outputs are strong) does not retrace the step."""
    strong = jax.tree_util.tree_map(lambda x: np.asarray(x) if getattr(x, "weak_type", False) else x, tree)
    return jax.device_put(strong, NamedSharding(mesh, PartitionSpec()))


def loss_fn(params: PyTree, static: PyTree, batch: dict[str, Array], dtype: Any
            ) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Mean cross-entropy against the (possibly mixed) targets, computed in ``dtype``; with the
    accuracy against the labels and per-stage finiteness of the activations."""
    model = eqx.combine(cast_floats(params, dtype), static)
    logits, finite = jax.vmap(model.trace)(batch["image"].astype(dtype))
    logits = logits.astype(jnp.float32)
    loss = jnp.mean(optax.softmax_cross_entropy(logits, batch["target"]))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, {"accuracy": accuracy, "finite": jnp.all(finite, axis=0)}


def _tree_finite(tree: PyTree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(static: PyTree, optimizer: optax.GradientTransformation, mesh: Mesh, dtype: Any
                    ) -> Callable[[PyTree, PyTree, dict[str, Array]], tuple[PyTree, PyTree, dict[str, Array]]]:
    """``(params, opt_state, batch) -> (params, opt_state, metrics)``, jitted with the batch split
    over ``mesh`` and everything else replicated; ``params`` and ``opt_state`` are donated."""

    def step(params, opt_state, batch):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, static, batch, dtype)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        grad_finite = jnp.stack([_tree_finite(t) for t in stage_trees(grads)])
        metrics = {"loss": loss, "accuracy": aux["accuracy"], "grad_norm": optax.tree.norm(grads),
                   "finite": aux["finite"], "grad_finite": grad_finite}
        return params, opt_state, metrics

    repl, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    return jax.jit(step, in_shardings=(repl, repl, split), out_shardings=(repl, repl, repl), donate_argnums=(0, 1))


def make_eval_step(static: PyTree, mesh: Mesh, dtype: Any) -> Callable[[PyTree, dict[str, Array]], dict[str, Any]]:
    """``(params, batch) -> sums over the unmasked examples``: ``loss`` (cross-entropy), ``correct``,
    ``count``, and ``inner_loss``: per block, the layer's inner losses ``(heads, steps+1)`` summed
    over the examples (``None`` for blocks whose layer has no ``inner_losses``)."""

    def step(params, batch):
        model = eqx.combine(cast_floats(params, dtype), static)
        images, labels, mask = batch["image"].astype(dtype), batch["label"], batch["mask"]
        logits = jax.vmap(model)(images).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        inner = jax.vmap(model.inner_losses)(images) if model.has_inner_losses() else ()
        return {"loss": jnp.sum(ce * mask), "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
                "count": jnp.sum(mask),
                "inner_loss": jax.tree_util.tree_map(lambda v: jnp.tensordot(mask, v.astype(jnp.float32), 1), inner)}

    repl, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    return jax.jit(step, in_shardings=(repl, split), out_shardings=repl)


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
        raise NonFiniteError(f"non-finite values at step {step}: loss {loss}; the first stage with "
                             f"non-finite outputs is {where} ({hint})")
    if not math.isfinite(loss):
        raise NonFiniteError(f"non-finite loss {loss} at step {step}; all activations are finite, so the "
                             f"loss itself overflowed ({hint})")
    if not backward.all():
        where = names[len(backward) - 1 - int(np.argmin(backward[::-1]))]
        raise NonFiniteError(f"non-finite gradients at step {step}, starting in {where} "
                             f"(loss {loss} is finite; {hint})")


# ---------------------------------------------------------------------------------------- metrics


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a torn last line, from a killed writer, is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLog:
    """Appends JSON records to ``path``; on resume first drops records after the resumed step."""

    def __init__(self, path: Path, *, keep_until: int | None, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = [r for r in read_metrics(path) if keep_until is not None and r["step"] <= keep_until]
        _write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()


# ------------------------------------------------------------------------------------------ plots


def plot(workdir: str | os.PathLike) -> list[Path]:
    """Draw ``plots/curves.png`` (loss and accuracy, train and test, against the step) and, where the
    layers report them, ``plots/inner_loss.png`` (inner-loop loss after t inner steps against the
    outer step, one panel per block); return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = Path(workdir)
    records = read_metrics(workdir / "metrics.jsonl")
    out_dir = workdir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot([r["step"] for r in train], [r[key] for r in train], label="train")
        ax.plot([r["step"] for r in test], [r[key] for r in test], "o-", label="test")
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(workdir.name)
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=120)
    plt.close(fig)
    written.append(out_dir / "curves.png")

    inner = [r for r in test if r.get("inner_loss")]
    if inner:
        blocks = list(inner[0]["inner_loss"])
        fig, axes = plt.subplots(1, len(blocks), figsize=(3.6 * len(blocks), 3.4), squeeze=False)
        for ax, block in zip(axes[0], blocks):
            curves = np.asarray([r["inner_loss"][block] for r in inner])  # (evals, steps+1)
            steps = [r["step"] for r in inner]
            colors = plt.cm.viridis(np.linspace(0, 0.9, curves.shape[1]))
            for t in range(curves.shape[1]):
                ax.plot(steps, curves[:, t], color=colors[t], label=f"t={t}")
            ax.set_title(block)
            ax.set_yscale("log")
            ax.set_xlabel("outer step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("inner-loop loss")
        axes[0][-1].legend(fontsize=8)
        fig.suptitle("inner-loop loss after t inner steps (Figure 1, right)")
        fig.tight_layout()
        fig.savefig(out_dir / "inner_loss.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "inner_loss.png")
    return written


# -------------------------------------------------------------------------------------------- run


@dataclass
class _Window:
    """Per-step metrics (device arrays) since the last log line."""

    values: list[dict[str, Array]]
    start_time: float
    start_step: int


def _mean_record(values: list[dict[str, Any]]) -> dict[str, float]:
    host = jax.device_get(values)
    return {k: float(np.mean([v[k] for v in host])) for k in ("loss", "accuracy", "grad_norm")}


def evaluate(params: PyTree, eval_step: Callable, batches: Any, mesh: Mesh, threads: int) -> dict[str, Any]:
    """Test loss and accuracy over the whole test set, and per block with a TTT layer the inner-loop
    loss after t = 0..T inner steps (mean over the test images and the heads)."""
    total: dict[str, Any] | None = None
    reader = data_lib.iterate(batches, 0, len(batches), threads=threads)
    try:
        for batch in reader:
            out = jax.device_get(eval_step(params, shard_batch(batch, mesh)))
            total = out if total is None else jax.tree_util.tree_map(np.add, total, out)
    finally:
        reader.close()
    count = float(total["count"])
    result: dict[str, Any] = {"loss": float(total["loss"]) / count, "accuracy": float(total["correct"]) / count}
    inner = {f"blocks[{i}]": (np.mean(v, axis=0) / count).tolist()
             for i, v in enumerate(total["inner_loss"]) if v is not None}
    if inner:
        result["inner_loss"] = inner
    return result


def _initialize_distributed(config: Config) -> None:
    if config.hosts > 1 and not jax.distributed.is_initialized():
        jax.distributed.initialize()
    if jax.process_count() != config.hosts:
        raise ConfigError(f"hosts={config.hosts} but {jax.process_count()} processes joined: set hosts to "
                          "the number of processes (and the JAX coordinator environment)")


def plan_steps(config: Config, train_size: int, steps: int | None) -> tuple[int, int]:
    """``(total, warmup)``: the run's length (``steps`` if given, else the config's) and its warmup,
    scaled with the length: ``warmup = round(warmup_steps * total / config_total)``."""
    natural = total_steps(config, train_size)
    total = steps if steps is not None else natural
    if not isinstance(total, int) or total <= 0:
        raise ConfigError(f"steps={steps!r} must be a positive integer")
    warmup = round(config.warmup_steps * total / natural)
    if warmup >= total:
        raise ConfigError(f"warmup_steps={config.warmup_steps} leaves no step for the cosine decay of a "
                          f"{total}-step run: lower warmup_steps below {natural}")
    return total, warmup


def _resume_point(ckpt_dir: Path, config: Config, total: int, resume: bool, say: Callable) -> int | None:
    """The checkpoint step to continue from (None: start afresh), after checking that resuming is
    what was asked for and that the config still describes the same run."""
    latest = ckpt.latest_step(ckpt_dir)
    if latest is not None and not resume:
        raise ConfigError(f"{ckpt_dir.parent} already has checkpoints (up to step {latest}): pass --resume to "
                          "continue, or choose an empty --workdir")
    if latest is None:
        if resume:
            say(f"no checkpoint in {ckpt_dir}: starting from step 0")
        return None
    saved = ckpt.read_meta(ckpt_dir, latest)
    _check_resumable(saved.get("config", {}), config)
    if saved.get("total_steps", total) != total:
        say(f"note: the checkpoint belongs to a {saved['total_steps']}-step run, resumed as a {total}-step "
            "run: the learning-rate schedule differs from here on (pass the same --steps to continue exactly)")
    return latest


def _check_resumable(saved: dict[str, Any], config: Config) -> None:
    """Refuse to resume with a config that would change the trajectory (the data set may move)."""
    now = config.to_dict()
    changed = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k]
                     and not (k == "data" and data_spec(saved[k])[0] == data_spec(now[k])[0]))
    if changed:
        raise ConfigError(f"--resume with a changed config ({', '.join(changed)} differ from the checkpoint): "
                          "resume with the config that wrote it, or start a new --workdir")


def train(config: Config, *, data: str | None = None, workdir: str | os.PathLike | None = None,
          steps: int | None = None, resume: bool = False, devices: Sequence[jax.Device] | None = None,
          verbose: bool = True, plots: bool = True) -> dict[str, Any]:
    """Train ``config`` and return ``{"step", "test_loss", "test_accuracy", "params", "workdir"}``.

    ``data`` overrides ``config.data``; ``steps`` overrides the run's length (the warmup is scaled by
    the same factor); ``resume`` continues from the newest checkpoint in ``workdir`` (default
    ``runs/<config.name>``); ``devices`` (default all) carry the data-parallel mesh; ``verbose``
    prints the config, progress bars and evaluations; ``plots`` draws ``plots/*.png`` at the end.
    """
    if data is not None:
        config = config.replace(data=data)
    _initialize_distributed(config)
    devices = list(devices if devices is not None else jax.devices())
    validate(config, num_devices=len(devices))
    lead = jax.process_index() == 0
    say = (lambda *a: print(*a, flush=True)) if (verbose and lead) else (lambda *a: None)
    workdir = Path(workdir if workdir is not None else Path("runs") / config.name)

    dataset = data_lib.load(config)
    validate(config, num_devices=len(devices), image_size=dataset.image_shape[0])
    total, warmup = plan_steps(config, dataset.train_size, steps)
    say(f"config {config.name}:\n{format_config(config)}")
    say(f"data {dataset.name}: {dataset.train_size} train / {dataset.test_size} test images "
        f"{dataset.image_shape}, {dataset.num_classes} classes; {total} steps (warmup {warmup}) "
        f"on {len(devices)} device(s) [{devices[0].platform}]")

    ckpt_dir = workdir / "checkpoints"
    latest = _resume_point(ckpt_dir, config, total, resume, say)

    dtype = jnp.dtype(config.dtype)
    mesh = make_mesh(devices)
    model = build_model(config, dataset, jax.random.PRNGKey(config.seed))
    params, static = split_model(model)
    schedule = make_schedule(config, total, warmup)
    optimizer = make_optimizer(config, schedule)
    opt_state = optimizer.init(params)
    names = stage_names(model, config.layer)

    start = latest or 0
    if latest is not None:
        params, opt_state = ckpt.restore(ckpt_dir, latest, (params, opt_state))
        say(f"resumed from step {start} ({ckpt.step_dir(ckpt_dir, start)})")
    if lead:
        workdir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_partial(ckpt_dir)
        _write_atomic(workdir / "config.json", json.dumps(config.to_dict(), indent=1) + "\n")
    params, opt_state = replicate(params, mesh), replicate(opt_state, mesh)
    log = MetricsLog(workdir / "metrics.jsonl", keep_until=start, enabled=lead)

    train_step = make_train_step(static, optimizer, mesh, dtype)
    eval_step = make_eval_step(static, mesh, dtype)
    process = dict(process_index=jax.process_index(), process_count=jax.process_count())
    train_data = data_lib.train_batches(dataset, batch_size=config.batch_size, seed=config.seed,
                                        mixup_alpha=config.mixup, **process)
    eval_data = data_lib.eval_batches(dataset, batch_size=config.eval_batch_size, **process)

    last_eval: dict[str, float] = {}
    if start >= total:
        last_eval = next((r for r in reversed(read_metrics(workdir / "metrics.jsonl")) if r["split"] == "test"), {})
    bar = tqdm(total=total, initial=start, desc=config.name, unit="step", dynamic_ncols=True,
               disable=not (verbose and lead), smoothing=0.1)
    window = _Window([], time.perf_counter(), start)
    pending: tuple[int, dict[str, Array]] | None = None
    batches = data_lib.iterate(train_data, start, total, threads=config.data_threads, workers=config.data_workers)
    t_run = time.perf_counter()
    try:
        for step in range(start + 1, total + 1):
            params, opt_state, metrics = train_step(params, opt_state, shard_batch(next(batches), mesh))
            if pending is not None:  # checked one step late, so the device is never idle waiting for it
                check_finite(pending[0], jax.device_get(pending[1]), names)
            pending = (step, metrics)
            window.values.append(metrics)
            bar.update(1)
            boundary = step == total
            if step % config.log_every == 0 or boundary:
                check_finite(step, jax.device_get(metrics), names)
                record = _mean_record(window.values)
                elapsed = time.perf_counter() - window.start_time
                images = (step - window.start_step) * config.batch_size
                log.write({"split": "train", "step": step, **record, "lr": float(schedule(step - 1)),
                           "images_per_s": images / elapsed, "elapsed_s": time.perf_counter() - t_run})
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{images / elapsed:.0f}")
                window = _Window([], time.perf_counter(), step)
            if step % config.eval_every == 0 or boundary:
                check_finite(step, jax.device_get(metrics), names)
                last_eval = evaluate(params, eval_step, eval_data, mesh, config.data_threads)
                record = {"split": "test", "step": step, **last_eval}
                log.write(record)
                if verbose and lead:
                    bar.write(f"step {step}: test loss {last_eval['loss']:.4f}, "
                              f"accuracy {last_eval['accuracy']:.4f}")
                window.start_time = time.perf_counter()  # evaluation is not training throughput
            if step % config.checkpoint_every == 0 or boundary:
                check_finite(step, jax.device_get(metrics), names)
                if lead:
                    ckpt.save(ckpt_dir, step, (params, opt_state),
                              {"config": config.to_dict(), "data": config.data, "total_steps": total},
                              keep=config.keep_checkpoints)
                window.start_time = time.perf_counter()  # nor is writing a checkpoint
    finally:
        bar.close()
        batches.close()
    if lead and plots:
        for path in plot(workdir):
            say(f"wrote {path}")
    accuracy = last_eval.get("accuracy", float("nan"))
    say(f"test accuracy: {accuracy:.4f}")
    return {"step": total, "test_loss": last_eval.get("loss", float("nan")), "test_accuracy": accuracy,
            "params": sum(x.size for x in jax.tree_util.tree_leaves(params)), "workdir": str(workdir)}


# -------------------------------------------------------------------------------------------- CLI


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise _UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``ttt-compile train CONFIG [--data digits|imagenet:DIR] [--workdir DIR] [--steps N] [--resume]``;
    returns the exit code (0 done, 1 non-finite values, 2 bad arguments or config)."""
    parser = _Parser(prog="ttt-compile train", description="Train a ViT with a (compiled) attention/TTT layer.")
    parser.add_argument("config", help="a config .py file (defining get_config()) or a name under ttt_compile/configs")
    parser.add_argument("--data", help="digits | imagenet:DIR (default: the config's)")
    parser.add_argument("--workdir", help="where metrics, checkpoints and plots go (default: runs/<config name>)")
    parser.add_argument("--steps", type=_positive_int, help="train for N steps (the schedule is scaled to N)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --workdir")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except _UsageError as e:
        usage = " ".join(parser.format_usage().split()[1:])
        print(f"ttt-compile train: error: {e} (usage: {usage})", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    try:
        train(load_config(args.config), data=args.data, workdir=args.workdir, steps=args.steps, resume=args.resume)
    except (ConfigError, ckpt.CheckpointError) as e:
        print(f"ttt-compile train: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"ttt-compile train: stopped: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
