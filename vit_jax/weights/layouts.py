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
    """A (D, D) query/key/value projection -> kernel (D, heads, head_dim), bias (heads, head_dim);
    a bias of None (EVA-02's key) stays out of the tree."""
    w = np.asarray(w)
    out = {"kernel": np.ascontiguousarray(w.T).reshape(w.shape[1], num_heads, -1)}
    if b is not None:
        out["bias"] = np.asarray(b).reshape(num_heads, -1)
    return out


def _heads_out(p: Tree) -> tuple[np.ndarray, np.ndarray | None]:
    k = np.asarray(p["kernel"])
    bias = np.asarray(p["bias"]).reshape(-1) if "bias" in p else None
    return np.ascontiguousarray(k.reshape(k.shape[0], -1).T), bias


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
    """A timm ViT state dict -> (parameter tree, keys it did not use). Covers the original
    family and the later ones' optional weights: `reg_token`, `dist_token`/`head_dist`,
    `norm_pre`, a patch convolution without bias, LayerScale (`ls1.gamma` or EVA's `gamma_1`),
    QK-norm, EVA-02's `q_bias`/`v_bias` or unfused `q_proj`/`k_proj`/`v_proj`, SwiGLU (packed
    `fc1`, or `fc1_g`/`fc1_x` with `mlp.norm`) and the attention-pool head `attn_pool`."""
    state = dict(state)
    params: Tree = {}
    transformer: Tree = {}
    for key, name in (("cls_token", "cls"), ("dist_token", "dist"), ("reg_token", "reg")):
        if key in state:
            params[name] = state.pop(key)
    if "pos_embed" in state:
        transformer["posembed_input"] = {"pos_embedding": state.pop("pos_embed")}
    params["embedding"] = {"kernel": _conv_in(state.pop("patch_embed.proj.weight"))}
    if "patch_embed.proj.bias" in state:
        params["embedding"]["bias"] = state.pop("patch_embed.proj.bias")
    params.update(_resnet_from_timm(state))
    if "norm_pre.weight" in state:
        transformer["pre_norm"] = _norm_in(*_pop2(state, "norm_pre"))
    for i in range(num_blocks(state, r"blocks\.(\d+)\.")):
        transformer[f"encoderblock_{i}"] = _timm_block_in(state, f"blocks.{i}.", num_heads)
    if "norm.weight" in state:
        transformer["encoder_norm"] = _norm_in(*_pop2(state, "norm"))
    if "fc_norm.weight" in state:
        params["fc_norm"] = _norm_in(*_pop2(state, "fc_norm"))
    if "attn_pool.latent" in state:
        params["MAPHead"] = _map_from_timm(state, num_heads)
    params["Transformer"] = transformer
    for key in ("head", "head_dist"):
        if f"{key}.weight" in state:
            params[key] = _dense_in(*_pop2(state, key))
    return params, sorted(state)


def _timm_qkv_in(state: dict, p: str) -> tuple[np.ndarray, ...]:
    """(query, key, value) weights, then biases, of a timm or EVA attention (EVA's key: None)."""
    if p + "qkv.weight" in state:
        w = state.pop(p + "qkv.weight")
        d = w.shape[1]
        if p + "qkv.bias" in state or p + "q_bias" not in state:
            b = state.pop(p + "qkv.bias")
        else:
            q_bias, v_bias = state.pop(p + "q_bias"), state.pop(p + "v_bias")
            return w[:d], w[d : 2 * d], w[2 * d :], q_bias, None, v_bias
        return tuple(w[j * d : (j + 1) * d] for j in range(3)) + tuple(b[j * d : (j + 1) * d] for j in range(3))
    ws, bs = [], []
    for name in ("q_proj", "k_proj", "v_proj"):
        ws.append(state.pop(f"{p}{name}.weight"))
        bs.append(state.pop(f"{p}{name}.bias", None))
    return (*ws, *bs)


