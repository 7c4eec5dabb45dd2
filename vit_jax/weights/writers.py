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

from vit_jax.models_vit import activation_of, has_class_token
from vit_jax.utils import to_pair
from vit_jax.weights import families, hf_configs, hf_layouts, layouts, npz
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
    ph = to_pair(config["patches"]["size"])[0]
    wanted = config.get("export_image")  # the source's input size, when its patches floor to this grid
    if wanted and config.get("patch_floor") and wanted // ph == image[0] // ph:
        image = (wanted, wanted)
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
    if is_family(config):
        return _family_timm_architecture(config, facts)
    t = config["transformer"]
    shape = (config["hidden_size"], t["num_layers"])
    size = next((word for word, dims in TIMM_SIZES.items() if dims[:2] == shape), None)
    ph, pw = facts["patch"]
    args: dict[str, Any] = {}
    if _activation(config) == "gelu_tanh":
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


# Our fields of the later families, with their defaults (what makes a config one of them).
FAMILY_DEFAULTS = {
    "activation": None,
    "class_token": None,
    "reg_tokens": 0,
    "distilled": False,
    "posemb_prefix": True,
    "pre_norm": False,
    "patch_bias": True,
    "layerscale_init": None,
    "mlp_type": "mlp",
    "qk_norm": False,
    "rope": False,
    "rope_ref_grid": None,
    "key_bias": True,
}


def _activation(config: dict) -> str:
    """The MLP's activation a config computes (`activation`, else as `gelu_approximate` says)."""
    return activation_of(config.get("activation"), config.get("gelu_approximate", True))


def is_family(config: dict) -> bool:
    """Whether `config` uses any field of the later families (else it is the original ViT)."""
    if config.get("classifier") == "map" or config.get("activation") not in (None, "gelu", "gelu_tanh"):
        return True
    return any(config.get(k, d) != d for k, d in FAMILY_DEFAULTS.items() if k != "activation")


def _computes(config: dict) -> tuple:
    """What decides a model's tree and outputs, for comparing a config with a named architecture."""
    t = config["transformer"]
    activation = _activation(config)
    classifier = config.get("classifier", "token")
    class_token = has_class_token(config.get("class_token"), classifier)
    fields = {k: config.get(k, d) for k, d in FAMILY_DEFAULTS.items() if k not in ("activation", "class_token")}
    fields["layerscale_init"] = fields["layerscale_init"] is not None
    if not class_token and not fields["distilled"]:
        fields["posemb_prefix"] = True  # no class or distillation token: nothing for it to cover
    fields["rope_ref_grid"] = tuple(fields["rope_ref_grid"]) if fields["rope_ref_grid"] else None
    shapes = (config["hidden_size"], t["mlp_dim"], t["num_heads"], t["num_layers"], to_pair(config["patches"]["size"]))
    numerics = (activation, float(config.get("layernorm_epsilon", 1e-6)), bool(config.get("fc_norm", False)))
    return shapes, numerics, classifier, bool(class_token), tuple(sorted(fields.items()))


def _family_timm_architecture(config: dict, facts: dict) -> tuple[str, dict[str, Any]]:
    """A timm family name that computes `config` at its image size; else the family's name that
    computes it at other shapes, with the shapes as `model_args`; else timm's plain ViT with the
    family's fields as `model_args`."""
    chans = {"in_chans": facts["in_chans"]} if facts["in_chans"] != 3 else {}
    ours = _computes(config)
    table = {name: families.timm_family(name) for name in families.timm_names()}  # (fields, preprocessing)
    for name, (named, data) in table.items():
        if data["input_size"][-1] == facts["image"] and _computes(named) == ours:
            return name, chans

    def likeness(name: str) -> tuple:  # the same patch, width and image first
        named, data = table[name]
        return (named["patches"] != config["patches"], named["hidden_size"] != config["hidden_size"],
                data["input_size"][-1] != facts["image"])  # fmt: skip

    for name in sorted(table, key=likeness):
        if _computes(table[name][0])[1:] == ours[1:]:
            return name, {**_shape_args(config, facts, name.startswith("eva02")), **chans}
    if config.get("rope") or config.get("mlp_type", "mlp") != "mlp" or config.get("qk_norm"):
        raise _error(
            "timm has no architecture of this EVA-02, SwiGLU or QK-norm model's kind that config.json can "
            "describe; export it as 'npz' (or 'hf' for a DINOv2 SwiGLU)."
        )
    eps = float(config.get("layernorm_epsilon", 1e-6))
    if eps != 1e-6:
        raise _error(f"timm's config.json cannot set the LayerNorm epsilon {eps} here; export it as 'npz' or 'hf'.")
    if config.get("pre_norm") == config.get("patch_bias", True):
        raise _error("timm builds a patch bias exactly when there is no pre-norm; export this model as 'npz' or 'hf'.")
    classifier = config.get("classifier", "token")
    activation = _activation(config)
    args: dict[str, Any] = dict(
        _shape_args(config, facts, False),
        class_token=has_class_token(config.get("class_token"), classifier),
        global_pool={"gap": "avg", "map": "map"}.get(classifier, "token"),
        fc_norm=bool(config.get("fc_norm", False)),
        reg_tokens=int(config.get("reg_tokens", 0)),
        no_embed_class=not config.get("posemb_prefix", True) or bool(config.get("reg_tokens")),
        pre_norm=bool(config.get("pre_norm", False)),
        init_values=config.get("layerscale_init"),
        act_layer=activation,
        **chans,
    )
    return ("deit_base_distilled_patch16_224" if config.get("distilled") else "vit_base_patch16_224"), args


