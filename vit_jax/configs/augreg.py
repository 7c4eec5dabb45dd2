r"""The original release's config for fine-tuning AugReg checkpoints ("How to train your ViT?").

    python -m vit_jax.main --workdir=/tmp/vit \
        --config=$(pwd)/vit_jax/configs/augreg.py:R_Ti_16 \
        --config.dataset=oxford_iiit_pet --config.pp.train='train[:90%]' --config.base_lr=0.01

The argument is a model of `models.AUGREG_CONFIGS` (`R_Ti_16`, `B_16`, `R26_S_32`,
...), which picks that model's ImageNet-21k checkpoint with the best final upstream
validation accuracy from PRETRAINED_DIR/index.csv, or a checkpoint's full file name
without `.npz` (`R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0`).
`dataset` must be set. Field names are the original's (`vit_jax/configs/common.py`).
"""

import ml_collections

from vit_jax.configs import common, models


def get_config(model_or_filename: str):
    """The original's defaults for fine-tuning the AugReg checkpoint `model_or_filename`."""
    config = common.get_config()
    config.pretrained_dir = "gs://vit_models/augreg"
    config.model_or_filename = model_or_filename
    model = model_or_filename.split("-")[0]
    if model not in models.AUGREG_CONFIGS:
        raise ValueError(f"Unknown AugReg model {model!r}; known: {', '.join(models.AUGREG_CONFIGS)}.")
    config.model = models.AUGREG_CONFIGS[model].copy_and_resolve_references()
    config.model.transformer.dropout_rate = 0.0  # fine-tuning uses no AugReg regularisation
    # Usually overridden on the command line.
    config.base_lr = 0.03
    config.total_steps = 500
    config.warmup_steps = 100
    config.pp = ml_collections.ConfigDict({"train": "train", "test": "test", "resize": 448, "crop": 384})
    config.dataset = ""  # must be set
    return config
