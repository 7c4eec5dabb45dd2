"""The architectures weights describe: VisionTransformer fields read off a parameter tree
(`config_from_params`, `image_size`), or named by a registered name or a timm name
(`architecture`: the original family here, the later families in `families.py`), and the check
that weights fit a name (`check_fits`)."""

import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import models, models_resnet
from vit_jax.configs import models as model_configs
from vit_jax.weights import families, npz

# timm's size words: (hidden, layers, heads); the MLP is 4x wide.
TIMM_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
TIMM_SIZES["huge"] = (1280, 32, 16)
# timm's hybrid ViTs -> the registered models they are.
TIMM_HYBRIDS = {
    "vit_tiny_r_s16_p8": "R+ViT-Ti_16",
    "vit_small_r26_s32": "R26+ViT-S_32",
    "vit_base_r26_s32": "R26+ViT-B_32",
    "vit_base_r50_s16": "R50+ViT-B_16",
    "vit_large_r50_s32": "R50+ViT-L_32",
}
# timm names whose head count is not their size word's.
TIMM_HEADS = {"vit_base_patch16_gap": 16}


class PretrainedError(npz.CheckpointError):
    """Weights that cannot be fetched, read, or matched to an architecture; the message says the fix."""


def config_from_params(params: dict, num_heads: int) -> dict[str, Any]:
    """VisionTransformer keyword arguments that fit `params` (per-block layout); heads given.
    The later families' fields that the weights show (tokens, norms, LayerScale, SwiGLU, QK-norm,
    the head) are read off them too; those they cannot show (activation, epsilon, rotary
    embedding) stay the defaults, for the caller to set."""
    t = params["Transformer"]
    blocks = [k for k in t if re.fullmatch(r"encoderblock_\d+", k)]
    kernel = np.shape(params["embedding"]["kernel"])
    block = t["encoderblock_0"]
    mlp = block["MlpBlock_0"]
    mlp_dim = int(np.shape(mlp["Dense_1"]["kernel"])[0])
    config: dict[str, Any] = {
        "patches": {"size": tuple(int(s) for s in kernel[:2])},
        "hidden_size": int(kernel[-1]),
        "transformer": {
            "mlp_dim": mlp_dim,
            "num_heads": int(num_heads),
            "num_layers": len(blocks),
            "dropout_rate": 0.0,
            "attention_dropout_rate": 0.0,
        },
        "classifier": _classifier_of(params),
        "representation_size": int(np.shape(params["pre_logits"]["kernel"])[-1]) if "pre_logits" in params else None,
    }
    config.update(_family_fields_of(params, block, mlp_dim))
    posemb = t.get("posembed_input", {})
    if "row_embedding" in posemb:
        config["posemb"] = "learn_2d"
    elif any("relative_bias" in k for k in npz.flatten(t)):
        config["posemb"] = "relative"
    elif "pos_embedding" not in posemb:
        raise PretrainedError(
            "The weights have no position-embedding table: a 'none' or 'sincos2d' model, which the weights "
            "alone cannot tell apart. Load a run's model through its workdir (vit_jax.runs.from_workdir)."
        )
    if "conv_root" in params:
        stages = sorted((k for k in params if re.fullmatch(r"block\d+", k)), key=lambda k: int(k[5:]))
        config["resnet"] = {
            "num_layers": tuple(len(params[s]) for s in stages),
            "width_factor": np.shape(params["conv_root"]["kernel"])[-1] / 64,
        }
    return config


def _classifier_of(params: dict) -> str:
    if "MAPHead" in params:
        return "map"
    return "gap" if "fc_norm" in params or "cls" not in params else "token"


def _family_fields_of(params: dict, block: dict, mlp_dim: int) -> dict[str, Any]:
    """The later families' fields the weights show; only those that differ from the defaults."""
    fields: dict[str, Any] = {}
    classifier = _classifier_of(params)
    if "cls" in params and classifier != "token":
        fields["class_token"] = True
    if "fc_norm" in params:
        fields["fc_norm"] = True
    if "reg" in params:
        fields["reg_tokens"] = int(np.shape(params["reg"])[1])
    if "dist" in params:
        fields["distilled"] = True
    if "pre_norm" in params["Transformer"]:
        fields["pre_norm"] = True
    if "bias" not in params["embedding"]:
        fields["patch_bias"] = False
    if "LayerScale_0" in block:
        fields["layerscale_init"] = 1e-5  # the value the weights replace
    if "query_norm" in block["MultiHeadDotProductAttention_0"]:
        fields["qk_norm"] = True
    if "bias" not in block["MultiHeadDotProductAttention_0"]["key"]:
        fields["key_bias"] = False
    mlp = block["MlpBlock_0"]
    if int(np.shape(mlp["Dense_0"]["kernel"])[-1]) == 2 * mlp_dim:
        fields["mlp_type"] = "swiglu_norm" if "LayerNorm_0" in mlp else "swiglu"
    pe = params["Transformer"].get("posembed_input", {}).get("pos_embedding")
    prefix = int("cls" in params) + int("dist" in params)
    if pe is not None and prefix and not _is_square(np.shape(pe)[1] - prefix) and _is_square(np.shape(pe)[1]):
        fields["posemb_prefix"] = False
    return fields


