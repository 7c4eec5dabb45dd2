"""A ViT trained from scratch on 4,000 CIFAR-10 images, with AugReg's augmentation and averaging.

    python -m vit_jax.main --config configs/cifar10_subset.py --config.dataset=DIR

DIR is an image folder holding the first 4,000 training and first 1,000 test images of
CIFAR-10 (DIR/{train,test}/<class>/*.png); without the override the same images are read
from the TFDS `cifar10` dataset (`train[:4000]`, `test[:1000]`) in config.tfds_data_dir.
Width 96, 4 blocks, 4x4 patches (64 tokens and the class token), batch 128 in 8
micro-batches of 16, AdamW lr 1e-3 with weight decay 0.05, cosine decay, label smoothing
0.1. Augmentation: 4-pixel pad-and-crop, flips, RandAugment (2 layers, magnitude 10) and
Mixup (alpha 0.2); evaluation and export use an exponential moving average of the
parameters (decay 0.999, with warm-up).

Measured on the 2-core CPU (2026-12-01, a host at about 150 GFLOP/s), with DIR the shared
4,000/1,000 subset: 48.60% test accuracy (of the moving average) after 20 min 3 s wall-clock
(about 400 images/s). A first recipe, not yet swept: experiments/results/recipes.md.
"""

from vit_jax.configs import defaults


def get_config():
    c = defaults.get_config()
    c.dataset = "cifar10"
    c.train_split = "train[:4000]"
    c.test_split = "test[:1000]"
    c.pp.crop = 32
    c.pp.area_min = 1.0
    c.pp.pad = 4
    c.pp.flip = True
    c.pp.randaug.num_layers = 2
    c.pp.randaug.magnitude = 10.0
    c.mixup.alpha = 0.2
    defaults.small_vit(c, hidden=96, mlp=192, heads=4, layers=4, patch=4)
    c.ema_decay = 0.999
    c.ema_warmup = True
    c.batch = 128
    c.accum_steps = 8  # micro-batches of 16 stay in the CPU's L2 cache (configs/fashion_mnist.py)
    c.total_steps = 3800
    c.lr.warmup_steps = 200
    c.progress_every = 250
    c.eval_every = 1000
    c.checkpoint_every = 1000
    return c
