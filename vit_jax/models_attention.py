"""Multi-head dot-product attention with the original's parameter layout and three formulations.

The parameters keep the names and shapes of Flax's module of that name (`query`, `key`,
`value`: (D, heads, head_dim); `out`: (heads, head_dim, D)), so checkpoints are the
original's; the computation is chosen per backend (`resolve_attention_impl`): one fused
query-key-value matmul on CPU, `jax.nn.dot_product_attention` on GPU, or plain einsums. With
`relative_grid`, a learned per-head bias indexed by the 2-D offset between patches is added
to the logits (the `relative` position embedding).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models_layers import LayerNorm, self_attention
from vit_jax.models_posemb import apply_rope, relative_position_index

Dtype = Any
ATTENTION_IMPLS = ("auto", "fused", "einsum", "dot_product_attention")


def resolve_attention_impl(impl: str) -> str:
    """The attention formulation to use on this backend.

    On CPU, (batch, heads, tokens, head_dim) operands with batched matmuls measured
    fastest (README, "Speed"); on GPU `jax.nn.dot_product_attention`, with cuDNN's flash
    kernel where it applies (`attention_kernel`) and XLA's elsewhere.
    """
    if impl != "auto":
        return impl
    return "dot_product_attention" if jax.default_backend() == "gpu" else "fused"


# cuDNN's fused (flash) attention in jax.nn.dot_product_attention: half-precision operands, a head
# dimension that is a multiple of 8 up to 128 (the backward pass's limit on Ampere), an Ampere or
# newer GPU (compute capability 8.0), no logit bias in our use (the relative position embedding).
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128


def attention_kernel(dtype, head_dim: int, has_bias: bool, backend: str | None = None, capability=None) -> str | None:
    """`implementation=` for jax.nn.dot_product_attention: 'cudnn' where cuDNN's flash kernel
    applies (see CUDNN_DTYPES), else None (XLA's own)."""
    backend = backend or jax.default_backend()
    if backend != "gpu" or has_bias or jnp.dtype(dtype).name not in CUDNN_DTYPES:
        return None
    if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
        return None
    if capability is None:
        capability = getattr(jax.devices()[0], "compute_capability", "0.0")
    return "cudnn" if float(capability) >= 8.0 else None


def _flat_xavier(in_axes: int):
    """xavier_uniform computed on the kernel flattened to 2-D, as DenseGeneral does."""

    def init(key, shape, dtype=jnp.float32):
        flat = (int(np.prod(shape[:in_axes])), int(np.prod(shape[in_axes:])))
        return nn.initializers.xavier_uniform()(key, flat, dtype).reshape(shape)

    return init


class ProjectionParams(nn.Module):
    """Holds one attention projection's kernel and bias (shapes of DenseGeneral).

    The attention module reads the raw arrays so it can fuse the query, key and
    value projections into one matmul while the tree keeps the original names
    `query`, `key`, `value`, `out`.
    """

    kernel_shape: tuple[int, ...]
    bias_shape: tuple[int, ...]
    in_axes: int
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self):
        kernel = self.param("kernel", _flat_xavier(self.in_axes), self.kernel_shape, self.param_dtype)
        if not self.use_bias:  # EVA-02's key projection: no bias parameter
            return kernel, jnp.zeros(self.bias_shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, self.bias_shape, self.param_dtype)
        return kernel, bias


