"""timm's ViT families written out in NumPy from timm's own names, for the layout tests.

`timm_state` draws every tensor a timm model of a spec holds, by timm's names and shapes
(`vision_transformer.py`, `deit.py`, `eva.py`, `layers/attention_pool.py`); `timm_forward`
computes that model's eval output from those names alone, in float64, the way timm's
forward does (`_pos_embed`, Block or EvaBlock, `forward_head`). Neither touches vit_jax, so a
loader that maps a name to the wrong place disagrees with it.
"""

import numpy as np
from reference_numpy import gelu_erf, gelu_tanh, quick_gelu, rotate_patches, softmax

SPEC = dict(
    width=32, depth=2, heads=4, mlp=48, patch=4, image=16, cls=True, reg=0, dist=False, no_embed_class=False,
    pre_norm=False, ls=False, qk_norm=False, attn="qkv", mlp_kind="mlp", pool="token", fc_norm=False,
    act="gelu", eps=1e-6, num_classes=5, rope=False,
)  # fmt: skip
ACT = {"gelu": gelu_erf, "gelu_tanh": gelu_tanh, "quick_gelu": quick_gelu}


def timm_state(rng, **spec) -> dict:
    s = dict(SPEC, **spec)
    d, m = s["width"], s["mlp"]
    state = {}

    def add(name, *shape, base=0.0):
        state[name] = (base + rng.normal(0, 0.2, shape)).astype(np.float32)

    def lin(name, n_out, n_in, bias=True):
        add(name + ".weight", n_out, n_in)
        if bias:
            add(name + ".bias", n_out)

    def norm(name, n):
        add(name + ".weight", n, base=1.0)
        add(name + ".bias", n)

    grid = (s["image"] // s["patch"]) ** 2
    prefix = int(s["cls"]) + int(s["dist"])
    for key, on in (("cls_token", s["cls"]), ("dist_token", s["dist"])):
        if on:
            add(key, 1, 1, d)
    if s["reg"]:
        add("reg_token", 1, s["reg"], d)
    add("pos_embed", 1, grid + (0 if s["no_embed_class"] else prefix), d)
    add("patch_embed.proj.weight", d, 3, s["patch"], s["patch"])
    if not s["pre_norm"]:
        add("patch_embed.proj.bias", d)
    else:
        norm("norm_pre", d)
    for i in range(s["depth"]):
        p = f"blocks.{i}."
        norm(p + "norm1", d)
        norm(p + "norm2", d)
        if s["attn"] == "qkv":
            lin(p + "attn.qkv", 3 * d, d)
        elif s["attn"] == "eva_fused":
            lin(p + "attn.qkv", 3 * d, d, bias=False)
            add(p + "attn.q_bias", d)
            add(p + "attn.v_bias", d)
        else:
            lin(p + "attn.q_proj", d, d)
            lin(p + "attn.k_proj", d, d, bias=False)
            lin(p + "attn.v_proj", d, d)
        if s["qk_norm"]:
            norm(p + "attn.q_norm", d // s["heads"])
            norm(p + "attn.k_norm", d // s["heads"])
        lin(p + "attn.proj", d, d)
        if s["mlp_kind"] == "split_norm":
            lin(p + "mlp.fc1_g", m, d)
            lin(p + "mlp.fc1_x", m, d)
            norm(p + "mlp.norm", m)
        else:
            lin(p + "mlp.fc1", m * (2 if s["mlp_kind"] == "packed" else 1), d)
        lin(p + "mlp.fc2", d, m)
        if s["ls"]:
            add(p + "ls1.gamma", d)
            add(p + "ls2.gamma", d)
    norm("fc_norm" if s["fc_norm"] else "norm", d)
    if s["pool"] == "map":
        add("attn_pool.latent", 1, 1, d)
        lin("attn_pool.q", d, d)
        lin("attn_pool.kv", 2 * d, d)
        lin("attn_pool.proj", d, d)
        norm("attn_pool.norm", d)
        lin("attn_pool.mlp.fc1", m, d)
        lin("attn_pool.mlp.fc2", d, m)
    if s["num_classes"]:
        lin("head", s["num_classes"], d)
        if s["dist"]:
            lin("head_dist", s["num_classes"], d)
    return state


def timm_forward(state: dict, images: np.ndarray, **spec) -> tuple[np.ndarray, np.ndarray]:
    """(output, pre-logits) of timm's eval forward; images (B, H, W, C)."""
    s = dict(SPEC, **spec)
    w = {k: np.asarray(v, np.float64) for k, v in state.items()}
    act = ACT[s["act"]]

    def lin(x, name, bias=True):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if bias and name + ".bias" in w else y

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + s["eps"]) * w[name + ".weight"] + w[name + ".bias"]

    x = np.asarray(images, np.float64)
    b, h, wd, c = x.shape
    p = s["patch"]
    g = (h // p, wd // p)
    patches = x.reshape(b, g[0], p, g[1], p, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, g[0] * g[1], c * p * p)
    x = patches @ w["patch_embed.proj.weight"].reshape(s["width"], -1).T + w.get("patch_embed.proj.bias", 0.0)
    prefix = [np.broadcast_to(w[k], (b, 1, s["width"])) for k in ("cls_token", "dist_token") if k in w]
    if s["no_embed_class"]:
        x = x + w["pos_embed"]
    x = np.concatenate([*prefix, x], axis=1)
    if not s["no_embed_class"]:
        x = x + w["pos_embed"]
    npt = len(prefix) + s["reg"]
    if s["reg"]:
        x = np.concatenate(
            [x[:, : len(prefix)], np.broadcast_to(w["reg_token"], (b, s["reg"], s["width"])), x[:, len(prefix) :]],
            axis=1,
        )
    if s["pre_norm"]:
        x = ln(x, "norm_pre")
    for i in range(s["depth"]):
        x = _block(x, w, f"blocks.{i}.", s, lin, ln, act, g, npt)
    if s["fc_norm"]:
        pooled = ln(x[:, npt:].mean(1), "fc_norm")
    else:
        x = ln(x, "norm")
        pooled = {"token": lambda: x[:, 0], "avg": lambda: x[:, npt:].mean(1)}.get(s["pool"], lambda: None)()
        if s["pool"] == "map":
            pooled = _attn_pool(x[:, npt:], w, s, lin, ln, act)
    if s["dist"]:
        pre = (x[:, 0] + x[:, 1]) / 2
        return (lin(x[:, 0], "head") + lin(x[:, 1], "head_dist")) / 2, pre
    return (lin(pooled, "head") if s["num_classes"] else pooled), pooled


def _heads(t, heads):
    b, n, d = t.shape
    return t.reshape(b, n, heads, d // heads).transpose(0, 2, 1, 3)


def _block(x, w, q, s, lin, ln, act, grid, npt):
    d, heads = s["width"], s["heads"]
    y = ln(x, q + "norm1")
    if s["attn"] == "qkv":
        qkv = lin(y, q + "attn.qkv")
    elif s["attn"] == "eva_fused":
        qkv = lin(y, q + "attn.qkv") + np.concatenate([w[q + "attn.q_bias"], np.zeros(d), w[q + "attn.v_bias"]])
    else:
        qkv = np.concatenate([lin(y, q + f"attn.{n}_proj") for n in "qkv"], -1)
    qh, kh, vh = (_heads(qkv[..., j * d : (j + 1) * d], heads) for j in range(3))
    if s["qk_norm"]:
        qh, kh = ln(qh, q + "attn.q_norm"), ln(kh, q + "attn.k_norm")
    if s["rope"]:
        turn = lambda t: rotate_patches(t.transpose(0, 2, 1, 3), grid, (16, 16), npt).transpose(0, 2, 1, 3)  # noqa: E731
        qh, kh = turn(qh), turn(kh)
    att = softmax(qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(d // heads))
    o = lin((att @ vh).transpose(0, 2, 1, 3).reshape(x.shape), q + "attn.proj")
    x = x + (o * w[q + "ls1.gamma"] if s["ls"] else o)
    y = ln(x, q + "norm2")
    if s["mlp_kind"] == "mlp":
        hidden = act(lin(y, q + "mlp.fc1"))
    elif s["mlp_kind"] == "packed":
        gate_value = lin(y, q + "mlp.fc1")
        gate, value = np.split(gate_value, 2, axis=-1)
        hidden = gate / (1 + np.exp(-gate)) * value
    else:
        gate = lin(y, q + "mlp.fc1_g")
        hidden = ln(gate / (1 + np.exp(-gate)) * lin(y, q + "mlp.fc1_x"), q + "mlp.norm")
    o = lin(hidden, q + "mlp.fc2")
    return x + (o * w[q + "ls2.gamma"] if s["ls"] else o)


def _attn_pool(x, w, s, lin, ln, act):
    d, heads = s["width"], s["heads"]
    b = x.shape[0]
    qh = _heads(lin(np.broadcast_to(w["attn_pool.latent"], (b, 1, d)), "attn_pool.q"), heads)
    kv = lin(x, "attn_pool.kv")
    kh, vh = _heads(kv[..., :d], heads), _heads(kv[..., d:], heads)
    att = softmax(qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(d // heads))
    y = lin((att @ vh).transpose(0, 2, 1, 3).reshape(b, 1, d), "attn_pool.proj")
    y = y + lin(act(lin(ln(y, "attn_pool.norm"), "attn_pool.mlp.fc1")), "attn_pool.mlp.fc2")
    return y[:, 0]
