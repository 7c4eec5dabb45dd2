"""The TFDS paths on datasets prepared offline inside the test: small fixed-size images held in
memory, variable-size images read by index from ArrayRecord or in sequence from TFRecord, the
conversion between the two, and the message a missing dataset gives (in seconds, never a
download attempt)."""

import logging
import time

import numpy as np
import pytest
from etils import epath

tfds = pytest.importorskip("tensorflow_datasets")

from vit_jax import input_pipeline, train  # noqa: E402
from vit_jax.configs import defaults  # noqa: E402
from vit_jax.data import prepare  # noqa: E402
from vit_jax.data.arrays import ArraySource  # noqa: E402
from vit_jax.data.streaming import StreamingSource  # noqa: E402


class TinyStripes(tfds.core.GeneratorBasedBuilder):
    """12x10 RGB images whose class is the row band that is bright."""

    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(__file__).parent  # a builder outside a package needs its metadata dir set

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(12, 10, 3)),
                    "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30, 0), "test": self._generate_examples(11, 1)}

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            image = rng.integers(0, 60, (12, 10, 3), dtype=np.uint8)
            image[4 * (i % 3) : 4 * (i % 3) + 4] = 250
            yield i, {"image": image, "label": i % 3}


class VariableStripes(TinyStripes):
    """The same stripes (a third of the rows each) on images of 9 to 18 rows and 8 to 13 columns."""

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            h, w = 9 + 3 * (i % 4), 8 + i % 6
            image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            band = h // 3
            image[band * (i % 3) : band * (i % 3) + band] = 250
            image[-1, -1] = (i, seed, 9)  # numbers the example
            yield i, {"image": image, "label": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    TinyStripes(data_dir=str(d)).download_and_prepare()
    return str(d)


@pytest.fixture(scope="module")
def variable_dirs(tmp_path_factory):
    """(ArrayRecord data dir, TFRecord data dir) of VariableStripes."""
    dirs = []
    for file_format in ("array_record", "tfrecord"):
        d = tmp_path_factory.mktemp(file_format)
        VariableStripes(data_dir=str(d), file_format=file_format).download_and_prepare()
        dirs.append(str(d))
    return dirs


def tfds_config(data_dir, name="tiny_stripes"):
    c = defaults.get_config()
    c.dataset = name
    c.tfds_data_dir = data_dir
    c.pp.crop = 8
    c.pp.area_min = 1.0
    c.pp.flip = False
    c.data_workers = 0
    return c


def test_small_fixed_size_datasets_are_held_in_memory(data_dir):
    source = input_pipeline.get_source(tfds_config(data_dir), "test")
    assert isinstance(source, ArraySource) and source.images.shape == (11, 12, 10, 3)
    assert (len(source), source.num_classes, source.class_names) == (11, 3, ["a", "b", "c"])
    assert sorted(source.labels.tolist()) == sorted([i % 3 for i in range(11)])
    for image, label in zip(source.images, source.labels, strict=True):  # the band is the bright rows
        assert image.mean(axis=(1, 2)).argmax() // 4 == label


def test_array_record_batches_cover_the_split(variable_dirs):
    source = input_pipeline.get_source(tfds_config(variable_dirs[0], "variable_stripes"), "test")
    assert isinstance(source, StreamingSource) and len(source) == 11
    batches = list(source.eval_batches(batch=4))
    assert [b["image"].shape for b in batches] == [(4, 8, 8, 3)] * 3
    masks = np.concatenate([b["mask"] for b in batches])
    assert masks.sum() == 11 and masks[-1] == 0
    labels = np.concatenate([b["label"] for b in batches])[masks > 0]
    assert sorted(labels.tolist()) == sorted([i % 3 for i in range(11)])
    # The bright band survives the host resize: its rows are the brightest.
    for image, label in zip(np.concatenate([b["image"] for b in batches])[masks > 0], labels, strict=True):
        assert int((image.mean(axis=(1, 2)).argmax() + 0.5) / 8 * 3) == label


def test_array_record_training_stream_is_a_function_of_the_step(variable_dirs):
    source = input_pipeline.get_source(tfds_config(variable_dirs[0], "variable_stripes"), "train")
    it = source.train_batches(batch=6, seed=3)
    first = [next(it) for _ in range(8)]  # 48 examples: crosses the 30-example epoch
    resumed = next(source.train_batches(batch=6, seed=3, start_step=5))
    np.testing.assert_array_equal(resumed["image"], first[5]["image"])
    assert sorted(np.concatenate([b["label"] for b in first[:5]]).tolist()) == sorted([i % 3 for i in range(30)])


def test_tfrecord_streams_with_one_warning_and_converts_to_array_record(variable_dirs, tmp_path, caplog):
    import shutil

    tfrecord_dir = str(tmp_path / "copy")
    shutil.copytree(variable_dirs[1], tfrecord_dir)
    caplog.set_level(logging.WARNING, "vit_jax")
    config = tfds_config(tfrecord_dir, "variable_stripes")
    source = input_pipeline.get_source(config, "train")
    warned = [r.getMessage() for r in caplog.records if "TFRecord" in r.getMessage()]
    command = f"python -m vit_jax.data.prepare variable_stripes --data_dir {tfrecord_dir}"
    assert len(warned) == 1 and command in warned[0]
    it = source.train_batches(batch=6, seed=3)
    first = [next(it)["label"] for _ in range(8)]
    np.testing.assert_array_equal(next(source.train_batches(batch=6, seed=3, start_step=5))["label"], first[5])
    assert sorted(np.concatenate(first[:5]).tolist()) == sorted([i % 3 for i in range(30)])
    line = prepare.prepare("variable_stripes", tfrecord_dir)
    assert "wrote 2 ArrayRecord shard(s)" in line  # train and test
    converted = input_pipeline.get_source(config, "test")
    native = input_pipeline.get_source(tfds_config(variable_dirs[0], "variable_stripes"), "test")
    assert type(converted) is StreamingSource  # read by index now, not in sequence
    for a, b in zip(converted.eval_batches(batch=4), native.eval_batches(batch=4), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])  # the same records in the same order
    assert "already readable by index" in prepare.prepare("variable_stripes", tfrecord_dir)