def _shape_args(config: dict, facts: dict, eva: bool) -> dict[str, Any]:
    """timm's shape arguments; its MLP width is int(width * mlp_ratio), the packed SwiGLU's twice
    the gated width in ViT (DINOv2 giant) and the gated width in EVA."""
    t = config["transformer"]
    ph, pw = facts["patch"]
    width = config["hidden_size"]
    hidden = t["mlp_dim"] * (2 if config.get("mlp_type") == "swiglu" and not eva else 1)
    ratio = hidden / width
    if int(width * ratio) != hidden:
        ratio += 1e-9  # int() of a product a rounding below the whole number
    return dict(
        img_size=facts["image"],
        patch_size=ph if ph == pw else [ph, pw],
        embed_dim=width,
        depth=t["num_layers"],
        num_heads=t["num_heads"],
        mlp_ratio=ratio,
    )


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


def _fold_class_position(params: dict, config: dict) -> tuple[dict, dict]:
    """Registers after a class token with a position (transformers' DINOv2 layout) -> timm's: the
    class token's position added into it and the table left for the patches (timm's own
    conversion of DINOv2 with registers)."""
    if not (config.get("reg_tokens") and config.get("posemb_prefix", True) and "cls" in params) or "dist" in params:
        return params, config
    t = params["Transformer"]
    pe = np.asarray(t["posembed_input"]["pos_embedding"])
    params = dict(params, cls=np.asarray(params["cls"]) + pe[:, :1])
    params["Transformer"] = dict(t, posembed_input={"pos_embedding": pe[:, 1:]})
    return params, dict(config, posemb_prefix=False)


def write_timm(
    params: dict, config: dict, directory: str, class_names: list[str] | None, data_config=None, extra=None
) -> str:
    if config.get("representation_size") is not None:
        raise _error("timm's ViTs have no pre-logits layer (representation_size); export this model as 'npz' or 'hf'.")
    if config.get("posemb", "learn") != "learn" or config.get("classifier", "token") not in ("token", "gap", "map"):
        raise _error("timm's ViTs have a learned 1-D position embedding and a token, GAP or MAP head; export as 'npz'.")
    params, config = _fold_class_position(params, config)
    arch, args = timm_architecture(params, config)
    facts = _shape_facts(params, config)
    classifier = config.get("classifier", "token")
    data = data_config or families.data_config(*families.INCEPTION, facts["image"], 1.0, "bilinear")
    meta = {
        "architecture": arch,
        "num_classes": facts["num_classes"],
        "num_features": config["hidden_size"],
        "global_pool": {"gap": "avg", "map": "map"}.get(classifier, "token"),
        "pretrained_cfg": {
            "input_size": [facts["in_chans"], facts["image"], facts["image"]],
            "mean": list(data["mean"])[: facts["in_chans"]],  # the original's: 0.5 (input range [-1, 1])
            "std": list(data["std"])[: facts["in_chans"]],
            "fixed_input_size": True,
            "interpolation": data["interpolation"],
            "crop_pct": data["crop_pct"],
            "num_classes": facts["num_classes"],
            "first_conv": _first_conv(config),
            "classifier": ["head", "head_dist"] if config.get("distilled") else "head",
        },
    }
    meta["model_args"] = args  # what differs from the architecture's defaults (often nothing)
    if class_names:
        meta["pretrained_cfg"]["label_names"] = list(class_names)
    return _save(layouts.to_timm(params, eva=arch.startswith("eva02")), directory, meta)


# ----------------------------------------------------------------------------- transformers


