"""Fake pretrained checkpoints for tests, as the original release's `vit_jax.test_utils` made them."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import checkpoint, models


def create_checkpoint(model_config, path) -> None:
    """Saves the parameters of `VisionTransformer(num_classes=1, **model_config)`, initialised
    with PRNGKey(0) on one 16x16 RGB image, as an .npz at `path` (its directory is created).

    The file holds the Linen parameter names joined by '/' (what the original wrote here,
    not the pre-Linen numbering of the published files), which the original's
    `checkpoint.load` and ours both read.
    """
    model = models.VisionTransformer(num_classes=1, **model_config)
    # Jitted: one compile instead of an op-by-op init (seconds per test); values may differ from an
    # eager init in the last bit, which no use of a fake checkpoint depends on.
    init = jax.jit(lambda rng: model.init(rng, jnp.ones((1, 16, 16, 3), jnp.float32), train=False))
    variables = init(jax.random.PRNGKey(0))
    flat = {k: np.asarray(v) for k, v in checkpoint.flatten(jax.device_get(variables["params"])).items()}
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **flat)
