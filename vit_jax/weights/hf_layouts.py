"""transformers' layouts of the later ViT families, to and from our parameter tree.

The published files keep transformers 4's names (transformers 5 renames its modules in memory
and writes the old names back on save), so these are the names read and written:

- `dinov2`, `dinov2_with_registers` (Dinov2Model, Dinov2WithRegistersModel):
  `embeddings.{cls_token, mask_token, register_tokens, position_embeddings (cls + patches),
  patch_embeddings.projection}`; per layer `encoder.layer.{i}.{norm1, attention.attention.
  {query,key,value}, attention.output.dense, layer_scale1.lambda1, norm2, mlp.fc1/fc2 (or the
  SwiGLU's mlp.weights_in [gate | value] and mlp.weights_out), layer_scale2.lambda1}`; `layernorm`.
- `clip_vision_model` (CLIPVisionModel; `clip`'s vision tower): under `vision_model.`:
  `embeddings.class_embedding` (D,), `embeddings.patch_embedding` (no bias),
  `embeddings.position_embedding.weight` (N + 1, D), `pre_layrnorm`, per layer `encoder.layers.
  {i}.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1/fc2}`, `post_layernorm`
  (on the class token: the pooler output).
- `siglip_vision_model` (SiglipVisionModel; `siglip`'s vision tower): as CLIP without class
  token or pre-norm, the patch convolution with bias, `post_layernorm` on every token, and the
  attention pool `head.{probe, attention.in_proj_weight (3D, D: query, key, value),
  attention.in_proj_bias, attention.out_proj, layernorm, mlp.fc1/fc2}`.
- `deit` (DeiTForImageClassificationWithTeacher): under `deit.`, ViT's names plus
  `embeddings.distillation_token`; the position embedding covers [cls, dist, patches];
  `cls_classifier` and `distillation_classifier` outside the prefix.

Tensors the model does not use (DINOv2's `mask_token`, a full CLIP's or SigLIP's text tower,
`logit_scale`, CLIP's `visual_projection`) are returned apart, so an export writes them back.
"""

from typing import Any

import numpy as np

from vit_jax.weights.layouts import (
    _conv_in,
    _conv_out,
    _dense_in,
    _dense_out,
    _heads_in,
    _heads_out,
    _norm_in,
    _norm_out,
    _out_in,
    _out_out,
    _pop2,
    _put2,
    num_blocks,
)

Tree = dict[str, Any]

# Per layout: where the layers are and their names.
_VIT_LAYER = dict(
    layers="encoder.layer.",
    q="attention.attention.query",
    k="attention.attention.key",
    v="attention.attention.value",
    o="attention.output.dense",
    ln1="layernorm_before",
    ln2="layernorm_after",
    fc1="intermediate.dense",
    fc2="output.dense",
)
_DINOV2_LAYER = dict(_VIT_LAYER, ln1="norm1", ln2="norm2", fc1="mlp.fc1", fc2="mlp.fc2")
_CLIP_LAYER = dict(
    layers="encoder.layers.",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.out_proj",
    ln1="layer_norm1",
    ln2="layer_norm2",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
)
# The prefix of the vision tower in each model type's files.
PREFIXES = {
    "dinov2": "",
    "dinov2_with_registers": "",
    "clip_vision_model": "vision_model.",
    "siglip_vision_model": "vision_model.",
    "deit": "deit.",
}


def _layers_in(state: dict, names: dict, heads: int) -> Tree:
    blocks: Tree = {}
    for i in range(num_blocks(state, rf"{names['layers'].replace('.', '[.]')}(\d+)\.")):
        p = f"{names['layers']}{i}."
        attention = {
            n: _heads_in(*_pop2(state, p + names[k]), heads) for n, k in (("query", "q"), ("key", "k"), ("value", "v"))
        }
        attention["out"] = _out_in(*_pop2(state, p + names["o"]), heads)
        block = {"LayerNorm_0": _norm_in(*_pop2(state, p + names["ln1"])), "MultiHeadDotProductAttention_0": attention}
        block["LayerNorm_1"] = _norm_in(*_pop2(state, p + names["ln2"]))
        if p + "mlp.weights_in.weight" in state:  # DINOv2 giant's SwiGLU, [gate | value]
            fc1, fc2 = _pop2(state, p + "mlp.weights_in"), _pop2(state, p + "mlp.weights_out")
        else:
            fc1, fc2 = _pop2(state, p + names["fc1"]), _pop2(state, p + names["fc2"])
        block["MlpBlock_0"] = {"Dense_0": _dense_in(*fc1), "Dense_1": _dense_in(*fc2)}
        for index in (0, 1):
            key = f"{p}layer_scale{index + 1}.lambda1"
            if key in state:
                block[f"LayerScale_{index}"] = {"scale": state.pop(key)}
        blocks[f"encoderblock_{i}"] = block
    return blocks


