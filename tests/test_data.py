"""Data pipeline: datasets by name, the decode cache, subsets/splits, batched augmentations, grids."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from effdl.data import (
    AugmentConfig,
    BatchLoader,
    ImageDataset,
    limited,
    load_dataset,
    save_augmentation_grid,
    subset,
    train_val_split,
)
from effdl.data import datasets as datasets_module
from effdl.data.augment import cutout, random_crop, random_flip
from effdl.data.datasets import CIFAR10_MEAN, CIFAR10_STD
from effdl.errors import EffdlError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test decodes into its own cache, never the user's."""
    monkeypatch.setenv("EFFDL_CACHE", str(tmp_path_factory.mktemp("cache")))


def one_line_error(call) -> str:
    with pytest.raises(EffdlError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


def write_folder(root: Path, splits: dict[str, dict[str, list[np.ndarray]]]) -> None:
    """Write HWC uint8 arrays as PNGs (lossless) under root/<split>/<class>/NN.png."""
    for split, classes in splits.items():
        for name, images in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                Image.fromarray(image).save(root / split / name / f"{i:02d}.png")


def random_images(n: int, size: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def tiny_folder(tmp_path) -> tuple[Path, dict]:
    content = {
        "train": {"dog": random_images(3, seed=1), "cat": random_images(2, seed=2)},
        "test": {"cat": random_images(1, seed=3), "dog": random_images(2, seed=4)},
    }
    write_folder(tmp_path / "pets", content)
    return tmp_path / "pets", content


# --- datasets by name -------------------------------------------------------------------------


def test_synthetic_shapes_dtypes_and_options():
    data = load_dataset("synthetic", n_train=40, n_test=20, num_classes=4, size=16)
    assert data.train_images.shape == (40, 3, 16, 16) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (20, 3, 16, 16)
    assert data.train_labels.dtype == torch.int64 and set(data.train_labels.tolist()) == {0, 1, 2, 3}
    assert data.num_classes == 4 and data.image_shape == (3, 16, 16)


def test_unknown_dataset_and_option_are_one_line_errors():
    assert "cifar10" in one_line_error(lambda: load_dataset("cifar11"))
    assert "n_train" in one_line_error(lambda: load_dataset("synthetic", n_trian=3))
    assert "imagefolder:PATH" in one_line_error(lambda: load_dataset("imagefolder:"))


def test_image_folder_decodes_labels_and_statistics(tiny_folder):
    root, content = tiny_folder
    data = load_dataset(f"imagefolder:{root}")
    assert data.classes == ["cat", "dog"]  # sorted folder names
    expected_train = content["train"]["cat"] + content["train"]["dog"]
    assert data.train_labels.tolist() == [0, 0, 1, 1, 1]
    assert data.test_labels.tolist() == [0, 1, 1]
    assert torch.equal(data.train_images, torch.from_numpy(np.stack(expected_train)).permute(0, 3, 1, 2))
    pixels = np.stack(expected_train).reshape(-1, 3) / 255
    assert data.mean == pytest.approx(pixels.mean(0).tolist(), abs=1e-9)
    assert data.std == pytest.approx(pixels.std(0).tolist(), abs=1e-9)


def test_image_folder_cache_hits_and_is_invalidated_by_changes(tiny_folder):
    root, _ = tiny_folder
    first = load_dataset(f"imagefolder:{root}")
    second = load_dataset(f"imagefolder:{root}")
    assert (first.info["cache"], second.info["cache"]) == ("miss", "hit")
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)

    Image.fromarray(random_images(1, seed=9)[0]).save(root / "train" / "cat" / "new.png")
    grown = load_dataset(f"imagefolder:{root}")
    assert grown.info["cache"] == "miss" and len(grown.train_labels) == 6

    replacement = random_images(1, seed=10)[0]
    Image.fromarray(replacement).save(root / "test" / "cat" / "00.png")
    os.utime(root / "test" / "cat" / "00.png", ns=(1, 1))  # a new mtime even on coarse clocks
    edited = load_dataset(f"imagefolder:{root}")
    assert edited.info["cache"] == "miss"
    assert torch.equal(edited.test_images[0], torch.from_numpy(replacement).permute(2, 0, 1))


def test_image_folder_accepts_val_and_resizes_on_request(tmp_path):
    train = {"a": random_images(2, 8), "b": random_images(1, 12)}
    write_folder(tmp_path, {"train": train, "val": {"a": random_images(1, 8)}})
    message = one_line_error(lambda: load_dataset(f"imagefolder:{tmp_path}"))
    assert "image_size" in message
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=6)
    assert data.train_images.shape == (3, 3, 6, 6) and data.test_images.shape == (1, 3, 6, 6)
    assert load_dataset(f"imagefolder:{tmp_path}", image_size=[4, 6]).train_images.shape == (3, 3, 4, 6)
    assert "image_size" in one_line_error(lambda: load_dataset(f"imagefolder:{tmp_path}", image_size=0))


