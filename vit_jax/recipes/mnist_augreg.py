"""A ViT trained from scratch on MNIST with pad-and-crop, light RandAugment and a moving average.

    python -m vit_jax.main --config configs/mnist_augreg.py --config.dataset=DIR

DIR holds the original IDX files; without the override the TFDS `mnist` dataset is read
from config.tfds_data_dir. `cpu_devices = 2` runs the step data-parallel on two single-threaded CPU
devices (README, Speed), the setting the result below was measured with; without it the
config runs unchanged on one device, more slowly. Width 64, 4 blocks, 4x4 patches (the model of
configs/mnist.py with an MLP of 256 instead of 128), batch 128 in 4 micro-batches (16 images per
device each), 5,300 steps (11 epochs), AdamW lr 2e-3 with weight decay 0.1, cosine decay,
label smoothing 0.1.
Augmentation: translations of up to 2 pixels (2-pixel pad, then a random 28x28 window) in
place of area crops, no flips, RandAugment (1 layer, magnitude 5); evaluation and export use
an exponential moving average of the parameters (decay 0.999, with warm-up).

Measured on the 2-core CPU (2026-12-02, a host at about 165 GFLOP/s), with DIR the original
MNIST files: 99.37% test accuracy (of the moving average) after 9 min 13 s wall-clock (about
1,300 images/s); evaluations at steps 2,000, 4,000 and 5,000: 98.50%, 99.28%, 99.37%. The
target of this recipe, 99.3% in 10 minutes, is met. Runs: experiments/results/recipes.md.
"""

from vit_jax.configs import defaults


def get_config():
    c = defaults.get_config()
    c.cpu_devices = 2  # two single-threaded CPU devices on a CPU host (vit_jax.devices)
    c.dataset = "mnist"
    c.pp.crop = 28
    c.pp.area_min = 1.0
    c.pp.pad = 2
    c.pp.flip = False  # digits are not mirror-symmetric
    c.pp.channels = 1
    defaults.small_vit(c, hidden=64, mlp=256, heads=4, layers=4, patch=4)
    c.pp.randaug.num_layers = 1
    c.pp.randaug.magnitude = 5.0
    c.lr.base = 2e-3
    c.optim.weight_decay = 0.1
    c.ema_decay = 0.999
    c.ema_warmup = True
    c.batch = 128
    # 16 images per device and micro-batch (configs/fashion_mnist.py) on the docstring's two
    # CPU devices; on one device, 8 micro-batches keep the same 16.
    c.accum_steps = 4
    c.total_steps = 5300
    c.lr.warmup_steps = 200
    c.progress_every = 250
    c.eval_every = 1000
    c.checkpoint_every = 1000
    return c
