r"""The original release's fine-tuning config: `vit_jax/configs/vit.py:MODEL,DATASET`.

    python -m vit_jax.main --workdir=/tmp/vit \
        --config=$(pwd)/vit_jax/configs/vit.py:b16,cifar10 \
        --config.pretrained_dir=DIR        # holds ViT-B_16.npz

MODEL is the suffix of a `get_MODEL_config` in `vit_jax/configs/models.py` (`b16`,
`s32`, `r50_b16`, `b16_gap_norep`, `testing`, ...); DATASET one of
`common.DATASET_PRESETS` (`cifar10`, `cifar100`, `imagenet2012`). Field names are
the original's (`base_lr`, `pp.train`, ...); `vit_jax/configs/common.py` lists them.
This project's own recipe with its own field names is `configs/vit.py`.
"""

from vit_jax.configs import common, models


def get_config(model_dataset: str):
    """The original's fine-tuning defaults for `model` on `dataset`."""
    model, dataset = model_dataset.split(",")
    config = common.with_dataset(common.get_config(), dataset)
    config.model = getattr(models, f"get_{model}_config")()
    if model == "b16" and dataset == "cifar10":
        config.base_lr = 0.01
    return config
