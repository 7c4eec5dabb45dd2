"""An independent float64 NumPy forward pass of ViT and hybrid ViT.

Written from the paper's and the original release's definitions, sharing no code
with vit_jax, so the tests can compare the Flax model against a second route.
Takes the Linen parameter tree (nested dicts of arrays).
"""

import numpy as np


def layer_norm(x, p, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def conv2d(x, w, stride, padding, pad_value=0.0):
    """x (B,H,W,C), w (kh,kw,C,O); TensorFlow-style SAME or VALID padding."""
    kh, kw = w.shape[:2]
    if padding == "SAME":
        (top, bot), (lft, rgt) = _same_pads(x.shape[1], kh, stride), _same_pads(x.shape[2], kw, stride)
        x = np.pad(x, ((0, 0), (top, bot), (lft, rgt), (0, 0)), constant_values=pad_value)
    oh = (x.shape[1] - kh) // stride + 1
    ow = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for u in range(kh):
        for v in range(kw):
            patch = x[:, u : u + stride * (oh - 1) + 1 : stride, v : v + stride * (ow - 1) + 1 : stride]
            out += patch @ w[u, v]
    return out


def max_pool_same(x, k=3, s=2):
    (top, bot), (lft, rgt) = _same_pads(x.shape[1], k, s), _same_pads(x.shape[2], k, s)
    x = np.pad(x, ((0, 0), (top, bot), (lft, rgt), (0, 0)), constant_values=-np.inf)
    oh, ow = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    out = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf)
    for u in range(k):
        for v in range(k):
            out = np.maximum(out, x[:, u : u + s * (oh - 1) + 1 : s, v : v + s * (ow - 1) + 1 : s])
    return out


def group_norm(x, p, groups=32, eps=1e-6):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mu = g.mean(axis=(1, 2, 4), keepdims=True)
    var = ((g - mu) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    g = (g - mu) / np.sqrt(var + eps)
    return g.reshape(b, h, w, c) * p["scale"].reshape(-1) + p["bias"].reshape(-1)


def std_conv(x, w, stride, r=None):
    """Weight-standardised conv: / (std + 1e-5) as the original, or / sqrt(var + eps) as timm."""
    r = r or {}
    w = w - w.mean(axis=(0, 1, 2))
    if r.get("ws_epsilon_in_sqrt"):
        w = w / np.sqrt(w.var(axis=(0, 1, 2)) + r["ws_epsilon"])
    else:
        w = w / (w.std(axis=(0, 1, 2)) + r.get("ws_epsilon", 1e-5))
    return conv2d(x, w, stride, "SAME")


def bottleneck(x, p, features, stride, r=None):
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    gn = lambda a, q: group_norm(a, q, eps=(r or {}).get("gn_epsilon", 1e-6))  # noqa: E731
    residual = x
    if "conv_proj" in p:
        residual = gn(std_conv(x, p["conv_proj"]["kernel"], stride, r), p["gn_proj"])
    y = relu(gn(std_conv(x, p["conv1"]["kernel"], 1, r), p["gn1"]))
    y = relu(gn(std_conv(y, p["conv2"]["kernel"], stride, r), p["gn2"]))
    y = gn(std_conv(y, p["conv3"]["kernel"], 1, r), p["gn3"])
    return relu(residual + y)


def attention(x, p, num_heads):
    b, t, d = x.shape
    dh = d // num_heads

    def proj(name):
        return (x @ p[name]["kernel"].reshape(d, d) + p[name]["bias"].reshape(d)).reshape(b, t, num_heads, dh)

    q, k, v = proj("query"), proj("key"), proj("value")
    w = softmax(np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh))
    o = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, d)
    return o @ p["out"]["kernel"].reshape(d, d) + p["out"]["bias"], w


