"""Task adapters: what the one trainer (:mod:`ttt_compile.training.trainer`) needs to know about a task.

A task builds the model (its attention / token-mixing layers compiled by ``tc.compile``), gives the
training loss of a batch with per-stage finiteness (for naming where values broke), the sums an
evaluation adds up over the test set, and the grain pipelines of its data:

- :class:`ImageClassification`: a ViT over patches or raw pixels (``data = "digits" | "imagenet:DIR"``),
  ``L = 1/B sum_i CE(softmax(ViT(x_i)), y_i)`` against one-hot or mixed-up targets;
- :class:`LanguageModelling` (``data = "text"``) and :class:`Recall` (``data = "mqar"``): a causal LM,
  ``L = sum_{b,i} m_{b,i} CE(logits(x_b)_i, y_{b,i}) / sum_{b,i} m_{b,i}`` over the scored positions.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import equinox as eqx
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PyTree

from ttt_compile.configs import Config, ConfigError, task_of, validate
from ttt_compile.training import data as data_lib
from ttt_compile.training import mqar, sequences


def cast_floats(tree: PyTree, dtype: Any) -> PyTree:
    """Every floating-point array leaf of ``tree`` cast to ``dtype`` (other leaves unchanged)."""
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree)


# ------------------------------------------------------------------------------------------ layers


def resolve_layer(name: str) -> Callable[..., eqx.Module]:
    """The layer factory ``name`` names: a preset of ``ttt_compile.models.layers`` or ``module:attr``."""
    from ttt_compile.models import layers

    module_name, sep, attr = name.partition(":")
    if not sep:
        if name not in layers.PRESETS:
            raise ConfigError(
                f"layer={name!r} is not a layer preset: use one of {', '.join(layers.PRESETS)} "
                "or 'module:attr' naming a layer factory"
            )
        return layers.PRESETS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"layer={name!r}: cannot import {module_name} ({e}): fix the module path") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(
            f"layer={name!r}: {module_name} has no layer factory {attr!r}: "
            "use a preset name or 'module:attr' of a callable"
        )
    return factory


def bind_factory(name: str, make: Callable[..., eqx.Module], options: dict[str, Any]) -> Callable[..., eqx.Module]:
    """``factory(dim=, heads=, key=)``: ``make`` with ``options``; bad options raise :class:`ConfigError`."""
    from ttt_compile.layer.spec import SpecError

    def factory(*, dim: int, heads: int, key: Any) -> eqx.Module:
        try:
            inspect.signature(make).bind(dim=dim, heads=heads, key=key, **options)
            return make(dim=dim, heads=heads, key=key, **options)
        except (TypeError, SpecError, ValueError) as e:
            raise ConfigError(f"layer={name!r} with layer_options={options}: {e}") from e

    return factory


def causal_mixer(config: Config) -> Callable[..., eqx.Module]:
    """The config's layer made causal: linear attention as the chunked causal form
    (``causal.causal_linear_attention``), self-attention masked, a TTT layer with the online inner
    loop (``batching="online"`` unless the options say otherwise)."""
    from ttt_compile.models import layers
    from ttt_compile.models.causal import causal_linear_attention

    options = dict(config.layer_options)
    if config.layer.startswith("linear_attention"):
        feature_map = "elu1" if config.layer.endswith("elu1") else "identity"
        return bind_factory(config.layer, partial(causal_linear_attention, feature_map=feature_map), options)
    if config.layer == "self_attention":
        return bind_factory(config.layer, partial(layers.self_attention, causal=True), options)
    options.setdefault("batching", "online")
    return bind_factory(config.layer, resolve_layer(config.layer), options)


class CompiledLayer(eqx.Module):
    """A layer compiled by ``tc.compile`` together with the non-float part of its source module, so
    that the source's methods (``inner_losses``, the LM's decode) run on the trained parameters.

    Its float leaves are exactly the compiled program's (the outer parameters)."""

    compiled: eqx.Module
    source: Any

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        return self.compiled(x)

    @property
    def layer(self) -> eqx.Module:
        """The source layer with the current parameters."""
        return eqx.combine(self.compiled.params, self.source)

    @property
    def inner_losses(self) -> Callable[[Array], Array] | None:
        """The source layer's ``inner_losses`` on the current parameters (None if it has none)."""
        fn = getattr(self.layer, "inner_losses", None)
        return fn if callable(fn) else None


