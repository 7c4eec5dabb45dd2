"""Pretrained ViT weights from where they are published today, and back.

    p = pretrained.load("hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")
    model = models.VisionTransformer(num_classes=p.num_classes, **p.model_config)
    logits = model.apply({"params": p.params}, images, train=False)
    pretrained.export(p.params, p.model_config, "out/", "timm")

The public face of `vit_jax.weights`: `load` and what it returns come from
`weights/readers.py` (the original's `.npz`, timm's and transformers' layouts, a bare
`.safetensors`, `hf-hub:` ids), `export` from `weights/writers.py`, the name mappings from
`weights/layouts.py`.
"""

from vit_jax.weights.readers import (  # noqa: F401
    EXPORTED_FIELDS,
    FORMATS,
    HUB_EXAMPLE,
    HUB_PREFIX,
    Pretrained,
    PretrainedError,
    architecture,
    check_fits,
    config_from_params,
    for_image_size,
    hub_download,
    image_size,
    is_layout_source,
    load,
    load_cached,
    normalisation,
    read_safetensors,
)
from vit_jax.weights.writers import export  # noqa: F401
