"""Writing a model back: the original's .npz, timm's and transformers' directory layouts (`export`).

A timm directory holds `config.json` (`architecture`, `num_classes`, `num_features`,
`global_pool`, `pretrained_cfg`, and `model_args` where the model differs from the
architecture's defaults) and `model.safetensors`; `timm.create_model(architecture,
num_classes=N, **model_args)` then loads it with `load_state_dict(..., strict=True)`. A
transformers directory holds a ViT `config.json` and `model.safetensors` in the published
names, for `ViTForImageClassification` (or `ViTModel`, with its tanh pooler as the
pre-logits layer, when there is no head).
"""

import json
import os
from typing import Any

import jax
import numpy as np

from vit_jax.utils import to_pair
from vit_jax.weights import layouts, npz
from vit_jax.weights.readers import (
    FORMATS,
    TIMM_HYBRIDS,
    TIMM_SIZES,
    PretrainedError,
    architecture,
    image_size,
)

# timm ViT names that exist for the original family: (size, patch) -> image sizes.
TIMM_PURE = {
    ("tiny", 16): (224, 384),
    ("small", 8): (224,),
    ("small", 16): (224, 384),
    ("small", 32): (224, 384),
    ("base", 8): (224,),
    ("base", 16): (224, 384),
    ("base", 32): (224, 384),
    ("large", 14): (224,),
    ("large", 16): (224, 384),
    ("large", 32): (224, 384),
    ("huge", 14): (224,),
}
# ... and with a GAP head (the tokens normalised before pooling, as the original's GAP).
TIMM_GAP = {("base", 16): (224,), ("huge", 14): (224,)}
# timm's hybrid names -> the image sizes it has them at.
TIMM_HYBRID_SIZES = {
    "vit_tiny_r_s16_p8": (224, 384),
    "vit_small_r26_s32": (224, 384),
    "vit_base_r26_s32": (224,),
    "vit_base_r50_s16": (224, 384),
    "vit_large_r50_s32": (224, 384),
}


def _error(message: str):
    return PretrainedError(message)


def _save(state: dict[str, np.ndarray], directory: str, config: dict) -> str:
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in state.items()}
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return directory


def _shape_facts(params: dict, config: dict) -> dict[str, Any]:
    image = image_size(params, config)
    if image is None or image[0] != image[1]:
        raise _error(
            "The position embedding is not for a square image; timm's and transformers' ViTs take square "
            "images: export this model as 'npz'."
        )
    first = params["conv_root"] if config.get("resnet") is not None else params["embedding"]
    return {
        "patch": to_pair(config["patches"]["size"]),
        "in_chans": int(np.shape(first["kernel"])[2]),
        "image": image[0],
        "num_classes": int(np.shape(params["head"]["kernel"])[-1]) if "head" in params else 0,
    }


# ----------------------------------------------------------------------------- timm


def timm_architecture(params: dict, config: dict) -> tuple[str, dict[str, Any]]:
    """(architecture name, model_args): a timm name of the same shapes when one exists, else the
    family's name with the arguments that give the shapes."""
    facts = _shape_facts(params, config)
    t = config["transformer"]
    shape = (config["hidden_size"], t["num_layers"])
    size = next((word for word, dims in TIMM_SIZES.items() if dims[:2] == shape), None)
    ph, pw = facts["patch"]
    args: dict[str, Any] = {}
    if config.get("gelu_approximate", True):
        args["act_layer"] = "gelu_tanh"  # the original's GELU; timm's default is the exact one
    if facts["in_chans"] != 3:
        args["in_chans"] = facts["in_chans"]
    if config.get("resnet") is not None:
        name = next((k for k, v in TIMM_HYBRIDS.items() if _same_hybrid(v, config)), None)
        if name is None or facts["image"] not in TIMM_HYBRID_SIZES.get(name, ()) or facts["in_chans"] != 3:
            raise _error(
                "timm has no hybrid of this shape (its hybrids: " + ", ".join(sorted(TIMM_HYBRIDS)) + ", at 224 or "
                "384 px, RGB); export it as 'npz'."
            )
        return f"{name}_{facts['image']}", args
    gap = config.get("classifier", "token") == "gap"
    table, kind = (TIMM_GAP, "_gap") if gap else (TIMM_PURE, "")
    if ph == pw and size is not None and facts["image"] in table.get((size, ph), ()) and not config.get("fc_norm"):
        name = f"vit_{size}_patch{ph}{kind}_{facts['image']}"
        if _same_shapes(architecture(name), config):
            return name, args
    args.update(
        img_size=facts["image"],
        patch_size=ph if ph == pw else (ph, pw),
        embed_dim=config["hidden_size"],
        depth=t["num_layers"],
        num_heads=t["num_heads"],
        mlp_ratio=t["mlp_dim"] / config["hidden_size"],
        class_token=not gap,
        global_pool="avg" if gap else "token",
        fc_norm=bool(config.get("fc_norm", False)),
    )
    return f"vit_{size or 'base'}_patch16_224", args