def _layers_out(t: Tree, names: dict, prefix: str, layerscale: bool = False) -> dict[str, np.ndarray]:
    """The layers in `names`' layout; with `layerscale`, LayerScale at 1 where the tree has none
    (DINOv2's layers always scale their branches)."""
    state: dict[str, np.ndarray] = {}
    for i in range(num_blocks(t, r"encoderblock_(\d+)$")):
        blk, p = t[f"encoderblock_{i}"], f"{prefix}{names['layers']}{i}."
        att, mlp = blk["MultiHeadDotProductAttention_0"], blk["MlpBlock_0"]
        for n, k in (("query", "q"), ("key", "k"), ("value", "v")):
            _put2(state, p + names[k], _heads_out(att[n]))
        _put2(state, p + names["o"], _out_out(att["out"]))
        _put2(state, p + names["ln1"], _norm_out(blk["LayerNorm_0"]))
        _put2(state, p + names["ln2"], _norm_out(blk["LayerNorm_1"]))
        swiglu = np.shape(mlp["Dense_0"]["kernel"])[-1] == 2 * np.shape(mlp["Dense_1"]["kernel"])[0]
        fc1, fc2 = ("mlp.weights_in", "mlp.weights_out") if swiglu else (names["fc1"], names["fc2"])
        _put2(state, p + fc1, _dense_out(mlp["Dense_0"]))
        _put2(state, p + fc2, _dense_out(mlp["Dense_1"]))
        for index in (0, 1):
            key = f"{p}layer_scale{index + 1}.lambda1"
            if f"LayerScale_{index}" in blk:
                state[key] = np.asarray(blk[f"LayerScale_{index}"]["scale"])
            elif layerscale:
                state[key] = np.ones(np.shape(blk["LayerNorm_0"]["scale"]), np.float32)
    return state


def split_prefix(state: dict, model_type: str) -> tuple[dict, dict]:
    """(the vision tower's tensors without their prefix, the rest: heads kept apart by the caller)."""
    prefix = PREFIXES[model_type]
    if not prefix or not any(k.startswith(prefix) for k in state):
        return dict(state), {}
    tower = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return tower, {k: v for k, v in state.items() if not k.startswith(prefix)}


def from_hf_family(state: dict, model_type: str, heads: int) -> tuple[Tree, Tree, list[str]]:
    """A transformers state dict of `model_type` -> (parameter tree, tensors kept apart, unused keys)."""
    tower, rest = split_prefix(state, model_type)
    params: Tree = {}
    extra: Tree = {}
    t: Tree = {}
    if model_type in ("clip_vision_model", "siglip_vision_model"):
        e = "embeddings."
        if model_type == "clip_vision_model":
            c = tower.pop(e + "class_embedding")
            params["cls"] = np.reshape(c, (1, 1, -1))
            t["pre_norm"] = _norm_in(*_pop2(tower, "pre_layrnorm"))
        params["embedding"] = {"kernel": _conv_in(tower.pop(e + "patch_embedding.weight"))}
        if e + "patch_embedding.bias" in tower:
            params["embedding"]["bias"] = tower.pop(e + "patch_embedding.bias")
        t["posembed_input"] = {"pos_embedding": tower.pop(e + "position_embedding.weight")[None]}
        if e + "position_ids" in tower:
            extra[PREFIXES[model_type] + e + "position_ids"] = tower.pop(e + "position_ids")
        t.update(_layers_in(tower, _CLIP_LAYER, heads))
        t["encoder_norm"] = _norm_in(*_pop2(tower, "post_layernorm"))
        if "head.probe" in tower:
            params["MAPHead"] = _siglip_head_in(tower, heads)
    else:
        e = "embeddings."
        params["cls"] = tower.pop(e + "cls_token")
        if e + "distillation_token" in tower:
            params["dist"] = tower.pop(e + "distillation_token")
        if e + "register_tokens" in tower:
            params["reg"] = tower.pop(e + "register_tokens")
        if e + "mask_token" in tower:
            extra[PREFIXES[model_type] + e + "mask_token"] = tower.pop(e + "mask_token")
        w, b = _pop2(tower, e + "patch_embeddings.projection")
        params["embedding"] = {"kernel": _conv_in(w), "bias": b}
        t["posembed_input"] = {"pos_embedding": tower.pop(e + "position_embeddings")}
        t.update(_layers_in(tower, _VIT_LAYER if model_type == "deit" else _DINOV2_LAYER, heads))
        t["encoder_norm"] = _norm_in(*_pop2(tower, "layernorm"))
        if "pooler.dense.weight" in tower:  # DeiTModel's pooler: not part of the eval output
            for k in ("pooler.dense.weight", "pooler.dense.bias"):
                extra[PREFIXES[model_type] + k] = tower.pop(k)
    params["Transformer"] = t
    if model_type == "deit":
        for ours, theirs in (("head", "cls_classifier"), ("head_dist", "distillation_classifier")):
            if f"{theirs}.weight" in rest:
                params[ours] = _dense_in(*_pop2(rest, theirs))
    if model_type in ("clip_vision_model", "siglip_vision_model"):
        extra.update(rest)  # a full CLIP's or SigLIP's text tower, projections, logit scale
        rest = {}
    unused = [PREFIXES[model_type] + k for k in tower] + list(rest)
    return params, extra, sorted(unused)