def _is_square(n: int) -> bool:
    return n > 0 and int(round(np.sqrt(n))) ** 2 == n


def image_size(params: dict, config: dict) -> tuple[int, int] | None:
    """The image size the position embedding was trained for (None when its grid is not square)."""
    pe = params["Transformer"].get("posembed_input", {}).get("pos_embedding")
    if pe is None:
        return None
    n = np.shape(pe)[1]
    if config.get("posemb_prefix", True):
        n -= int("cls" in params) + int("dist" in params)
    g = int(round(np.sqrt(max(n, 0))))
    if g * g != n:
        return None
    stride = 1
    if config.get("resnet") is not None:
        stride = 2 ** models_resnet.num_downsamplings(config["resnet"]["num_layers"])
    ph, pw = config["patches"]["size"]
    return g * ph * stride, g * pw * stride


def architecture(name: str) -> dict[str, Any]:
    """VisionTransformer keyword arguments of a registered name or a timm ViT name."""
    base = name.split(".")[0]  # timm's pretrained tag (`.augreg2_in21k_ft_in1k`) names weights, not shapes
    missing = families.unsupported(base)
    if missing:
        raise PretrainedError(f"{base} needs {missing}, which vit_jax does not compute yet.")
    family = families.timm_family(base)
    if family is not None:
        config = family[0]
    else:
        try:
            config = model_configs.get_config(model_configs.resolve_name(base)).to_dict()
        except KeyError:
            config = _timm_architecture(base)
    config.pop("model_name", None)
    config["transformer"].update(dropout_rate=0.0, attention_dropout_rate=0.0)
    return config


def _timm_architecture(name: str) -> dict[str, Any]:
    for prefix, registered in TIMM_HYBRIDS.items():
        if name.startswith(prefix):
            return model_configs.get_config(registered).to_dict()
    m = re.fullmatch(r"vit_(tiny|small|base|large|huge)_patch(\d+)(_gap)?(_\d+)?(_.*)?", name)
    if not m:
        raise PretrainedError(
            f"Unknown architecture {name!r}: use a registered name (e.g. ViT-B_16) or a timm ViT name such as "
            "vit_base_patch16_224, vit_small_patch14_dinov2, vit_base_patch16_clip_224, vit_base_patch16_siglip_224, "
            "deit_base_distilled_patch16_224, deit3_base_patch16_224 or eva02_base_patch14_224."
        )
    hidden, layers, heads = TIMM_SIZES[m.group(1)]
    heads = TIMM_HEADS.get(re.sub(r"_\d+$", "", name), heads)
    patch = int(m.group(2))
    return {
        "patches": {"size": (patch, patch)},
        "hidden_size": hidden,
        "transformer": {"mlp_dim": 4 * hidden, "num_heads": heads, "num_layers": layers},
        "classifier": "gap" if m.group(3) else "token",
        "representation_size": None,
    }


def _heads_of(name: str) -> int:
    return int(architecture(name)["transformer"]["num_heads"])


def _registry_name_of(path: str) -> str | None:
    """`ViT-B_16` for `.../ViT-B_16.npz` (the original release's file names), else None."""
    stem = os.path.basename(path).removesuffix(".npz")
    return stem if stem in model_configs.MODEL_CONFIGS else None


def _heads_by_width(params: dict, source: str) -> int:
    width = int(np.shape(params["embedding"]["kernel"])[-1])
    heads = {hidden: heads for hidden, _, heads in TIMM_SIZES.values()}.get(width)
    if heads is None:
        raise PretrainedError(
            f"{source}: the number of heads of a width-{width} model cannot be read from its weights; pass model= "
            "(a registered name such as ViT-B_16)."
        )
    return heads


def check_fits(params: dict, config: dict, num_classes: int, image, source: str, name: str) -> None:
    """Every array of `params` has the shape the named architecture gives it; else one error naming each."""
    model = models.VisionTransformer(num_classes=num_classes, **config)
    h, w = image or (224, 224)
    first = params["conv_root"] if "conv_root" in params else params["embedding"]
    x = jax.ShapeDtypeStruct((1, h, w, int(np.shape(first["kernel"])[2])), jnp.float32)
    try:
        expected = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False)["params"], x)
    except ValueError as e:
        raise PretrainedError(f"{source} does not fit {name}: {e}") from None
    want = {k: tuple(v.shape) for k, v in npz.flatten(expected).items()}
    got = {k: tuple(np.shape(v)) for k, v in npz.flatten(params).items()}
    if image is None:  # a grid whose shape the weights do not tell: its size is not checked
        want = {k: v for k, v in want.items() if not k.startswith("Transformer/posembed_input/")}
        got = {k: v for k, v in got.items() if not k.startswith("Transformer/posembed_input/")}
    bad = [f"{k}: weights {got.get(k)} vs {name} {s}" for k, s in want.items() if got.get(k) != s]
    bad += [f"{k}: weights {s}, not in {name}" for k, s in got.items() if k not in want]
    if bad:
        raise PretrainedError(
            f"{source} does not fit {name} ({len(bad)} array(s)): {'; '.join(bad)}. Name the architecture the weights "
            "were saved from."
        )
