"""timm's and transformers' ViT weight layouts, to and from the original's parameter tree.

Pure numpy and exact (transposes and reshapes only), so a round trip is bitwise. Names
and layouts, as those libraries define them:

- timm (`vision_transformer.py`, `resnetv2.py`): `cls_token`, `pos_embed`,
  `patch_embed.proj` (D, C, P, P); per block `norm1`, `attn.qkv` (3D, D: query, key, value
  stacked, each head-major), `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`; `norm` (or
  `fc_norm` after pooling), `head` (classes, D). Hybrids keep the ResNet under
  `patch_embed.backbone`: `stem.conv`/`stem.norm` (or `conv`/`norm` for the stem-only
  R+Ti), `stages.{k}.blocks.{j}.conv{1,2,3}`/`norm{1,2,3}` and `downsample.conv`/`.norm`.
- transformers (`modeling_vit.py`, as the published files store it): `embeddings.cls_token`,
  `embeddings.position_embeddings`, `embeddings.patch_embeddings.projection`; per layer
  `attention.attention.{query,key,value}`, `attention.output.dense`, `intermediate.dense`,
  `output.dense`, `layernorm_before`, `layernorm_after`; `layernorm`, `pooler.dense` (the
  original's tanh pre-logits layer) and `classifier`. ViTForImageClassification prefixes
  the encoder with `vit.`. transformers 5 saves per-layer names as `layers.{i}.attention.
  {q,k,v,o}_proj`, `mlp.fc1`/`fc2`; `from_hf` reads both.

PyTorch linear weights are (out, in); Flax kernels are (in, out).
"""

import re
from typing import Any

import numpy as np

Tree = dict[str, Any]


def _dense_in(w, b) -> Tree:
    return {"kernel": np.ascontiguousarray(np.asarray(w).T), "bias": np.asarray(b)}


def _dense_out(p: Tree) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(np.asarray(p["kernel"]).T), np.asarray(p["bias"])


def _norm_in(w, b) -> Tree:
    return {"scale": np.asarray(w), "bias": np.asarray(b)}


def _conv_in(w) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(w).transpose(2, 3, 1, 0))  # (O, I, H, W) -> (H, W, I, O)


def _conv_out(k) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(k).transpose(3, 2, 0, 1))


def _heads_in(w, b, num_heads: int) -> Tree:
    """A (D, D) query/key/value projection -> kernel (D, heads, head_dim), bias (heads, head_dim)."""
    w, b = np.asarray(w), np.asarray(b)
    return {"kernel": np.ascontiguousarray(w.T).reshape(w.shape[1], num_heads, -1), "bias": b.reshape(num_heads, -1)}


def _heads_out(p: Tree) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(p["kernel"])
    return np.ascontiguousarray(k.reshape(k.shape[0], -1).T), np.asarray(p["bias"]).reshape(-1)


def _out_in(w, b, num_heads: int) -> Tree:
    w = np.asarray(w)
    return {"kernel": np.ascontiguousarray(w.T).reshape(num_heads, -1, w.shape[0]), "bias": np.asarray(b)}


def _out_out(p: Tree) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(p["kernel"])
    return np.ascontiguousarray(k.reshape(-1, k.shape[-1]).T), np.asarray(p["bias"])


