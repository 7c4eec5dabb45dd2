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
