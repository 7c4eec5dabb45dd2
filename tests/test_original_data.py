"""Split expressions (any TFDS expression for TFDS datasets, NAME[a:b] slices for the sources held
in memory) and the original release's input-pipeline functions (get_dataset_info, get_datasets,
get_data_from_tfds, get_data_from_directory, prefetch), on a TFDS dataset prepared offline inside
the test and on small image folders written here."""

import io
import os
import re
import struct
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest
from conftest import ROOT
from etils import epath
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from vit_jax import input_pipeline, preprocess  # noqa: E402
from vit_jax.configs import defaults  # noqa: E402
from vit_jax.data import sources, tfds_source  # noqa: E402
from vit_jax.data.decode import HostSpec  # noqa: E402
from vit_jax.input_pipeline import DataError  # noqa: E402

CLASSES = ["top", "middle", "bottom"]


class TinyBands(tfds.core.GeneratorBasedBuilder):
    """16x16 RGB images whose class is the bright row band; pixel (0, 0) numbers the example."""

    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(__file__).parent  # a builder outside a package needs its metadata dir set

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(16, 16, 3)), "label": tfds.features.ClassLabel(names=CLASSES)}
            )
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(20, 0), "test": self._generate_examples(7, 1)}

    def _generate_examples(self, n, split_id):
        rng = np.random.default_rng(split_id)
        for i in range(n):
            image = rng.integers(0, 80, (16, 16, 3), dtype=np.uint8)
            image[5 * (i % 3) : 5 * (i % 3) + 5] = 240
            image[0, 0] = (i, split_id, 7)  # unique per example, so parts can be compared by content
            yield i, {"image": image, "label": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    TinyBands(data_dir=str(d)).download_and_prepare()
    return str(d)


def read_split(data_dir, split):
    """(images, labels) of a split expression as TFDS itself reads it, in order."""
    builder = tfds.builder("tiny_bands", data_dir=data_dir)
    examples = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
    return np.stack([e["image"] for e in examples]), np.array([e["label"] for e in examples])


def run_config(data_dir, **fields):
    c = defaults.get_config()
    c.dataset, c.tfds_data_dir, c.pp.crop = "tiny_bands", data_dir, 16
    c.update(fields)
    return c


def original_config(data_dir, **pp):
    """An original-release config: its fields only (no tfds_download, no pp.resize), locked as its own."""
    c = ml_collections.ConfigDict(
        dict(
            dataset="tiny_bands",
            tfds_data_dir=data_dir,
            tfds_manual_dir=None,
            batch=8,
            batch_eval=3,
            shuffle_buffer=50_000,
            prefetch=2,
            pp={"train": "train[:75%]", "test": "test", "crop": 16, **pp},
        )
    )
    return c.lock()


def keys(images):
    return sorted(map(bytes, images.reshape(len(images), -1)))


def decoded(encoded) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded.numpy() if hasattr(encoded, "numpy") else encoded)))


def images_of(source) -> np.ndarray:
    """Every image of a source, in its order, as the evaluation reads it."""
    batches = list(source.eval_batches(batch=64))
    return np.concatenate([b["image"][b["mask"] > 0] for b in batches])


# ----------------------------------------------------------------------------- TFDS split expressions


@pytest.mark.parametrize(
    "expr,n", [("train[:50%]", 10), ("train[25%:]", 15), ("train[:7]", 7), ("train+test", 27), ("test[-3:]", 3)]
)
def test_tfds_split_expressions_count_as_tfds_reads_them(data_dir, expr, n):
    source = input_pipeline.get_source(run_config(data_dir, train_split=expr), "train")
    assert len(source) == len(read_split(data_dir, expr)[1]) == n


@pytest.mark.parametrize("expr", ["train[3:-4]+test[:5]", "train[:50%]"])
@pytest.mark.parametrize("count", [2, 3])
def test_tfds_process_parts_partition_the_expression(data_dir, expr, count):
    """A dataset read in sequence (TFRecord): each process reads its part of the expression."""
    source = tfds_source.TfrecordSource(tfds_source.TfdsSplit(run_config(data_dir), expr), HostSpec((16, 16)), 0)
    full = read_split(data_dir, expr)[0]
    parts = [
        np.stack([decoded(e["image"]) for e in source._encoded(i, count, shuffle_seed=None)]) for i in range(count)
    ]
    assert [len(p) for p in parts] == source.info.part_sizes(count)
    assert keys(np.concatenate(parts)) == keys(full)  # disjoint and covering: no example twice or missing
    # Evaluation counts each example once, with the same number of batches on every process, even where
    # TFDS splits the pieces of 'a+b' separately and the parts differ by more than one.
    evals = [list(source.eval_batches(batch=2 * count, process_index=i, process_count=count)) for i in range(count)]
    assert len({len(e) for e in evals}) == 1
    seen = np.concatenate([b["image"][b["mask"] > 0] for e in evals for b in e])
    assert keys(seen) == keys(full)


