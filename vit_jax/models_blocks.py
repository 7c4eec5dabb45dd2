"""The encoder: its blocks (attention, MLP or SwiGLU, LayerScale, stochastic depth), the token
layout around them (position embeddings, register tokens, CLIP's pre-norm, patch dropout), and
the attention-pool head.

With the original's fields this is the original release's encoder, parameter names included
(`Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
MlpBlock_0}`, `Transformer/posembed_input`, `Transformer/encoder_norm`). The other families'
pieces are off by default: LayerScale (`LayerScale_0/1`, timm's `init_values`), SwiGLU
(`MlpBlock_0/Dense_0` holds [gate | value], DINOv2 giant and EVA-02), QK-norm, EVA-02's rotary
position embedding (`models_posemb.rope_tables`), registers and a pre-norm (`Transformer/pre_norm`).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import parallel
from vit_jax.models_attention import MultiHeadDotProductAttention
from vit_jax.models_layers import LayerNorm
from vit_jax.models_posemb import add_position_embedding, rope_tables

Dtype = Any

ACTIVATIONS = ("gelu_tanh", "gelu", "quick_gelu")
MLP_TYPES = ("mlp", "swiglu", "swiglu_norm")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def quick_gelu(x):
    """OpenAI CLIP's GELU: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


def activation_fn(name: str):
    """'gelu_tanh' (the original's), 'gelu' (exact erf: timm, transformers) or 'quick_gelu' (CLIP)."""
    if name == "gelu_tanh":
        return functools.partial(nn.gelu, approximate=True)
    if name == "gelu":
        return functools.partial(nn.gelu, approximate=False)
    if name == "quick_gelu":
        return quick_gelu
    raise ValueError(f"activation={name!r}: choose one of {', '.join(ACTIVATIONS)}.")


def _dense(features: int, dtype, param_dtype, name=None):
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6),
        name=name,
    )


class MlpBlock(nn.Module):
    """Dense -> activation -> dropout -> Dense -> dropout. The activation is the original's tanh
    GELU by default; 'gelu' computes it exactly (erf), as timm and transformers do."""

    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    out_dim: int | None = None
    dropout_rate: float = 0.1
    deterministic: bool = True
    activation: str = "gelu_tanh"

    @nn.compact
    def __call__(self, inputs):
        out_dim = inputs.shape[-1] if self.out_dim is None else self.out_dim
        x = activation_fn(self.activation)(_dense(self.mlp_dim, self.dtype, self.param_dtype)(inputs))
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=self.deterministic)
        x = _dense(out_dim, self.dtype, self.param_dtype)(x)
        return nn.Dropout(rate=self.dropout_rate)(x, deterministic=self.deterministic)


