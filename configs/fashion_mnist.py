"""A ViT trained from scratch on Fashion-MNIST (28x28 grayscale, 4x4 patches).

    python -m vit_jax.main --config configs/fashion_mnist.py --config.dataset=DIR

DIR holds the original IDX files (train-images-idx3-ubyte.gz and friends); without
the override the TFDS `fashion_mnist` dataset is read from config.tfds_data_dir.
Expected result and time on the 2-core CPU: see README "Results".
"""

from vit_jax.configs import common


def get_config():
    c = common.get_config()
    c.dataset = "fashion_mnist"
    c.pp.crop = 28
    c.pp.area_min = 0.6
    c.pp.flip = True
    c.pp.channels = 1
    c.model.hidden_size = 128
    c.model.patches.size = (4, 4)
    c.model.transformer.mlp_dim = 256
    c.model.transformer.num_heads = 4
    c.model.transformer.num_layers = 6
    c.model.transformer.dropout_rate = 0.0
    c.model.transformer.attention_dropout_rate = 0.0
    c.model.classifier = "token"
    c.batch = 256
    c.total_steps = 4000
    c.optim.name = "adamw"
    c.optim.weight_decay = 0.05
    c.lr.base = 1e-3
    c.lr.warmup_steps = 200
    c.label_smoothing = 0.1
    c.progress_every = 200
    c.eval_every = 1000
    c.checkpoint_every = 1000
    return c
