"""Vision Transformer: patch embedding, position embeddings, encoder and heads.

With the original fields alone this computes what the original release computes,
with its parameter tree (`embedding`, `cls`, `Transformer/posembed_input`,
`Transformer/encoderblock_{i}/...`, `Transformer/encoder_norm`, `pre_logits`, `head`)
and its initializers. Everything added here (position-embedding variants, heads,
dtypes, stochastic depth, remat, scan, intermediates) defaults to that behaviour.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vit_jax import models_resnet
from vit_jax.models_attention import ATTENTION_IMPLS
from vit_jax.models_blocks import ACTIVATIONS, MLP_TYPES, REMAT_POLICIES, Encoder, MAPHead
from vit_jax.models_layers import LayerNorm, patch_conv
from vit_jax.utils import to_pair

Array = Any
Dtype = Any

CLASSIFIERS = ("token", "gap", "map", "unpooled", "token_unpooled")
POSEMBS = ("learn", "none", "learn_2d", "sincos2d", "relative")


def has_class_token(class_token: bool | None, classifier: str) -> bool:
    """Whether a model has a class token: `class_token` when set, else as the classifier says."""
    if class_token is not None:
        return bool(class_token)
    return classifier in ("token", "token_unpooled")


def activation_of(activation: str | None, gelu_approximate: bool) -> str:
    """The MLP's activation: `activation` when set, else the GELU `gelu_approximate` says."""
    return activation or ("gelu_tanh" if gelu_approximate else "gelu")


class IdentityLayer(nn.Module):
    """Identity with a name: keeps `pre_logits` in the tree without parameters."""

    @nn.compact
    def __call__(self, x):
        return x