class SwiGluBlock(nn.Module):
    """SwiGLU: Dense_0 to 2 x mlp_dim ([gate | value]) -> silu(gate) * value -> (with `norm`, a
    LayerNorm: EVA-02's scale_mlp) -> Dense_1. DINOv2 giant's packed weights and EVA-02's
    separate gate and value weights are both Dense_0."""

    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dropout_rate: float = 0.1
    deterministic: bool = True
    norm: bool = False
    layernorm_epsilon: float = 1e-6

    @nn.compact
    def __call__(self, inputs):
        gate_value = _dense(2 * self.mlp_dim, self.dtype, self.param_dtype, name="Dense_0")(inputs)
        gate, value = jnp.split(gate_value, 2, axis=-1)
        x = jax.nn.silu(gate) * value
        if self.norm:
            x = LayerNorm(epsilon=self.layernorm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=self.deterministic)
        x = _dense(inputs.shape[-1], self.dtype, self.param_dtype, name="Dense_1")(x)
        return nn.Dropout(rate=self.dropout_rate)(x, deterministic=self.deterministic)


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch (CaiT; timm's `ls1`/`ls2.gamma`)."""

    init_value: float
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.constant(self.init_value), (x.shape[-1],), self.param_dtype)
        return x * scale.astype(x.dtype)


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
    activation: str = "gelu_tanh"
    layerscale_init: float | None = None
    mlp_type: str = "mlp"
    qk_norm: bool = False
    key_bias: bool = True
    rope_grid: tuple[int, int] | None = None  # EVA-02's rotary embedding over this token grid
    rope_ref_grid: tuple[int, int] | None = None

    @nn.compact
    def __call__(self, inputs, droppath_rate=0.0):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm_kw = dict(epsilon=self.layernorm_epsilon, **kw)

        def branch(y, index: int):
            if self.layerscale_init is not None:
                y = LayerScale(self.layerscale_init, param_dtype=self.param_dtype, name=f"LayerScale_{index}")(y)
            if self.use_droppath and not self.deterministic:
                return drop_path(y, droppath_rate, self.make_rng("dropout"))
            return y

        rope = None
        if self.rope_grid is not None:
            rope = rope_tables(self.rope_grid, inputs.shape[-1] // self.num_heads, self.rope_ref_grid)
        x = LayerNorm(name="LayerNorm_0", **norm_kw)(inputs)
        x, weights = MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dropout_rate=self.attention_dropout_rate,
            deterministic=self.deterministic,
            relative_grid=self.relative_grid,
            num_prefix_tokens=self.num_prefix_tokens,
            attention_impl=self.attention_impl,
            qk_norm=self.qk_norm,
            layernorm_epsilon=self.layernorm_epsilon,
            key_bias=self.key_bias,
            name="MultiHeadDotProductAttention_0",
            **kw,
        )(x, return_weights=self.return_intermediates, rope=rope)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=self.deterministic)
        x = branch(x, 0) + inputs

        y = LayerNorm(name="LayerNorm_1", **norm_kw)(x)
        mlp_kw = dict(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate, deterministic=self.deterministic, **kw)
        if self.mlp_type == "mlp":
            y = MlpBlock(activation=self.activation, name="MlpBlock_0", **mlp_kw)(y)
        else:
            norm = self.mlp_type == "swiglu_norm"
            y = SwiGluBlock(norm=norm, layernorm_epsilon=self.layernorm_epsilon, name="MlpBlock_0", **mlp_kw)(y)
        out = parallel.constrain_batch(x + branch(y, 1))
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
    """Position embedding, registers, pre-norm, `num_layers` blocks (unrolled or scanned), final norm.

    The input holds `num_prefix_tokens` tokens (class, distillation) before the patches. The
    position embedding covers them unless `posemb_prefix` is False (timm's no_embed_class);
    `registers` (1, R, D) then go in after them, without a position embedding, as DINOv2 and
    timm place them.
    """

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
    activation: str = "gelu_tanh"
    final_norm: bool = True  # False: the head normalises after pooling (fc_norm)
    patch_drop_rate: float = 0.0
    posemb_prefix: bool = True
    pre_norm: bool = False
    layerscale_init: float | None = None
    mlp_type: str = "mlp"
    qk_norm: bool = False
    key_bias: bool = True
    rope: bool = False
    rope_ref_grid: tuple[int, int] | None = None

    def _tokens(self, x, registers, train: bool):
        """Position embedding, registers, patch dropout, dropout, pre-norm; (tokens, prefix count)."""
        p = self.num_prefix_tokens
        if self.posemb_prefix or not p:
            x = add_position_embedding(x, self.posemb, self.grid_shape, p, self.param_dtype)
        else:
            patches = add_position_embedding(x[:, p:], self.posemb, self.grid_shape, 0, self.param_dtype)
            x = jnp.concatenate([x[:, :p], patches], axis=1)
        if registers is not None:
            regs = jnp.broadcast_to(registers.astype(x.dtype), (x.shape[0], *registers.shape[1:]))
            x = jnp.concatenate([x[:, :p], regs, x[:, p:]], axis=1)
            p += registers.shape[1]
        if train and self.patch_drop_rate > 0:
            x = patch_dropout(x, self.patch_drop_rate, p, self.make_rng("dropout"))
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
        if self.pre_norm:
            norm_kw = dict(epsilon=self.layernorm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype)
            x = LayerNorm(name="pre_norm", **norm_kw)(x)
        return parallel.constrain_batch(x), p

    @nn.compact
    def __call__(self, x, *, train: bool, return_intermediates: bool = False, registers=None):
        assert x.ndim == 3, f"Expected (batch, tokens, hidden), got {x.shape}"
        gh, gw = self.grid_shape
        x, prefix = self._tokens(x, registers, train)
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
            num_prefix_tokens=prefix,
            return_intermediates=return_intermediates,
            attention_impl=self.attention_impl,
            layernorm_epsilon=self.layernorm_epsilon,
            activation=self.activation,
            layerscale_init=self.layerscale_init,
            mlp_type=self.mlp_type,
            qk_norm=self.qk_norm,
            key_bias=self.key_bias,
            rope_grid=(gh, gw) if self.rope else None,
            rope_ref_grid=self.rope_ref_grid,
        )
        # Stochastic depth grows linearly with depth, from 0 to droppath_rate.
        rates = np.linspace(0.0, self.droppath_rate, self.num_layers) if self.num_layers > 1 else np.zeros(1)
        block_cls = Encoder1DBlock
        if self.remat != "none":
            block_cls = nn.remat(Encoder1DBlock, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan)
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
    """Multihead attention pooling: a learned probe attends over the tokens, then x + MLP(LN(x))
    (big_vision's MAP head; timm's AttentionPoolLatent and SigLIP's head compute the same)."""

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    layernorm_epsilon: float = 1e-6
    activation: str = "gelu_tanh"

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, x.shape[-1]), self.param_dtype)
        probe = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x, _ = MultiHeadDotProductAttention(num_heads=self.num_heads, name="MultiHeadDotProductAttention_0", **kw)(
            probe, x
        )
        y = LayerNorm(name="LayerNorm_0", epsilon=self.layernorm_epsilon, **kw)(x)
        mlp = MlpBlock(self.mlp_dim, dropout_rate=0.0, activation=self.activation, name="MlpBlock_0", **kw)
        x = x + mlp(y)
        return x[:, 0]