def device_memory_bytes(device=None) -> int:
    """One device's memory: the allocator's limit where the device reports one (GPU/TPU), else the
    host's physical memory (CPU)."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def remat_budget(config: Config, depth: int, num_devices: int | None = None) -> int | None:
    """The per-layer, per-sequence budget `tc.compile` plans with: ``config.remat_budget`` bytes, or for
    "auto" ``0.5 * device memory / (depth * sequences per device)``."""
    if config.remat_budget != "auto":
        return config.remat_budget
    per_device = max(1, config.batch_size // (num_devices or jax.device_count()))
    return int(0.5 * device_memory_bytes() / (max(depth, 1) * per_device))


def compile_layers(
    model: eqx.Module, where: Callable[[Any], list[eqx.Module]], n_tokens: int, width: int, config: Config
) -> eqx.Module:
    """Every layer ``where(model)`` lists compiled with ``tc.compile(layer, x, passes=config.passes)`` on an
    ``(n_tokens, width)`` example in the compute dtype, its float leaves kept in float32 (the master
    weights), and wrapped in :class:`CompiledLayer`. ``passes = None`` leaves the model as it is."""
    import ttt_compile as tc

    if config.passes is None:
        return model
    passes = config.passes if isinstance(config.passes, str) else list(config.passes)
    dtype = jnp.dtype(config.dtype)
    example = np.random.default_rng(0).standard_normal((n_tokens, width)).astype(dtype)
    compiled = []
    layers_ = where(model)
    budget = remat_budget(config, len(layers_))
    for layer in layers_:
        params, source = eqx.partition(cast_floats(layer, dtype), eqx.is_inexact_array)
        program = tc.compile(eqx.combine(params, source), example, passes=passes, remat_budget=budget)
        compiled.append(CompiledLayer(cast_floats(program, jnp.float32), source))
    return eqx.tree_at(where, model, compiled)


def source_model(model: eqx.Module) -> eqx.Module:
    """``model`` with every :class:`CompiledLayer` replaced by its source layer (same parameters)."""
    return jax.tree_util.tree_map(
        lambda x: x.layer if isinstance(x, CompiledLayer) else x, model, is_leaf=lambda x: isinstance(x, CompiledLayer)
    )


def _masked_ce(logits: Float[Array, "b n v"], targets: Int[Array, "b n"], mask: Array) -> tuple[Array, Array]:
    """Sum of the cross-entropy and of the argmax hits over the masked positions."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    mask = mask.astype(jnp.float32)
    return jnp.sum(ce * mask), jnp.sum((jnp.argmax(logits, -1) == targets) * mask)


# ------------------------------------------------------------------------------------------- tasks


class Task:
    """The trainer's view of a task (see the module doc); subclasses fill in the model and data."""

    unit = "examples"  # what the throughput counts: images, sequences
    train_size: int | None = None  # examples per epoch (None: an endless stream)

    def __init__(self, config: Config, num_devices: int = 1):
        self.config = config

    def describe(self) -> str:
        raise NotImplementedError

    def build(self, key: Any) -> eqx.Module:
        raise NotImplementedError

    def stage_names(self, model: eqx.Module) -> list[str]:
        raise NotImplementedError

    def stage_trees(self, tree: PyTree) -> list[Any]:
        raise NotImplementedError

    def loss(self, model: eqx.Module, batch: dict[str, Array]) -> tuple[Float[Array, ""], dict[str, Array]]:
        """``(L, {"accuracy", "finite": Bool[stages]})`` on one batch."""
        raise NotImplementedError

    def eval_sums(self, model: eqx.Module, batch: dict[str, Array]) -> dict[str, Any]:
        """Sums over a batch's unmasked examples: ``loss``, ``correct``, ``count`` (and task extras)."""
        raise NotImplementedError

    def eval_result(self, total: dict[str, Any]) -> dict[str, Any]:
        count = float(total["count"])
        return {"loss": float(total["loss"]) / count, "accuracy": float(total["correct"]) / count}

    def train_batches(self, process_index: int, process_count: int) -> grain.MapDataset:
        raise NotImplementedError

    def eval_batches(self, process_index: int, process_count: int) -> grain.MapDataset:
        raise NotImplementedError


