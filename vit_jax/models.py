"""Public model facade: `VisionTransformer` and `get_model` by registered name."""

from typing import Any

from vit_jax import models_resnet, models_vit
from vit_jax.configs import models as model_configs

VisionTransformer = models_vit.VisionTransformer
CLASSIFIERS = models_vit.CLASSIFIERS
POSEMBS = models_vit.POSEMBS


def get_model(name: str, **kwargs: Any) -> VisionTransformer:
    """A VisionTransformer for a registered model name; kwargs override fields."""
    config = model_configs.get_config(name).to_dict()
    config.update(kwargs)
    return VisionTransformer(**config)


def grid_shape(model_config: Any, image_shape: tuple[int, int]) -> tuple[int, int]:
    """The token grid (rows, cols) a model makes of an (H, W) image."""
    h, w = image_shape
    resnet = model_config.get("resnet")
    if resnet is not None:
        # Every strided layer of the stem uses SAME padding: ceil division.
        for _ in range(models_resnet.num_downsamplings(resnet["num_layers"])):
            h, w = -(-h // 2), -(-w // 2)
    ph, pw = models_vit.to_pair(model_config["patches"]["size"])
    return h // ph, w // pw
