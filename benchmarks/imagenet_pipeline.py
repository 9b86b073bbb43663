"""Throughput of the ImageNet input pipeline on the CPU: images per second per core, decoded and augmented.

A GPU training step consumes images faster than one CPU core can produce them; this tells how many
cores (hosts) a device needs. The images are generated JPEGs (``make_folder``): ImageNet-like sizes
(about 500 x 375), quality 90, a smooth random pattern plus noise, in the standard
``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` layout. Measured: ``imagenet_train_transform``
of each recipe (Table 1: decode, random-resized crop to 224, flip, RandAugment(2, 10); Table 3:
decode and random-resized crop only) applied image after image in one thread, timed by the
process's CPU time (so other jobs on the machine do not count) and by wall time; and the
evaluation view (decode, resize, centre crop).

    python -m ttt_compile.benchmarks.imagenet_pipeline [--images 200] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ttt_compile.benchmarks.harness import write_results

IMAGENET_SIZES = ((500, 375), (375, 500), (500, 333), (640, 480), (333, 500), (400, 300))
CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")
RECIPES = {
    "Table 1 (vit_s16_imagenet)": "vit_s16_imagenet",
    "Table 3 (vit_ti_pixels_imagenet)": "vit_ti_pixels_imagenet",
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "imagenet_pipeline"


def synthetic_image(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A smooth random colour pattern (a 6 x 8 grid upsampled bicubically) plus pixel noise."""
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(coarse, np.int16) + rng.normal(0, 12, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_folder(
    root: str | os.PathLike,
    *,
    per_class: dict[str, int],
    classes: Sequence[str] = CLASSES,
    sizes: Sequence[tuple[int, int]] = IMAGENET_SIZES,
    seed: int = 0,
) -> Path:
    """Write ``root/<split>/<class>/<class>_<i>.JPEG`` for each split in `per_class` (images per class),
    widths x heights cycling through `sizes`; returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for wnid in classes:
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = sizes[(i + len(wnid)) % len(sizes)]
                synthetic_image(w, h, rng).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)
    return root


def time_transform(fn, items, seed: int = 0) -> dict:
    """Apply fn(item, rng) to every item in one thread: images per CPU second and per wall second."""
    rng = np.random.default_rng(seed)
    fn(items[0], rng)  # warm (imports, caches)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for item in items:
        fn(item, rng)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "images": len(items),
        "cpu_s": cpu,
        "wall_s": wall,
        "images_per_cpu_s": len(items) / cpu,
        "images_per_wall_s": len(items) / wall,
    }


def measure(images: int, log=print) -> dict:
    from ttt_compile.configs import load_config
    from ttt_compile.training import data

    with tempfile.TemporaryDirectory() as tmp:
        per_class = max(1, images // len(CLASSES))
        make_folder(tmp, per_class={"train": per_class, "val": 1})
        items, _ = data.list_image_folder(Path(tmp) / "train")
        mean_pixels = float(np.mean([np.prod(Image.open(p).size) for p, _ in items]))
        mean_bytes = float(np.mean([os.path.getsize(p) for p, _ in items]))
        rows = []
        for name, config_name in RECIPES.items():
            config = load_config(config_name)
            r = time_transform(data.imagenet_train_transform(config), items)
            rows.append(
                {
                    "pipeline": f"train: {name}",
                    "image_size": config.image_size,
                    "randaugment": config.randaugment,
                    "flip": config.flip,
                    **r,
                }
            )
            log(f"  {rows[-1]['pipeline']:<44} {r['images_per_cpu_s']:7.1f} images per CPU second")
        view = lambda item, rng: data.to_float(data.resize_center_crop(data.decode(item[0]), 224))  # noqa: E731
        r = time_transform(view, items)
        rows.append({"pipeline": "eval: decode, resize, centre crop 224", "image_size": 224, **r})
        log(f"  {rows[-1]['pipeline']:<44} {r['images_per_cpu_s']:7.1f} images per CPU second")
    return {"images": len(items), "mean_pixels": mean_pixels, "mean_jpeg_bytes": mean_bytes, "rows": rows}


def markdown(result: dict) -> str:
    lines = [
        f"# ImageNet input pipeline throughput ({result['date']})",
        "",
        f"Command: `{result['command']}`. Machine: {result['machine']}. {result['images']} generated JPEGs "
        f"(mean {result['mean_pixels'] / 1e3:.0f} kpixels, {result['mean_jpeg_bytes'] / 1e3:.0f} kB), one thread, "
        "timed by process CPU time (per core) and by wall time (the machine was shared).",
        "",
        "| pipeline | images / CPU second (per core) | images / wall second |",
        "| --- | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['pipeline']} | {r['images_per_cpu_s']:.1f} | {r['images_per_wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m ttt_compile.benchmarks.imagenet_pipeline"
        + (f" --images {args.images}" if args.images != 200 else ""),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, Pillow {Image.__version__}",
        **measure(args.images),
    }
    write_results(args.out, "imagenet_pipeline", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
