"""Reading pretrained ViT weights from where they are published today (`vit_jax.pretrained`).

    p = pretrained.load("hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")
    model = models.VisionTransformer(num_classes=p.num_classes, **p.model_config)
    logits = model.apply({"params": p.params}, images, train=False)

`load(source, model=None, image_size=None)` reads the original release's `.npz` (local or
`gs://...`), a `.safetensors` file in timm's layout (`model=` names the architecture), a
directory as the Hugging Face Hub stores a model (timm's: `config.json` with `architecture`;
transformers': `config.json` with `model_type` `vit`, `dinov2`, `dinov2_with_registers`, `clip`,
`clip_vision_model`, `siglip`, `siglip_vision_model` or `deit`; each with `model.safetensors`),
or `hf-hub:ORG/NAME`, fetched with `huggingface_hub` into its cache. The later families' timm
names are in `families.py`; `image_size` resamples the position embedding as the source does
(`resample.py`); `data_config` is the source's preprocessing. The parameters are the
tree `npz.load` gives for an original file; `model_config` carries the numerics of
the source (exact GELU and the LayerNorm epsilon of timm and transformers, timm's weight
standardisation and GroupNorm epsilon in hybrids), so the model reproduces the source's
outputs. The number of heads is not in the weights: it comes from the architecture name or
`config.json`. `writers.export` writes timm's or transformers' layout (or the original's) back.
"""

import dataclasses
import functools
import json
import logging
import os
import re
from typing import Any

import numpy as np

from vit_jax import errors, models, models_resnet
from vit_jax.weights import families, hf_configs, hf_layouts, layouts, npz, resample
from vit_jax.weights.architectures import (  # noqa: F401  (re-exported: vit_jax.pretrained)
    TIMM_HEADS,
    TIMM_HYBRIDS,
    TIMM_SIZES,
    PretrainedError,
    _heads_by_width,
    _heads_of,
    _registry_name_of,
    architecture,
    check_fits,
    config_from_params,
    image_size,
)

log = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
HUB_EXAMPLE = "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
FORMATS = ("timm", "hf", "npz")
TIMM_NUMERICS = {"gelu_approximate": False, "layernorm_epsilon": 1e-6}
TIMM_RESNET_NUMERICS = {"ws_epsilon": 1e-8, "ws_epsilon_in_sqrt": True, "gn_epsilon": 1e-5}
# The VisionTransformer fields that describe the weights and their numerics (what an export needs).
EXPORTED_FIELDS = (
    "patches",
    "transformer",
    "hidden_size",
    "resnet",
    "representation_size",
    "classifier",
    "posemb",
    "layernorm_epsilon",
    "gelu_approximate",
    "fc_norm",
    *("activation", "class_token", "reg_tokens", "distilled", "posemb_prefix", "pre_norm", "patch_bias"),
    *("layerscale_init", "mlp_type", "qk_norm", "key_bias", "rope", "rope_ref_grid", "patch_floor"),
)
HUB_FIX = (
    "On a machine with network access run `hf download {repo} --local-dir DIR` (huggingface_hub's command), "
    "copy DIR here and pass the directory instead of hf-hub:{repo}."
)


@dataclasses.dataclass
class Pretrained:
    """Loaded weights: the parameter tree, the model's keyword arguments (without num_classes),
    the head's class count (0 without a head), and where they came from."""

    params: dict
    model_config: dict[str, Any]
    num_classes: int
    source: str
    image_size: tuple[int, int] | None = None  # the resolution the position embedding is for
    class_names: list[str] | None = None
    data_config: dict[str, Any] | None = None  # mean, std, input_size, crop_pct, interpolation
    extra: dict[str, np.ndarray] | None = None  # tensors of the source the model does not use
    resampling: str = "timm"  # how the source resamples its position embedding (weights/resample.py)

    def model(self, **overrides) -> models.VisionTransformer:
        return models.VisionTransformer(**{"num_classes": self.num_classes, **self.model_config, **overrides})


