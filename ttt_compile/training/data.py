"""Input pipelines (grain): the embedded 8x8 digits and ImageNet from class folders of JPEGs.

Every batch is a pure function of ``(seed, step)``: the training examples are a ``grain.MapDataset``
shuffled with ``seed`` and repeated (a new permutation each epoch), random augmentations draw from a
generator that grain derives from the example's global index, and the batch of step ``s`` on
process ``h`` of ``P`` holds the examples ``s*B + h*B/P ... s*B + (h+1)*B/P - 1``. A resumed run
therefore sees exactly the batches an uninterrupted one would, whatever happened before.

Records are dicts of numpy arrays: ``image`` float32 ``(h, w, c)``, ``label`` int32; training
batches add ``target`` (float32 ``(B, classes)``, one-hot or mixed up), evaluation batches add
``mask`` (1 for real examples, 0 for the padding that fills the last batch).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grain
import numpy as np
from jaxtyping import Float, Int
from PIL import Image, ImageEnhance, ImageOps

from ttt_compile.configs import Config, ConfigError, data_spec

DIGITS_PATH = Path(__file__).parents[1] / "assets" / "digits.npz"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
Record = dict[str, np.ndarray]
Transform = Callable[[Any, np.random.Generator], Record]


@dataclass(frozen=True)
class Data:
    """A data set ready for :func:`train_batches` / :func:`eval_batches`.

    ``train`` holds raw training examples, turned into records by ``train_transform(example, rng)``
    (random augmentation); ``test`` holds ready evaluation records.
    """

    name: str
    train: grain.MapDataset
    train_transform: Transform
    test: grain.MapDataset
    num_classes: int
    image_shape: tuple[int, int, int]

    @property
    def train_size(self) -> int:
        return len(self.train)

    @property
    def test_size(self) -> int:
        return len(self.test)


# ----------------------------------------------------------------------------------------- digits


def load_digits(*, split_seed: int = 0, test_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """The 1797 packaged 8x8 digits, split by a permutation drawn with ``split_seed``.

    The first ``round(1797 * test_fraction)`` images of the permutation are the test set. Pixels
    (0..16) are standardised with the training set's scalar mean and deviation:
    ``x' = (x - mean_train) / std_train``. Images come as ``(N, 8, 8, 1)`` float32.
    """
    with np.load(DIGITS_PATH) as f:
        images, labels = f["images"].astype(np.float32), f["labels"].astype(np.int32)
    perm = np.random.default_rng(split_seed).permutation(len(images))
    n_test = int(round(len(images) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    mean, std = images[train].mean(), images[train].std()
    norm = ((images - mean) / std)[..., None].astype(np.float32)
    return {
        "train_images": norm[train],
        "train_labels": labels[train],
        "test_images": norm[test],
        "test_labels": labels[test],
    }


def _array_records(images: np.ndarray, labels: np.ndarray) -> grain.MapDataset:
    return grain.MapDataset.source(np.arange(len(images))).map(
        lambda i: {"image": images[i], "label": np.int32(labels[i])}
    )


def flip_record(record: Record, rng: np.random.Generator) -> Record:
    """Mirror the image left-right with probability 1/2."""
    if rng.random() < 0.5:
        return {**record, "image": np.ascontiguousarray(record["image"][:, ::-1])}
    return record


def digits(config: Config) -> Data:
    """The digits as :class:`Data`: tokens are pixels, ``(8, 8, 1)`` images, 10 classes."""
    if config.crop_area_min is not None or config.randaugment is not None:
        raise ConfigError(
            "crop_area_min and randaugment apply to image files (imagenet), not to the 8x8 digits: set them to None"
        )
    d = load_digits(test_fraction=config.test_fraction)
    train = _array_records(d["train_images"], d["train_labels"])
    transform = flip_record if config.flip else (lambda record, rng: record)
    return Data("digits", train, transform, _array_records(d["test_images"], d["test_labels"]), 10, (8, 8, 1))


# --------------------------------------------------------------------------------------- imagenet


def list_image_folder(
    root: str | os.PathLike, classes: Sequence[str] | None = None
) -> tuple[list[tuple[str, int]], list[str]]:
    """``(path, label)`` for every image under ``root/<class>/``, sorted, and the class names.

    Labels index ``classes`` (default: the sorted sub-folders of ``root``).
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(
            f"image folder {root} does not exist: an ImageNet directory needs "
            "train/<class>/*.JPEG and val/<class>/*.JPEG"
        )
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    classes = list(found if classes is None else classes)
    if not classes:
        raise ConfigError(f"{root} has no class folders: expected {root}/<class>/*.JPEG")
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ConfigError(f"{root} has class folders missing from train/: {', '.join(unknown[:5])}")
    index = {c: i for i, c in enumerate(classes)}
    items = [
        (str(p), index[c]) for c in found for p in sorted((root / c).iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not items:
        raise ConfigError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return items, classes


def decode(path: str) -> Image.Image:
    """An image file as 8-bit RGB."""
    with Image.open(path) as im:
        return im.convert("RGB")


def random_resized_crop(
    im: Image.Image,
    size: int,
    rng: np.random.Generator,
    *,
    area_min: float = 0.05,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> Image.Image:
    """Inception-style crop: a box of area ``U(area_min, 1) * H W`` and aspect ratio ``w/h`` log-uniform
    in ``ratio`` at a uniform position (up to ``attempts`` draws until one fits, else the central
    square-ish box of the clamped ratio), resized bilinearly to ``size x size``."""
    width, height = im.size
    for _ in range(attempts):
        area = rng.uniform(area_min, 1.0) * width * height
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
    w, h = min(w, width), min(h, height)
    left, top = (width - w) // 2, (height - h) // 2
    return im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))


def resize_center_crop(im: Image.Image, size: int, *, resize_ratio: float = 256 / 224) -> Image.Image:
    """Evaluation view: shorter side resized to ``round(size * resize_ratio)``, central ``size`` crop."""
    width, height = im.size
    short = round(size * resize_ratio)
    scale = short / min(width, height)
    w, h = max(size, round(width * scale)), max(size, round(height * scale))
    im = im.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def to_float(im: Image.Image) -> Float[np.ndarray, "h w 3"]:
    """8-bit RGB to float32 in [-1, 1]: ``x / 127.5 - 1``."""
    return np.asarray(im, np.float32) / 127.5 - 1.0


# RandAugment (Cubuk et al. 2020) with the op list, magnitude scaling (level / 10) and grey fill of
# the TF/EfficientNet implementation that big_vision's `randaug(layers, magnitude)` uses. Pixel
# distances (translate 100 px, cutout 40 px at 224 px) are taken relative to the image side.

_FILL = (128, 128, 128)


def _signed(value: float, rng: np.random.Generator) -> float:
    return value if rng.random() < 0.5 else -value


def _enhance_factor(level: float) -> float:
    return level / 10 * 1.8 + 0.1


def _affine(im: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return im.transform(im.size, Image.AFFINE, coeffs, resample=Image.NEAREST, fillcolor=_FILL)


def _solarize_add(im: Image.Image, level: float) -> Image.Image:
    x = np.asarray(im, np.int16)
    added = np.clip(x + int(level / 10 * 110), 0, 255)
    return Image.fromarray(np.where(x < 128, added, x).astype(np.uint8))


def _cutout(im: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    x = np.array(im)
    h, w = x.shape[:2]
    pad = int(level / 10 * 40 / 224 * min(h, w))
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    x[max(cy - pad, 0) : cy + pad, max(cx - pad, 0) : cx + pad] = _FILL
    return Image.fromarray(x)


RANDAUGMENT_OPS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "AutoContrast": lambda im, m, rng: ImageOps.autocontrast(im),
    "Equalize": lambda im, m, rng: ImageOps.equalize(im),
    "Invert": lambda im, m, rng: ImageOps.invert(im),
    "Rotate": lambda im, m, rng: im.rotate(_signed(m / 10 * 30, rng), resample=Image.NEAREST, fillcolor=_FILL),
    "Posterize": lambda im, m, rng: ImageOps.posterize(im, max(1, int(m / 10 * 4))),
    "Solarize": lambda im, m, rng: ImageOps.solarize(im, int(m / 10 * 256)),
    "SolarizeAdd": lambda im, m, rng: _solarize_add(im, m),
    "Color": lambda im, m, rng: ImageEnhance.Color(im).enhance(_enhance_factor(m)),
    "Contrast": lambda im, m, rng: ImageEnhance.Contrast(im).enhance(_enhance_factor(m)),
    "Brightness": lambda im, m, rng: ImageEnhance.Brightness(im).enhance(_enhance_factor(m)),
    "Sharpness": lambda im, m, rng: ImageEnhance.Sharpness(im).enhance(_enhance_factor(m)),
    "ShearX": lambda im, m, rng: _affine(im, (1, _signed(m / 10 * 0.3, rng), 0, 0, 1, 0)),
    "ShearY": lambda im, m, rng: _affine(im, (1, 0, 0, _signed(m / 10 * 0.3, rng), 1, 0)),
    "TranslateX": lambda im, m, rng: _affine(im, (1, 0, _signed(m / 10 * 100 / 224 * im.size[0], rng), 0, 1, 0)),
    "TranslateY": lambda im, m, rng: _affine(im, (1, 0, 0, 0, 1, _signed(m / 10 * 100 / 224 * im.size[1], rng))),
    "Cutout": lambda im, m, rng: _cutout(im, m, rng),
}


def randaugment(im: Image.Image, rng: np.random.Generator, *, layers: int = 2, magnitude: float = 10) -> Image.Image:
    """Apply ``layers`` ops, each drawn uniformly from :data:`RANDAUGMENT_OPS`, at ``magnitude`` (0..10)."""
    names = list(RANDAUGMENT_OPS)
    for _ in range(layers):
        im = RANDAUGMENT_OPS[names[int(rng.integers(len(names)))]](im, magnitude, rng)
    return im


def imagenet_train_transform(config: Config) -> Transform:
    """``(path, label), rng -> record``: decode, random-resized crop (or the evaluation view when
    ``crop_area_min`` is None), optional flip and RandAugment, scale to [-1, 1]."""
    size = config.image_size

    def transform(item: tuple[str, int], rng: np.random.Generator) -> Record:
        path, label = item
        im = decode(path)
        if config.crop_area_min is None:
            im = resize_center_crop(im, size)
        else:
            im = random_resized_crop(im, size, rng, area_min=config.crop_area_min)
        if config.flip and rng.random() < 0.5:
            im = ImageOps.mirror(im)
        if config.randaugment is not None:
            im = randaugment(im, rng, layers=config.randaugment[0], magnitude=config.randaugment[1])
        return {"image": to_float(im), "label": np.int32(label)}

    return transform


def imagenet(config: Config, root: str | os.PathLike) -> Data:
    """ImageNet (or any image-classification folder) from ``root/train/<class>/*`` and
    ``root/val/<class>/*`` (``validation/`` also accepted)."""
    root = Path(root).expanduser()
    train_items, classes = list_image_folder(root / "train")
    val_dir = next((root / d for d in ("val", "validation") if (root / d).is_dir()), root / "val")
    test_items, _ = list_image_folder(val_dir, classes)
    size = config.image_size

    def test_record(item: tuple[str, int]) -> Record:
        return {"image": to_float(resize_center_crop(decode(item[0]), size)), "label": np.int32(item[1])}

    return Data(
        "imagenet",
        grain.MapDataset.source(train_items),
        imagenet_train_transform(config),
        grain.MapDataset.source(test_items).map(test_record),
        len(classes),
        (size, size, 3),
    )


def load(config: Config, data: str | None = None) -> Data:
    """The data set named by ``data`` (default ``config.data``): ``"digits"`` or ``"imagenet:DIR"``."""
    kind, where = data_spec(data or config.data)
    return digits(config) if kind == "digits" else imagenet(config, where)


# ---------------------------------------------------------------------------------------- batches


def one_hot(labels: Int[np.ndarray, " b"], classes: int) -> Float[np.ndarray, "b classes"]:
    return np.eye(classes, dtype=np.float32)[labels]


def mixup(batch: Record, rng: np.random.Generator, alpha: float) -> Record:
    """Mix each example with its neighbour in the batch (roll by one): with ``a ~ Beta(alpha, alpha)``,
    ``a <- max(a, 1 - a)``, ``x_i <- a x_i + (1 - a) x_{i-1}`` and the same for the targets.
    The label stays the dominant example's."""
    a = rng.beta(alpha, alpha)
    a = np.float32(max(a, 1.0 - a))
    mix = lambda v: (a * v + (1 - a) * np.roll(v, 1, axis=0)).astype(np.float32)  # noqa: E731
    return {**batch, "image": mix(batch["image"]), "target": mix(batch["target"])}


def _stack(records: Sequence[Record]) -> Record:
    return {k: np.stack([r[k] for r in records]) for k in records[0]}


def train_batches(
    data: Data, *, batch_size: int, seed: int, mixup_alpha: float = 0.0, process_index: int = 0, process_count: int = 1
) -> grain.MapDataset:
    """Element ``s`` is this process's share (``batch_size / process_count`` examples) of step ``s``'s
    global batch; infinitely many steps, each epoch a fresh permutation drawn from ``seed``."""
    local = batch_size // process_count
    classes = data.num_classes

    def finish(records: Sequence[Record]) -> Record:
        batch = _stack(records)
        batch["target"] = one_hot(batch["label"], classes)
        return batch

    examples = data.train.shuffle(seed=seed).repeat(None).random_map(data.train_transform, seed=seed + 1)
    batches = examples.batch(local, drop_remainder=True, batch_fn=finish)[process_index::process_count]
    if mixup_alpha > 0:
        batches = batches.random_map(lambda b, rng: mixup(b, rng, mixup_alpha), seed=seed + 2)
    return batches


def eval_batches(data: Data, *, batch_size: int, process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
    """The test set in order, in global batches of ``batch_size`` (this process's share of each);
    the last is padded with masked copies of example 0 so that every batch has the same shape."""
    local = batch_size // process_count
    n = data.test_size
    steps = max(1, math.ceil(n / batch_size))
    test = data.test

    def record(i: int) -> Record:
        r = test[int(i) if i < n else 0]
        return {**r, "mask": np.float32(i < n)}

    padded = grain.MapDataset.source(np.arange(steps * batch_size)).map(record)
    return padded.batch(local, batch_fn=_stack)[process_index::process_count]


def iterate(
    batches: grain.MapDataset, start: int, stop: int, *, threads: int = 4, workers: int = 0
) -> grain.DatasetIterator:
    """Elements ``start .. stop-1`` in order, read ahead by ``threads`` threads (and ``workers``
    processes when > 0); ``close()`` the iterator to stop its readers."""
    ds = batches[start:stop].to_iter_dataset(
        grain.ReadOptions(num_threads=max(threads, 1), prefetch_buffer_size=max(2 * threads, 2))
    )
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags (defaults suffice)
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(ds)