def test_image_folder_loads_without_a_writable_cache(tiny_folder, tmp_path, monkeypatch):
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("EFFDL_CACHE", str(tmp_path / "not-a-dir"))
    with pytest.warns(UserWarning, match="cache"):
        data = load_dataset(f"imagefolder:{tiny_folder[0]}")
    assert len(data.train_labels) == 5 and data.info["cache"] == "miss"


def test_image_folder_bad_input_is_one_line(tmp_path):
    assert "does not exist" in one_line_error(lambda: load_dataset(f"imagefolder:{tmp_path}/missing"))
    (tmp_path / "train" / "a").mkdir(parents=True)
    assert "test" in one_line_error(lambda: load_dataset(f"imagefolder:{tmp_path}"))
    write_folder(tmp_path, {"train": {"a": random_images(1)}, "test": {"a": random_images(1)}})
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    assert "broken.jpg" in one_line_error(lambda: load_dataset(f"imagefolder:{tmp_path}"))


def column_ramp(height: int, width: int) -> np.ndarray:
    """An RGB image whose pixel value is 10 x its column: where a crop was taken is readable."""
    return np.broadcast_to((np.arange(width, dtype=np.uint8) * 10)[None, :, None], (height, width, 3)).copy()


def test_image_size_and_resize_policy_crop_or_stretch(tmp_path):
    write_folder(tmp_path, {"train": {"a": [column_ramp(8, 16), column_ramp(8, 8)]}, "test": {"a": [column_ramp(8, 8)]}})
    assert "--image-size" in one_line_error(lambda: load_dataset(f"imagefolder:{tmp_path}"))
    crop = load_dataset(f"imagefolder:{tmp_path}", image_size=8)  # crop is the default
    # 8x16 -> the shorter side is already 8: the centre 8 columns (4..11), untouched
    assert crop.train_images[0, 0, 0].tolist() == [10 * c for c in range(4, 12)]
    assert torch.equal(crop.train_images[1], torch.from_numpy(column_ramp(8, 8)).permute(2, 0, 1))
    stretch = load_dataset(f"imagefolder:{tmp_path}", image_size="8x8", resize="stretch")
    row = stretch.train_images[0, 0, 0].tolist()  # all 16 columns squeezed into 8: the whole ramp
    assert row == sorted(row) and row[0] < 20 and row[-1] > 130
    assert (crop.info["resize"], stretch.info["resize"], crop.info["image_size"]) == ("crop", "stretch", [8, 8])
    assert crop.data_meta()["resize"] == "crop" and crop.data_meta()["input_size"] == [3, 8, 8]
    assert stretch.info["cache"] == "miss"  # the policy is part of the cache key
    assert load_dataset(f"imagefolder:{tmp_path}", image_size=[8, 8], resize="stretch").info["cache"] == "hit"
    tall = load_dataset(f"imagefolder:{tmp_path}", image_size="6x4")  # height x width
    assert tall.train_images.shape == (2, 3, 6, 4)
    for bad in ("8x", "axb", "0x8", "8x8x8", -3):
        assert "64x80" in one_line_error(lambda bad=bad: load_dataset(f"imagefolder:{tmp_path}", image_size=bad))
    assert "stretch" in one_line_error(lambda: load_dataset(f"imagefolder:{tmp_path}", image_size=8, resize="fit"))