def write_hf_family(params: dict, config: dict, directory: str, class_names, data_config=None, extra=None) -> str:
    """DINOv2 (with registers), CLIP's or SigLIP's vision tower, or distilled DeiT, in transformers' files."""
    model_type = hf_configs.model_type_of(config)
    facts = _shape_facts(params, config)
    problems = []
    eva = config.get("rope") or not config.get("key_bias", True) or config.get("mlp_type") == "swiglu_norm"
    if model_type is None or eva or config.get("qk_norm"):
        problems.append(
            "a model none of transformers' ViT classes computes (EVA-02's rotary embedding or SwiGLU norm, QK-norm)"
        )
    elif model_type != "deit" and "head" in params:
        problems.append(f"a classification head ({hf_configs.ARCHITECTURES[model_type]} returns features)")
    elif model_type == "deit" and "head" not in params:
        problems.append("a distilled DeiT without its heads")
    elif model_type == "clip_vision_model" and (config.get("patch_bias", True) or config.get("classifier") != "token"):
        problems.append("CLIP's pre-norm with a patch bias or a head other than the class token")
    elif model_type == "siglip_vision_model" and config.get("classifier") not in ("map", "gap"):
        problems.append("a SigLIP tower with a head other than the attention pool")
    if problems:
        raise _error(f"transformers cannot hold this model: {'; '.join(problems)}. Export it as 'timm' or 'npz'.")
    prefix = int("cls" in params) + int("dist" in params)
    if not config.get("posemb_prefix", True) and prefix:
        # transformers' tables cover the class (and distillation) token: zero rows add nothing to them.
        t = params["Transformer"]
        pe = np.asarray(t["posembed_input"]["pos_embedding"])
        pe = np.concatenate([np.zeros((1, prefix, pe.shape[-1]), pe.dtype), pe], axis=1)
        params = dict(params, Transformer=dict(t, posembed_input={"pos_embedding": pe}))
    prefix_of_type = hf_layouts.PREFIXES[model_type]
    kept = {k: v for k, v in (extra or {}).items() if k.startswith(prefix_of_type) or model_type.startswith("dinov2")}
    try:
        meta = hf_configs.to_config(model_type, config, facts["image"], facts["in_chans"])
    except hf_configs.ConfigError as e:
        raise _error(f"transformers cannot hold this model: {e}. Export it as 'timm' or 'npz'.") from None
    if model_type == "deit":
        names = list(class_names) if class_names else [f"LABEL_{i}" for i in range(facts["num_classes"])]
        meta["id2label"] = {str(i): n for i, n in enumerate(names)}
        meta["label2id"] = {n: i for i, n in enumerate(names)}
    path = _save(hf_layouts.to_hf_family(params, model_type, kept), directory, meta)
    if data_config:
        _save_processor(directory, data_config)
    return path


def _save_processor(directory: str, data: dict) -> None:
    """preprocessor_config.json: resize the short side to input / crop_pct, crop, normalise."""
    image = int(data["input_size"][-1])
    size = int(round(image / float(data.get("crop_pct", 1.0))))
    processor = {
        "do_resize": True,
        "size": {"shortest_edge": size},
        "do_center_crop": True,
        "crop_size": {"height": image, "width": image},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(data["mean"]),
        "image_std": list(data["std"]),
        "resample": 3 if data.get("interpolation", "bicubic") == "bicubic" else 2,
    }
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump(processor, f, indent=2)


def write_hf(
    params: dict, config: dict, directory: str, class_names: list[str] | None, data_config=None, extra=None
) -> str:
    if is_family(config):
        return write_hf_family(params, config, directory, class_names, data_config, extra)
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
        "hidden_act": "gelu_pytorch_tanh" if _activation(config) == "gelu_tanh" else "gelu",
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


def export(
    params,
    model_config: dict,
    path: str,
    format: str,
    class_names: list[str] | None = None,
    data_config: dict | None = None,
    extra: dict | None = None,
) -> str:
    """Writes `params` in another codebase's layout: 'timm' (a directory that timm loads),
    'hf' (a directory for transformers' ViTForImageClassification, or ViTModel without a head,
    or the later families' classes: Dinov2Model, Dinov2WithRegistersModel, CLIPVisionModel,
    SiglipVisionModel, DeiTForImageClassificationWithTeacher) or 'npz' (the original release's
    file). `data_config` (a loaded model's) goes into the preprocessing written beside the
    weights; `extra` (its tensors the model does not use) goes back into transformers' files.
    Returns the path written."""
    if format not in FORMATS:
        raise PretrainedError(f"format={format!r}: choose one of {', '.join(FORMATS)}.")
    params = npz.unstack_blocks(jax.device_get(params))
    model_config = _plain(model_config)
    if data_config and data_config.get("input_size"):
        model_config["export_image"] = int(data_config["input_size"][-1])
    if format == "npz":
        npz.save(params, path)
        return path
    writer = write_timm if format == "timm" else write_hf
    return writer(params, model_config, path, class_names, data_config, extra)


def _plain(tree):
    """Plain dicts for any mapping (ConfigDict, FrozenDict) in a model config."""
    if hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return tree
