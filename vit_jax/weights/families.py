"""The timm architecture names of the later ViT families, as VisionTransformer fields.

One table row per family: the pattern of its names, the sizes its size words stand for, the
fields it sets and the preprocessing of its weights (timm's `pretrained_cfg`). A new family is
one row here plus the model fields it needs. The facts come from timm's
`vision_transformer.py`, `deit.py` and `eva.py`:

- DINOv2 (`vit_{small,base,large,giant}_patch14_dinov2`, `..._reg4_dinov2`): LayerScale 1e-5,
  518 px, ImageNet mean/std; giant has a packed SwiGLU (gate first) of width 4096; reg4 adds
  4 registers and leaves the class token out of the position embedding (no_embed_class).
- CLIP (`vit_*_patch*_clip[_quickgelu]_*`): a LayerNorm before the blocks, no patch bias,
  epsilon 1e-5, OpenAI mean/std; `_quickgelu` names use QuickGELU, the others exact GELU.
- SigLIP (`vit_*_patch*_siglip[_gap]_*`): no class token, the attention-pool head (MAP), or the
  mean of the normed tokens (`_gap`); tanh GELU for the names timm builds with `gelu_tanh`.
- DeiT (`deit_*_distilled_patch16_*`): the distillation token and its head; DeiT III
  (`deit3_*`): LayerScale 1e-6 and no_embed_class.
- Registers with GAP (`vit_*_patch16_reg{1,4}_gap_*`): no class token, no_embed_class, the patch
  mean (registers excluded) through `fc_norm`.
- EVA-02 (`eva02_*_patch14_*`): rotary embedding rescaled to a 16x16 grid, SwiGLU (packed for
  tiny and small, with a norm for base and large), the class token plus the patch mean and
  `fc_norm`, OpenAI mean/std.
"""

import re
from typing import Any

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

# What timm cannot build here, by a part of its names: one line each, naming what is missing.
UNSUPPORTED = {
    "beit": "BEiT's relative position bias per layer",
    "naflex": "NaFlex's variable patch sequences",
    "parallel": "parallel blocks (two attention and MLP branches per block)",
    "diff": "differential attention",
    "eva02_base_patch16_clip": "EVA-02 CLIP's inner attention norm (scale_attn_inner)",
    "eva02_large_patch14_clip": "EVA-02 CLIP's inner attention norm (scale_attn_inner)",
    "so150m2": "attention without query/key/value biases (qkv_bias=False)",
    "rope": "timm's 2-D rotary ViTs other than EVA-02 (their rope types)",
}

