"""Offline quickstart: a small ViT on scikit-learn's bundled handwritten digits.

    python -m vit_jax.main --config configs/quickstart.py

No download: the 1,797 8x8 digits ship inside scikit-learn (80/20 split by a fixed
permutation: 1,437 train, 360 test). Expected (2-core CPU): see README "Results".
"""

from vit_jax.configs import common


def get_config():
    c = common.get_config()
    c.dataset = "digits"
    c.pp.crop = 8
    c.pp.area_min = 0.7
    c.pp.flip = False  # digits are not mirror-symmetric
    c.pp.channels = 1
    c.model.hidden_size = 64
    c.model.patches.size = (2, 2)
    c.model.transformer.mlp_dim = 128
    c.model.transformer.num_heads = 4
    c.model.transformer.num_layers = 4
    c.model.transformer.dropout_rate = 0.0
    c.model.transformer.attention_dropout_rate = 0.0
    c.model.classifier = "token"
    c.batch = 128
    c.total_steps = 2000
    c.optim.name = "adamw"
    c.optim.weight_decay = 0.05
    c.lr.base = 1e-3
    c.lr.warmup_steps = 100
    c.label_smoothing = 0.1
    c.progress_every = 200
    c.eval_every = 500
    c.checkpoint_every = 500
    return c