# ----------------------------------------------------------------------------- loading


def load(source: str, model: str | None = None, image_size: int | None = None) -> Pretrained:
    """Reads pretrained weights from `source` (see the module docstring); `model` names the
    architecture (a registry name like ViT-B_16 or a timm name like vit_base_patch16_224);
    `image_size` (an int: square) resamples the position embedding for that resolution, as
    the source's library does."""
    p = _load(os.fspath(source), model)
    return p if image_size is None else for_image_size(p, image_size)


def _load(source: str, model: str | None) -> Pretrained:
    if source.startswith(HUB_PREFIX):
        directory = hub_download(source[len(HUB_PREFIX) :])
        return _with_source(_load_dir(directory, model), source)
    if "://" not in source and os.path.isdir(source):
        return _load_dir(source, model)
    if source.endswith(".safetensors"):
        if model is None:
            raise PretrainedError(
                f"{source} holds weights without their architecture: pass model= (e.g. model='ViT-B_16' or "
                "model='vit_base_patch16_224'), or load the directory with its config.json."
            )
        heads = _heads_of(model)  # an unknown name fails before the file is read
        return _from_state(read_safetensors(source), heads, source, model)
    params = npz.load(source)
    name = model or _registry_name_of(source)
    heads = _heads_of(name) if name else _heads_by_width(params, source)
    p = _finish(params, {}, heads, source, name)
    data = families.data_config(*families.INCEPTION, (p.image_size or (224,))[0], 1.0, "bilinear")
    return dataclasses.replace(p, data_config=data, resampling="spline")