def test_bad_tfds_splits_are_one_line_naming_the_field(data_dir):
    cases = {
        ("train", "trian"): "Unknown split 'trian'",
        ("test", "test[:x]"): "Unrecognized split format",
        ("train", "train[:200]"): "incompatible with 20 examples",
        ("test", "all[:5]"): "does not support slice",
    }
    for (split, value), why in cases.items():
        with pytest.raises(DataError) as e:
            input_pipeline.get_source(run_config(data_dir, **{f"{split}_split": value}), split)
        msg = str(e.value)
        assert msg.startswith(f"config.{split}_split={value!r}: TFDS dataset 'tiny_bands' cannot read that split (")
        assert why in msg and "its splits are train (20 examples), test (7 examples)." in msg and "\n" not in msg
    with pytest.raises(DataError, match=r"config.train_split='train\[5:5\]' selects no examples of TFDS dataset"):
        input_pipeline.get_source(run_config(data_dir, train_split="train[5:5]"), "train")
    with pytest.raises(DataError, match=r"config.pp.test='valid': TFDS dataset 'tiny_bands' cannot read that split"):
        input_pipeline.get_data_from_tfds(config=original_config(data_dir, test="valid"), mode="test")


# ----------------------------------------------------------------------------- in-memory slices


def write_folder(root, counts, size=16):
    """root/<split>/<class>/<i>.png (exact pixels) with pixel (0, 0) numbering the file; the arrays, in
    the loaders' order (class by class, sorted names)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, per_class in counts.items():
        arrays[split] = []
        for cls, n in sorted(per_class.items()):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                a[0, 0, 0] = i
                Image.fromarray(a).save(root / split / cls / f"{i:02d}.png")
                arrays[split].append(a)
        arrays[split] = np.stack(arrays[split])
    return arrays


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    arrays = write_folder(root, {"train": {"cat": 10, "dog": 10}, "test": {"cat": 2, "dog": 3}})
    return str(root), arrays


# Percent bounds round to the closest example, ties to even, as TFDS: 12.5% of 20 = 2.5 -> 2, 2.5% -> 0,
# 17.5% -> 4, 33% = 6.6 -> 7; a bound in percent on one side makes both percent ('[10%:50]').
SLICES = {
    "train[:33%]": (0, 7),
    "train[12.5%:]": (2, 20),
    "train[2.5%:17.5%]": (0, 4),
    "train[-3:]": (17, 20),
    "train[5:-5]": (5, 15),
    "train[10%:50]": (2, 10),
}


@pytest.mark.parametrize("expr", SLICES)
def test_image_folder_slices_pick_what_tfds_would(folder, data_dir, expr):
    root, arrays = folder
    c = defaults.get_config()
    c.dataset, c.pp.crop = root, 16
    source = sources.open_image_folder(c, root, expr, "config.train_split")
    start, stop = SLICES[expr]
    assert len(source) == tfds.builder("tiny_bands", data_dir=data_dir).info.splits[expr].num_examples
    np.testing.assert_array_equal(images_of(source), arrays["train"][start:stop])
    np.testing.assert_array_equal(source.labels, (np.arange(20) >= 10)[start:stop])
    assert source.num_classes == 2


def test_in_memory_split_errors_are_one_line(folder):
    root, _ = folder
    c = defaults.get_config()
    c.dataset, c.pp.crop = root, 16
    cases = {
        ("train", "train+test"): r"read by example index, where only NAME or NAME\[a:b\] work there .* "
        r"'train\+test' work for TFDS datasets",
        ("train", "train[1shard]"): r"only NAME or NAME\[a:b\] work there",
        ("test", "train[:200]"): r"the bound 200 lies outside 'train', which has 20 examples",
        ("test", "train[:150%]"): r"the bound 150% lies outside 'train'",
        ("train", "train[30%:20%]"): r"selects no examples of the 20 in",
        ("test", "valid"): r"image folder .* has no 'valid' split \(it has: test, train\)",
    }
    for (split, value), pattern in cases.items():
        c[f"{split}_split"] = value
        with pytest.raises(DataError) as e:
            input_pipeline.get_source(c, split)
        c[f"{split}_split"] = split
        assert str(e.value).startswith(f"config.{split}_split={value!r}")
        assert "\n" not in str(e.value)
        assert re.search(pattern, str(e.value)), str(e.value)
    d = defaults.get_config()
    d.test_split = "train+test"
    with pytest.raises(DataError, match=r"digits has fixed train and test splits.*only NAME or NAME\[a:b\] work"):
        input_pipeline.get_source(d, "test")


def test_sliced_in_memory_splits_train_exactly_per_epoch_and_process(folder):
    root, arrays = folder
    c = defaults.get_config()
    c.dataset, c.pp.crop, c.train_split, c.test_split = root, 16, "train[20%:]", "train[:20%]"
    c.pp.area_min, c.pp.flip = 1.0, False  # the host passes the 16x16 images on as they are
    train, held_out = input_pipeline.get_source(c, "train"), input_pipeline.get_source(c, "test")
    assert (len(train), len(held_out)) == (16, 4)  # a validation split carved out of train, disjoint
    np.testing.assert_array_equal(images_of(held_out), arrays["train"][:4])
    for count in (1, 2):  # one epoch = 4 steps of 4: every example once, whatever the process count
        rows = [
            np.concatenate([next(it)["image"] for _ in range(4)])
            for it in (train.train_batches(batch=4, seed=5, process_index=i, process_count=count) for i in range(count))
        ]
        assert keys(np.concatenate(rows)) == keys(arrays["train"][4:])
    c.train_examples = 6  # a balanced subset of the slice
    assert np.bincount(input_pipeline.get_source(c, "train").labels).tolist() == [3, 3]
    d = defaults.get_config()
    d.train_split, d.test_split = "train[:10%]", "test[-50:]"
    digits_train, digits_test = input_pipeline.get_source(d, "train"), input_pipeline.get_source(d, "test")
    full_train, full_test = input_pipeline.load_digits("train"), input_pipeline.load_digits("test")
    assert len(digits_train) == 144  # 1438 * 10% = 143.8
    np.testing.assert_array_equal(digits_train.images, full_train.images[:144])
    np.testing.assert_array_equal(digits_test.labels, full_test.labels[-50:])


def test_idx_directories_take_slices_of_their_splits(tmp_path):
    images = np.arange(8 * 3 * 3, dtype=np.uint8).reshape(8, 3, 3)
    image_file, label_file = (name.removesuffix(".gz") for name in input_pipeline.IDX_FILES["train"])
    (tmp_path / image_file).write_bytes(struct.pack(">IIII", 2051, 8, 3, 3) + images.tobytes())
    (tmp_path / label_file).write_bytes(struct.pack(">II", 2049, 8) + bytes([0, 1, 2, 3, 4, 5, 6, 7]))
    c = defaults.get_config()
    c.dataset, c.train_split = str(tmp_path), "train[-25%:]"
    source = input_pipeline.get_source(c, "train")
    np.testing.assert_array_equal(source.images[..., 0], images[6:])
    np.testing.assert_array_equal(source.labels, [6, 7])
    c.train_split = "train[:50%]+train[50%:]"
    with pytest.raises(DataError, match=r"the IDX directory .* has fixed train and test splits.*only NAME or NAME"):
        input_pipeline.get_source(c, "train")


# ----------------------------------------------------------------------------- the original release's API


def test_get_dataset_info_for_tfds_and_a_directory(data_dir, folder, monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)  # get_tfds_info reads TFDS's default data dir, as the original
    info = input_pipeline.get_dataset_info("tiny_bands", "train[:75%]")
    assert (info["num_examples"], info["num_classes"], info["examples_glob"]) == (15, 3, None)
    assert info["int2str"](2) == "bottom"
    assert input_pipeline.get_dataset_info("tiny_bands", "train+test")["num_examples"] == 27
    root, _ = folder
    info = input_pipeline.get_dataset_info(root, "test")
    assert (info["num_examples"], info["num_classes"], info["int2str"](1)) == (5, 2, "dog")
    assert info["examples_glob"] == f"{root}/test/*/*"
    assert input_pipeline.get_dataset_info(root, "train[:25%]")["num_examples"] == 5
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=rf"'tiny_bands' was not found in {tmp_path} \(it is not prepared there\)"):
        input_pipeline.get_dataset_info("tiny_bands", "train")


def test_tfds_test_batches_hold_the_prepared_test_split(data_dir):
    ds_train, ds_test = input_pipeline.get_datasets(original_config(data_dir))
    assert ds_test.cardinality().numpy() == 2  # 7 examples in batches of 3, the remainder dropped
    batches = list(ds_test.as_numpy_iterator())
    assert len(batches) == 2
    images, labels = read_split(data_dir, "test")
    pp = {"crop": (16, 16), "area_min": 1.0, "flip": False, "channels": 3}
    for k, batch in enumerate(batches):
        assert batch["image"].shape == (1, 3, 16, 16, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (1, 3, 3) and batch["label"].dtype == np.float32
        np.testing.assert_array_equal(batch["label"][0], np.eye(3)[labels[3 * k : 3 * k + 3]])
        expected = preprocess.preprocess_eval(images[3 * k : 3 * k + 3], pp)
        np.testing.assert_allclose(batch["image"][0], expected, atol=1e-6)
    assert np.all(np.abs(batches[0]["image"]) <= 1.0)
    # Resized to a smaller crop on the host (rounded to uint8): our eval preprocessing to rounding.
    small = next(iter(input_pipeline.get_data_from_tfds(config=original_config(data_dir, crop=8), mode="test")))
    expected = preprocess.preprocess_eval(images[:3], {**pp, "crop": (8, 8)})
    np.testing.assert_allclose(small["image"].numpy()[0], expected, atol=0.51 / 127.5)
    # Training: forever, augmented, one-hot labels of the train[:75%] classes.
    assert ds_train.cardinality().numpy() == -1  # tf.data.INFINITE_CARDINALITY
    it = ds_train.as_numpy_iterator()
    train = [next(it) for _ in range(4)]
    for batch in train:
        assert batch["image"].shape == (1, 8, 16, 16, 3) and batch["label"].shape == (1, 8, 3)
        assert -1.0 - 1e-6 <= batch["image"].min() and batch["image"].max() <= 1.0 + 1e-6
        np.testing.assert_array_equal(batch["label"].sum(-1), 1.0)
    seen = np.concatenate([b["label"][0].argmax(-1) for b in train])
    assert set(seen.tolist()) == set(read_split(data_dir, "train[:75%]")[1].tolist()) == {0, 1, 2}
    assert not np.allclose(train[0]["image"], train[1]["image"])


def test_get_datasets_on_an_image_directory(tmp_path):
    arrays = write_folder(tmp_path, {"train": {"b_dog": 3, "a_cat": 3}, "test": {"b_dog": 2, "a_cat": 2}})
    Image.fromarray(arrays["train"][0]).save(tmp_path / "train" / "a_cat" / "99.jpg")  # JPEGs read too
    c = original_config(None)
    with c.unlocked():
        c.dataset, c.batch, c.batch_eval = str(tmp_path), 4, 2
    ds_train, ds_test = input_pipeline.get_datasets(c)
    assert ds_test.cardinality().numpy() == 2
    batches = list(input_pipeline.prefetch(ds_test, 0))
    images = np.concatenate([b["image"][0] for b in batches])
    labels = np.concatenate([b["label"][0] for b in batches])
    np.testing.assert_array_equal(labels, np.eye(2)[[0, 0, 1, 1]])  # a_cat = 0, b_dog = 1: sorted names
    np.testing.assert_allclose(images, arrays["test"] / 127.5 - 1.0, atol=1e-6)
    batch = next(iter(ds_train))
    assert batch["image"].shape == (1, 4, 16, 16, 3) and batch["label"].shape == (1, 4, 2)
    os.rename(tmp_path / "test", tmp_path / "valid")
    with pytest.raises(ValueError, match=r"needs both .*train and .*test"):
        input_pipeline.get_datasets(c)


def test_prefetch_puts_batches_on_the_devices(data_dir):
    ds_test = input_pipeline.get_data_from_tfds(config=original_config(data_dir), mode="test")
    on_host = list(input_pipeline.prefetch(ds_test, 0))
    on_device = list(input_pipeline.prefetch(ds_test, 2))
    assert len(on_host) == len(on_device) == 2
    assert isinstance(on_host[0]["image"], np.ndarray)
    assert isinstance(on_device[0]["image"], jax.Array)
    for a, b in zip(on_host, on_device, strict=True):
        np.testing.assert_array_equal(a["label"], np.asarray(b["label"]))
        np.testing.assert_array_equal(a["image"], np.asarray(b["image"]))


def test_two_local_devices_get_half_a_batch_each(tmp_path):
    """In a process with 2 CPU devices: the pmap layout and prefetch's placement over both devices."""
    write_folder(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 2, "b": 2}}, size=8)
    script = textwrap.dedent(f"""
        import jax, ml_collections, numpy as np
        from vit_jax import input_pipeline
        c = ml_collections.ConfigDict(dict(dataset={str(tmp_path)!r}, batch=4, batch_eval=4,
                                           shuffle_buffer=10, pp=dict(crop=8)))
        ds_train, ds_test = input_pipeline.get_datasets(c)
        batch = next(input_pipeline.prefetch(ds_test, 1))
        assert batch["image"].shape == (2, 2, 8, 8, 3), batch["image"].shape
        assert {{s.device for s in batch["image"].addressable_shards}} == set(jax.local_devices())
        assert next(ds_train.as_numpy_iterator())["label"].shape == (2, 2, 2)
        print("ok", jax.local_device_count())
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["ok", "2"]
