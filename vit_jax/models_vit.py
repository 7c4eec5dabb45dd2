"""Vision Transformer: patch embedding, position embeddings, encoder and heads.

With the original fields alone this computes what the original release computes,
with its parameter tree (`embedding`, `cls`, `Transformer/posembed_input`,
`Transformer/encoderblock_{i}/...`, `Transformer/encoder_norm`, `pre_logits`, `head`)
and its initializers. Everything added here (position-embedding variants, heads,
dtypes, stochastic depth, remat, scan, intermediates) defaults to that behaviour.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import models_resnet, parallel
from vit_jax.models_attention import ATTENTION_IMPLS, MultiHeadDotProductAttention
from vit_jax.models_layers import LayerNorm, patch_conv
from vit_jax.models_posemb import add_position_embedding
from vit_jax.utils import to_pair

Array = Any
Dtype = Any

CLASSIFIERS = ("token", "gap", "map", "unpooled", "token_unpooled")
POSEMBS = ("learn", "none", "learn_2d", "sincos2d", "relative")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class IdentityLayer(nn.Module):
    """Identity with a name: keeps `pre_logits` in the tree without parameters."""

    @nn.compact
    def __call__(self, x):
        return x


class MlpBlock(nn.Module):
    """Dense -> GELU -> dropout -> Dense -> dropout. GELU is the tanh approximation, as in the
    original; `gelu_approximate=False` computes it exactly (erf), as timm and transformers do."""

    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    out_dim: int | None = None
    dropout_rate: float = 0.1
    deterministic: bool = True
    gelu_approximate: bool = True

    @nn.compact
    def __call__(self, inputs):
        out_dim = inputs.shape[-1] if self.out_dim is None else self.out_dim
        dense = lambda f: nn.Dense(  # noqa: E731
            f,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
        )
        x = nn.gelu(dense(self.mlp_dim)(inputs), approximate=self.gelu_approximate)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=self.deterministic)
        x = dense(out_dim)(x)
        return nn.Dropout(rate=self.dropout_rate)(x, deterministic=self.deterministic)


def drop_path(x, rate, rng):
    """Stochastic depth: zeroes a sample's whole branch with probability `rate`."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * (mask / keep).astype(x.dtype)


class Encoder1DBlock(nn.Module):
    """Pre-LayerNorm Transformer block.

    `__call__(x, droppath_rate)` returns (x, aux): aux is (attention weights, block
    output) when `return_intermediates`, else None, so nothing extra is computed or
    kept unless asked. The signature suits `nn.scan` (carry, per-layer input).
    """

    mlp_dim: int
    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    use_droppath: bool = False
    deterministic: bool = True
    relative_grid: tuple[int, int] | None = None
    num_prefix_tokens: int = 0
    return_intermediates: bool = False
    attention_impl: str = "auto"
    layernorm_epsilon: float = 1e-6
    gelu_approximate: bool = True

    @nn.compact
    def __call__(self, inputs, droppath_rate=0.0):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm_kw = dict(epsilon=self.layernorm_epsilon, **kw)

        def branch(y):
            if self.use_droppath and not self.deterministic:
                return drop_path(y, droppath_rate, self.make_rng("dropout"))
            return y

        x = LayerNorm(name="LayerNorm_0", **norm_kw)(inputs)
        x, weights = MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dropout_rate=self.attention_dropout_rate,
            deterministic=self.deterministic,
            relative_grid=self.relative_grid,
            num_prefix_tokens=self.num_prefix_tokens,
            attention_impl=self.attention_impl,
            name="MultiHeadDotProductAttention_0",
            **kw,
        )(x, return_weights=self.return_intermediates)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=self.deterministic)
        x = branch(x) + inputs

        y = LayerNorm(name="LayerNorm_1", **norm_kw)(x)
        y = MlpBlock(
            mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate,
            deterministic=self.deterministic,
            gelu_approximate=self.gelu_approximate,
            name="MlpBlock_0",
            **kw,
        )(y)
        out = parallel.constrain_batch(x + branch(y))
        return out, ((weights, out) if self.return_intermediates else None)


def patch_dropout(x, rate: float, num_prefix: int, rng):
    """Keeps a random subset of round((1 - rate) * N) patch tokens per example (prefix tokens kept)."""
    prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
    n, t = patches.shape[:2]
    keep = max(1, int(round((1.0 - rate) * t)))
    idx = jnp.argsort(jax.random.uniform(rng, (n, t)), axis=1)[:, :keep]
    kept = jnp.take_along_axis(patches, idx[:, :, None], axis=1)
    return jnp.concatenate([prefix, kept], axis=1)


