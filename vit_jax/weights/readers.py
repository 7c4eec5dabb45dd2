"""Reading pretrained ViT weights from where they are published today (`vit_jax.pretrained`).

    p = pretrained.load("hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")
    model = models.VisionTransformer(num_classes=p.num_classes, **p.model_config)
    logits = model.apply({"params": p.params}, images, train=False)

`load(source, model=None)` reads the original release's `.npz` (local or `gs://...`), a
`.safetensors` file in timm's layout (`model=` names the architecture), a directory as the
Hugging Face Hub stores a model (timm's: `config.json` with `architecture`; transformers':
`config.json` with `"model_type": "vit"`; each with `model.safetensors`), or
`hf-hub:ORG/NAME`, fetched with `huggingface_hub` into its cache. The parameters are the
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

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import errors, models, models_resnet
from vit_jax.configs import models as model_configs
from vit_jax.weights import layouts, npz

log = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
HUB_EXAMPLE = "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
FORMATS = ("timm", "hf", "npz")
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
)
HUB_FIX = (
    "On a machine with network access run `hf download {repo} --local-dir DIR` (huggingface_hub's command), "
    "copy DIR here and pass the directory instead of hf-hub:{repo}."
)


class PretrainedError(npz.CheckpointError):
    """Weights that cannot be fetched, read, or matched to an architecture; the message says the fix."""


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

    def model(self, **overrides) -> models.VisionTransformer:
        return models.VisionTransformer(**{"num_classes": self.num_classes, **self.model_config, **overrides})


# ----------------------------------------------------------------------------- loading


def load(source: str, model: str | None = None) -> Pretrained:
    """Reads pretrained weights from `source` (see the module docstring); `model` names the
    architecture (a registry name like ViT-B_16 or a timm name like vit_base_patch16_224)."""
    source = os.fspath(source)
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
    return _finish(params, {}, heads, source, name)


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
        return _from_hf(state, config, directory)
    if "architecture" in config:
        arch = model or config["architecture"]
        args = config.get("model_args") or {}  # what differs from the architecture's defaults
        heads = int(args["num_heads"]) if "num_heads" in args else _heads_of(arch)
        shaped = not set(args) - {"act_layer"}  # any other argument changes the name's shapes
        p = _from_state(state, heads, directory, arch if shaped else None, args.get("act_layer") == "gelu_tanh")
        names = (config.get("pretrained_cfg") or {}).get("label_names")
        return dataclasses.replace(p, class_names=list(names) if names else None)
    raise PretrainedError(
        f"{config_path} is neither timm's (an 'architecture' field) nor transformers' ViT ('model_type': 'vit'); "
        f"found model_type={config.get('model_type')!r}."
    )


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
    return dataclasses.replace(p, class_names=names if names and None not in names else None)


def _from_state(state: dict, heads: int, source: str, model: str | None, gelu_tanh: bool = False) -> Pretrained:
    """timm's layout; `gelu_tanh` when its config asks for the tanh GELU (our own exports do)."""
    width = int(np.shape(state.get("patch_embed.proj.weight", np.zeros(1)))[0])
    # Heads that do not divide the width mean the name is wrong: lay the weights out with one
    # head, so the check against the named architecture lists every array that differs.
    params, unused = _convert(layouts.from_timm, state, heads if width % heads == 0 else 1, source, "timm")
    _no_leftovers(unused, source, "timm")
    numerics = dict(TIMM_NUMERICS, gelu_approximate=gelu_tanh)
    if "fc_norm" in params:
        numerics["fc_norm"] = True
    return _finish(params, numerics, heads, source, model)


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
        named = dict(architecture(name), **{k: config[k] for k in ("classifier", "representation_size")})
        named.update(numerics)
        if named.get("resnet") is not None and config.get("resnet") is not None:
            named["resnet"] = config["resnet"] | {k: named["resnet"][k] for k in ("num_layers", "width_factor")}
        check_fits(params, named, num_classes, image, source, name)
        config = named
    return Pretrained(params, config, num_classes, source, image)


def config_from_params(params: dict, num_heads: int) -> dict[str, Any]:
    """VisionTransformer keyword arguments that fit `params` (per-block layout); heads given."""
    t = params["Transformer"]
    blocks = [k for k in t if re.fullmatch(r"encoderblock_\d+", k)]
    kernel = np.shape(params["embedding"]["kernel"])
    config: dict[str, Any] = {
        "patches": {"size": tuple(int(s) for s in kernel[:2])},
        "hidden_size": int(kernel[-1]),
        "transformer": {
            "mlp_dim": int(np.shape(t["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"])[-1]),
            "num_heads": int(num_heads),
            "num_layers": len(blocks),
            "dropout_rate": 0.0,
            "attention_dropout_rate": 0.0,
        },
        "classifier": "map" if "MAPHead" in params else "token" if "cls" in params else "gap",
        "representation_size": int(np.shape(params["pre_logits"]["kernel"])[-1]) if "pre_logits" in params else None,
    }
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


def image_size(params: dict, config: dict) -> tuple[int, int] | None:
    """The image size the position embedding was trained for (None when its grid is not square)."""
    pe = params["Transformer"].get("posembed_input", {}).get("pos_embedding")
    if pe is None:
        return None
    n = np.shape(pe)[1] - int("cls" in params)
    g = int(round(np.sqrt(n)))
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
            "vit_base_patch16_224 or vit_base_r50_s16_384."
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


# ----------------------------------------------------------------------------- the Hub


def hub_download(repo_id: str) -> str:
    """The local directory of a Hub model (config.json and model.safetensors), fetched into
    huggingface_hub's cache unless it is there already."""
    from huggingface_hub import snapshot_download

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise PretrainedError(f"hf-hub:{repo_id} is not a Hub model id; use hf-hub:ORG/NAME.")
    try:
        return snapshot_download(repo_id, allow_patterns=["config.json", "model.safetensors"], etag_timeout=10)
    except Exception as e:  # offline, unknown repository, gated, rate-limited: all end the same way
        raise PretrainedError(
            f"Cannot fetch hf-hub:{repo_id} from the Hugging Face Hub ({errors.error_line(e)}). "
            + HUB_FIX.format(repo=repo_id)
        ) from None


# ----------------------------------------------------------------------------- export