def vit_forward(params, images, config):
    """Logits of the original ViT for `images` (B,H,W,C); config as MODEL_CONFIGS, plus the numerics
    fields (layernorm_epsilon, gelu_approximate, resnet ws_epsilon / ws_epsilon_in_sqrt / gn_epsilon)."""
    p = params
    x = np.asarray(images, np.float64)
    eps = config.get("layernorm_epsilon", 1e-6)
    gelu = gelu_erf if config.get("gelu_approximate") is False else gelu_tanh
    if config.get("resnet"):
        r = config["resnet"]
        width = int(64 * r["width_factor"])
        x = std_conv(x, p["conv_root"]["kernel"], 2, r)
        x = np.maximum(group_norm(x, p["gn_root"], eps=r.get("gn_epsilon", 1e-6)), 0)
        x = max_pool_same(x)
        for s, n_units in enumerate(r["num_layers"]):
            for u in range(n_units):
                stride = 2 if (s > 0 and u == 0) else 1
                x = bottleneck(x, p[f"block{s + 1}"][f"unit{u + 1}"], width * 2**s, stride, r)
    ps = config["patches"]["size"]
    x = conv2d(x, p["embedding"]["kernel"], ps[0], "VALID") + p["embedding"]["bias"]
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    if config["classifier"] == "token":
        x = np.concatenate([np.broadcast_to(p["cls"], (b, 1, d)), x], axis=1)
    t = p["Transformer"]
    x = x + t["posembed_input"]["pos_embedding"]
    heads = config["transformer"]["num_heads"]
    for i in range(config["transformer"]["num_layers"]):
        blk = t[f"encoderblock_{i}"]
        a, _ = attention(layer_norm(x, blk["LayerNorm_0"], eps), blk["MultiHeadDotProductAttention_0"], heads)
        x = x + a
        y = layer_norm(x, blk["LayerNorm_1"], eps)
        mlp = blk["MlpBlock_0"]
        y = gelu(y @ mlp["Dense_0"]["kernel"] + mlp["Dense_0"]["bias"])
        x = x + y @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"]
    x = layer_norm(x, t["encoder_norm"], eps)
    x = x[:, 0] if config["classifier"] == "token" else x.mean(axis=1)
    if config.get("representation_size") is not None:
        x = np.tanh(x @ p["pre_logits"]["kernel"] + p["pre_logits"]["bias"])
    return x @ p["head"]["kernel"] + p["head"]["bias"]


# ----------------------------------------------------------------------------- the later families


def quick_gelu(x):
    return x / (1.0 + np.exp(-1.702 * x))


ACTIVATIONS = {"gelu_tanh": gelu_tanh, "gelu": gelu_erf, "quick_gelu": quick_gelu}


def rotate_patches(x, grid, ref, num_prefix, temperature=10_000.0):
    """EVA-02's rotary embedding written pair by pair: dimension pair j of the patch at grid
    position (r, c) turns by y * f_j (j < dh/4, y = r / gh * ref_h) or x * f_(j - dh/4) (x the same
    for columns), f_i = temperature ** (-i / (dh/4)). x: (B, T, H, dh)."""
    gh, gw = grid
    rh, rw = ref or grid
    dh = x.shape[-1]
    nb = dh // 4
    out = x.copy()
    for t in range(gh * gw):
        r, c = divmod(t, gw)
        for j in range(dh // 2):
            pos = r / gh * rh if j < nb else c / gw * rw
            angle = pos * temperature ** (-(j % nb) / nb)
            a, b = x[:, num_prefix + t, :, 2 * j], x[:, num_prefix + t, :, 2 * j + 1]
            out[:, num_prefix + t, :, 2 * j] = a * np.cos(angle) - b * np.sin(angle)
            out[:, num_prefix + t, :, 2 * j + 1] = b * np.cos(angle) + a * np.sin(angle)
    return out


def family_attention(x, p, num_heads, c, grid, num_prefix, eps):
    b, t, d = x.shape
    dh = d // num_heads

    def proj(name, inputs=x):
        k = p[name]["kernel"].reshape(d, d)
        return (inputs @ k + p[name]["bias"].reshape(d)).reshape(inputs.shape[0], inputs.shape[1], num_heads, dh)

    q, k, v = proj("query"), proj("key"), proj("value")
    if c.get("qk_norm"):
        q, k = layer_norm(q, p["query_norm"], eps), layer_norm(k, p["key_norm"], eps)
    if c.get("rope"):
        q = rotate_patches(q, grid, c.get("rope_ref_grid"), num_prefix)
        k = rotate_patches(k, grid, c.get("rope_ref_grid"), num_prefix)
    w = softmax(np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh))
    o = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, d)
    return o @ p["out"]["kernel"].reshape(d, d) + p["out"]["bias"]


