"""Input pipelines: packaged digits, an ImageNet-layout folder of generated JPEGs, augmentations."""

import grain
import numpy as np
import pytest
from PIL import Image

from ttt_compile.configs import Config, ConfigError
from ttt_compile.training import data


def test_digits_split_is_deterministic_disjoint_and_normalised():
    a, b = data.load_digits(), data.load_digits()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["train_images"].shape == (1438, 8, 8, 1) and a["test_images"].shape == (359, 8, 8, 1)
    assert a["train_images"].dtype == np.float32
    assert abs(a["train_images"].mean()) < 1e-5 and abs(a["train_images"].std() - 1) < 1e-5
    assert sorted(np.unique(a["train_labels"])) == list(range(10))
    other = data.load_digits(split_seed=1)
    assert not np.array_equal(other["test_labels"], a["test_labels"])
    # disjoint: every raw image appears once across the two splits (as many as the packaged file)
    with np.load(data.DIGITS_PATH) as f:
        assert len(f["images"]) == len(a["train_images"]) + len(a["test_images"]) == 1797


def _indexed(n: int, classes: int = 4) -> data.Data:
    """A data set whose image i is filled with the value i, so batches reveal which examples they hold."""
    records = grain.MapDataset.source(np.arange(n)).map(
        lambda i: {"image": np.full((2, 2, 1), i, np.float32), "label": np.int32(i % classes)}
    )
    return data.Data("indexed", records, lambda r, rng: r, records, classes, (2, 2, 1))


def _ids(batch) -> list[int]:
    return [int(v) for v in batch["image"][:, 0, 0, 0]]


def test_batches_are_a_pure_function_of_seed_and_step():
    d = _indexed(10)
    batches = data.train_batches(d, batch_size=4, seed=3)
    again = data.train_batches(d, batch_size=4, seed=3)
    assert [_ids(batches[s]) for s in range(6)] == [_ids(again[s]) for s in range(6)]
    # resuming at step 3 reads exactly batches 3, 4, 5
    assert [_ids(b) for b in data.iterate(batches, 3, 6, threads=2)] == [_ids(batches[s]) for s in (3, 4, 5)]
    # each epoch is a permutation (10 examples, 5 steps of 4 cover epochs 1 and 2), reshuffled each epoch
    seen = sum((_ids(batches[s]) for s in range(5)), [])
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]
    assert _ids(data.train_batches(d, batch_size=4, seed=4)[0]) != _ids(batches[0])
    b = batches[0]
    np.testing.assert_array_equal(b["target"], np.eye(4, dtype=np.float32)[b["label"]])


def test_processes_split_each_global_batch():
    d = _indexed(12)
    whole = data.train_batches(d, batch_size=6, seed=0)
    parts = [data.train_batches(d, batch_size=6, seed=0, process_index=h, process_count=3) for h in range(3)]
    for step in range(4):
        assert sum((_ids(p[step]) for p in parts), []) == _ids(whole[step])


def test_eval_batches_cover_the_test_set_once_with_padding_masked():
    d = _indexed(10)
    batches = data.eval_batches(d, batch_size=4)
    assert len(batches) == 3
    ids = sum((_ids(b) for b in batches), [])
    masks = np.concatenate([b["mask"] for b in batches])
    assert [i for i, m in zip(ids, masks) if m] == list(range(10)) and masks.sum() == 10
    halves = [data.eval_batches(d, batch_size=4, process_index=h, process_count=2) for h in range(2)]
    assert sum((_ids(halves[h][e]) for e in range(3) for h in range(2)), []) == ids