def _pop2(state: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    return state.pop(f"{name}.weight"), state.pop(f"{name}.bias")


def _put2(state: dict, name: str, wb) -> None:
    state[f"{name}.weight"], state[f"{name}.bias"] = wb


def _block_in(state: dict, attention: Tree, prefix: str, names: tuple[str, str, str, str]) -> Tree:
    """An encoder block from its attention and the layout's names of (norm 1, norm 2, MLP in, MLP out)."""
    norm1, norm2, fc1, fc2 = (prefix + n for n in names)
    return {
        "LayerNorm_0": _norm_in(*_pop2(state, norm1)),
        "MultiHeadDotProductAttention_0": attention,
        "LayerNorm_1": _norm_in(*_pop2(state, norm2)),
        "MlpBlock_0": {"Dense_0": _dense_in(*_pop2(state, fc1)), "Dense_1": _dense_in(*_pop2(state, fc2))},
    }


def num_blocks(state: dict, pattern: str) -> int:
    """How many numbered layers a state dict holds (`pattern` captures the index)."""
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


# ----------------------------------------------------------------------------- timm


def from_timm(state: dict[str, np.ndarray], num_heads: int) -> tuple[Tree, list[str]]:
    """A timm ViT state dict -> (parameter tree, keys it did not use)."""
    state = dict(state)
    params: Tree = {}
    transformer: Tree = {}
    if "cls_token" in state:
        params["cls"] = state.pop("cls_token")
    if "pos_embed" in state:
        transformer["posembed_input"] = {"pos_embedding": state.pop("pos_embed")}
    w, b = _pop2(state, "patch_embed.proj")
    params["embedding"] = {"kernel": _conv_in(w), "bias": b}
    params.update(_resnet_from_timm(state))
    for i in range(num_blocks(state, r"blocks\.(\d+)\.")):
        p = f"blocks.{i}."
        qkv_w, qkv_b = _pop2(state, p + "attn.qkv")
        d = qkv_w.shape[1]
        attention = {
            name: _heads_in(qkv_w[j * d : (j + 1) * d], qkv_b[j * d : (j + 1) * d], num_heads)
            for j, name in enumerate(("query", "key", "value"))
        }
        attention["out"] = _out_in(*_pop2(state, p + "attn.proj"), num_heads)
        transformer[f"encoderblock_{i}"] = _block_in(state, attention, p, ("norm1", "norm2", "mlp.fc1", "mlp.fc2"))
    if "norm.weight" in state:
        transformer["encoder_norm"] = _norm_in(*_pop2(state, "norm"))
    if "fc_norm.weight" in state:
        params["fc_norm"] = _norm_in(*_pop2(state, "fc_norm"))
    params["Transformer"] = transformer
    if "head.weight" in state:
        params["head"] = _dense_in(*_pop2(state, "head"))
    return params, sorted(state)


def _resnet_from_timm(state: dict) -> Tree:
    if "patch_embed.backbone.stem.conv.weight" in state:
        stem, stages = "patch_embed.backbone.stem.", "patch_embed.backbone.stages."
    elif "patch_embed.backbone.conv.weight" in state:
        stem, stages = "patch_embed.backbone.", None  # the stem-only backbone (R+Ti/16)
    else:
        return {}
    out = {"conv_root": {"kernel": _conv_in(state.pop(stem + "conv.weight"))}}
    out["gn_root"] = _norm_in(*_pop2(state, stem + "norm"))
    for k in range(num_blocks(state, r"patch_embed\.backbone\.stages\.(\d+)\.") if stages else 0):
        for j in range(num_blocks(state, rf"patch_embed\.backbone\.stages\.{k}\.blocks\.(\d+)\.")):
            p = f"{stages}{k}.blocks.{j}."
            unit = {}
            for r in (1, 2, 3):
                unit[f"conv{r}"] = {"kernel": _conv_in(state.pop(f"{p}conv{r}.weight"))}
                unit[f"gn{r}"] = _norm_in(*_pop2(state, f"{p}norm{r}"))
            if f"{p}downsample.conv.weight" in state:
                unit["conv_proj"] = {"kernel": _conv_in(state.pop(f"{p}downsample.conv.weight"))}
                unit["gn_proj"] = _norm_in(*_pop2(state, f"{p}downsample.norm"))
            out.setdefault(f"block{k + 1}", {})[f"unit{j + 1}"] = unit
    return out


def to_timm(params: Tree) -> dict[str, np.ndarray]:
    """The parameter tree (per-block layout) -> a timm ViT state dict."""
    state: dict[str, np.ndarray] = {}
    t = params["Transformer"]
    if "cls" in params:
        state["cls_token"] = np.asarray(params["cls"])
    if "posembed_input" in t:
        state["pos_embed"] = np.asarray(t["posembed_input"]["pos_embedding"])
    if "conv_root" in params:
        state.update(_resnet_to_timm(params))
    state["patch_embed.proj.weight"] = _conv_out(params["embedding"]["kernel"])
    state["patch_embed.proj.bias"] = np.asarray(params["embedding"]["bias"])
    for i in range(num_blocks(t, r"encoderblock_(\d+)$")):
        blk, p = t[f"encoderblock_{i}"], f"blocks.{i}."
        att = blk["MultiHeadDotProductAttention_0"]
        qkv = [_heads_out(att[name]) for name in ("query", "key", "value")]
        state[p + "norm1.weight"], state[p + "norm1.bias"] = _norm_out(blk["LayerNorm_0"])
        state[p + "attn.qkv.weight"] = np.concatenate([w for w, _ in qkv])
        state[p + "attn.qkv.bias"] = np.concatenate([b for _, b in qkv])
        _put2(state, p + "attn.proj", _out_out(att["out"]))
        state[p + "norm2.weight"], state[p + "norm2.bias"] = _norm_out(blk["LayerNorm_1"])
        _put2(state, p + "mlp.fc1", _dense_out(blk["MlpBlock_0"]["Dense_0"]))
        _put2(state, p + "mlp.fc2", _dense_out(blk["MlpBlock_0"]["Dense_1"]))
    if "encoder_norm" in t:
        _put2(state, "norm", _norm_out(t["encoder_norm"]))
    if "fc_norm" in params:
        _put2(state, "fc_norm", _norm_out(params["fc_norm"]))
    if "head" in params:
        _put2(state, "head", _dense_out(params["head"]))
    return state


def _norm_out(p: Tree) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(p["scale"]), np.asarray(p["bias"])


def _resnet_to_timm(params: Tree) -> dict[str, np.ndarray]:
    blocks = sorted((k for k in params if re.fullmatch(r"block\d+", k)), key=lambda k: int(k[5:]))
    stem = "patch_embed.backbone.stem." if blocks else "patch_embed.backbone."
    state = {stem + "conv.weight": _conv_out(params["conv_root"]["kernel"])}
    _put2(state, stem + "norm", _norm_out(params["gn_root"]))
    for k, block in enumerate(blocks):
        units = params[block]
        for j in range(len(units)):
            unit, p = units[f"unit{j + 1}"], f"patch_embed.backbone.stages.{k}.blocks.{j}."
            if "conv_proj" in unit:
                state[p + "downsample.conv.weight"] = _conv_out(unit["conv_proj"]["kernel"])
                _put2(state, p + "downsample.norm", _norm_out(unit["gn_proj"]))
            for r in (1, 2, 3):
                state[f"{p}conv{r}.weight"] = _conv_out(unit[f"conv{r}"]["kernel"])
                _put2(state, f"{p}norm{r}", _norm_out(unit[f"gn{r}"]))
    return state


# ----------------------------------------------------------------------------- transformers

# transformers 5's per-layer names -> the names the published files use.
_HF_RENAMES = [
    (r"^layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
    (r"^layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
    (r"^layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
]


def _hf_published_names(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        k = k.removeprefix("vit.")
        for pattern, repl in _HF_RENAMES:
            k, n = re.subn(pattern, repl, k)
            if n:
                break
        out[k] = v
    return out


def from_hf(state: dict[str, np.ndarray], num_heads: int) -> tuple[Tree, list[str]]:
    """A transformers ViT state dict (ViTModel or ViTForImageClassification) -> (tree, unused keys)."""
    state = _hf_published_names(state)
    params: Tree = {"cls": state.pop("embeddings.cls_token")}
    w, b = _pop2(state, "embeddings.patch_embeddings.projection")
    params["embedding"] = {"kernel": _conv_in(w), "bias": b}
    transformer: Tree = {"posembed_input": {"pos_embedding": state.pop("embeddings.position_embeddings")}}
    for i in range(num_blocks(state, r"encoder\.layer\.(\d+)\.")):
        p = f"encoder.layer.{i}."
        attention = {
            name: _heads_in(*_pop2(state, f"{p}attention.attention.{name}"), num_heads)
            for name in ("query", "key", "value")
        }
        attention["out"] = _out_in(*_pop2(state, p + "attention.output.dense"), num_heads)
        names = ("layernorm_before", "layernorm_after", "intermediate.dense", "output.dense")
        transformer[f"encoderblock_{i}"] = _block_in(state, attention, p, names)
    transformer["encoder_norm"] = _norm_in(*_pop2(state, "layernorm"))
    params["Transformer"] = transformer
    if "pooler.dense.weight" in state:
        params["pre_logits"] = _dense_in(*_pop2(state, "pooler.dense"))
    if "classifier.weight" in state:
        params["head"] = _dense_in(*_pop2(state, "classifier"))
    return params, sorted(state)


def to_hf(params: Tree) -> dict[str, np.ndarray]:
    """The parameter tree -> transformers' published layout: ViTForImageClassification's
    (`vit.` prefix, `classifier`) with a head, else ViTModel's (with the pooler)."""
    t = params["Transformer"]
    prefix = "vit." if "head" in params else ""
    state = {
        prefix + "embeddings.cls_token": np.asarray(params["cls"]),
        prefix + "embeddings.position_embeddings": np.asarray(t["posembed_input"]["pos_embedding"]),
        prefix + "embeddings.patch_embeddings.projection.weight": _conv_out(params["embedding"]["kernel"]),
        prefix + "embeddings.patch_embeddings.projection.bias": np.asarray(params["embedding"]["bias"]),
    }
    for i in range(num_blocks(t, r"encoderblock_(\d+)$")):
        blk, p = t[f"encoderblock_{i}"], f"{prefix}encoder.layer.{i}."
        att = blk["MultiHeadDotProductAttention_0"]
        for name in ("query", "key", "value"):
            _put2(state, f"{p}attention.attention.{name}", _heads_out(att[name]))
        _put2(state, p + "attention.output.dense", _out_out(att["out"]))
        _put2(state, p + "intermediate.dense", _dense_out(blk["MlpBlock_0"]["Dense_0"]))
        _put2(state, p + "output.dense", _dense_out(blk["MlpBlock_0"]["Dense_1"]))
        _put2(state, p + "layernorm_before", _norm_out(blk["LayerNorm_0"]))
        _put2(state, p + "layernorm_after", _norm_out(blk["LayerNorm_1"]))
    _put2(state, prefix + "layernorm", _norm_out(t["encoder_norm"]))
    if "head" in params:
        _put2(state, "classifier", _dense_out(params["head"]))
    elif "pre_logits" in params:
        _put2(state, "pooler.dense", _dense_out(params["pre_logits"]))
    return state