def test_hidden_and_non_image_entries_are_skipped_and_listed(tiny_folder):
    root, _ = tiny_folder
    clean = load_dataset(f"imagefolder:{root}")
    assert clean.info["ignored"]["count"] == 0
    extra_image = Image.fromarray(random_images(1, size=8, seed=5)[0])
    (root / "train" / ".ipynb_checkpoints").mkdir()  # Jupyter's: must not become a class
    extra_image.save(root / "train" / ".ipynb_checkpoints" / "x.png")
    (root / "train" / "cat" / ".ipynb_checkpoints").mkdir()  # nor its images a cat
    extra_image.save(root / "train" / "cat" / ".ipynb_checkpoints" / "y.png")
    extra_image.save(root / "train" / "dog" / "._00.png")  # macOS metadata twin
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    (root / "test" / ".DS_Store").write_bytes(b"\0")
    with pytest.warns(UserWarning, match="skipped 5 hidden or non-image entries") as caught:
        data = load_dataset(f"imagefolder:{root}")
    assert len(caught) == 1  # listed once, not once per entry
    assert data.classes == ["cat", "dog"] and data.info["cache"] == "hit"  # same files: the cached arrays stand
    assert torch.equal(data.train_images, clean.train_images)
    ignored = data.info["ignored"]
    assert ignored["count"] == 5 and os.path.join("train", ".ipynb_checkpoints") in ignored["examples"]
    assert os.path.join("test", ".DS_Store") in ignored["examples"]


def test_limits_while_loading_pick_what_limited_picks(tmp_path, monkeypatch):
    from effdl.data import imagefolder

    counts = {"a": 7, "b": 4, "c": 9}
    write_folder(tmp_path, {
        "train": {name: random_images(n, seed=i) for i, (name, n) in enumerate(counts.items())},
        "test": {name: random_images(3, seed=10 + i) for i, name in enumerate(counts)},
    })  # fmt: skip
    decoded = []
    original = imagefolder._decode_chunk
    monkeypatch.setattr(imagefolder, "_decode_chunk", lambda files, *a: decoded.extend(files) or original(files, *a))
    name = f"imagefolder:{tmp_path}"
    partial = load_dataset(name, train_limit=6, test_limit=4, limit_seed=2)
    assert len(decoded) == 10 and partial.info["cache"] == "partial"  # only the chosen files, nothing cached
    assert partial.info["limits"] == {"train": 6, "test": 4, "seed": 2}
    whole = load_dataset(name)
    assert whole.info["cache"] == "miss" and len(decoded) == 10 + 29
    expected = limited(whole, 6, 4, seed=2)
    sliced = load_dataset(name, train_limit=6, test_limit=4, limit_seed=2)
    assert sliced.info["cache"] == "hit" and len(decoded) == 39  # the cached arrays, sliced
    for data in (partial, sliced):
        assert torch.equal(data.train_images, expected.train_images)
        assert torch.equal(data.test_labels, expected.test_labels)
        assert torch.bincount(data.train_labels).tolist() == [2, 2, 2]
        assert data.mean == pytest.approx(expected.train_images.double().mean((0, 2, 3)).div(255).tolist())
    assert torch.equal(load_dataset(name, test_limit=100).test_images, whole.test_images)  # above the size: all
    # formats that cannot pick while loading are cut right after, the same way
    synthetic = load_dataset("synthetic", n_train=60, n_test=30, train_limit=20, limit_seed=1)
    assert torch.equal(synthetic.train_images, limited(load_dataset("synthetic", n_train=60, n_test=30), 20, None, 1).train_images)
    assert "positive number" in one_line_error(lambda: load_dataset(name, train_limit=-1))


