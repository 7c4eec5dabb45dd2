"""Data tests: the IDX, image-folder and digits sources (synthetic files and, where
present, the real datasets), their error messages, and the device preprocessing."""

import gzip
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared
from PIL import Image

from vit_jax import input_pipeline, preprocess
from vit_jax.configs import defaults
from vit_jax.input_pipeline import DataError


def write_idx(directory, split, images, labels):
    names = input_pipeline.IDX_FILES[split]
    with gzip.open(os.path.join(directory, names[0]), "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(images), *images.shape[1:]) + images.tobytes())
    with gzip.open(os.path.join(directory, names[1]), "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def config_for(dataset, crop=8):
    c = defaults.get_config()
    c.dataset = str(dataset)
    c.pp.crop = crop
    return c


def test_idx_source_reads_shapes_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (7, 5, 4), dtype=np.uint8)
    write_idx(tmp_path, "train", train_images, np.arange(7) % 10)
    write_idx(tmp_path, "test", train_images[:3], np.array([9, 8, 7]))
    src = input_pipeline.get_source(config_for(tmp_path), "train")
    assert src.images.shape == (7, 5, 4, 1) and src.images.dtype == np.uint8
    np.testing.assert_array_equal(src.images[..., 0], train_images)
    np.testing.assert_array_equal(src.labels, np.arange(7))
    test = input_pipeline.get_source(config_for(tmp_path), "test")
    np.testing.assert_array_equal(test.labels, [9, 8, 7])


def test_idx_directory_ungzipped_missing_files_and_fixed_splits(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3, 3), dtype=np.uint8)
    write_idx(tmp_path, "train", images, np.arange(4))
    for name in input_pipeline.IDX_FILES["train"]:  # the same files, un-gzipped
        with gzip.open(tmp_path / name) as f:
            (tmp_path / name.removesuffix(".gz")).write_bytes(f.read())
        os.remove(tmp_path / name)
    src = input_pipeline.get_source(config_for(tmp_path), "train")
    np.testing.assert_array_equal(src.images[..., 0], images)
    with pytest.raises(DataError, match=r"lacks t10k-images-idx3-ubyte.gz \(or t10k-images-idx3-ubyte\); it needs all"):
        input_pipeline.get_source(config_for(tmp_path), "test")
    c = config_for(tmp_path)
    c.train_split = "train[:50%]"  # a slice of a fixed split works, as for TFDS
    np.testing.assert_array_equal(
        input_pipeline.get_source(c, "train").images[..., 0], images[: round(len(images) / 2)]
    )
    c.train_split = "train+t10k"
    with pytest.raises(DataError, match=r"config.train_split='train\+t10k': the IDX directory .* has fixed train"):
        input_pipeline.get_source(c, "train")
    c = config_for("digits")
    c.test_split = "bogus"
    with pytest.raises(DataError, match="config.test_split='bogus': digits has fixed train and test splits"):
        input_pipeline.get_source(c, "test")


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(struct.pack(">IIII", 2051, 10, 28, 28) + b"\x00" * 100)
    with pytest.raises(DataError, match="truncated"):
        input_pipeline.read_idx(str(bad))
    with gzip.open(bad, "wb") as f:
        f.write(struct.pack(">II", 1234, 1))
    with pytest.raises(DataError, match="magic number 1234"):
        input_pipeline.read_idx(str(bad))


