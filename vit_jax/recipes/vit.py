"""Fine-tune any registered model on a dataset: `configs/vit.py:MODEL,DATASET`.

    python -m vit_jax.main --config configs/vit.py:b16,cifar10 --config.pretrained_dir=DIR
    python -m vit_jax.main --config configs/vit.py:b16,cifar10 \
        --config.pretrained_path=hf-hub:timm/vit_base_patch16_224.augreg_in21k

MODEL is a registered name (`ViT-B_16`, `R50+ViT-B_16`) or a short one (`b16`,
`B/16`, `r50+b16`); DATASET a TFDS name with a preset below, `digits`, or a
directory (image folder or IDX files). The recipe is the original release's:
SGD with momentum, warm-up then cosine decay, clipping at 1, pretrained from
DIR/<model>.npz; steps and crop per dataset as the original chose them.
"""

from vit_jax.configs import defaults
from vit_jax.configs import models as model_configs

# dataset: (total_steps, crop, native size for the host decode)
DATASETS = {
    "cifar10": (10_000, 384, 32),
    "cifar100": (10_000, 384, 32),
    "imagenet2012": (20_000, 384, None),
    "oxford_iiit_pet": (500, 384, None),
    "oxford_flowers102": (500, 384, None),
}


def get_config(arg: str = "b16,cifar10"):
    model, _, dataset = arg.partition(",")
    c = defaults.get_config()
    c.model_name = model_configs.resolve_name(model)
    c.pretrained_dir = "."
    c.dataset = dataset or "cifar10"
    steps, crop, native = DATASETS.get(c.dataset, (10_000, 224, None))
    c.total_steps = steps
    c.pp.crop = crop
    c.pp.resize = native
    c.batch = 512
    c.accum_steps = 8
    c.optim.name = "sgd"
    c.lr.base = 0.03
    c.lr.warmup_steps = min(500, steps // 10)
    c.grad_clip_norm = 1.0
    c.progress_every = 50
    c.eval_every = 1000
    c.checkpoint_every = 1000
    return c
