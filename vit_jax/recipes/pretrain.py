"""The paper's pre-training recipe: `configs/pretrain.py:DATASET[,MODEL]`.

    python -m vit_jax.main --config configs/pretrain.py:imagenet21k,b16 --config.tfds_data_dir=DIR
    python -m vit_jax.main --config configs/pretrain.py:imagenet2012,b16 --config.tfds_data_dir=DIR \
        --config.tfds_manual_dir=MANUAL

Adam (beta1 0.9, beta2 0.999) with decoupled weight decay (optax.adamw: the decay
is scaled by the learning rate), batch 4096, 10k linear warm-up steps then linear
decay, dropout 0.1, a representation layer of the model's width, 224 px.
ImageNet-21k: base lr 1e-3, weight decay 0.03, 90 epochs.
ImageNet (imagenet2012): base lr 3e-3, weight decay 0.3, 300 epochs.
Sized for TPU pods; on one CPU this is days per epoch.
"""

from vit_jax.configs import defaults
from vit_jax.configs import models as model_configs

RECIPES = {
    "imagenet21k": dict(lr=1e-3, weight_decay=0.03, epochs=90, dataset="imagenet21k"),
    "imagenet2012": dict(lr=3e-3, weight_decay=0.3, epochs=300, dataset="imagenet2012"),
}
RECIPES["imagenet"] = RECIPES["imagenet2012"]


def get_config(arg: str = "imagenet21k,b16"):
    recipe, _, model = arg.partition(",")
    if recipe not in RECIPES:
        raise ValueError(f"Unknown pre-training recipe {recipe!r}; choose one of {', '.join(RECIPES)}.")
    r = RECIPES[recipe]
    c = defaults.get_config()
    c.model_name = model_configs.resolve_name(model or "b16")
    hidden = model_configs.MODEL_CONFIGS[c.model_name].hidden_size
    c.model.representation_size = hidden
    c.model.transformer.dropout_rate = 0.1
    c.model.transformer.attention_dropout_rate = 0.0
    c.dataset = r["dataset"]
    c.pp.crop = 224
    c.batch = 4096
    c.epochs = float(r["epochs"])
    c.optim.name = "adamw"
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.weight_decay = r["weight_decay"]
    c.lr.base = r["lr"]
    c.lr.warmup_steps = 10_000
    c.lr.decay = "linear"
    c.lr.end = 0.0
    c.grad_clip_norm = 1.0
    c.progress_every = 100
    c.eval_every = 5000
    c.checkpoint_every = 2000
    return c