def normalisation(p: Pretrained) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) the source normalises its inputs with, or None for the original's [-1, 1]
    (mean and std 0.5), which the input pipeline computes as x / 127.5 - 1."""
    data = p.data_config or {}
    if "mean" not in data or (set(data["mean"]) == {0.5} and set(data["std"]) == {0.5}):
        return None
    return tuple(data["mean"]), tuple(data["std"])


def for_image_size(p: Pretrained, image_size: int) -> Pretrained:
    """`p` with its position embedding resampled for `image_size` px (square), as its source does."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise PretrainedError(f"image_size={image_size!r}: give the side of a square image in pixels, e.g. 224.")
    ph, pw = p.model_config["patches"]["size"]
    stride = 1
    if p.model_config.get("resnet") is not None:
        stride = 2 ** models_resnet.num_downsamplings(p.model_config["resnet"]["num_layers"])
    if (image_size % (ph * stride) or image_size % (pw * stride)) and not p.model_config.get("patch_floor"):
        raise PretrainedError(
            f"image_size={image_size} is not a multiple of the patch ({ph * stride}x{pw * stride} px): "
            f"use e.g. {image_size // (ph * stride) * ph * stride or ph * stride}."
        )
    t = p.params["Transformer"]
    pe = t.get("posembed_input", {}).get("pos_embedding")
    if pe is None or p.image_size is None:
        raise PretrainedError(f"{p.source} has no square 1-D position embedding to resample for {image_size} px.")
    prefix = int("cls" in p.params) + int("dist" in p.params) if p.model_config.get("posemb_prefix", True) else 0
    grid = (image_size // (ph * stride), image_size // (pw * stride))
    new = resample.resample_posemb(pe, prefix, grid, p.resampling)
    params = dict(p.params, Transformer=dict(t, posembed_input=dict(t["posembed_input"], pos_embedding=new)))
    data = dict(p.data_config or {}, input_size=(3, image_size, image_size))
    return dataclasses.replace(p, params=params, image_size=(image_size, image_size), data_config=data)


def is_layout_source(source: str) -> bool:
    """Whether `source` is timm's or transformers' (a Hub id, a model directory, a .safetensors file)
    rather than an original-format .npz."""
    source = os.fspath(source)
    return source.startswith(HUB_PREFIX) or source.endswith(".safetensors") or os.path.isdir(source)


@functools.lru_cache(maxsize=2)
def load_cached(source: str, model: str | None = None) -> Pretrained:
    """`load`, once per source in a process (a run reads its config's source, then its weights)."""
    return load(source, model)


def _with_source(p: Pretrained, source: str) -> Pretrained:
    return dataclasses.replace(p, source=source)


def _load_dir(directory: str, model: str | None) -> Pretrained:
    config_path = os.path.join(directory, "config.json")
    weights = os.path.join(directory, "model.safetensors")
    if not os.path.isfile(config_path):
        raise PretrainedError(
            f"{directory} has no config.json: give a model directory as the Hugging Face Hub stores it "
            "(config.json and model.safetensors), or the .safetensors file with model=."
        )
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise PretrainedError(f"{config_path} is not readable JSON ({errors.error_line(e)}).") from None
    if not os.path.isfile(weights):
        other = [f for f in os.listdir(directory) if f.endswith((".bin", ".pth", ".pt"))]
        hint = f" ({', '.join(other)} needs PyTorch; fetch model.safetensors instead)" if other else ""
        raise PretrainedError(f"{directory} has no model.safetensors{hint}.")
    state = read_safetensors(weights)
    if config.get("model_type") == "vit":
        return dataclasses.replace(_from_hf(state, config, directory), resampling="torch_bicubic")
    if config.get("model_type") in hf_configs.MODEL_TYPES:
        return _from_hf_family(state, config, directory)
    if config.get("model_type") in hf_configs.UNSUPPORTED_TYPES:
        missing = hf_configs.UNSUPPORTED_TYPES[config["model_type"]]
        raise PretrainedError(
            f"{directory}: model_type={config['model_type']!r} needs {missing}, which vit_jax does not compute yet."
        )
    if "architecture" in config:
        return _from_timm_dir(state, config, directory, model)
    raise PretrainedError(
        f"{config_path} is neither timm's (an 'architecture' field) nor transformers' ViT families ('model_type' one "
        f"of vit, {', '.join(hf_configs.MODEL_TYPES)}); found model_type={config.get('model_type')!r}."
    )


def _from_timm_dir(state: dict, config: dict, directory: str, model: str | None) -> Pretrained:
    arch = model or config["architecture"]
    args = config.get("model_args") or {}  # what differs from the architecture's defaults
    heads = int(args["num_heads"]) if "num_heads" in args else _heads_of(arch)
    shaped = not set(args) - {"act_layer"}  # any other argument changes the name's shapes
    p = _from_state(state, heads, directory, arch, args, shaped)
    cfg = config.get("pretrained_cfg") or {}
    names = cfg.get("label_names")
    data = p.data_config
    if "mean" in cfg and "std" in cfg:
        image = (cfg.get("input_size") or [3, *(p.image_size or (224, 224))])[-1]
        data = families.data_config(
            cfg["mean"], cfg["std"], image, cfg.get("crop_pct", 1.0), cfg.get("interpolation", "bicubic")
        )
    return dataclasses.replace(p, class_names=list(names) if names else None, data_config=data)


def _from_hf(state: dict, config: dict, source: str) -> Pretrained:
    act = config.get("hidden_act", "gelu")
    if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh"):
        raise PretrainedError(f"{source}: hidden_act={act!r} is not a GELU this model computes.")
    numerics = {"gelu_approximate": act != "gelu", "layernorm_epsilon": float(config.get("layer_norm_eps", 1e-12))}
    params, unused = _convert(layouts.from_hf, state, int(config["num_attention_heads"]), source, "transformers")
    _no_leftovers(unused, source, "transformers")
    p = _finish(params, numerics, int(config["num_attention_heads"]), source, None)
    labels = config.get("id2label") or {}
    names = [labels.get(str(i), labels.get(i)) for i in range(p.num_classes)] if p.num_classes else None
    data = families.data_config(*families.INCEPTION, (p.image_size or (224,))[0], 1.0)
    return dataclasses.replace(p, class_names=names if names and None not in names else None, data_config=data)


def _from_hf_family(state: dict, config: dict, source: str) -> Pretrained:
    """transformers' DINOv2 (with registers), CLIP and SigLIP vision towers and distilled DeiT."""
    try:
        model_type, c = hf_configs.vision_config(config)
        numerics = hf_configs.model_fields(model_type, c)
    except hf_configs.ConfigError as e:
        raise PretrainedError(f"{source}: {e}") from None
    if "classifier.weight" in state:
        raise PretrainedError(
            f"{source} is a {model_type} image classifier whose head reads [class token, patch mean]; "
            "vit_jax loads its backbone: give the Dinov2Model's files, or export the backbone from transformers."
        )
    heads = hf_configs.heads(c)
    try:
        params, extra, unused = hf_layouts.from_hf_family(state, model_type, heads)
    except KeyError as e:
        raise PretrainedError(
            f"{source} is not a {model_type} in transformers' layout: it has no {e.args[0]!r}."
        ) from None
    _no_leftovers(unused, source, "transformers")
    p = _finish(params, numerics, heads, source, None)
    processor = _read_json(os.path.join(source, "preprocessor_config.json"))
    data = hf_configs.data_config(model_type, c, processor)
    resampling = "timm" if model_type == "dinov2_with_registers" else "torch_bicubic"
    return dataclasses.replace(p, data_config=data, extra=extra or None, resampling=resampling)


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise PretrainedError(f"{path} is not readable JSON ({errors.error_line(e)}).") from None


# How timm's act_layer names read as our activation.
TIMM_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}