@pytest.mark.parametrize("name,mean", [("fashion-mnist", 72.940), ("mnist", 33.318)])
def test_real_idx_datasets(name, mean):
    directory = shared(name)
    train = input_pipeline.load_idx_dir(directory, "train")
    test = input_pipeline.load_idx_dir(directory, "test")
    assert train.images.shape == (60_000, 28, 28, 1) and test.images.shape == (10_000, 28, 28, 1)
    assert train.images.mean() == pytest.approx(mean, abs=1e-3)  # the dataset README's mean pixel
    assert np.bincount(test.labels).tolist() == (
        [1000] * 10 if name == "fashion-mnist" else [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )


def test_digits_split_is_deterministic_and_disjoint():
    train, test = input_pipeline.load_digits("train"), input_pipeline.load_digits("test")
    assert (len(train), len(test)) == (1438, 359)
    assert train.images.shape[1:] == (8, 8, 1) and train.images.max() == 255
    assert set(np.unique(train.labels)) == set(range(10))
    again = input_pipeline.load_digits("test")
    np.testing.assert_array_equal(again.images, test.images)
    flat = {im.tobytes() for im in train.images}
    # Digits has a few duplicated images; nearly all test images are unseen in train.
    assert sum(im.tobytes() in flat for im in test.images) < 5


def test_digits_are_scikit_learns_read_from_its_file():
    """The file read directly holds what `sklearn.datasets.load_digits` returns, image for image."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    scaled = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    expected = sorted((im.tobytes(), int(y)) for im, y in zip(scaled, d.target, strict=True))
    got = []
    for split in ("train", "test"):
        source = input_pipeline.load_digits(split)
        assert source.images.dtype == np.uint8 and source.labels.dtype == np.int32
        got += [(im[..., 0].tobytes(), int(y)) for im, y in zip(source.images, source.labels, strict=True)]
    assert sorted(got) == expected


def test_digits_without_scikit_learn_is_one_message(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    with pytest.raises(input_pipeline.DataError, match="comes with scikit-learn"):
        input_pipeline.load_digits("train")


def make_folder(root, spec):
    """spec: {split: {class: [PIL image, ...]}} -> files on disk."""
    for split, classes in spec.items():
        for cls, images in classes.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(images):
                im.save(d / f"{i}.{'png' if im.mode in ('RGBA', 'L') else 'jpg'}")


def test_image_folder_source(tmp_path):
    red = Image.new("RGB", (20, 10), (255, 0, 0))
    gray = Image.new("L", (7, 9), 128)
    rgba = Image.new("RGBA", (12, 12), (0, 0, 255, 40))
    make_folder(tmp_path, {"train": {"b_cat": [red, gray], "a_dog": [rgba]}, "test": {"b_cat": [gray]}})
    src = input_pipeline.get_source(config_for(tmp_path, crop=8), "train")
    assert src.class_names == ["a_dog", "b_cat"]  # ids from sorted names
    images = next(iter(src.eval_batches(batch=3)))["image"]  # decoded when read, at the crop size
    assert images.shape == (3, 8, 8, 3) and len(src) == 3
    np.testing.assert_array_equal(src.labels, [0, 1, 1])
    assert tuple(images[0, 4, 4]) == (0, 0, 255)  # RGBA -> RGB
    assert tuple(images[2, 4, 4]) == (128, 128, 128)  # grayscale repeated
    test = input_pipeline.get_source(config_for(tmp_path, crop=8), "test")
    np.testing.assert_array_equal(test.labels, [1])


def test_image_folder_errors(tmp_path):
    im = Image.new("RGB", (4, 4))
    with pytest.raises(DataError, match="does not exist. Set --config.dataset to a directory of IDX files"):
        input_pipeline.get_source(config_for(tmp_path / "nope"), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty. Set --config.dataset"):
        input_pipeline.get_source(config_for(tmp_path / "empty"), "train")
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match="afile is a file, not a directory. Set --config.dataset"):
        input_pipeline.get_source(config_for(tmp_path / "afile"), "train")
    make_folder(tmp_path / "extra", {"train": {"a": [im]}, "test": {"a": [im], "c": [im]}})
    with pytest.raises(DataError, match=r"has classes that train lacks: c; add them to .*extra/train or remove them"):
        input_pipeline.get_source(config_for(tmp_path / "extra"), "test")
    make_folder(tmp_path / "notest", {"train": {"a": [im]}})
    with pytest.raises(DataError, match="has no 'test' split"):
        input_pipeline.get_source(config_for(tmp_path / "notest"), "test")
    make_folder(tmp_path / "hollow", {"train": {"a": [im]}, "test": {"a": [im]}})
    (tmp_path / "hollow" / "train" / "b").mkdir()
    with pytest.raises(DataError, match=r"Class folder .*hollow/train/b has no images.*remove the folder"):
        input_pipeline.get_source(config_for(tmp_path / "hollow"), "train")
    make_folder(tmp_path / "broken", {"train": {"a": [im]}, "test": {"a": [im]}})
    (tmp_path / "broken" / "train" / "a" / "bad.jpg").write_bytes(b"not a jpeg at all")
    source = input_pipeline.get_source(config_for(tmp_path / "broken"), "train")  # listed, not yet read
    with pytest.raises(DataError, match=r"could not be read .*broken/train/a/bad\.jpg .*Replace or remove the files"):
        next(source.train_batches(batch=2, seed=0))  # half the batch: more than 1%
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    (tmp_path / "broken" / "train" / "a" / "bad.jpg").write_bytes(good.read_bytes()[:40])  # truncated
    source = input_pipeline.get_source(config_for(tmp_path / "broken"), "train")
    with pytest.raises(DataError, match="could not be read"):
        next(source.train_batches(batch=2, seed=0))


def test_real_image_folders():
    flowers = shared("flowers-subset")
    c = config_for(flowers, crop=32)
    train, test = input_pipeline.get_source(c, "train"), input_pipeline.get_source(c, "test")
    assert (len(train), len(test), train.num_classes) == (200, 50, 5)
    batches = list(train.eval_batches(batch=64))
    assert [b["image"].shape for b in batches] == [(64, 32, 32, 3)] * 4
    assert sum(b["mask"].sum() for b in batches) == 200  # every photo decodes
    cifar = input_pipeline.get_source(config_for(shared("cifar10-subset"), crop=32), "test")
    assert (len(cifar), cifar.num_classes, cifar.first_images(3).shape) == (1000, 10, (3, 32, 32, 3))


def test_preprocess_eval_scales_and_repeats_channels():
    images = jnp.asarray(np.array([0, 255, 127.5], np.float32).reshape(1, 1, 3, 1))
    pp = {"crop": (1, 3), "area_min": 1.0, "flip": False, "channels": 3}
    x = preprocess.preprocess_eval(images, pp)
    assert x.shape == (1, 1, 3, 3)
    np.testing.assert_allclose(x[0, 0, :, 0], [-1.0, 1.0, 0.0])
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_inception_boxes_stay_inside_and_cover_the_area_range():
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    top, left, h, w = jax.vmap(lambda k: preprocess.inception_box(k, 28, 28, (0.05, 1.0)))(keys)
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + h <= 28 + 1e-4) and np.all(left + w <= 28 + 1e-4)
    area = np.asarray(h * w) / 28**2
    assert area.min() < 0.1 and area.max() > 0.9 and np.all(area <= 1.0 + 1e-6)
    ratio = np.asarray(w / h)
    assert ratio.min() >= 0.5 and ratio.max() <= 2.0


def test_preprocess_train_crops_flips_and_stays_in_range():
    image = np.zeros((1, 16, 16, 1), np.uint8)
    image[:, :, :8] = 255  # left half white
    pp = {"crop": 16, "area_min": 1.0, "flip": True, "channels": 1}
    outs = [preprocess.preprocess_train(jnp.asarray(image), jax.random.PRNGKey(s), pp) for s in range(12)]
    lefts = {float(o[0, 8, 2, 0]) for o in outs}
    assert lefts == {-1.0, 1.0}  # some flipped, some not
    pp = {"crop": 8, "area_min": 0.05, "flip": False, "channels": 3}
    x = preprocess.preprocess_train(jnp.asarray(np.repeat(image, 4, 0)), jax.random.PRNGKey(1), pp)
    assert x.shape == (4, 8, 8, 3) and float(x.min()) >= -1.0 - 1e-5 and float(x.max()) <= 1.0 + 1e-5