# size word -> (width, depth, heads, MLP width) per family.
_DINOV2 = {"small": (384, 12, 6, 1536), "base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096)}
_DINOV2["giant"] = (1536, 40, 24, 4096)
_CLIP = {"base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096), "huge": (1280, 32, 16, 5120)}
_CLIP["gigantic"] = (1664, 48, 16, 8192)
_SIGLIP = {"base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096), "so400m": (1152, 27, 16, 4304)}
_SIGLIP["giantopt"] = (1536, 40, 16, 6144)
_DEIT = {"tiny": (192, 12, 3, 768), "small": (384, 12, 6, 1536), "base": (768, 12, 12, 3072)}
_DEIT3 = dict(_DEIT, medium=(512, 12, 8, 2048), large=(1024, 24, 16, 4096), huge=(1280, 32, 16, 5120))
_REG_GAP = {
    "medium": (512, 12, 8, 2048),
    "betwixt": (640, 12, 10, 2560),
    "mediumd": (512, 20, 8, 2048),
    "little": (320, 14, 5, 1792),
    "wee": (256, 14, 4, 1280),
    "base": (768, 12, 12, 3072),
}
_EVA02 = {"tiny": (192, 12, 3, 512), "small": (384, 12, 6, 1024), "base": (768, 12, 12, 2048)}
_EVA02["large"] = (1024, 24, 16, 2730)

# The SigLIP names timm builds with the tanh GELU (the others: exact GELU).
_SIGLIP_TANH = re.compile(r"vit_(base_patch32|large_patch16_siglip(_gap)?_512|so400m_patch16|giantopt)")


def _dinov2(m: re.Match) -> dict[str, Any]:
    fields = dict(layerscale_init=1e-5, activation="gelu", image=518, data=(IMAGENET, 1.0))
    if m["size"] == "giant":
        fields["mlp_type"] = "swiglu"
    if m["reg"]:
        fields.update(reg_tokens=4, posemb_prefix=False)
    return fields


def _clip(m: re.Match) -> dict[str, Any]:
    act = "quick_gelu" if m["quick"] else "gelu"
    return dict(pre_norm=True, patch_bias=False, layernorm_epsilon=1e-5, activation=act, data=(OPENAI_CLIP, 0.9))


def _siglip(m: re.Match) -> dict[str, Any]:
    act = "gelu_tanh" if _SIGLIP_TANH.match(m.string) else "gelu"
    head = dict(classifier="gap", fc_norm=False) if m["gap"] else dict(classifier="map")
    return dict(class_token=False, activation=act, data=(INCEPTION, 1.0 if m["gap"] else 0.9), **head)


def _deit(m: re.Match) -> dict[str, Any]:
    fields = dict(activation="gelu", data=(IMAGENET, 1.0 if m["image"] == "384" else 0.9))
    if m["family"] == "deit3":
        fields.update(layerscale_init=1e-6, posemb_prefix=False)
    elif m["distilled"]:
        fields["distilled"] = True
    return fields


def _reg_gap(m: re.Match) -> dict[str, Any]:
    fields = dict(class_token=False, reg_tokens=int(m["reg"]), posemb_prefix=False, classifier="gap", fc_norm=True)
    fields.update(activation="gelu", data=(INCEPTION, 0.95))
    if m["size"] != "base":
        fields["layerscale_init"] = 1e-5
    return fields


def _eva02(m: re.Match) -> dict[str, Any]:
    mlp = "swiglu" if m["size"] in ("tiny", "small") else "swiglu_norm"
    fields = dict(classifier="gap", class_token=True, fc_norm=True, rope=True, rope_ref_grid=(16, 16), mlp_type=mlp)
    fields["key_bias"] = False
    return dict(fields, activation="gelu", data=(OPENAI_CLIP, 0.9 if m["image"] == "224" else 1.0))


# (pattern, sizes, fields): the pattern names `size`, `patch` and `image` (absent: 224).
FAMILIES = [
    (r"vit_(?P<size>\w+?)_patch(?P<patch>14)_(?P<reg>reg4_)?dinov2", _DINOV2, _dinov2),
    (r"vit_(?P<size>\w+?)_patch(?P<patch>\d+)_clip(?P<quick>_quickgelu)?_(?P<image>\d+)", _CLIP, _clip),
    (r"vit_(?P<size>\w+?)_patch(?P<patch>\d+)_siglip(?P<gap>_gap)?_(?P<image>\d+)", _SIGLIP, _siglip),
    (r"(?P<family>deit)_(?P<size>\w+?)_(?P<distilled>distilled_)?patch(?P<patch>16)_(?P<image>\d+)", _DEIT, _deit),
    (r"(?P<family>deit3)_(?P<size>\w+?)_patch(?P<patch>\d+)_(?P<image>\d+)", _DEIT3, _deit),
    (r"vit_(?P<size>\w+?)_patch(?P<patch>16)_reg(?P<reg>[14])_gap_(?P<image>\d+)", _REG_GAP, _reg_gap),
    (r"eva02_(?P<size>\w+?)_patch(?P<patch>14)_(?P<image>\d+)", _EVA02, _eva02),
]


class UnsupportedArchitecture(ValueError):
    """A timm name of a family this codebase does not compute (yet)."""


def unsupported(name: str) -> str | None:
    """What is missing for a timm name of a family we do not compute, else None."""
    for part, missing in UNSUPPORTED.items():
        if part in name.split(".")[0]:
            return missing
    return None


def timm_family(name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(VisionTransformer fields, preprocessing) of a timm name of a later family, else None."""
    base = name.split(".")[0]
    for pattern, sizes, fields_of in FAMILIES:
        m = re.fullmatch(pattern, base)
        if m is None or m["size"] not in sizes:
            continue
        width, depth, heads, mlp = sizes[m["size"]]
        fields = fields_of(m)
        (mean, std), crop = fields.pop("data")
        default_image = fields.pop("image", 224)  # DINOv2's names carry no size: 518
        image = int(m.groupdict().get("image") or default_image)
        patch = int(m["patch"])
        config = {
            "patches": {"size": (patch, patch)},
            "hidden_size": width,
            "transformer": {"mlp_dim": mlp, "num_heads": heads, "num_layers": depth},
            "classifier": fields.pop("classifier", "token"),
            "representation_size": None,
            "gelu_approximate": False,
            "layernorm_epsilon": fields.pop("layernorm_epsilon", 1e-6),
            "patch_floor": True,  # timm's patch convolution leaves the pixels past the last patch out
            **fields,
        }
        data = data_config(mean, std, image, crop)
        return config, data
    return None


def data_config(mean, std, image: int, crop: float, interpolation: str = "bicubic") -> dict[str, Any]:
    """The preprocessing a checkpoint was trained with, as timm's `pretrained_cfg` says it."""
    return {
        "mean": tuple(float(v) for v in mean),
        "std": tuple(float(v) for v in std),
        "input_size": (3, int(image), int(image)),
        "crop_pct": float(crop),
        "interpolation": interpolation,
    }


def timm_names() -> list[str]:
    """Every family name of the table at its sizes and usual resolutions (for export's lookup)."""
    names = []
    for size in _DINOV2:
        names += [f"vit_{size}_patch14_dinov2", f"vit_{size}_patch14_reg4_dinov2"]
    for size, patch, image in (("base", 32, 224), ("base", 16, 224), ("large", 14, 224), ("large", 14, 336)):
        names += [f"vit_{size}_patch{patch}_clip_{image}", f"vit_{size}_patch{patch}_clip_quickgelu_{image}"]
    for size, patch, images in (("base", 16, (224, 256, 384, 512)), ("large", 16, (256, 384)), ("so400m", 14, (384,))):
        for image in images:
            names += [f"vit_{size}_patch{patch}_siglip_{image}", f"vit_{size}_patch{patch}_siglip_gap_{image}"]
    names += ["vit_base_patch32_siglip_256", "vit_large_patch16_siglip_512", "vit_giantopt_patch16_siglip_256"]
    names += [f"vit_so400m_patch16_siglip_{image}" for image in (256, 384, 512)]
    for size in _DEIT:
        names += [f"deit_{size}_distilled_patch16_224"]
    names += ["deit_base_distilled_patch16_384"]
    for size in _DEIT3:
        if size != "tiny":
            patch = 14 if size == "huge" else 16
            names += [f"deit3_{size}_patch{patch}_224"] + ([f"deit3_{size}_patch16_384"] if patch == 16 else [])
    for size, regs in (("medium", "14"), ("betwixt", "14"), ("mediumd", "4"), ("little", "14"), ("wee", "1")):
        names += [f"vit_{size}_patch16_reg{r}_gap_256" for r in regs]
    names += ["vit_base_patch16_reg4_gap_256", "vit_mediumd_patch16_reg4_gap_384"]
    for size, image in (("tiny", 336), ("small", 336), ("base", 448), ("large", 448)):
        names += [f"eva02_{size}_patch14_224", f"eva02_{size}_patch14_{image}"]
    return names