def test_training_on_an_array_record_dataset(variable_dirs, tmp_path):
    config = tfds_config(variable_dirs[0], "variable_stripes")
    config.pp.area_min, config.pp.flip, config.data_workers = 0.5, True, 2
    config.model.hidden_size = 16
    config.model.patches.size = (4, 4)
    config.model.transformer.update(dict(mlp_dim=16, num_heads=2, num_layers=1, dropout_rate=0.0))
    config.batch, config.total_steps, config.progress_every = 6, 8, 4
    config.eval_every = config.checkpoint_every = 4
    config.optim.name, config.lr.warmup_steps = "adamw", 0
    result = train.train_and_evaluate(config, str(tmp_path))
    assert result["count"] == 11


def test_missing_tfds_dataset_fails_fast(tmp_path):
    config = tfds_config(str(tmp_path))
    config.dataset = "mnist"
    t = time.time()
    fix = "python -m vit_jax.data.prepare mnist"
    with pytest.raises(input_pipeline.DataError, match=rf"'mnist' was not found in {tmp_path}.*{fix}"):
        input_pipeline.get_source(config, "train")
    assert time.time() - t < 20


def test_a_failed_download_and_a_bad_name_are_one_line(tmp_path, monkeypatch):
    class Offline:
        def is_prepared(self):
            return False

        def download_and_prepare(self, **kw):
            raise ConnectionError("Failed to establish a new connection\nretries exhausted")

    config = tfds_config(str(tmp_path))
    config.dataset = "mnist"
    config.tfds_download = True
    with monkeypatch.context() as m:
        m.setattr(tfds, "builder", lambda *a, **kw: Offline())
        with pytest.raises(input_pipeline.DataError) as e:
            input_pipeline.get_source(config, "train")
    assert str(e.value).startswith(
        "Downloading TFDS dataset 'mnist' failed (ConnectionError: Failed to establish a new connection). "
        "Check the network"
    )
    assert "\n" not in str(e.value)
    config.dataset = "afile.txt"  # not a TFDS name: TFDS explains the name format over many lines
    with pytest.raises(input_pipeline.DataError) as e:
        input_pipeline.get_source(config, "train")
    assert "\n" not in str(e.value) and "'afile.txt' was not found" in str(e.value)


def test_records_are_parsed_as_tensorflow_writes_them():
    """tf.train.Example records serialized by TensorFlow itself, read back by our parser."""
    import tensorflow as tf

    from vit_jax.data.tfds_source import parse_example

    for label in (0, 7, 2**40, -3):
        feature = {
            "other": tf.train.Feature(float_list=tf.train.FloatList(value=[1.5, -2.0])),
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\xff\xd8\xff jpeg bytes"])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        }
        record = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        assert parse_example(record) == {"image": b"\xff\xd8\xff jpeg bytes", "label": label}
