"""The original release's fine-tuning config, with its field names and defaults.

Configs written for the original `vit_jax` build on this `get_config()` (as
`vit_jax/configs/vit.py` and `augreg.py` do) and use its names: `base_lr`,
`warmup_steps`, `decay_type`, `grad_norm_clip`, `batch_eval`, `pp.train`,
`pp.test`, ... A run translates them into this project's own fields in one place
(`vit_jax/config_original.py`) and logs what it translated. This project's own
defaults, and the names its own configs use, are in `vit_jax/configs/defaults.py`.
"""

from collections.abc import Iterable
from typing import Any

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """The original's defaults for everything but the model (locked, as the original's)."""
    c = ml_collections.ConfigDict()
    # Pretrained weights are read from PRETRAINED_DIR/<model name>.npz.
    c.pretrained_dir = "."
    # A TFDS name, or a directory with train/<class>/*.jpg and test/<class>/*.jpg.
    # Unset until `with_dataset` (or the command line) sets it.
    c.dataset = config_dict.placeholder(str)
    c.tfds_manual_dir = config_dict.placeholder(str)
    c.tfds_data_dir = config_dict.placeholder(str)
    c.total_steps = config_dict.placeholder(int)  # set by the dataset preset

    c.grad_norm_clip = 1.0
    c.optim_dtype = "bfloat16"  # dtype of the momentum accumulator
    c.accum_steps = 8  # micro-batches per step; 0 or 1: none

    c.batch = 512
    c.batch_eval = 512
    c.shuffle_buffer = 50_000
    c.eval_every = 100
    c.progress_every = 10
    c.checkpoint_every = 1_000  # 0: no checkpoints
    c.prefetch = 2

    c.base_lr = 0.03
    c.decay_type = "cosine"  # or "linear"
    c.warmup_steps = 500

    c.trainer = "train"  # or "inference_time"

    c.model = None  # a config of vit_jax/configs/models.py
    c.model_or_filename = config_dict.placeholder(str)  # AugReg configs only
    c.pp = None  # set by `with_dataset`: train / test splits and crop
    return c.lock()


def _preset(total_steps: int, train: str, test: str, crop: int = 384) -> ml_collections.ConfigDict:
    pp = ml_collections.ConfigDict({"train": train, "test": test, "crop": crop})
    return ml_collections.ConfigDict({"total_steps": total_steps, "pp": pp})


# Steps and splits the original fine-tuned with; a slice of train is held out as minival.
DATASET_PRESETS = {
    "cifar10": _preset(10_000, "train[:98%]", "test"),
    "cifar100": _preset(10_000, "train[:98%]", "test"),
    "imagenet2012": _preset(20_000, "train[:99%]", "validation"),
}


def with_dataset(config: ml_collections.ConfigDict, dataset: str) -> ml_collections.ConfigDict:
    """An unlocked copy of `config` set up for `dataset` from DATASET_PRESETS."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.dataset = dataset
    config.update(DATASET_PRESETS[dataset])
    return config


def flatten(config: Any, prefix: tuple[str, ...] = ("config",)) -> Iterable[tuple[str, Any]]:
    """('config.a.b', value) for every leaf of `config` (for sweeps and logs)."""
    for key, value in config.items():
        if isinstance(value, dict | ml_collections.ConfigDict):
            yield from flatten(value, (*prefix, key))
        else:
            yield ".".join((*prefix, key)), value
