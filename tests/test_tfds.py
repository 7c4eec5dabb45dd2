"""The TFDS path on a dataset prepared offline inside the test, and the message a
missing TFDS dataset gives (in seconds, never a download attempt)."""

import time

import numpy as np
import pytest
from etils import epath

tfds = pytest.importorskip("tensorflow_datasets")

from vit_jax import input_pipeline, train  # noqa: E402
from vit_jax.configs import defaults  # noqa: E402


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


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    TinyStripes(data_dir=str(d)).download_and_prepare()
    return str(d)


def tfds_config(data_dir):
    c = defaults.get_config()
    c.dataset = "tiny_stripes"
    c.tfds_data_dir = data_dir
    c.pp.crop = 8
    c.pp.area_min = 1.0
    c.pp.flip = False
    return c


def test_tfds_source_batches_cover_the_split(data_dir):
    config = tfds_config(data_dir)
    source = input_pipeline.get_source(config, "test")
    assert (len(source), source.num_classes, source.class_names) == (11, 3, ["a", "b", "c"])
    batches = list(source.eval_batches(batch=4))
    assert [b["image"].shape for b in batches] == [(4, 8, 8, 3)] * 3
    masks = np.concatenate([b["mask"] for b in batches])
    assert masks.sum() == 11 and masks[-1] == 0
    labels = np.concatenate([b["label"] for b in batches])[masks > 0]
    assert sorted(labels.tolist()) == sorted([i % 3 for i in range(11)])
    # The bright band survives the host resize: its rows are the brightest.
    for image, label in zip(np.concatenate([b["image"] for b in batches])[masks > 0], labels, strict=True):
        rows = image.mean(axis=(1, 2))
        assert rows[int(8 * (4 * label + 2) / 12)] > 150


def test_tfds_train_stream_is_reproducible_and_resumable(data_dir):
    source = input_pipeline.get_source(tfds_config(data_dir), "train")
    it = source.train_batches(batch=6, seed=3)
    first = [next(it)["label"] for _ in range(8)]  # 48 examples: crosses the 30-example epoch
    resumed = source.train_batches(batch=6, seed=3, start_step=5)
    np.testing.assert_array_equal(next(resumed)["label"], first[5])
    assert sorted(np.concatenate(first[:5]).tolist()) == sorted([i % 3 for i in range(30)])


def test_training_on_a_tfds_dataset(data_dir, tmp_path):
    config = tfds_config(data_dir)
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
    with pytest.raises(input_pipeline.DataError, match=rf"'mnist' was not found in {tmp_path}.*tfds build mnist"):
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