def test_mixup_is_a_convex_mix_with_the_neighbour():
    d = _indexed(8)
    plain = data.train_batches(d, batch_size=4, seed=0)[2]
    mixed = data.train_batches(d, batch_size=4, seed=0, mixup_alpha=0.2)[2]
    a = (mixed["image"] - np.roll(plain["image"], 1, 0)) / (plain["image"] - np.roll(plain["image"], 1, 0))
    a = np.unique(np.round(a[np.isfinite(a)], 5))
    assert len(a) == 1 and 0.5 <= a[0] <= 1.0
    np.testing.assert_allclose(mixed["target"].sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(mixed["label"], plain["label"])


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG``: 3 classes, images of varied sizes and colours."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (30, 52), (64, 64), (23, 35)]
    for split, per_class in (("train", 4), ("val", 2)):
        for c, wnid in enumerate(("n01440764", "n01443537", "n01484850")):
            (root / split / wnid).mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                pixels = np.clip(rng.normal(60 + 70 * c, 30, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)
    (root / "train" / "n01440764" / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "val" / "n01443537" / "grey.JPEG")  # 1 channel
    return root


def test_imagenet_folder_with_paper_augmentations(image_folder):
    config = Config(
        data=f"imagenet:{image_folder}", image_size=16, crop_area_min=0.05, flip=True, randaugment=(2, 10), mixup=0.2
    )
    d = data.load(config)
    assert (d.train_size, d.test_size, d.num_classes, d.image_shape) == (12, 7, 3, (16, 16, 3))
    batches = data.train_batches(d, batch_size=6, seed=0, mixup_alpha=config.mixup)
    b = batches[1]
    assert b["image"].shape == (6, 16, 16, 3) and b["image"].dtype == np.float32
    assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0
    assert b["target"].shape == (6, 3) and set(b["label"]) <= {0, 1, 2}
    np.testing.assert_array_equal(data.train_batches(d, batch_size=6, seed=0, mixup_alpha=0.2)[1]["image"], b["image"])
    assert not np.array_equal(batches[3]["image"], batches[1]["image"])
    test = data.eval_batches(d, batch_size=4)
    first = test[0]
    assert first["image"].shape == (4, 16, 16, 3) and first["mask"].tolist() == [1, 1, 1, 1]
    labels = np.concatenate([t["label"][t["mask"] > 0] for t in test])
    assert labels.tolist() == [0, 0, 1, 1, 1, 2, 2]  # class folders in sorted order, the grey image included
    # the evaluation view is deterministic: resize shorter side to 16*256/224, centre crop 16
    path = str(image_folder / "val" / "n01440764" / "n01440764_0.JPEG")
    np.testing.assert_array_equal(test[0]["image"][0], data.to_float(data.resize_center_crop(data.decode(path), 16)))


def test_random_resized_crop_and_randaugment_ops():
    rng = np.random.default_rng(0)
    im = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    crops = [data.random_resized_crop(im, 24, rng) for _ in range(5)]
    assert all(c.size == (24, 24) for c in crops)
    assert len({c.tobytes() for c in crops}) == 5  # random boxes
    square = Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    full = data.random_resized_crop(square, 16, rng, area_min=1.0, ratio=(1.0, 1.0))
    assert full.tobytes() == square.resize((16, 16), Image.BILINEAR).tobytes()  # area 1: the whole image
    for name, op in data.RANDAUGMENT_OPS.items():
        out = op(im, 10, rng)
        assert out.size == im.size and out.mode == "RGB", name
    assert data.RANDAUGMENT_OPS["Invert"](im, 10, rng).tobytes() == Image.fromarray(255 - np.asarray(im)).tobytes()
    assert data.randaugment(im, np.random.default_rng(5), layers=0).tobytes() == im.tobytes()
    assert data.randaugment(im, np.random.default_rng(5), layers=2, magnitude=10).tobytes() != im.tobytes()


def test_bad_data_raise_clear_errors(tmp_path, image_folder):
    with pytest.raises(ConfigError, match="does not exist: an ImageNet directory needs train/<class>"):
        data.load(Config(), f"imagenet:{tmp_path / 'nowhere'}")
    for folder in ("train/a", "val/b"):
        (tmp_path / "x" / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x" / folder / "0.JPEG")
    with pytest.raises(ConfigError, match="class folders missing from train/: b"):
        data.load(Config(image_size=16), f"imagenet:{tmp_path / 'x'}")
    with pytest.raises(ConfigError, match="apply to image files"):
        data.load(Config(randaugment=(2, 10)))