def _timm_block_in(state: dict, p: str, num_heads: int) -> Tree:
    qw, kw, vw, qb, kb, vb = _timm_qkv_in(state, p + "attn.")
    attention = {
        name: _heads_in(w, b, num_heads) for name, w, b in (("query", qw, qb), ("key", kw, kb), ("value", vw, vb))
    }
    attention["out"] = _out_in(*_pop2(state, p + "attn.proj"), num_heads)
    for ours, theirs in (("query_norm", "attn.q_norm"), ("key_norm", "attn.k_norm")):
        if f"{p}{theirs}.weight" in state:
            attention[ours] = _norm_in(*_pop2(state, p + theirs))
    block = {"LayerNorm_0": _norm_in(*_pop2(state, p + "norm1")), "MultiHeadDotProductAttention_0": attention}
    block["LayerNorm_1"] = _norm_in(*_pop2(state, p + "norm2"))
    if p + "mlp.fc1_g.weight" in state:  # EVA-02's SwiGLU: gate and value apart
        gw, gb = _pop2(state, p + "mlp.fc1_g")
        xw, xb = _pop2(state, p + "mlp.fc1_x")
        fc1 = _dense_in(np.concatenate([gw, xw]), np.concatenate([gb, xb]))
    else:
        fc1 = _dense_in(*_pop2(state, p + "mlp.fc1"))
    block["MlpBlock_0"] = {"Dense_0": fc1, "Dense_1": _dense_in(*_pop2(state, p + "mlp.fc2"))}
    if p + "mlp.norm.weight" in state:
        block["MlpBlock_0"]["LayerNorm_0"] = _norm_in(*_pop2(state, p + "mlp.norm"))
    for index, names in enumerate((("ls1.gamma", "gamma_1"), ("ls2.gamma", "gamma_2"))):
        found = [p + n for n in names if p + n in state]
        if found:
            block[f"LayerScale_{index}"] = {"scale": state.pop(found[0])}
    return block


def _map_from_timm(state: dict, num_heads: int) -> Tree:
    """timm's AttentionPoolLatent -> the MAP head: `latent` the probe, `q`, `kv` (keys, then
    values), `proj`, `norm` and `mlp`."""
    kv_w, kv_b = _pop2(state, "attn_pool.kv")
    d = kv_w.shape[1]
    attention = {"query": _heads_in(*_pop2(state, "attn_pool.q"), num_heads)}
    attention["key"] = _heads_in(kv_w[:d], kv_b[:d], num_heads)
    attention["value"] = _heads_in(kv_w[d:], kv_b[d:], num_heads)
    attention["out"] = _out_in(*_pop2(state, "attn_pool.proj"), num_heads)
    mlp = {
        "Dense_0": _dense_in(*_pop2(state, "attn_pool.mlp.fc1")),
        "Dense_1": _dense_in(*_pop2(state, "attn_pool.mlp.fc2")),
    }
    return {
        "probe": state.pop("attn_pool.latent"),
        "MultiHeadDotProductAttention_0": attention,
        "LayerNorm_0": _norm_in(*_pop2(state, "attn_pool.norm")),
        "MlpBlock_0": mlp,
    }


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


def to_timm(params: Tree, eva: bool = False) -> dict[str, np.ndarray]:
    """The parameter tree (per-block layout) -> a timm state dict; `eva` writes EVA-02's attention
    (`qkv` without bias plus `q_bias`/`v_bias`, or `q_proj`/`k_proj`/`v_proj` beside a SwiGLU
    with its norm) and MLP names (`fc1_g`/`fc1_x`)."""
    state: dict[str, np.ndarray] = {}
    t = params["Transformer"]
    for name, key in (("cls", "cls_token"), ("dist", "dist_token"), ("reg", "reg_token")):
        if name in params:
            state[key] = np.asarray(params[name])
    if "posembed_input" in t:
        state["pos_embed"] = np.asarray(t["posembed_input"]["pos_embedding"])
    if "conv_root" in params:
        state.update(_resnet_to_timm(params))
    state["patch_embed.proj.weight"] = _conv_out(params["embedding"]["kernel"])
    if "bias" in params["embedding"]:
        state["patch_embed.proj.bias"] = np.asarray(params["embedding"]["bias"])
    if "pre_norm" in t:
        _put2(state, "norm_pre", _norm_out(t["pre_norm"]))
    for i in range(num_blocks(t, r"encoderblock_(\d+)$")):
        state.update(_timm_block_out(t[f"encoderblock_{i}"], f"blocks.{i}.", eva))
    if "encoder_norm" in t:
        _put2(state, "norm", _norm_out(t["encoder_norm"]))
    if "fc_norm" in params:
        _put2(state, "fc_norm", _norm_out(params["fc_norm"]))
    if "MAPHead" in params:
        state.update(_map_to_timm(params["MAPHead"]))
    for key in ("head", "head_dist"):
        if key in params:
            _put2(state, key, _dense_out(params[key]))
    return state