def test_load_dataset_for_reuses_the_recorded_size_policy_and_normalisation(tmp_path):
    from effdl.data import load_dataset_for

    write_folder(tmp_path, {"train": {"a": [column_ramp(8, 16)], "b": [column_ramp(12, 8)]},
                            "test": {"a": [column_ramp(10, 10)]}})
    trained_on = load_dataset(f"imagefolder:{tmp_path}", image_size="4x6", resize="stretch", train_limit=1)
    record = trained_on.data_meta()
    assert record["dataset"] == f"imagefolder:{tmp_path}" and record["resize"] == "stretch"
    again = load_dataset_for(record)
    assert again.image_shape == (3, 4, 6) and again.info["resize"] == "stretch"
    assert (again.mean, again.std) == (trained_on.mean, trained_on.std)  # the model's, not the 2-image split's
    assert torch.equal(again.test_images, trained_on.test_images)
    assert load_dataset_for(record, image_size=5).image_shape == (3, 5, 5)  # flags win
    cifar_like = {"dataset": "synthetic", "input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3,
                  "resize": None}
    assert load_dataset_for(cifar_like, n_train=20, n_test=10).image_shape == (3, 32, 32)
    assert "image size" in one_line_error(lambda: load_dataset_for(cifar_like, resize="crop"))
    assert "--data" in one_line_error(lambda: load_dataset_for({}))


def test_every_command_takes_the_same_data_flags():
    from effdl.cli import build_parser

    flags = {"--data", "--data-root", "--image-size", "--resize", "--train-limit", "--test-limit"}
    for command in ("train", "eval", "score", "prune", "quantize", "export", "bench", "grid"):
        parser = build_parser(command)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        missing = flags - {option for action in sub._actions for option in action.option_strings}
        assert not missing, f"effdl {command} lacks {sorted(missing)}"


def test_cli_trains_on_mixed_sizes_and_eval_reuses_the_recorded_size(tmp_path, monkeypatch, capsys):
    from effdl.checkpoint import load_model
    from effdl.cli import main

    sizes = {"a": (20, 30), "b": (28, 16)}
    write_folder(tmp_path / "pets", {
        split: {name: [np.full((*sizes[name], 3), 40 + 150 * (name == "b"), np.uint8) + random_images(1, 1, seed=i)[0]
                       for i in range(count)] for name in sizes}
        for split, count in (("train", 8), ("test", 4))
    })  # fmt: skip
    data = f"imagefolder:{tmp_path / 'pets'}"
    assert main(["train", "--data", data, "--model", "tiny_cnn", "--epochs", "1", "--image-size", "12x16",
                 "--resize", "stretch", "--train-limit", "12", "--batch-size", "4", "--out-dir", str(tmp_path / "runs"),
                 "--name", "mixed", "--device", "cpu", "--progress", "false"]) == 0
    checkpoint = tmp_path / "runs" / "mixed" / "best.safetensors"
    model, _ = load_model(checkpoint)
    assert model.effdl_data["input_size"] == [3, 12, 16] and model.effdl_data["resize"] == "stretch"
    capsys.readouterr()
    assert main(["eval", str(checkpoint), "--device", "cpu", "--test-limit", "6"]) == 0  # no size flags
    assert '"total": 6' in capsys.readouterr().out


# --- CIFAR --------------------------------------------------------------------------------------


@pytest.fixture
def small_cifar10(tmp_path, cifar10_root) -> Path:
    """A few hundred real CIFAR-10 JPEGs, copied into tmp_path/cifar10 in the same layout."""
    for split, count in (("train", 20), ("test", 5)):
        for class_dir in sorted((cifar10_root / "cifar10" / split).iterdir()):
            target = tmp_path / "cifar10" / split / class_dir.name
            target.mkdir(parents=True)
            for file in sorted(class_dir.iterdir())[:count]:
                shutil.copy(file, target / file.name)
    return tmp_path