def _from_state(
    state: dict, heads: int, source: str, model: str | None, args: dict | None = None, shaped: bool = True
) -> Pretrained:
    """timm's layout. `model` is the architecture name; its family gives the numerics the weights
    do not show, and with `shaped` (no `model_args` that change shapes) the shapes they must have.
    An `act_layer` of `model_args` overrides the name's (our own exports of the original family
    write `gelu_tanh`)."""
    args = args or {}
    width = int(np.shape(state.get("patch_embed.proj.weight", np.zeros(1)))[0])
    # Heads that do not divide the width mean the name is wrong: lay the weights out with one
    # head, so the check against the named architecture lists every array that differs.
    params, unused = _convert(layouts.from_timm, state, heads if width % heads == 0 else 1, source, "timm")
    _no_leftovers(unused, source, "timm")
    family = families.timm_family(model) if model else None
    numerics = dict(TIMM_NUMERICS)
    extra = {}
    data = families.data_config(*families.INCEPTION, 224, 0.9)
    if family is not None:
        named, data = family
        numerics.update({k: named[k] for k in NAME_FIELDS if k in named})
        if named["classifier"] == "gap" and "MAPHead" in params:  # timm's siglip _gap names drop the pool
            extra = layouts._map_to_timm(params["MAPHead"])
            params = {k: v for k, v in params.items() if k != "MAPHead"}
    act = args.get("act_layer")
    if act is not None:
        if act not in TIMM_ACTIVATIONS:
            raise PretrainedError(f"{source}: act_layer={act!r}; vit_jax computes {', '.join(TIMM_ACTIVATIONS)}.")
        numerics.update(
            activation=None if family is None else TIMM_ACTIVATIONS[act], gelu_approximate=act == "gelu_tanh"
        )
        if family is None and act == "quick_gelu":
            numerics["activation"] = "quick_gelu"
    numerics = {k: v for k, v in numerics.items() if v is not None}
    if "fc_norm" in params:
        numerics["fc_norm"] = True
    p = _finish(params, numerics, heads, source, model if shaped else None)
    image = (p.image_size or (224,))[0]
    return dataclasses.replace(p, data_config=dict(data, input_size=(3, image, image)), extra=extra or None)


