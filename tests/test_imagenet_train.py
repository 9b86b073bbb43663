"""The paper's ImageNet recipes (Table 1: ViT-S/16 patches; Table 3: ViT-Ti on raw pixels), scaled down,
train for a few steps on a tiny generated ImageNet folder (JPEGs of several sizes in
train/<class>/*.JPEG and val/<class>/*.JPEG) through the public `train(...)`."""

import math

import pytest

from ttt_compile.benchmarks.imagenet_pipeline import make_folder
from ttt_compile.configs import load_config
from ttt_compile.training.metrics import read_metrics
from ttt_compile.training.trainer import train

SCALED = {  # recipe -> what shrinks (everything else, augmentation and optimiser included, is the paper's)
    "vit_s16_imagenet": dict(image_size=32, patch=8, width=24, depth=1, heads=3, mlp_dim=48),
    "vit_ti_pixels_imagenet": dict(image_size=8, patch=1, width=12, depth=1, heads=3, mlp_dim=24),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(
        tmp_path_factory.mktemp("imagenet"),
        per_class={"train": 3, "val": 1},
        classes=("n01440764", "n01443537"),
        sizes=((50, 38), (38, 50), (64, 48)),
    )


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(SCALED))
def test_paper_recipe_scaled_down_trains_on_a_generated_imagenet_folder(recipe, folder, tmp_path):
    paper = load_config(recipe)
    config = paper.replace(
        **SCALED[recipe],
        batch_size=4,
        eval_batch_size=2,
        warmup_steps=1,
        log_every=1,
        eval_every=3,
        checkpoint_every=3,
        data_threads=1,
        data_workers=0,
    )
    out = train(config, data=f"imagenet:{folder}", workdir=tmp_path, steps=3, verbose=False, plots=False)
    assert out["step"] == 3 and math.isfinite(out["test_loss"]) and 0 <= out["test_accuracy"] <= 1
    records = read_metrics(tmp_path / "metrics.jsonl")
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in train_records)
    # the recipe's augmentation, optimiser and layer are the paper's, not the defaults
    assert (config.randaugment, config.mixup, config.layer, config.dtype) == (
        paper.randaugment,
        paper.mixup,
        paper.layer,
        "bfloat16",
    )


def test_generated_folder_layout_and_pipeline_timer(tmp_path):
    from ttt_compile.benchmarks.imagenet_pipeline import time_transform
    from ttt_compile.configs import Config
    from ttt_compile.training import data

    root = make_folder(tmp_path, per_class={"train": 2, "val": 1}, classes=("a", "b"), sizes=((20, 10), (10, 30)))
    items, classes = data.list_image_folder(root / "train")
    assert classes == ["a", "b"] and len(items) == 4 and all(p.endswith(".JPEG") for p, _ in items)
    assert {data.decode(p).size for p, _ in items} == {(20, 10), (10, 30)}
    r = time_transform(
        data.imagenet_train_transform(Config(image_size=8, crop_area_min=0.05, flip=True, randaugment=(2, 10))), items
    )
    assert r["images"] == 4 and r["images_per_cpu_s"] > 0 and r["images_per_wall_s"] > 0