def family_mlp(y, mlp, c, act, eps):
    if c.get("mlp_type", "mlp") == "mlp":
        return (
            act(y @ mlp["Dense_0"]["kernel"] + mlp["Dense_0"]["bias"]) @ mlp["Dense_1"]["kernel"]
            + mlp["Dense_1"]["bias"]
        )
    h = y @ mlp["Dense_0"]["kernel"] + mlp["Dense_0"]["bias"]
    gate, value = h[..., : h.shape[-1] // 2], h[..., h.shape[-1] // 2 :]
    z = gate / (1.0 + np.exp(-gate)) * value
    if c["mlp_type"] == "swiglu_norm":
        z = layer_norm(z, mlp["LayerNorm_0"], eps)
    return z @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"]


def map_pool(x, p, num_heads, act, eps):
    b, _, d = x.shape
    probe = np.broadcast_to(p["probe"], (b, 1, d))
    attn = p["MultiHeadDotProductAttention_0"]
    dh = d // num_heads

    def proj(name, inputs):
        return (inputs @ attn[name]["kernel"].reshape(d, d) + attn[name]["bias"].reshape(d)).reshape(
            b, -1, num_heads, dh
        )

    q, k, v = proj("query", probe), proj("key", x), proj("value", x)
    w = softmax(np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh))
    o = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, 1, d) @ attn["out"]["kernel"].reshape(d, d) + attn["out"]["bias"]
    y = layer_norm(o, p["LayerNorm_0"], eps)
    mlp = p["MlpBlock_0"]
    y = act(y @ mlp["Dense_0"]["kernel"] + mlp["Dense_0"]["bias"]) @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"]
    return (o + y)[:, 0]


def family_forward(params, images, c):
    """(logits, pre_logits) of a ViT with the later families' fields (class_token, reg_tokens,
    distilled, posemb_prefix, pre_norm, patch_bias, activation, layerscale_init, mlp_type, qk_norm,
    rope, fc_norm, classifier token / gap / map), in float64, from the papers' and libraries'
    definitions (timm's `_pos_embed`, Block, AttentionPoolLatent; DeiT's two heads)."""
    p = params
    eps = c.get("layernorm_epsilon", 1e-6)
    act = ACTIVATIONS[c.get("activation") or "gelu_tanh"]
    ps = c["patches"]["size"]
    x = conv2d(np.asarray(images, np.float64), p["embedding"]["kernel"], ps[0], "VALID")
    if c.get("patch_bias", True):
        x = x + p["embedding"]["bias"]
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    prefix = []
    has_cls = c.get("class_token", c["classifier"] == "token")
    if has_cls:
        prefix.append(np.broadcast_to(p["cls"], (b, 1, d)))
    if c.get("distilled"):
        prefix.append(np.broadcast_to(p["dist"], (b, 1, d)))
    n = len(prefix)
    t = p["Transformer"]
    pe = t["posembed_input"]["pos_embedding"]
    if c.get("posemb_prefix", True):
        x = np.concatenate([*prefix, x], axis=1) + pe
    else:
        x = np.concatenate([*prefix, x + pe], axis=1)
    regs = c.get("reg_tokens", 0)
    if regs:
        x = np.concatenate([x[:, :n], np.broadcast_to(p["reg"], (b, regs, d)), x[:, n:]], axis=1)
    if c.get("pre_norm"):
        x = layer_norm(x, t["pre_norm"], eps)
    heads = c["transformer"]["num_heads"]
    for i in range(c["transformer"]["num_layers"]):
        blk = t[f"encoderblock_{i}"]
        a = family_attention(layer_norm(x, blk["LayerNorm_0"], eps), blk["MultiHeadDotProductAttention_0"], heads, c,
                             (gh, gw), n + regs, eps)  # fmt: skip
        if c.get("layerscale_init") is not None:
            a = a * blk["LayerScale_0"]["scale"]
        x = x + a
        y = family_mlp(layer_norm(x, blk["LayerNorm_1"], eps), blk["MlpBlock_0"], c, act, eps)
        if c.get("layerscale_init") is not None:
            y = y * blk["LayerScale_1"]["scale"]
        x = x + y
    if not c.get("fc_norm"):
        x = layer_norm(x, t["encoder_norm"], eps)
    if c.get("distilled"):
        logits = (x[:, 0] @ p["head"]["kernel"] + p["head"]["bias"] + x[:, 1] @ p["head_dist"]["kernel"]) / 2
        return logits + p["head_dist"]["bias"] / 2, (x[:, 0] + x[:, 1]) / 2
    if c["classifier"] == "token":
        pooled = x[:, 0]
    elif c["classifier"] == "gap":
        pooled = x[:, n + regs :].mean(axis=1)
        if c.get("fc_norm"):
            pooled = layer_norm(pooled, p["fc_norm"], eps)
    else:
        pooled = map_pool(x[:, n + regs :], p["MAPHead"], heads, act, eps)
    return pooled @ p["head"]["kernel"] + p["head"]["bias"], pooled
