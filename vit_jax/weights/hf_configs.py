"""transformers' configs of the later ViT families: their defaults, our fields, their preprocessing.

A `config.json` on the Hub lists only what differs from its config class's defaults (SigLIP's
often lists nothing for the vision tower), so each model type carries its class's defaults
(`Dinov2Config`, `Dinov2WithRegistersConfig`, `CLIPVisionConfig`, `SiglipVisionConfig`,
`DeiTConfig`). A full `clip` or `siglip` config holds the tower's under `vision_config`.
"""

from typing import Any

from vit_jax.weights import families

_COMMON = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_channels=3, image_size=224)
DEFAULTS = {
    "dinov2": dict(
        _COMMON,
        patch_size=14,
        mlp_ratio=4,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        qkv_bias=True,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
    ),
    "clip_vision_model": dict(
        _COMMON, patch_size=32, intermediate_size=3072, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=512
    ),
    "siglip_vision_model": dict(
        _COMMON, patch_size=16, intermediate_size=3072, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6
    ),
    "deit": dict(
        _COMMON, patch_size=16, intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True
    ),
}
DEFAULTS["dinov2_with_registers"] = dict(DEFAULTS["dinov2"], patch_size=16, num_register_tokens=4)
# The model types read as families (the original ViT's `vit` is read by layouts.from_hf).
MODEL_TYPES = ("dinov2", "dinov2_with_registers", "clip", "clip_vision_model", "siglip", "siglip_vision_model", "deit")
ARCHITECTURES = {
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "clip_vision_model": "CLIPVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
    "deit": "DeiTForImageClassificationWithTeacher",
}
# transformers model types of ViTs that vit_jax does not compute (yet), and what they need.
UNSUPPORTED_TYPES = {
    "beit": "BEiT's relative position bias per layer",
    "data2vec-vision": "BEiT's relative position bias per layer",
    "siglip2": "NaFlex's variable patch sequences",
    "siglip2_vision_model": "NaFlex's variable patch sequences",
    "dinov3_vit": "DINOv3's rotary embedding and its own layout",
}
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
}
_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}
# The image processors' defaults where preprocessor_config.json is absent (the published
# DINOv2 files were saved with ImageNet's mean and std and a 256 -> 224 crop).
_PROCESSORS = {
    "dinov2": (families.IMAGENET, 224 / 256),
    "dinov2_with_registers": (families.IMAGENET, 224 / 256),
    "clip_vision_model": (families.OPENAI_CLIP, 1.0),
    "siglip_vision_model": (families.INCEPTION, 1.0),
    "deit": (families.IMAGENET, 224 / 256),
}


class ConfigError(ValueError):
    """A transformers config this codebase cannot compute; the message names what is missing."""


def vision_config(config: dict) -> tuple[str, dict[str, Any]]:
    """(model type of the vision tower, its config with the class's defaults filled in)."""
    model_type = config["model_type"]
    if model_type in ("clip", "siglip"):
        config = config.get("vision_config") or {}
        model_type += "_vision_model"
    return model_type, {**DEFAULTS[model_type], **config}


def model_fields(model_type: str, c: dict) -> dict[str, Any]:
    """Our VisionTransformer fields that the weights' shapes do not show, from the config."""
    act = c.get("hidden_act")
    if act not in ACTIVATIONS:
        raise ConfigError(f"hidden_act={act!r}: vit_jax computes {', '.join(ACTIVATIONS)}.")
    if not c.get("qkv_bias", True):
        raise ConfigError("qkv_bias=False: attention without query/key/value biases is not computed yet.")
    fields: dict[str, Any] = {
        "activation": ACTIVATIONS[act],
        "gelu_approximate": ACTIVATIONS[act] == "gelu_tanh",
        "layernorm_epsilon": float(c["layer_norm_eps"]),
        "patch_floor": True,  # a VALID convolution: the pixels past the last whole patch are left out
    }
    if model_type.startswith("dinov2"):
        fields["layerscale_init"] = float(c.get("layerscale_value", 1.0))
    return fields


def heads(c: dict) -> int:
    return int(c["num_attention_heads"])


def data_config(model_type: str, c: dict, processor: dict | None) -> dict[str, Any]:
    """The source's preprocessing: its preprocessor_config.json, else the processor's defaults."""
    (mean, std), crop = _PROCESSORS[model_type]
    image = int(c.get("image_size", 224))
    if processor:
        mean, std = processor.get("image_mean", mean), processor.get("image_std", std)
        crop_size = processor.get("crop_size") if processor.get("do_center_crop", True) else None
        size = processor.get("size")
        if isinstance(crop_size, dict):
            crop_size = crop_size.get("height")
        if isinstance(size, dict):
            size = size.get("shortest_edge") or size.get("height")
        if crop_size and size:
            image, crop = int(crop_size), float(crop_size) / float(size)
        elif size:
            image, crop = int(size), 1.0
    return families.data_config(mean, std, image, crop)


def model_type_of(config: dict) -> str | None:
    """The transformers model type a model config of ours can be written as, else None."""
    if config.get("distilled"):
        return "deit"
    if config.get("pre_norm"):
        return "clip_vision_model"
    if config.get("classifier") == "map" or (config.get("class_token") is False and not config.get("reg_tokens")):
        return "siglip_vision_model"
    if config.get("reg_tokens"):
        return "dinov2_with_registers"
    if config.get("layerscale_init") is not None or config.get("mlp_type", "mlp") == "swiglu":
        return "dinov2"
    return None


def to_config(model_type: str, config: dict, image: int, in_chans: int) -> dict[str, Any]:
    """The config.json of `model_type` for a model config of ours."""
    t = config["transformer"]
    act = config.get("activation") or ("gelu_tanh" if config.get("gelu_approximate", True) else "gelu")
    patch = config["patches"]["size"]
    out = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "hidden_size": config["hidden_size"],
        "num_hidden_layers": t["num_layers"],
        "num_attention_heads": t["num_heads"],
        "num_channels": in_chans,
        "image_size": image,
        "patch_size": int(patch[0]),
        "hidden_act": _HF_ACT[act],
        "layer_norm_eps": float(config.get("layernorm_epsilon", 1e-6)),
        "torch_dtype": "float32",
    }
    if model_type.startswith("dinov2"):
        swiglu = config.get("mlp_type", "mlp") == "swiglu"
        # Dinov2's SwiGLU width is ((int(D * ratio) * 2 / 3) + 7) // 8 * 8: ratio 1.5 * width / D gives it back.
        ratio = (1.5 if swiglu else 1.0) * t["mlp_dim"] / config["hidden_size"]
        if not ratio.is_integer():
            raise ConfigError(
                f"transformers' {ARCHITECTURES[model_type]} takes a whole mlp_ratio; an MLP of {t['mlp_dim']} on a "
                f"width of {config['hidden_size']} needs {ratio:g}"
            )
        out.update(mlp_ratio=int(ratio), use_swiglu_ffn=swiglu, qkv_bias=True, layerscale_value=1.0)
        if model_type == "dinov2_with_registers":
            out["num_register_tokens"] = int(config["reg_tokens"])
    else:
        out["intermediate_size"] = t["mlp_dim"]
    if model_type == "siglip_vision_model":
        out["vision_use_head"] = config.get("classifier") == "map"
    return out