def _same_shapes(named: dict, config: dict) -> bool:
    """Whether a named architecture computes with the shapes (and head count) of `config`."""
    keys = ("mlp_dim", "num_heads", "num_layers")
    return (
        named["hidden_size"] == config["hidden_size"]
        and all(named["transformer"][k] == config["transformer"][k] for k in keys)
        and to_pair(named["patches"]["size"]) == to_pair(config["patches"]["size"])
        and named.get("classifier", "token") == config.get("classifier", "token")
    )


def _same_hybrid(registered: str, config: dict) -> bool:
    from vit_jax.configs import models as model_configs

    r = model_configs.get_config(registered).to_dict()
    return (
        _same_shapes(r, config)
        and tuple(r["resnet"]["num_layers"]) == tuple(config["resnet"]["num_layers"])
        and r["resnet"]["width_factor"] == config["resnet"].get("width_factor", 1)
    )


def _first_conv(config: dict) -> str:
    if config.get("resnet") is None:
        return "patch_embed.proj"
    return "patch_embed.backbone.stem.conv" if config["resnet"]["num_layers"] else "patch_embed.backbone.conv"


def write_timm(params: dict, config: dict, directory: str, class_names: list[str] | None) -> str:
    if config.get("representation_size") is not None:
        raise _error("timm's ViTs have no pre-logits layer (representation_size); export this model as 'npz' or 'hf'.")
    if config.get("posemb", "learn") != "learn" or config.get("classifier", "token") not in ("token", "gap"):
        raise _error("timm's ViTs have a learned 1-D position embedding and a token or GAP head; export as 'npz'.")
    arch, args = timm_architecture(params, config)
    facts = _shape_facts(params, config)
    gap = config.get("classifier", "token") == "gap"
    meta = {
        "architecture": arch,
        "num_classes": facts["num_classes"],
        "num_features": config["hidden_size"],
        "global_pool": "avg" if gap else "token",
        "pretrained_cfg": {
            "input_size": [facts["in_chans"], facts["image"], facts["image"]],
            "mean": [0.5] * facts["in_chans"],  # the original's input range: [-1, 1]
            "std": [0.5] * facts["in_chans"],
            "fixed_input_size": True,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "num_classes": facts["num_classes"],
            "first_conv": _first_conv(config),
            "classifier": "head",
        },
    }
    if args:
        meta["model_args"] = args
    if class_names:
        meta["pretrained_cfg"]["label_names"] = list(class_names)
    return _save(layouts.to_timm(params), directory, meta)


# ----------------------------------------------------------------------------- transformers


def write_hf(params: dict, config: dict, directory: str, class_names: list[str] | None) -> str:
    problems = []
    if config.get("resnet") is not None:
        problems.append("a hybrid (transformers' ViT has no ResNet stem)")
    if config.get("classifier", "token") != "token" or config.get("posemb", "learn") != "learn":
        problems.append("a head other than the cls token with a learned 1-D position embedding")
    if "head" in params and "pre_logits" in params:
        problems.append("a pre-logits layer under a head (ViTForImageClassification has no pooler)")
    if "head" not in params and "pre_logits" not in params:
        problems.append("no head and no pre-logits layer (ViTModel's pooler)")
    if problems:
        raise _error(f"transformers cannot hold this model: {'; '.join(problems)}. Export it as 'timm' or 'npz'.")
    facts = _shape_facts(params, config)
    t = config["transformer"]
    ph, pw = facts["patch"]
    names = list(class_names) if class_names else [f"LABEL_{i}" for i in range(facts["num_classes"])]
    meta = {
        "architectures": ["ViTForImageClassification" if "head" in params else "ViTModel"],
        "model_type": "vit",
        "hidden_size": config["hidden_size"],
        "num_hidden_layers": t["num_layers"],
        "num_attention_heads": t["num_heads"],
        "intermediate_size": t["mlp_dim"],
        "hidden_act": "gelu_pytorch_tanh" if config.get("gelu_approximate", True) else "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": float(config.get("layernorm_epsilon", 1e-6)),
        "image_size": facts["image"],
        "patch_size": ph if ph == pw else [ph, pw],
        "num_channels": facts["in_chans"],
        "qkv_bias": True,
        "encoder_stride": ph,
        "pooler_output_size": config.get("representation_size") or config["hidden_size"],
        "pooler_act": "tanh",
        "torch_dtype": "float32",
    }
    if "head" in params:
        meta["id2label"] = {str(i): n for i, n in enumerate(names)}
        meta["label2id"] = {n: i for i, n in enumerate(names)}
    return _save(layouts.to_hf(params), directory, meta)


def export(params, model_config: dict, path: str, format: str, class_names: list[str] | None = None) -> str:
    """Writes `params` in another codebase's layout: 'timm' (a directory that timm loads),
    'hf' (a directory for transformers' ViTForImageClassification, or ViTModel without a head)
    or 'npz' (the original release's file). Returns the path written."""
    if format not in FORMATS:
        raise PretrainedError(f"format={format!r}: choose one of {', '.join(FORMATS)}.")
    params = npz.unstack_blocks(jax.device_get(params))
    model_config = _plain(model_config)
    if format == "npz":
        npz.save(params, path)
        return path
    writer = write_timm if format == "timm" else write_hf
    return writer(params, model_config, path, class_names)


def _plain(tree):
    """Plain dicts for any mapping (ConfigDict, FrozenDict) in a model config."""
    if hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return tree