class MultiHeadDotProductAttention(nn.Module):
    """Multi-head attention with the parameter layout of Flax's module of that name.

    Optional `relative_bias`: a learned (2gh-1, 2gw-1, heads) table of logit biases
    indexed by the 2-D offset between query and key patches (prefix tokens get 0). With
    `qk_norm`, each head's queries and keys go through a LayerNorm (`query_norm`, `key_norm`,
    over the head dimension); with `rope` = (sin, cos) of `models_posemb.rope_tables`, the
    patch tokens' queries and keys are rotated (EVA-02). `key_bias=False` leaves the key
    projection without a bias (EVA-02: under the rotation a key bias is not a constant per query).
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    deterministic: bool = True
    relative_grid: tuple[int, int] | None = None
    num_prefix_tokens: int = 0
    attention_impl: str = "auto"
    qk_norm: bool = False
    layernorm_epsilon: float = 1e-6
    key_bias: bool = True

    @nn.compact
    def __call__(self, inputs_q, inputs_kv=None, *, return_weights: bool = False, rope=None):
        d = inputs_q.shape[-1]
        h = self.num_heads
        if d % h:
            raise ValueError(f"num_heads={h} does not divide hidden_size={d}.")
        dh = d // h
        pkw = dict(param_dtype=self.param_dtype)
        in_proj = [
            ProjectionParams((d, h, dh), (h, dh), 1, use_bias=n != "key" or self.key_bias, name=n, **pkw)()
            for n in ("query", "key", "value")
        ]
        out_k, out_b = ProjectionParams((h, dh, d), (d,), 2, name="out", **pkw)()
        cast = lambda a: jnp.asarray(a, self.dtype)  # noqa: E731
        xq = cast(inputs_q)
        # Fused projections: one (D, 3D) matmul for self-attention, (D, 2D) for k, v.
        if inputs_kv is None:
            w = jnp.concatenate([cast(k).reshape(d, d) for k, _ in in_proj], axis=1)
            b = jnp.concatenate([cast(b).reshape(d) for _, b in in_proj])
            qkv = (xq @ w + b).reshape(*xq.shape[:-1], 3, h, dh)
            q, k, v = (qkv[..., i, :, :] for i in range(3))
        else:
            xkv = cast(inputs_kv)
            (qk, qb), (kk, kb), (vk, vb) = in_proj
            q = (xq @ cast(qk).reshape(d, d) + cast(qb).reshape(d)).reshape(*xq.shape[:-1], h, dh)
            w = jnp.concatenate([cast(kk).reshape(d, d), cast(vk).reshape(d, d)], axis=1)
            b = jnp.concatenate([cast(kb).reshape(d), cast(vb).reshape(d)])
            kv = (xkv @ w + b).reshape(*xkv.shape[:-1], 2, h, dh)
            k, v = kv[..., 0, :, :], kv[..., 1, :, :]
        if self.qk_norm or rope is not None:
            q, k = self._transform_qk(q, k, rope)
            if inputs_kv is None:
                qkv = jnp.stack([q, k, v], axis=-3)
        bias = None
        if self.relative_grid is not None:
            bias = self._relative_bias(k.shape[1]).astype(self.dtype)

        impl = resolve_attention_impl(self.attention_impl)
        dropout = not self.deterministic and self.dropout_rate > 0
        plain = not (return_weights or dropout) and bias is None
        if impl == "fused" and plain and inputs_kv is None and self.dtype == jnp.float32:
            out = self_attention(qkv)  # the same computation, with a hand-written backward pass
            weights = None
        elif impl == "dot_product_attention" and not (return_weights or dropout):
            kernel = attention_kernel(self.dtype, dh, bias is not None)
            out = jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=kernel)
            weights = None
        else:
            if impl == "einsum":  # Flax's formulation, (B, T, H, dh) operands.
                logits = jnp.einsum("bqhd,bkhd->bhqk", q / jnp.sqrt(dh).astype(self.dtype), k)
            else:  # (B, H, T, dh) operands and plain batched matmuls.
                q, k, v = (jnp.transpose(a, (0, 2, 1, 3)) for a in (q, k, v))
                logits = (q / jnp.sqrt(dh).astype(self.dtype)) @ jnp.swapaxes(k, -1, -2)
            if bias is not None:
                logits = logits + bias
            weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
            used = weights
            if dropout:
                keep = 1.0 - self.dropout_rate
                mask = jax.random.bernoulli(self.make_rng("dropout"), keep, weights.shape)
                used = weights * (mask / keep).astype(self.dtype)
            if impl == "einsum":
                out = jnp.einsum("bhqk,bkhd->bqhd", used, v)
            else:
                out = jnp.transpose(used @ v, (0, 2, 1, 3))
        out = out.reshape(*xq.shape[:-1], d) @ cast(out_k).reshape(d, d) + cast(out_b)
        return out, (weights if return_weights else None)

    def _transform_qk(self, q, k, rope):
        """QK-norm, then the rotary embedding, on (B, T, H, dh) queries and keys."""
        if self.qk_norm:
            norm_kw = dict(epsilon=self.layernorm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype)
            q = LayerNorm(name="query_norm", **norm_kw)(q)
            k = LayerNorm(name="key_norm", **norm_kw)(k)
        if rope is not None:
            q = apply_rope(q, *rope, self.num_prefix_tokens)
            k = apply_rope(k, *rope, self.num_prefix_tokens)
        return q, k

    def _relative_bias(self, num_tokens: int):
        gh, gw = self.relative_grid
        table = self.param(
            "relative_bias",
            nn.initializers.normal(stddev=0.02),
            (2 * gh - 1, 2 * gw - 1, self.num_heads),
            self.param_dtype,
        )
        idx = relative_position_index(gh, gw)
        bias = table.reshape(-1, self.num_heads)[idx]  # (N, N, H)
        bias = jnp.transpose(bias, (2, 0, 1))
        p = self.num_prefix_tokens
        if p:
            bias = jnp.pad(bias, ((0, 0), (p, 0), (p, 0)))
        assert bias.shape[-1] == num_tokens, (bias.shape, num_tokens)
        return bias[None]