def _siglip_head_in(tower: dict, heads: int) -> Tree:
    w, b = tower.pop("head.attention.in_proj_weight"), tower.pop("head.attention.in_proj_bias")
    d = w.shape[1]
    attention = {
        n: _heads_in(w[j * d : (j + 1) * d], b[j * d : (j + 1) * d], heads)
        for j, n in enumerate(("query", "key", "value"))
    }
    attention["out"] = _out_in(*_pop2(tower, "head.attention.out_proj"), heads)
    mlp = {"Dense_0": _dense_in(*_pop2(tower, "head.mlp.fc1")), "Dense_1": _dense_in(*_pop2(tower, "head.mlp.fc2"))}
    return {
        "probe": tower.pop("head.probe"),
        "MultiHeadDotProductAttention_0": attention,
        "LayerNorm_0": _norm_in(*_pop2(tower, "head.layernorm")),
        "MlpBlock_0": mlp,
    }


def _siglip_head_out(head: Tree) -> dict[str, np.ndarray]:
    att = head["MultiHeadDotProductAttention_0"]
    qkv = [_heads_out(att[n]) for n in ("query", "key", "value")]
    state = {
        "head.probe": np.asarray(head["probe"]),
        "head.attention.in_proj_weight": np.concatenate([w for w, _ in qkv]),
        "head.attention.in_proj_bias": np.concatenate([b for _, b in qkv]),
    }
    _put2(state, "head.attention.out_proj", _out_out(att["out"]))
    _put2(state, "head.layernorm", _norm_out(head["LayerNorm_0"]))
    _put2(state, "head.mlp.fc1", _dense_out(head["MlpBlock_0"]["Dense_0"]))
    _put2(state, "head.mlp.fc2", _dense_out(head["MlpBlock_0"]["Dense_1"]))
    return state


def to_hf_family(params: Tree, model_type: str, extra: Tree | None = None) -> dict[str, np.ndarray]:
    """The parameter tree -> the state dict of `model_type` as transformers publishes it, with the
    tensors kept apart at load (`extra`) written back."""
    t = params["Transformer"]
    p = PREFIXES[model_type]
    e = p + "embeddings."
    state: dict[str, np.ndarray] = {}
    pe = np.asarray(t["posembed_input"]["pos_embedding"])
    if model_type in ("clip_vision_model", "siglip_vision_model"):
        if model_type == "clip_vision_model":
            state[e + "class_embedding"] = np.asarray(params["cls"]).reshape(-1)
            _put2(state, p + "pre_layrnorm", _norm_out(t["pre_norm"]))
        state[e + "patch_embedding.weight"] = _conv_out(params["embedding"]["kernel"])
        if "bias" in params["embedding"]:
            state[e + "patch_embedding.bias"] = np.asarray(params["embedding"]["bias"])
        state[e + "position_embedding.weight"] = pe[0]
        state.update(_layers_out(t, _CLIP_LAYER, p))
        _put2(state, p + "post_layernorm", _norm_out(t["encoder_norm"]))
        if "MAPHead" in params:
            state.update({p + k: v for k, v in _siglip_head_out(params["MAPHead"]).items()})
    else:
        state[e + "cls_token"] = np.asarray(params["cls"])
        if "dist" in params:
            state[e + "distillation_token"] = np.asarray(params["dist"])
        if "reg" in params:
            state[e + "register_tokens"] = np.asarray(params["reg"])
        state[e + "patch_embeddings.projection.weight"] = _conv_out(params["embedding"]["kernel"])
        state[e + "patch_embeddings.projection.bias"] = np.asarray(params["embedding"]["bias"])
        state[e + "position_embeddings"] = pe
        dinov2 = model_type != "deit"
        state.update(_layers_out(t, _DINOV2_LAYER if dinov2 else _VIT_LAYER, p, layerscale=dinov2))
        _put2(state, p + "layernorm", _norm_out(t["encoder_norm"]))
        if model_type.startswith("dinov2") and e + "mask_token" not in (extra or {}):
            state[e + "mask_token"] = np.zeros((1, pe.shape[-1]), pe.dtype)  # Dinov2Model always has one
    if model_type == "deit":
        for ours, theirs in (("head", "cls_classifier"), ("head_dist", "distillation_classifier")):
            if ours in params:
                _put2(state, theirs, _dense_out(params[ours]))
    state.update({k: np.asarray(v) for k, v in (extra or {}).items()})
    return state
