"""The small ViT the ablations in experiments/ vary: `configs/ablation.py:DATASET`.

    python -m vit_jax.main --config configs/ablation.py:fashion_mnist --config.dataset=DIR
    python -m vit_jax.main --config configs/ablation.py:digits

`fashion_mnist` (also right for MNIST: pass its directory as config.dataset): 28x28
grayscale, width 64, 4 blocks of 4 heads, 4x4 patches (49 tokens), 1,500 steps of 128
(3.2 epochs) as 8 micro-batches of 16, AdamW lr 2e-3 with weight decay 0.1, label
smoothing 0.1, flips, no crop. One evaluation, at the end. It is the Fashion-MNIST
recipe at two thirds of the width and an eighth of the steps, so a sweep of 24 runs
fits in under an hour on the 2-core CPU (two runs at a time, one core each:
about 1,500 images/s per run).

`digits`: the quickstart's model (8x8, 2x2 patches) for 300 steps, the setting the
test suite runs the experiments' quick mode on.

The experiments override the field they study (classifier, lr.base, model.posemb,
train_examples, model.resnet) and the seed; everything else stays as here.
"""

from vit_jax.configs import defaults


def get_config(arg: str = "fashion_mnist"):
    c = defaults.get_config()
    if arg == "fashion_mnist":
        c.dataset = "fashion_mnist"
        c.pp.crop = 28
        c.pp.area_min = 1.0
        c.pp.flip = True
        c.pp.channels = 1
        defaults.small_vit(c, hidden=64, mlp=128, heads=4, layers=4, patch=4)
        c.batch = 128
        c.accum_steps = 8
        c.total_steps = 1500
        c.lr.warmup_steps = 100
        c.progress_every = 250
    elif arg == "digits":
        c.dataset = "digits"
        c.pp.crop = 8
        c.pp.area_min = 0.85
        c.pp.flip = False
        c.pp.channels = 1
        defaults.small_vit(c, hidden=64, mlp=128, heads=4, layers=4, patch=2)
        c.batch = 128
        c.total_steps = 300
        c.lr.warmup_steps = 30
        c.progress_every = 100
    else:
        raise ValueError(f"configs/ablation.py:{arg}: use fashion_mnist or digits.")
    c.lr.base = 2e-3
    c.optim.weight_decay = 0.1
    c.eval_every = c.total_steps
    c.checkpoint_every = 500
    return c