class Encoder(nn.Module):
    """Position embedding, `num_layers` blocks (unrolled or scanned), final norm."""

    num_layers: int
    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    posemb: str = "learn"
    grid_shape: tuple[int, int] = (1, 1)
    num_prefix_tokens: int = 0
    droppath_rate: float = 0.0
    remat: str = "none"
    scan: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "auto"
    layernorm_epsilon: float = 1e-6
    gelu_approximate: bool = True
    final_norm: bool = True  # False: the head normalises after pooling (fc_norm)
    patch_drop_rate: float = 0.0

    @nn.compact
    def __call__(self, x, *, train: bool, return_intermediates: bool = False):
        assert x.ndim == 3, f"Expected (batch, tokens, hidden), got {x.shape}"
        gh, gw = self.grid_shape
        x = add_position_embedding(x, self.posemb, self.grid_shape, self.num_prefix_tokens, self.param_dtype)
        if train and self.patch_drop_rate > 0:
            x = patch_dropout(x, self.patch_drop_rate, self.num_prefix_tokens, self.make_rng("dropout"))
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
        x = parallel.constrain_batch(x)

        block_kw = dict(
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            use_droppath=self.droppath_rate > 0,
            deterministic=not train,
            relative_grid=(gh, gw) if self.posemb == "relative" else None,
            num_prefix_tokens=self.num_prefix_tokens,
            return_intermediates=return_intermediates,
            attention_impl=self.attention_impl,
            layernorm_epsilon=self.layernorm_epsilon,
            gelu_approximate=self.gelu_approximate,
        )
        # Stochastic depth grows linearly with depth, from 0 to droppath_rate.
        rates = np.linspace(0.0, self.droppath_rate, self.num_layers) if self.num_layers > 1 else np.zeros(1)
        policy = REMAT_POLICIES[self.remat]
        block_cls = Encoder1DBlock
        if self.remat != "none":
            block_cls = nn.remat(Encoder1DBlock, policy=policy, prevent_cse=not self.scan)
        if self.scan:
            scanned = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=0,
                length=self.num_layers,
            )
            x, aux = scanned(name="encoderblock", **block_kw)(x, jnp.asarray(rates, jnp.float32))
        else:
            auxs = []
            for lyr in range(self.num_layers):
                x, a = block_cls(name=f"encoderblock_{lyr}", **block_kw)(x, float(rates[lyr]))
                auxs.append(a)
            aux = jax.tree.map(lambda *a: jnp.stack(a), *auxs) if return_intermediates else None
        encoded = x
        if self.final_norm:
            norm_kw = dict(epsilon=self.layernorm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype)
            encoded = LayerNorm(name="encoder_norm", **norm_kw)(x)
        if not return_intermediates:
            return encoded, None
        attention, tokens = aux
        return encoded, {"attention": attention, "tokens": tokens}


class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over the tokens."""

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    layernorm_epsilon: float = 1e-6
    gelu_approximate: bool = True

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, x.shape[-1]), self.param_dtype)
        probe = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x, _ = MultiHeadDotProductAttention(num_heads=self.num_heads, name="MultiHeadDotProductAttention_0", **kw)(
            probe, x
        )
        y = LayerNorm(name="LayerNorm_0", epsilon=self.layernorm_epsilon, **kw)(x)
        mlp = MlpBlock(self.mlp_dim, dropout_rate=0.0, gelu_approximate=self.gelu_approximate, name="MlpBlock_0", **kw)
        x = x + mlp(y)
        return x[:, 0]


class VisionTransformer(nn.Module):
    """ViT and hybrid ViT, with the original fields plus ablation options.

    Called as `model.apply({'params': p}, images, train=False)`; images are (B, H, W, C)
    floats. With `return_intermediates=True` it returns `(logits, out)` where `out`
    holds `attention` (layers, B, heads, T, T), `tokens` (layers, B, T, D) (the
    output of every block), `encoded` (after the final norm) and `pre_logits`.
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
    layernorm_epsilon: float = 1e-6  # transformers' published ViTs: 1e-12
    gelu_approximate: bool = True  # timm and transformers: False (exact erf GELU)
    fc_norm: bool = False  # gap: normalise the pooled vector (timm's fc_norm), not the tokens
    patch_drop_rate: float = 0.0

    @nn.compact
    def __call__(self, inputs, *, train: bool = False, return_intermediates: bool = False):
        self._check_fields()
        x, (gh, gw) = self._embed(inputs)
        n, _, c = x.shape
        num_prefix = 0
        if self.classifier in ("token", "token_unpooled"):
            cls = self.param("cls", nn.initializers.zeros, (1, 1, c), self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, c)), x], axis=1)
            num_prefix = 1

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
            gelu_approximate=self.gelu_approximate,
            final_norm=not self.fc_norm,
            patch_drop_rate=self.patch_drop_rate,
            name="Transformer",
        )(x, train=train, return_intermediates=return_intermediates)
        encoded = x
        pre_logits = self._pre_logits(self._pool(x))
        x = pre_logits
        if self.num_classes:
            x = nn.Dense(
                features=self.num_classes,
                kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.constant(self.head_bias_init),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="head",
            )(x)
        if not return_intermediates:
            return x
        return x, dict(out, encoded=encoded, pre_logits=pre_logits)

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
            name="embedding",
        )(x)
        n, gh, gw, c = x.shape
        return jnp.reshape(x, [n, gh * gw, c]), (gh, gw)

    def _pool(self, x):
        """The encoded tokens -> what the head classifies (the unpooled heads keep every token)."""
        if self.classifier == "token":
            return x[:, 0]
        if self.classifier == "gap" and self.fc_norm:
            norm_kw = dict(epsilon=self.layernorm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype)
            return LayerNorm(name="fc_norm", **norm_kw)(jnp.mean(x, axis=1))
        if self.classifier == "gap":
            return jnp.mean(x, axis=1)
        if self.classifier == "map":
            t = self.transformer
            return MAPHead(
                num_heads=t["num_heads"],
                mlp_dim=t["mlp_dim"],
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                layernorm_epsilon=self.layernorm_epsilon,
                gelu_approximate=self.gelu_approximate,
                name="MAPHead",
            )(x)
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
    if fields.get("fc_norm") and classifier != "gap":
        raise ValueError(f"fc_norm=True: it normalises the pooled vector of classifier='gap'; {classifier!r} has none.")
    if fields["hidden_size"] % t["num_heads"]:
        raise ValueError(
            f"transformer.num_heads={t['num_heads']} does not divide hidden_size={fields['hidden_size']}: "
            "choose a head count that divides it."
        )