def test_cifar10_from_an_image_folder_copy(small_cifar10, monkeypatch):
    data = load_dataset("cifar10", root=small_cifar10)
    assert data.classes[:3] == ["airplane", "automobile", "bird"] and data.num_classes == 10
    assert data.train_images.shape == (200, 3, 32, 32) and data.test_images.shape == (50, 3, 32, 32)
    assert torch.bincount(data.train_labels).tolist() == [20] * 10
    assert (data.mean, data.std) == (CIFAR10_MEAN, CIFAR10_STD)
    first = min((small_cifar10 / "cifar10" / "train" / "airplane").iterdir())
    decoded = torch.from_numpy(np.array(Image.open(first).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(data.train_images[0], decoded)

    monkeypatch.setenv("EFFDL_DATA", str(small_cifar10))  # the data root from the environment
    assert load_dataset("cifar10").info["cache"] == "hit"
    direct = load_dataset("cifar10", root=small_cifar10 / "cifar10")  # or the dataset folder itself
    assert torch.equal(direct.test_labels, data.test_labels)
    assert "10 classes" in one_line_error(lambda: load_dataset("cifar100", root=small_cifar10 / "cifar10"))


def test_cifar_missing_says_where_it_looked(tmp_path):
    message = one_line_error(lambda: load_dataset("cifar10", root=tmp_path, download=False))
    assert str(tmp_path / "cifar10") in message and "EFFDL_DATA" in message and "imagefolder:" in message


def test_cifar_torchvision_format_becomes_nchw(tmp_path, monkeypatch):
    class FakeTorchvisionCifar:  # stands in for torchvision.datasets.CIFAR10 (which checks real md5s)
        classes = [f"c{i}" for i in range(10)]

        def __init__(self, root, train, download):
            n = 6 if train else 4
            self.data = np.arange(n * 32 * 32 * 3, dtype=np.uint32).reshape(n, 32, 32, 3).astype(np.uint8)
            self.targets = list(range(n))

    (tmp_path / "cifar-10-batches-py").mkdir()
    spec = dataclasses.replace(datasets_module.CIFAR["cifar10"], torchvision_class=FakeTorchvisionCifar)
    monkeypatch.setitem(datasets_module.CIFAR, "cifar10", spec)
    data = load_dataset("cifar10", root=tmp_path)
    fake = FakeTorchvisionCifar(None, True, False)
    assert data.train_images.shape == (6, 3, 32, 32) and data.test_images.shape == (4, 3, 32, 32)
    assert torch.equal(data.train_images[2, 1], torch.from_numpy(fake.data[2, :, :, 1]))
    assert data.info["format"] == "torchvision" and data.classes == fake.classes


# --- subsets and validation splits -------------------------------------------------------------


@pytest.fixture
def uneven() -> ImageDataset:
    """Unique images (image i holds the value of its index) with classes of sizes 30, 20, 10."""
    order = torch.randperm(60, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0] * 30 + [1] * 20 + [2] * 10)[order]
    images = torch.arange(60, dtype=torch.uint8)[:, None, None, None].expand(60, 3, 4, 4).clone()
    return ImageDataset("uneven", images, labels, images[:3], labels[:3], ["a", "b", "c"])


def image_ids(images: torch.Tensor) -> list[int]:
    return images[:, 0, 0, 0].tolist()


def test_subset_is_seeded_balanced_and_keeps_pairs(uneven):
    small = subset(uneven, n=14, seed=1)
    assert sorted(torch.bincount(small.train_labels).tolist()) == [4, 5, 5]
    assert image_ids(subset(uneven, n=14, seed=1).train_images) == image_ids(small.train_images)
    assert image_ids(subset(uneven, n=14, seed=2).train_images) != image_ids(small.train_images)
    assert all(uneven.train_labels[i] == label for i, label in zip(image_ids(small.train_images), small.train_labels))
    assert torch.equal(small.test_images, uneven.test_images)

    per = subset(uneven, per_class=7, seed=0)
    assert torch.bincount(per.train_labels).tolist() == [7, 7, 7]
    # beyond the smallest class, n keeps drawing from the classes that have images left
    assert sorted(torch.bincount(subset(uneven, n=45).train_labels).tolist()) == [10, 17, 18]


def test_limited_cuts_both_splits_to_balanced_seeded_subsets(uneven):
    swapped = dataclasses.replace(uneven, test_images=uneven.train_images, test_labels=uneven.train_labels)
    small = limited(swapped, 12, 9, seed=4)
    assert sorted(torch.bincount(small.train_labels).tolist()) == [4, 4, 4]
    assert torch.bincount(small.test_labels).tolist() == [3, 3, 3]
    assert all(swapped.test_labels[i] == label for i, label in zip(image_ids(small.test_images), small.test_labels))
    assert image_ids(limited(swapped, 12, 9, seed=4).test_images) == image_ids(small.test_images)
    whole = limited(swapped, None, 1000)
    assert len(whole.train_labels) == 60 and len(whole.test_labels) == 60
    assert "positive number of images" in one_line_error(lambda: limited(swapped, None, -5))
    assert "positive number of images" in one_line_error(lambda: limited(swapped, -5, None))


def test_subset_bad_arguments(uneven):
    assert "exactly one" in one_line_error(lambda: subset(uneven))
    assert "exactly one" in one_line_error(lambda: subset(uneven, n=3, per_class=1))
    assert "1..10" in one_line_error(lambda: subset(uneven, per_class=11))
    assert "1..60" in one_line_error(lambda: subset(uneven, n=61))


def test_train_val_split_is_disjoint_balanced_and_named(uneven):
    split = train_val_split(uneven, 0.25, seed=3)
    train, val = image_ids(split.train_images), image_ids(split.test_images)
    assert len(val) == 15 and sorted(train + val) == list(range(60))
    assert sorted(torch.bincount(split.test_labels).tolist()) == [5, 5, 5]
    assert split.name == "uneven:val" and split.info["test_split"] == "validation"
    assert image_ids(train_val_split(uneven, 15, seed=3).test_images) == val
    assert "val_size" in one_line_error(lambda: train_val_split(uneven, 60))


# --- augmentations ------------------------------------------------------------------------------


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    images = torch.randint(0, 256, (64, 3, 12, 10), dtype=torch.uint8)
    out = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts = set()
    for i in range(64):
        windows = {(dy, dx): padded[i, :, dy : dy + 12, dx : dx + 10] for dy in range(5) for dx in range(5)}
        matches = [shift for shift, window in windows.items() if torch.equal(out[i], window)]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 10
    assert torch.equal(random_crop(images, 0), images)


def test_random_flip_mirrors_about_half():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_flip(images, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and 16 < sum(flipped) < 48


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(200, 3, 16, 16)
    cutout(x, 6, torch.Generator().manual_seed(0))
    zero = x == 0
    assert torch.equal(zero[:, :1].expand_as(zero), zero)  # the same square in every channel
    interior = 0
    for mask in zero[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert 3 <= len(rows) <= 6 and 3 <= len(cols) <= 6  # clipped at worst to half a side
        assert int(mask.sum()) == len(rows) * len(cols)  # a filled rectangle
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
        if 0 < rows[0] and rows[-1] < 15 and 0 < cols[0] and cols[-1] < 15:
            interior += 1
            assert len(rows) == len(cols) == 6
    assert interior > 50


def coloured(num_classes: int = 4, n: int = 64) -> ImageDataset:
    """Images filled with a per-class value, normalised to exactly that value."""
    values = torch.tensor([10, 80, 150, 240], dtype=torch.uint8)[:num_classes]
    labels = torch.arange(n) % num_classes
    images = values[labels][:, None, None, None].expand(n, 3, 8, 8).clone()
    classes = list("abcd"[:num_classes])
    return ImageDataset("coloured", images, labels, images, labels, classes, (0.0,) * 3, (1 / 255,) * 3)


def mixed_loader(data: ImageDataset, **augment) -> BatchLoader:
    config = AugmentConfig(crop_padding=0, flip=False, **augment)
    return BatchLoader.for_split(data, "train", train=True, batch_size=16, augment=config, seed=1)


@pytest.mark.parametrize("mixer", ["mixup_alpha", "cutmix_alpha"])
def test_mixing_targets_describe_the_mixed_pixels(mixer):
    data = coloured()
    values = torch.tensor([10.0, 80.0, 150.0, 240.0])
    for x, targets in mixed_loader(data, **{mixer: 1.0}):
        assert targets.shape == (16, 4) and targets.dtype == torch.float32
        assert torch.allclose(targets.sum(1), torch.ones(16)) and (targets >= 0).all()
        assert torch.allclose(x.mean((1, 2, 3)), targets @ values, atol=1e-3)
        if mixer == "mixup_alpha":  # one Beta draw per batch: every two-class row has the same weights
            pairs = [sorted(row[row > 0].tolist()) for row in targets if (row > 0).sum() == 2]
            assert pairs and all(pair == pytest.approx(pairs[0]) for pair in pairs)


def test_mix_until_epoch_and_mix_prob_switch_mixing_off():
    loader = mixed_loader(coloured(), mixup_alpha=0.4, cutmix_alpha=1.0, mix_until_epoch=2)
    for epoch, expect_soft in ((0, True), (1, True), (2, False), (5, False)):
        loader.set_epoch(epoch)
        assert loader.mixing == expect_soft
        assert {targets.dtype for _, targets in loader} == ({torch.float32} if expect_soft else {torch.int64})
    never = mixed_loader(coloured(), mixup_alpha=0.4, mix_prob=0.0)
    assert {targets.dtype for _, targets in never} == {torch.int64}


def test_auto_augment_is_batched_seeded_and_changes_images():
    data = load_dataset("synthetic", n_train=64, n_test=8)
    for policy in ("autoaugment", "randaugment", "trivialaugment"):
        batches = [
            next(iter(mixed_loader(data, auto_augment=policy, auto_augment_chunk=4)))[0] for _ in range(2)
        ]
        plain = next(iter(mixed_loader(data)))[0]
        assert torch.equal(batches[0], batches[1]) and batches[0].shape == plain.shape
        assert not torch.equal(batches[0], plain)


def test_augment_config_rejects_unknown_keys_and_values():
    with pytest.raises(ValidationError, match="cutuot"):
        AugmentConfig(cutuot=8)
    with pytest.raises(ValidationError):
        AugmentConfig(auto_augment="autoaugmnet")
    with pytest.raises(ValidationError):
        AugmentConfig(mix_prob=1.5)


def test_loader_train_is_seeded_and_eval_is_exact():
    data = load_dataset("synthetic", n_train=64, n_test=20)
    config = AugmentConfig(cutout=4, mixup_alpha=0.2)
    seeds = (7, 7, 8)
    loaders = [BatchLoader.for_split(data, "train", train=True, batch_size=16, augment=config, seed=s) for s in seeds]
    runs = [[x for x, _ in loader] for loader in loaders]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])
    batches = list(BatchLoader.for_split(data, "test", batch_size=8, channels_last=True))
    assert [len(t) for _, t in batches] == [8, 8, 4]
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    expected = (data.test_images[:8].float() / 255 - 0.5) / 0.25
    assert torch.allclose(batches[0][0], expected, atol=1e-6)
    assert "train" in one_line_error(lambda: BatchLoader.for_split(data, "valid"))


# --- grids --------------------------------------------------------------------------------------


def test_augmentation_grid_is_upscaled_labelled_and_titled(tmp_path):
    from effdl.data.preview import DPI, TILE_INCHES, _label, describe_augment

    data = load_dataset("synthetic", n_train=64, n_test=8)
    path = save_augmentation_grid(data, tmp_path / "grid.png", n=16, nrow=4, augment=AugmentConfig(cutout=8))
    with Image.open(path) as image:
        assert image.size[0] == round(4 * TILE_INCHES * DPI)  # 4 tiles of 125 pixels: a 32-pixel image at ~3.5x
        assert image.size[1] > image.size[0]  # 4 rows plus labels and the title
    loader = BatchLoader.for_split(data, "train", train=True, augment=AugmentConfig(mixup_alpha=1.0))
    with Image.open(save_augmentation_grid(loader, tmp_path / "sub" / "mixed.png", n=10, nrow=5)) as image:
        assert image.size[0] == round(5 * TILE_INCHES * DPI)
    assert describe_augment(AugmentConfig(cutout=8, mixup_alpha=0.4)) == "random crop (pad 4), flip, cutout 8, mixup α=0.4"
    assert describe_augment(AugmentConfig(mixup_alpha=0.4, mix_until_epoch=2), epoch=3) == "random crop (pad 4), flip"
    assert describe_augment(AugmentConfig(crop_padding=0, flip=False)) == "no augmentation"
    names = ["cat", "dog", "emu"]
    assert _label(torch.tensor(2), names) == "emu"
    assert _label(torch.tensor([0.3, 0.7, 0.0]), names) == "dog 0.70\ncat 0.30"
    assert _label(torch.tensor([0.0, 1.0, 0.0]), names) == "dog"