class VisionTransformer(nn.Module):
    """ViT and hybrid ViT, with the original fields plus ablation options and the pieces of the
    ViT families published since (DINOv2, CLIP, SigLIP, DeiT, EVA-02), each off by default.

    Called as `model.apply({'params': p}, images, train=False)`; images are (B, H, W, C)
    floats. With `return_intermediates=True` it returns `(logits, out)` where `out`
    holds `attention` (layers, B, heads, T, T), `tokens` (layers, B, T, D) (the
    output of every block), `encoded` (after the final norm), `pre_logits` and
    `num_prefix_tokens` (class, distillation and register tokens before the patches).
    """

    num_classes: int
    patches: Any
    transformer: Any
    hidden_size: int
    resnet: Any | None = None
    representation_size: int | None = None
    classifier: str = "token"
    head_bias_init: float = 0.0
    model_name: str | None = None
    posemb: str = "learn"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    droppath_rate: float = 0.0
    remat: str = "none"
    scan: bool = False
    attention_impl: str = "auto"
    # Numerics of other codebases' weights (defaults: the original's).
    layernorm_epsilon: float = 1e-6  # transformers' published ViTs: 1e-12; CLIP: 1e-5
    gelu_approximate: bool = True  # timm and transformers: False (exact erf GELU)
    fc_norm: bool = False  # gap: normalise the pooled vector (timm's fc_norm), not the tokens
    patch_drop_rate: float = 0.0
    # The other families' pieces (README, Models).
    activation: str | None = None  # 'gelu_tanh', 'gelu', 'quick_gelu'; None: as gelu_approximate says
    class_token: bool | None = None  # None: as the classifier ('token' heads have one)
    reg_tokens: int = 0  # register tokens `reg`, after the class token, without a position embedding
    distilled: bool = False  # DeiT: a distillation token `dist` and its head `head_dist`
    posemb_prefix: bool = True  # False: the position embedding covers the patches only (no_embed_class)
    pre_norm: bool = False  # CLIP: a LayerNorm (`Transformer/pre_norm`) before the blocks
    patch_bias: bool = True  # CLIP: the patch convolution has no bias
    layerscale_init: float | None = None  # LayerScale on both residual branches (timm's init_values)
    mlp_type: str = "mlp"  # 'swiglu' (DINOv2 giant), 'swiglu_norm' (EVA-02 base and large)
    qk_norm: bool = False
    rope: bool = False  # EVA-02's 2-D rotary position embedding of queries and keys
    rope_ref_grid: tuple[int, int] | None = None  # the grid its positions are rescaled to (EVA-02: 16x16)
    key_bias: bool = True  # False: the key projection has no bias (EVA-02)
    patch_floor: bool = False  # True: pixels past the last whole patch are left out (timm, transformers)

    @nn.compact
    def __call__(self, inputs, *, train: bool = False, return_intermediates: bool = False):
        self._check_fields()
        x, (gh, gw) = self._embed(inputs)
        x, num_prefix = self._prefix_tokens(x)
        registers = None
        if self.reg_tokens:
            init = nn.initializers.normal(stddev=1e-6)
            registers = self.param("reg", init, (1, self.reg_tokens, x.shape[-1]), self.param_dtype)

        t = self.transformer
        x, out = Encoder(
            num_layers=t["num_layers"],
            mlp_dim=t["mlp_dim"],
            num_heads=t["num_heads"],
            dropout_rate=t.get("dropout_rate", 0.1),
            attention_dropout_rate=t.get("attention_dropout_rate", 0.1),
            posemb=self.posemb,
            grid_shape=(gh, gw),
            num_prefix_tokens=num_prefix,
            droppath_rate=self.droppath_rate,
            remat=self._remat_policy(),
            scan=self.scan,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_impl=self.attention_impl,
            layernorm_epsilon=self.layernorm_epsilon,
            activation=self._activation(),
            final_norm=not self.fc_norm,
            patch_drop_rate=self.patch_drop_rate,
            posemb_prefix=self.posemb_prefix,
            pre_norm=self.pre_norm,
            layerscale_init=self.layerscale_init,
            mlp_type=self.mlp_type,
            qk_norm=self.qk_norm,
            key_bias=self.key_bias,
            rope=self.rope,
            rope_ref_grid=self.rope_ref_grid,
            name="Transformer",
        )(x, train=train, return_intermediates=return_intermediates, registers=registers)
        encoded = x
        prefix = num_prefix + self.reg_tokens
        if self.distilled:
            x, pre_logits = self._distilled_head(x)
        else:
            pre_logits = self._pre_logits(self._pool(x, prefix))
            x = pre_logits
            if self.num_classes:
                x = self._head("head")(x)
        if not return_intermediates:
            return x
        return x, dict(out, encoded=encoded, pre_logits=pre_logits, num_prefix_tokens=prefix)

    def _activation(self) -> str:
        return activation_of(self.activation, self.gelu_approximate)

    def _has_class_token(self) -> bool:
        return has_class_token(self.class_token, self.classifier)

    def _prefix_tokens(self, x):
        """The class and distillation tokens before the patch tokens; (tokens, how many)."""
        n, _, c = x.shape
        prefix = []
        if self._has_class_token():
            prefix.append(self.param("cls", nn.initializers.zeros, (1, 1, c), self.param_dtype))
        if self.distilled:
            prefix.append(self.param("dist", nn.initializers.normal(stddev=0.02), (1, 1, c), self.param_dtype))
        tokens = [jnp.broadcast_to(p.astype(x.dtype), (n, 1, c)) for p in prefix]
        return jnp.concatenate([*tokens, x], axis=1), len(prefix)

    def _head(self, name: str):
        return nn.Dense(
            features=self.num_classes,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.constant(self.head_bias_init),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def _distilled_head(self, x):
        """DeiT's two heads: (logits, pre-logits) = ((head(x0) + head_dist(x1)) / 2, (x0 + x1) / 2),
        as timm and transformers give them in evaluation (and here in training too)."""
        x0, x1 = x[:, 0], x[:, 1]
        pre_logits = IdentityLayer(name="pre_logits")((x0 + x1) / 2)
        if not self.num_classes:
            return pre_logits, pre_logits
        return (self._head("head")(x0) + self._head("head_dist")(x1)) / 2, pre_logits

    def _embed(self, inputs):
        """Images -> (B, N, D) patch tokens and the (rows, cols) token grid: the ResNet stem of a
        hybrid first, then one strided VALID convolution (the original's patch embedding)."""
        x = jnp.asarray(inputs, self.dtype)
        if x.ndim != 4:
            raise ValueError(f"Expected images of shape (batch, height, width, channels), got {x.shape}.")
        ph, pw = to_pair(self.patches["size"])
        img_h, img_w = x.shape[1:3]
        if self.resnet is not None:
            num_layers = tuple(self.resnet["num_layers"])
            x = models_resnet.apply_stem(x, num_layers, self.resnet, self.dtype, self.param_dtype)
        _, h, w, _ = x.shape
        if (h % ph or w % pw) and self.patch_floor and h >= ph and w >= pw:
            # timm's and transformers' VALID patch convolution: SigLIP so400m/14 at 384 px is 27x27
            # patches, the last 6 rows and columns of pixels unused.
            x = x[:, : h // ph * ph, : w // pw * pw]
            h, w = x.shape[1:3]
        if h % ph or w % pw:
            where = (
                f"image size {img_h}x{img_w}"
                if self.resnet is None
                else f"hybrid feature map {h}x{w} (image {img_h}x{img_w} after the ResNet stem)"
            )
            raise ValueError(
                f"The patch size {ph}x{pw} does not divide the {where}; "
                f"use an image size that is a multiple of the patch size."
            )
        x = nn.Conv(
            features=self.hidden_size,
            kernel_size=(ph, pw),
            strides=(ph, pw),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            conv_general_dilated=patch_conv,
            use_bias=self.patch_bias,
            name="embedding",
        )(x)
        n, gh, gw, c = x.shape
        return jnp.reshape(x, [n, gh * gw, c]), (gh, gw)

    def _pool(self, x, num_prefix: int):
        """The encoded tokens -> what the head classifies: the class token, or the mean of the patch
        tokens (class, distillation and register tokens left out), or the attention pool over
        them; the unpooled heads keep every token."""
        if self.classifier == "token":
            return x[:, 0]
        if self.classifier == "gap":
            pooled = jnp.mean(x[:, num_prefix:], axis=1)
            if self.fc_norm:
                norm_kw = dict(epsilon=self.layernorm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype)
                pooled = LayerNorm(name="fc_norm", **norm_kw)(pooled)
            return pooled
        if self.classifier == "map":
            t = self.transformer
            return MAPHead(
                num_heads=t["num_heads"],
                mlp_dim=t["mlp_dim"],
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                layernorm_epsilon=self.layernorm_epsilon,
                activation=self._activation(),
                name="MAPHead",
            )(x[:, num_prefix:])
        return x

    def _pre_logits(self, x):
        """The original's representation layer (Dense + tanh) or a parameter-less identity of
        the same name, so the tree keeps `pre_logits` either way."""
        if self.representation_size is not None:
            dense = nn.Dense(
                self.representation_size, dtype=self.dtype, param_dtype=self.param_dtype, name="pre_logits"
            )
            return nn.tanh(dense(x))
        return IdentityLayer(name="pre_logits")(x)

    def _remat_policy(self) -> str:
        if self.remat in (False, None):
            return "none"
        if self.remat is True:
            return "full"
        return self.remat

    def _check_fields(self):
        check_fields(
            {
                "patches": self.patches,
                "transformer": self.transformer,
                "hidden_size": self.hidden_size,
                "resnet": self.resnet,
                "representation_size": self.representation_size,
                "classifier": self.classifier,
                "posemb": self.posemb,
                "droppath_rate": self.droppath_rate,
                "patch_drop_rate": self.patch_drop_rate,
                "remat": self._remat_policy(),
                "attention_impl": self.attention_impl,
                "layernorm_epsilon": self.layernorm_epsilon,
                "fc_norm": self.fc_norm,
                "activation": self.activation,
                "class_token": self.class_token,
                "reg_tokens": self.reg_tokens,
                "distilled": self.distilled,
                "layerscale_init": self.layerscale_init,
                "mlp_type": self.mlp_type,
                "rope": self.rope,
            }
        )


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _positive_int(v) -> bool:
    return _is_int(v) and v > 0


def is_size(v) -> bool:
    """A positive int, or a pair of them (an image, crop or patch size)."""
    if _is_int(v):
        return v > 0
    return isinstance(v, tuple | list) and len(v) == 2 and all(_positive_int(x) for x in v)


def _rate(v) -> bool:
    return _is_number(v) and 0 <= v < 1


_POSITIVE_INT = "use a positive whole number"
_RATE = "use a rate from 0 up to, not including, 1"


def check_fields(fields: dict[str, Any]) -> None:
    """Checks a VisionTransformer's fields (keyword arguments, nested as the model takes them).

    Raises ValueError with one line `FIELD=VALUE: what to use instead.` for the first field
    out of its range, so a bad value never reaches JAX as a shape error or trains silently.
    Unset optional fields (absent or None) take the model's defaults.
    """
    t = fields.get("transformer") or {}
    resnet = fields.get("resnet") or {}
    checks = [  # (field, value, test, what to do instead)
        ("hidden_size", fields.get("hidden_size"), _positive_int, _POSITIVE_INT),
        ("patches.size", (fields.get("patches") or {}).get("size"), is_size, "use a pair like (16, 16)"),
        *[(f"transformer.{f}", t.get(f), _positive_int, _POSITIVE_INT) for f in ("mlp_dim", "num_heads", "num_layers")],
        *[(f"transformer.{f}", t.get(f) or 0.0, _rate, _RATE) for f in ("dropout_rate", "attention_dropout_rate")],
        ("droppath_rate", fields.get("droppath_rate") or 0.0, _rate, _RATE),
        ("patch_drop_rate", fields.get("patch_drop_rate") or 0.0, _rate, _RATE),
        (
            "representation_size",
            fields.get("representation_size"),
            lambda v: v is None or _positive_int(v),
            "use a positive whole number, or None for no pre-logits layer",
        ),
        *[
            (field, fields.get(field) or default, lambda v, ok=allowed: v in ok, f"choose one of {', '.join(allowed)}")
            for field, default, allowed in (
                ("classifier", "token", CLASSIFIERS),
                ("posemb", "learn", POSEMBS),
                ("remat", "none", tuple(REMAT_POLICIES)),
                ("attention_impl", "auto", ATTENTION_IMPLS),
            )
        ],
        (
            "resnet.num_layers",
            resnet.get("num_layers") or (),
            lambda v: all(_positive_int(n) for n in v),
            "use a tuple of positive block counts per stage, like (3, 4, 9), or () for the root alone",
        ),
        (
            "resnet.width_factor",
            resnet.get("width_factor", 1),
            lambda v: _is_number(v) and v > 0,
            "use a positive number",
        ),
    ]
    for field, value, ok, fix in checks:
        if not ok(value):
            raise ValueError(f"{field}={value!r}: {fix}.")
    eps = fields.get("layernorm_epsilon")
    if eps is not None and not (_is_number(eps) and eps > 0):
        raise ValueError(f"layernorm_epsilon={eps!r}: use a small positive number, like 1e-6.")
    classifier = fields.get("classifier") or "token"
    if fields.get("patch_drop_rate") and fields.get("posemb") == "relative":
        raise ValueError(
            "patch_drop_rate with posemb='relative': the relative position bias needs every token of the grid; "
            "use posemb='learn' or 'sincos2d', or patch_drop_rate=0."
        )
    _check_family_fields(fields, classifier)
    if fields.get("fc_norm") and classifier != "gap":
        raise ValueError(f"fc_norm=True: it normalises the pooled vector of classifier='gap'; {classifier!r} has none.")
    if fields["hidden_size"] % t["num_heads"]:
        raise ValueError(
            f"transformer.num_heads={t['num_heads']} does not divide hidden_size={fields['hidden_size']}: "
            "choose a head count that divides it."
        )


def _check_family_fields(fields: dict[str, Any], classifier: str) -> None:
    """The fields of the other families (LayerScale, registers, distillation, activation, ...)."""
    checks = [
        ("activation", fields.get("activation"), lambda v: v is None or v in ACTIVATIONS, ", ".join(ACTIVATIONS)),
        ("mlp_type", fields.get("mlp_type") or "mlp", lambda v: v in MLP_TYPES, ", ".join(MLP_TYPES)),
        ("reg_tokens", fields.get("reg_tokens") or 0, lambda v: _is_int(v) and v >= 0, "0 or more"),
        ("layerscale_init", fields.get("layerscale_init"), lambda v: v is None or _is_number(v), "a number, or None"),
    ]
    for field, value, ok, allowed in checks:
        if not ok(value):
            raise ValueError(f"{field}={value!r}: use {allowed}.")
    has_cls = has_class_token(fields.get("class_token"), classifier)
    if not has_cls and classifier in ("token", "token_unpooled"):
        raise ValueError(f"class_token=False with classifier={classifier!r}: that head reads the class token.")
    if fields.get("distilled") and (classifier != "token" or not has_cls):
        raise ValueError("distilled=True: DeiT's distillation head goes with classifier='token' and a class token.")
    if fields.get("rope"):
        heads = (fields.get("transformer") or {}).get("num_heads") or 1
        if (fields["hidden_size"] // heads) % 4:
            raise ValueError(f"rope=True needs a head dimension divisible by 4, got {fields['hidden_size'] // heads}.")
