"""configs/fashion_mnist_augreg.py with patch dropout and test-time augmentation: the best
20-minute Fashion-MNIST recipe measured.

    XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false" \
        python -m vit_jax.main --config configs/fashion_mnist_patchdrop.py --config.dataset=DIR

DIR holds the original IDX files; without the override the TFDS `fashion_mnist` dataset is read
from config.tfds_data_dir. The model and recipe of configs/fashion_mnist_augreg.py (width 64,
MLP 256, 4 blocks, 4x4 patches; AdamW lr 2e-3, weight decay 0.1, cosine decay, label smoothing
0.1; 2-pixel pad-and-crop and flips; EMA 0.999 with warm-up; two CPU devices), plus:
- patch dropout: each training image keeps a random 24 of its 49 patch tokens, which halves
  the cost of a step (BENCHMARKS.md, "Patch dropout"), so 20 minutes hold more epochs; the
  batch of 128 goes in 2 micro-batches (32 images of 25 tokens per device), the fastest split
  at this token count;
- the last 1,000 of the 18,000 steps train on every token, so that the model ends on the token
  count it is evaluated with: on a schedule of their own (the cosine of the first 17,000 steps
  reaches 0 where they begin; they restart at lr 2e-4 and decay by cosine to 0) and in 4
  micro-batches (16 images of 50 tokens per device);
- the final evaluation averages the softmax over 18 views of each test image (moved by -1, 0,
  1 pixels each way, and mirrored); the evaluation at step 9,000 is one view.

Measured on the 2-core CPU (2026-12-06), with DIR the original Fashion-MNIST files:
- as above: 92.27% test accuracy with the 18 views (91.73% on the plain image; test loss 0.294)
  after 19 min 25 s wall-clock, at 1,890 to 2,390 images/s with patch dropout and 1,000 to 1,050
  on every token. Rerun the same day: the same numbers to the last digit (the run is
  deterministic for its seed) after 20 min 0 s, the host 3% slower. The issue's target, 92.5%
  in 20 minutes, is not met.
- with `--config.total_steps=18500 --config.eval_every=6000 --config.checkpoint_every=6000`:
  92.45% (91.84% on the plain image; test loss 0.294) after 20 min 21 s.
The recipe before it (2026-12-03: 14,500 steps, the last 1,800 on every token on the run's own
schedule, 4 micro-batches throughout) reached 92.09% in 17 min 32 s. Every run:
experiments/results/recipes.md, "Not met".
"""

from vit_jax.configs import defaults


def get_config():
    c = defaults.get_config()
    c.dataset = "fashion_mnist"
    c.pp.crop = 28
    c.pp.area_min = 1.0
    c.pp.pad = 2
    c.pp.flip = True
    c.pp.channels = 1
    defaults.small_vit(c, hidden=64, mlp=256, heads=4, layers=4, patch=4)
    c.model.patch_drop_rate = 0.5
    c.full_token_steps = 1000
    c.full_token_lr = 2e-4
    c.full_token_accum_steps = 4  # 16 images of 50 tokens per device and micro-batch
    c.tta.flip = True
    c.tta.shift = 1
    c.lr.base = 2e-3
    c.optim.weight_decay = 0.1
    c.ema_decay = 0.999
    c.ema_warmup = True
    c.batch = 128
    c.accum_steps = 2  # 32 images of 25 tokens per device and micro-batch on the two CPU devices
    c.total_steps = 18_000
    c.lr.warmup_steps = 400
    c.progress_every = 500
    c.eval_every = 9000
    c.checkpoint_every = 9000
    return c
