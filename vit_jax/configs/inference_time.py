"""The original release's config for `vit_jax.inference_time` (same fields and defaults).

    from vit_jax import inference_time
    from vit_jax.configs import inference_time as config_lib

    config = config_lib.get_config()
    config.batch, config.num_classes, config.image_size = 64, 1000, 224
    inference_time.inference_time(config, "runs/inference_time")  # the workdir

batch, num_classes and image_size have no usable default (0) and must be set. The field
that names the job is `train`, not `trainer`, exactly as the original spelled it.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model_name = "ViT-B_32"  # a registered name (vit_jax.configs.models)
    config.log_dir = "."
    config.steps = 30  # forward passes timed
    config.initial_steps = 10  # forward passes run before timing
    config.batch = 0  # images per forward pass, split over the local devices
    config.num_classes = 0
    config.image_size = 0  # height = width
    config.train = "inference_time"
    return config