# The fields of a timm family's name that its weights do not show.
NAME_FIELDS = ("activation", "gelu_approximate", "layernorm_epsilon", "rope", "rope_ref_grid", "layerscale_init")
NAME_FIELDS += ("patch_floor",)


def _convert(from_layout, state: dict, heads: int, source: str, layout: str):
    """The layout's mapping; a weight it needs and does not find means another architecture."""
    try:
        return from_layout(state, heads)
    except KeyError as e:
        raise PretrainedError(
            f"{source} is not an original ViT in {layout}'s layout: it has no {e.args[0]!r} (another architecture, "
            "or a variant such as one without attention biases)."
        ) from None


def _no_leftovers(unused: list[str], source: str, layout: str) -> None:
    if unused:
        more = f" and {len(unused) - 8} more" if len(unused) > 8 else ""
        raise PretrainedError(
            f"{source} has weights a {layout} ViT of this kind does not: {', '.join(unused[:8])}{more}. It is "
            "another architecture (these are supported: the original ViTs and hybrids)."
        )


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file, as numpy arrays (bfloat16 and float16 become float32)."""
    from safetensors.numpy import load_file

    if not os.path.isfile(path):
        raise PretrainedError(f"Weights file not found: {path}.")
    try:
        state = load_file(path)
    except Exception as e:  # a truncated or foreign file fails in the Rust reader
        raise PretrainedError(
            f"{path} is not a readable .safetensors file ({errors.error_line(e)}); fetch it again."
        ) from None
    return {k: v.astype(np.float32) if v.dtype.kind == "f" and v.dtype.itemsize < 4 else v for k, v in state.items()}


# ----------------------------------------------------------------------------- architecture


def _finish(params: dict, numerics: dict, heads: int, source: str, name: str | None) -> Pretrained:
    """The model config read off the weights' shapes (plus heads and numerics), checked against
    the named architecture when there is one."""
    if "embedding" not in params or "encoderblock_0" not in params.get("Transformer", {}):
        raise PretrainedError(f"{source} holds no ViT (no patch embedding or encoder blocks): another model family?")
    config = config_from_params(params, heads)
    if config.get("resnet") is not None and numerics:
        config["resnet"].update(TIMM_RESNET_NUMERICS)
    config.update(numerics)
    num_classes = int(np.shape(params["head"]["kernel"])[-1]) if "head" in params else 0
    image = image_size(params, config)
    if name is not None:
        named = architecture(name)
        family = families.timm_family(name)
        if family is None:  # the original family: the head is the weights'
            named.update({k: config[k] for k in ("classifier", "representation_size")})
        named.update(numerics)
        if named.get("resnet") is not None and config.get("resnet") is not None:
            named["resnet"] = config["resnet"] | {k: named["resnet"][k] for k in ("num_layers", "width_factor")}
        check_image = tuple(family[1]["input_size"][1:]) if family is not None else image
        check_fits(params, named, num_classes, check_image, source, name)
        config = named
    return Pretrained(params, config, num_classes, source, image)


# ----------------------------------------------------------------------------- the Hub


def hub_download(repo_id: str) -> str:
    """The local directory of a Hub model (config.json and model.safetensors), fetched into
    huggingface_hub's cache unless it is there already."""
    from huggingface_hub import snapshot_download

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise PretrainedError(f"hf-hub:{repo_id} is not a Hub model id; use hf-hub:ORG/NAME.")
    try:
        return snapshot_download(
            repo_id, allow_patterns=["config.json", "model.safetensors", "preprocessor_config.json"], etag_timeout=10
        )
    except Exception as e:  # offline, unknown repository, gated, rate-limited: all end the same way
        raise PretrainedError(
            f"Cannot fetch hf-hub:{repo_id} from the Hugging Face Hub ({errors.error_line(e)}). "
            + HUB_FIX.format(repo=repo_id)
        ) from None


# ----------------------------------------------------------------------------- export
