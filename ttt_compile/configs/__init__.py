"""Experiment configs: one plain Python file per experiment, each defining ``get_config() -> Config``.

``load_config("digits_tiny")`` imports ``ttt_compile/configs/digits_tiny.py``; ``load_config(path)``
imports any file that defines ``get_config``. ``validate(config, ...)`` checks a config against the
data and the devices and raises :class:`ConfigError` naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VIT_PRESETS = ("Ti", "S", "B")
DTYPES = ("float32", "bfloat16")
POSEMBS = ("learn", "sincos2d")


class ConfigError(ValueError):
    """A config (or a command-line override of one) that cannot run; the message names the fix."""


@dataclass(frozen=True)
class Config:
    """Everything a training run depends on. Defaults give a small CPU run on the digits.

    Task: ``data`` names it. Image classification (a ViT): ``"digits"`` (embedded 8x8 digits, 1797
    images) or ``"imagenet:DIR"`` (``DIR/train/<class>/*.JPEG`` and ``DIR/val/<class>/*.JPEG``).
    Causal language modelling (a causal LM): ``"text"``, the embedded character corpus, windows of
    ``seq_len`` tokens, validation on ``eval_examples`` windows of the held-out last 10%.
    Multi-query associative recall: ``"mqar"``, ``num_pairs`` key-value pairs in sequences of
    ``seq_len`` over ``vocab`` ids, accuracy on ``eval_examples`` held-out sequences. The sequence
    tasks use ``width``, ``depth``, ``heads``, ``mlp_dim``, ``layer`` (the token mixer, made causal),
    ``layer_options`` and ``passes``; ``prev_token`` adds the previous token's embedding.
    Image classification train-time augmentation:
    ``crop_area_min`` (random-resized crop keeping a fraction in ``[crop_area_min, 1]`` of the
    area, aspect ratio in ``[3/4, 4/3]``; ``None``: none), ``flip`` (left-right, p = 1/2),
    ``randaugment = (layers, magnitude)``, ``mixup`` (alpha of the Beta(alpha, alpha) mix; 0: off).

    Model: a ViT preset (``vit``: Ti / S / B) whose fields ``width``, ``depth``, ``heads``,
    ``mlp_dim`` may be overridden; ``patch`` (1 = raw pixels as tokens); ``posemb``; the attention
    layer ``layer`` (a preset of ``ttt_compile.models.layers`` or ``"module:attr"`` naming a factory
    ``f(dim=, heads=, key=, **layer_options)``) and the compiler ``passes`` (``None``: run the layer
    uncompiled, its reference semantics).  ``remat_budget`` plans each compiled layer's memory
    (``tc.compile(..., remat_budget=)``: token chunk and remat schemes, measured): bytes of one layer's
    training-step temp memory per sequence, or ``"auto"``: half of one device's memory shared by the
    ``depth`` layers of the sequences one device holds (``batch_size`` / devices), i.e.
    ``0.5 * device_memory / (depth * batch_size / devices)``; ``None``: no plan.

    Optimisation: AdamW with ``weight_decay`` decoupled as in Beyer et al. (2022):
    ``w <- w - lr_t (adam_t + (weight_decay / lr) w)``, i.e. the decay follows the schedule's shape
    but not its scale; linear warmup over ``warmup_steps`` then cosine decay to 0 at the last step.
    Exactly one of ``steps`` and ``epochs`` gives the run's length.

    Devices: ``mesh`` maps axis names to sizes: ``"data"`` splits each batch, ``"fsdp"`` splits each
    batch too and also shards every parameter and optimiser-state array along its largest dimension
    divisible by the axis size; one size may be -1 (all remaining devices). ``async_checkpoints``:
    training continues while a checkpoint is written.
    """

    name: str = "digits"
    seed: int = 0
    # data
    data: str = "digits"
    image_size: int = 8
    test_fraction: float = 0.2
    crop_area_min: float | None = None
    flip: bool = False
    randaugment: tuple[int, int] | None = None
    mixup: float = 0.0
    data_threads: int = 4
    data_workers: int = 0
    # sequence tasks (data = "text" | "mqar")
    seq_len: int = 128
    num_pairs: int = 8
    vocab: int = 64
    prev_token: bool = False
    eval_examples: int = 256
    # model
    vit: str = "Ti"
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_dim: int | None = None
    patch: int = 1
    posemb: str = "learn"
    layer: str = "self_attention"
    layer_options: Mapping[str, Any] = field(default_factory=dict)
    passes: str | tuple[str, ...] | None = "default"
    remat_budget: int | str | None = None
    # optimisation
    batch_size: int = 64
    eval_batch_size: int = 256
    steps: int | None = 200
    epochs: float | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    b1: float = 0.9
    b2: float = 0.999
    grad_clip: float | None = 1.0
    dtype: str = "float32"
    # loop
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    async_checkpoints: bool = False
    # devices
    mesh: Mapping[str, int] = field(default_factory=lambda: {"data": -1})

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied; unknown field names raise :class:`ConfigError`."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {', '.join(unknown)}: valid fields are "
                f"{', '.join(f.name for f in dataclasses.fields(self))}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (tuples as lists, mappings as dicts)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=_jsonable))

    def model_dims(self) -> dict[str, int]:
        """``width``, ``depth``, ``heads``, ``mlp_dim``: the ViT preset with this config's overrides."""
        from ttt_compile.models.vit import PRESETS

        dims = dict(PRESETS[self.vit])
        for k in dims:
            if getattr(self, k) is not None:
                dims[k] = getattr(self, k)
        return dims


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{value!r} is not JSON-serialisable")


def format_config(config: Config) -> str:
    """One ``field = value`` line per field, in declaration order."""
    width = max(len(f.name) for f in dataclasses.fields(config))
    return "\n".join(f"  {f.name:<{width}} = {getattr(config, f.name)!r}" for f in dataclasses.fields(config))


def available() -> list[str]:
    """Names of the config files shipped in this package."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))


def load_config(name_or_path: str) -> Config:
    """The ``Config`` from ``get_config()`` of a ``.py`` file path or a shipped config name."""
    path = Path(name_or_path)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise ConfigError(
                f"config file {name_or_path} does not exist: give a .py file that defines "
                f"get_config() or one of: {', '.join(available())}"
            )
        spec = importlib.util.spec_from_file_location(f"_ttt_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        if name_or_path not in available():
            raise ConfigError(f"unknown config {name_or_path!r}: give a .py path or one of: {', '.join(available())}")
        module = importlib.import_module(f"{__name__}.{name_or_path}")
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config {name_or_path} defines no get_config(): add `def get_config() -> Config`")
    config = module.get_config()
    if not isinstance(config, Config):
        raise ConfigError(
            f"get_config() in {name_or_path} returned {type(config).__name__}, not ttt_compile.configs.Config"
        )
    return config


#: The task each kind of data set trains: image classification, language modelling, recall.
TASKS = {"digits": "classify", "imagenet": "classify", "text": "lm", "mqar": "recall"}
MESH_AXES = ("data", "fsdp")


def data_spec(data: str) -> tuple[str, str | None]:
    """``("digits", None)``, ``("imagenet", DIR)``, ``("text", None)`` or ``("mqar", None)`` from the
    ``data`` field / ``--data`` option."""
    kind, _, where = data.partition(":")
    if kind in ("digits", "text", "mqar") and not where:
        return kind, None
    if kind == "imagenet" and where:
        return "imagenet", where
    raise ConfigError(
        f"data={data!r} is not a data set: use 'digits', 'imagenet:DIR' "
        "(DIR holding train/<class>/*.JPEG and val/<class>/*.JPEG), 'text' or 'mqar'"
    )


def task_of(config: Config) -> str:
    """``"classify"``, ``"lm"`` or ``"recall"``: the task the config's data set trains."""
    return TASKS[data_spec(config.data)[0]]


def mesh_shape(mesh: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """The ``mesh`` field with its -1 resolved so that the sizes multiply to ``num_devices``."""
    if not isinstance(mesh, Mapping) or not mesh:
        raise ConfigError(f"mesh={mesh!r} must be a dict of axis sizes, e.g. {{'data': -1, 'fsdp': 2}}")
    unknown = [k for k in mesh if k not in MESH_AXES]
    _require(not unknown, f"mesh axis {unknown[0] if unknown else ''!r} is unknown: use {' and '.join(MESH_AXES)}")
    sizes = dict(mesh)
    free = [k for k, v in sizes.items() if v == -1]
    bad = [k for k, v in sizes.items() if not (isinstance(v, int) and (v > 0 or v == -1))]
    _require(
        not bad and len(free) <= 1,
        f"mesh={dict(mesh)}: sizes must be positive integers, at most one of them -1 (all remaining devices)",
    )
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        _require(
            num_devices % fixed == 0,
            f"mesh={dict(mesh)} needs a multiple of {fixed} devices, {num_devices} are present: change the mesh sizes",
        )
        sizes[free[0]] = num_devices // fixed
    _require(
        math.prod(sizes.values()) == num_devices,
        f"mesh={dict(mesh)} has {math.prod(sizes.values())} devices, {num_devices} are present: "
        "set one size to -1 or make them multiply to the device count",
    )
    return sizes


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(config: Config, *, num_devices: int = 1, image_size: int | None = None) -> Config:
    """Check every field that can be checked before building anything; return ``config``.

    ``image_size`` is the side of the images the data set yields (defaults to ``config.image_size``),
    ``num_devices`` the number of devices the batch is split over.
    """
    c = config
    data_spec(c.data)
    _require(c.vit in VIT_PRESETS, f"vit={c.vit!r} is not a ViT preset: use one of {', '.join(VIT_PRESETS)}")
    dims = c.model_dims()
    for k, v in dims.items():
        _require(isinstance(v, int) and v > 0, f"{k}={v!r} must be a positive integer")
    _require(
        dims["width"] % dims["heads"] == 0,
        f"width={dims['width']} is not divisible by heads={dims['heads']}: choose heads dividing width",
    )
    side = image_size if image_size is not None else c.image_size
    _require(isinstance(c.patch, int) and c.patch > 0, f"patch={c.patch!r} must be a positive integer")
    if side % c.patch:
        divisors = [d for d in range(1, side + 1) if side % d == 0]
        raise ConfigError(
            f"patch={c.patch} does not divide image_size={side}: set patch to one of {', '.join(map(str, divisors))}"
        )
    _require(c.posemb in POSEMBS, f"posemb={c.posemb!r} is unknown: use one of {', '.join(POSEMBS)}")
    _require(
        c.posemb != "sincos2d" or dims["width"] % 4 == 0,
        f"posemb='sincos2d' needs width divisible by 4, got width={dims['width']}: change width or use posemb='learn'",
    )
    presets = layer_presets()
    _require(
        c.layer in presets or _is_module_attr(c.layer),
        f"layer={c.layer!r} is not a layer preset: use one of {', '.join(presets)} "
        "or 'module:attr' naming a layer factory",
    )
    _require(isinstance(c.layer_options, Mapping), "layer_options must be a dict of preset options")
    _require(c.dtype in DTYPES, f"dtype={c.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
    _require(
        (c.steps is None) != (c.epochs is None),
        f"steps={c.steps!r}, epochs={c.epochs!r}: set exactly one of them (the other to None)",
    )
    _require(
        c.steps is None or (isinstance(c.steps, int) and c.steps > 0), f"steps={c.steps!r} must be a positive integer"
    )
    _require(c.epochs is None or c.epochs > 0, f"epochs={c.epochs!r} must be positive")
    for k in (
        "batch_size",
        "eval_batch_size",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "seq_len",
        "eval_examples",
    ):
        v = getattr(c, k)
        _require(isinstance(v, int) and v > 0, f"{k}={v!r} must be a positive integer")
    _require(isinstance(c.warmup_steps, int) and c.warmup_steps >= 0, f"warmup_steps={c.warmup_steps!r} must be >= 0")
    _require(c.lr > 0 and math.isfinite(c.lr), f"lr={c.lr!r} must be a positive number")
    _require(c.weight_decay >= 0, f"weight_decay={c.weight_decay!r} must be >= 0")
    _require(c.grad_clip is None or c.grad_clip > 0, f"grad_clip={c.grad_clip!r} must be positive or None")
    _require(0.0 < c.test_fraction < 1.0, f"test_fraction={c.test_fraction!r} must lie in (0, 1)")
    _require(
        c.crop_area_min is None or 0.0 < c.crop_area_min <= 1.0,
        f"crop_area_min={c.crop_area_min!r} must lie in (0, 1] or be None (no random crop)",
    )
    _require(c.mixup >= 0, f"mixup={c.mixup!r} must be >= 0 (0 turns it off)")
    _require(
        c.randaugment is None or (len(c.randaugment) == 2 and c.randaugment[0] >= 0 and 0 <= c.randaugment[1] <= 10),
        f"randaugment={c.randaugment!r} must be (layers >= 0, magnitude in 0..10) or None",
    )
    _require(
        c.checkpoint_every % c.log_every == 0,
        f"checkpoint_every={c.checkpoint_every} is not a multiple of log_every={c.log_every}: "
        "make it one, so a resumed run logs the same windows",
    )
    for k in ("batch_size", "eval_batch_size"):
        v = getattr(c, k)
        _require(
            v % num_devices == 0,
            f"{k}={v} is not divisible by the {num_devices} devices: use a multiple of {num_devices}",
        )
    mesh_shape(c.mesh, num_devices)
    _require(
        c.remat_budget in (None, "auto")
        or (isinstance(c.remat_budget, int) and not isinstance(c.remat_budget, bool) and c.remat_budget > 0),
        f"remat_budget={c.remat_budget!r} must be None, 'auto' or a positive number of bytes",
    )
    _require(
        c.remat_budget is None or c.passes is not None,
        "remat_budget plans compiled layers, but passes=None runs them uncompiled: set passes or drop remat_budget",
    )
    if task_of(c) != "classify":
        chunk = c.layer_options.get("chunk") if isinstance(c.layer_options, Mapping) else None
        _require(
            chunk is None or (isinstance(chunk, int) and chunk > 0 and c.seq_len % chunk == 0),
            f"layer_options chunk={chunk!r} must divide seq_len={c.seq_len}: choose a divisor of seq_len",
        )
        _require(
            c.layer in SEQUENCE_LAYERS,
            f"layer={c.layer!r} cannot mix tokens causally: for data={c.data!r} "
            f"use one of {', '.join(SEQUENCE_LAYERS)}",
        )
    if task_of(c) == "recall":
        problem = mqar_shape_problem(c.seq_len, c.num_pairs, c.vocab)
        _require(problem is None, f"MQAR: {problem}: change seq_len, num_pairs or vocab")
    return config


def mqar_shape_problem(seq_len: int, num_pairs: int, vocab: int) -> str | None:
    """Why an MQAR task of length L = seq_len with N = num_pairs pairs over V = vocab ids cannot be
    generated (None if it can): it needs N >= 1, V >= 4, L >= 4N (2N context tokens plus N queried
    key/value pairs) and N distinct keys among ids 1..V//2-1."""
    if num_pairs < 1 or vocab < 4:
        return f"need num_pairs >= 1 and vocab >= 4, got num_pairs={num_pairs}, vocab={vocab}"
    if seq_len < 4 * num_pairs:
        return f"seq_len={seq_len} < 4 * num_pairs={4 * num_pairs} (2N context tokens plus N key/value query pairs)"
    if num_pairs > vocab // 2 - 1:
        return f"num_pairs={num_pairs} distinct keys need vocab >= {2 * (num_pairs + 1)}, got vocab={vocab}"
    return None


#: The layers a causal LM can use (each made causal: see ttt_compile.training.tasks.causal_mixer).
SEQUENCE_LAYERS = (
    "linear_attention",
    "linear_attention_elu1",
    "mttt_linear",
    "mttt_mlp",
    "mttt_nested",
    "self_attention",
    "ttt_linear",
    "ttt_mlp",
)


def layer_presets() -> list[str]:
    """The preset names of ``ttt_compile.models.layers``."""
    from ttt_compile.models import layers

    return list(layers.PRESETS)


def _is_module_attr(name: str) -> bool:
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr)