class ImageClassification(Task):
    """A ViT (``vit`` preset, ``patch``; 1 = raw pixels as tokens) classifying images."""

    unit = "images"

    def __init__(self, config: Config, num_devices: int = 1):
        super().__init__(config)
        self.data = data_lib.load(config)
        validate(config, num_devices=num_devices, image_size=self.data.image_shape[0])
        self.train_size = self.data.train_size

    def describe(self) -> str:
        d = self.data
        return (
            f"data {d.name}: {d.train_size} train / {d.test_size} test images {d.image_shape}, {d.num_classes} classes"
        )

    def build(self, key: Any) -> eqx.Module:
        """The ViT, its attention layers compiled (built eagerly: the per-primitive executables are
        cached across models, while a jitted constructor would compile anew for every config)."""
        from ttt_compile.models.vit import ViT

        c = self.config
        rows, cols, channels = self.data.image_shape
        factory = bind_factory(c.layer, resolve_layer(c.layer), dict(c.layer_options))
        model = ViT(
            image_size=(rows, cols),
            channels=channels,
            num_classes=self.data.num_classes,
            patch=c.patch,
            posemb=c.posemb,
            layer=factory,
            key=key,
            **c.model_dims(),
        )
        return compile_layers(
            model, lambda m: [b.attn for b in m.blocks], model.num_tokens, model.embed.out_features, c
        )

    def stage_names(self, model):
        from ttt_compile.models.vit import stage_names

        return stage_names(model, self.config.layer)

    def stage_trees(self, tree):
        from ttt_compile.models.vit import stage_trees

        return stage_trees(tree)

    def loss(self, model, batch):
        logits, finite = jax.vmap(model.trace)(batch["image"].astype(jnp.dtype(self.config.dtype)))
        logits = logits.astype(jnp.float32)
        loss = jnp.mean(optax.softmax_cross_entropy(logits, batch["target"]))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, {"accuracy": accuracy, "finite": jnp.all(finite, axis=0)}

    def eval_sums(self, model, batch):
        """Also ``inner_loss``: per block, the layer's inner losses ``(heads, steps+1)`` summed over the
        examples (``None`` for blocks whose layer has none)."""
        images, labels, mask = batch["image"].astype(jnp.dtype(self.config.dtype)), batch["label"], batch["mask"]
        logits = jax.vmap(model)(images).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        inner = jax.vmap(model.inner_losses)(images) if model.has_inner_losses() else ()
        return {
            "loss": jnp.sum(ce * mask),
            "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            "count": jnp.sum(mask),
            "inner_loss": jax.tree_util.tree_map(lambda v: jnp.tensordot(mask, v.astype(jnp.float32), 1), inner),
        }

    def eval_result(self, total):
        result = super().eval_result(total)
        count = float(total["count"])
        inner = {
            f"blocks[{i}]": (np.mean(v, axis=0) / count).tolist()
            for i, v in enumerate(total["inner_loss"])
            if v is not None
        }
        if inner:
            result["inner_loss"] = inner
        return result

    def train_batches(self, process_index, process_count):
        c = self.config
        return data_lib.train_batches(
            self.data,
            batch_size=c.batch_size,
            seed=c.seed,
            mixup_alpha=c.mixup,
            process_index=process_index,
            process_count=process_count,
        )

    def eval_batches(self, process_index, process_count):
        return data_lib.eval_batches(
            self.data, batch_size=self.config.eval_batch_size, process_index=process_index, process_count=process_count
        )