def _timm_block_out(blk: Tree, p: str, eva: bool) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}
    att = blk["MultiHeadDotProductAttention_0"]
    (qw, qb), (kw, kb), (vw, vb) = (_heads_out(att[name]) for name in ("query", "key", "value"))
    mlp = blk["MlpBlock_0"]
    _put2(state, p + "norm1", _norm_out(blk["LayerNorm_0"]))
    if eva and "LayerNorm_0" in mlp:  # EVA-02 base and large: unfused, the key without bias
        _put2(state, p + "attn.q_proj", (qw, qb))
        state[p + "attn.k_proj.weight"] = kw
        _put2(state, p + "attn.v_proj", (vw, vb))
    else:
        state[p + "attn.qkv.weight"] = np.concatenate([qw, kw, vw])
        if kb is None:  # EVA-02 tiny and small
            state[p + "attn.q_bias"], state[p + "attn.v_bias"] = qb, vb
        else:
            state[p + "attn.qkv.bias"] = np.concatenate([qb, kb, vb])
    for ours, theirs in (("query_norm", "attn.q_norm"), ("key_norm", "attn.k_norm")):
        if ours in att:
            _put2(state, p + theirs, _norm_out(att[ours]))
    _put2(state, p + "attn.proj", _out_out(att["out"]))
    _put2(state, p + "norm2", _norm_out(blk["LayerNorm_1"]))
    w, b = _dense_out(mlp["Dense_0"])
    if eva and "LayerNorm_0" in mlp:
        h = w.shape[0] // 2
        _put2(state, p + "mlp.fc1_g", (w[:h], b[:h]))
        _put2(state, p + "mlp.fc1_x", (w[h:], b[h:]))
    else:
        _put2(state, p + "mlp.fc1", (w, b))
    if "LayerNorm_0" in mlp:
        _put2(state, p + "mlp.norm", _norm_out(mlp["LayerNorm_0"]))
    _put2(state, p + "mlp.fc2", _dense_out(mlp["Dense_1"]))
    for index in (0, 1):
        if f"LayerScale_{index}" in blk:
            state[f"{p}ls{index + 1}.gamma"] = np.asarray(blk[f"LayerScale_{index}"]["scale"])
    return state


def _map_to_timm(head: Tree) -> dict[str, np.ndarray]:
    att = head["MultiHeadDotProductAttention_0"]
    (kw, kb), (vw, vb) = _heads_out(att["key"]), _heads_out(att["value"])
    state = {"attn_pool.latent": np.asarray(head["probe"])}
    _put2(state, "attn_pool.q", _heads_out(att["query"]))
    _put2(state, "attn_pool.kv", (np.concatenate([kw, vw]), np.concatenate([kb, vb])))
    _put2(state, "attn_pool.proj", _out_out(att["out"]))
    _put2(state, "attn_pool.norm", _norm_out(head["LayerNorm_0"]))
    _put2(state, "attn_pool.mlp.fc1", _dense_out(head["MlpBlock_0"]["Dense_0"]))
    _put2(state, "attn_pool.mlp.fc2", _dense_out(head["MlpBlock_0"]["Dense_1"]))
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