class _Sequences(Task):
    """A causal LM (``width``, ``depth``, ``heads``, ``mlp_dim``, context ``seq_len``) over token ids."""

    unit = "sequences"
    vocab_size: int

    def build(self, key: Any) -> eqx.Module:
        from ttt_compile.layer.spec import SpecError
        from ttt_compile.models.lm import causal_lm

        c = self.config
        dims = c.model_dims()
        try:
            model = causal_lm(
                vocab=self.vocab_size,
                max_len=c.seq_len,
                mixer=causal_mixer(c),
                prev_token=c.prev_token,
                key=key,
                **dims,
            )
        except SpecError as e:
            raise ConfigError(f"layer={c.layer!r} with layer_options={dict(c.layer_options)}: {e}") from e
        return compile_layers(model, lambda m: [b.mixer for b in m.blocks], c.seq_len, dims["width"], c)

    def stage_names(self, model):
        from ttt_compile.models.lm import stage_names

        return stage_names(model, self.config.layer)

    def stage_trees(self, tree):
        from ttt_compile.models.lm import stage_trees

        return stage_trees(tree)

    def loss(self, model, batch):
        logits, finite = jax.vmap(model.trace)(batch["inputs"])
        ce, hits = _masked_ce(logits.astype(jnp.float32), batch["targets"], batch["mask"])
        count = jnp.maximum(jnp.sum(batch["mask"].astype(jnp.float32)), 1.0)
        return ce / count, {"accuracy": hits / count, "finite": jnp.all(finite, axis=0)}

    def eval_sums(self, model, batch):
        logits = jax.vmap(model)(batch["inputs"]).astype(jnp.float32)
        ce, hits = _masked_ce(logits, batch["targets"], batch["mask"])
        return {"loss": ce, "correct": hits, "count": jnp.sum(batch["mask"].astype(jnp.float32))}

    def _batches(self, examples, process_index, process_count):
        return sequences.train_batches(
            examples, batch_size=self.config.batch_size, process_index=process_index, process_count=process_count
        )

    def _eval(self, records, process_index, process_count):
        return sequences.eval_batches(
            records, batch_size=self.config.eval_batch_size, process_index=process_index, process_count=process_count
        )


class LanguageModelling(_Sequences):
    """Next-character prediction on the embedded corpus; reports per-character perplexity ``exp(L)``
    and bits per character ``L / ln 2`` on the held-out windows."""

    def __init__(self, config: Config, num_devices: int = 1):
        super().__init__(config)
        self.corpus = sequences.Corpus.load()
        self.vocab_size = self.corpus.vocab.size

    def describe(self) -> str:
        c = self.corpus
        return (
            f"data text: {len(c.train):,} train / {len(c.val):,} held-out characters, {c.vocab.size} symbols; "
            f"windows of {self.config.seq_len}, {self.config.eval_examples} held-out windows"
        )

    def eval_result(self, total):
        result = super().eval_result(total)
        return {**result, "perplexity": math.exp(result["loss"]), "bits_per_token": result["loss"] / math.log(2)}

    def train_batches(self, process_index, process_count):
        c = self.config
        return self._batches(
            sequences.text_examples(self.corpus.train, c.seq_len, c.seed), process_index, process_count
        )

    def eval_batches(self, process_index, process_count):
        c = self.config
        return self._eval(
            sequences.text_eval_records(self.corpus.val, c.seq_len, c.eval_examples), process_index, process_count
        )


class Recall(_Sequences):
    """Multi-query associative recall: accuracy is the fraction of queried keys whose value is the argmax."""

    def __init__(self, config: Config, num_devices: int = 1):
        super().__init__(config)
        self.spec = mqar.MQARSpec(config.seq_len, config.num_pairs, config.vocab)
        self.vocab_size = config.vocab

    def describe(self) -> str:
        s = self.spec
        return (
            f"data mqar: {s.num_pairs} pairs in sequences of {s.seq_len} over {s.vocab} ids, fresh examples "
            f"each step, {self.config.eval_examples} held-out examples"
        )

    def train_batches(self, process_index, process_count):
        return self._batches(sequences.mqar_examples(self.spec, self.config.seed), process_index, process_count)

    def eval_batches(self, process_index, process_count):
        c = self.config
        return self._eval(sequences.mqar_eval_records(self.spec, c.seed, c.eval_examples), process_index, process_count)


TASKS: dict[str, type[Task]] = {"classify": ImageClassification, "lm": LanguageModelling, "recall": Recall}


def make_task(config: Config, num_devices: int = 1) -> Task:
    """The adapter of the config's task (see :func:`ttt_compile.configs.task_of`) for a mesh of
    ``num_devices`` devices."""
    return TASKS[task_of(config)](config, num_devices)


__all__ = [
    "Task",
    "ImageClassification",
    "LanguageModelling",
    "Recall",
    "make_task",
    "CompiledLayer",
    "compile_layers",
    "remat_budget",
    "source_model",
    "resolve_layer",
    "causal_mixer",
    "cast_floats",
]
