"""LayerNorm, attention and the convolutions, with hand-written gradients.

`LayerNorm` replaces `nn.LayerNorm`, and `patch_conv` is handed to `nn.Conv` as its
convolution. Both compute exactly what Flax computes in the forward pass (the same operations
in the same order, so logits are bitwise those of the Flax modules and of the original
release) and keep the parameter names, shapes and initializers. Only the backward pass
differs. Autodiff of Flax's LayerNorm goes through its E[x^2] - E[x]^2 statistics and runs
as many small reductions, and XLA's CPU backend computes a strided convolution's kernel
gradient as a dilated convolution; here they are a few fused element-wise passes and one
matmul (`BENCHMARKS.md`, "Small models"). `self_attention` is the same for the core of
attention, and `window_conv` for the kernel gradients of the hybrid's ResNet stem on CPU.
Gradients agree with autodiff to float32 rounding (tests/test_models_layers.py).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any


def _layer_norm_forward(x, scale, bias, epsilon):
    # Flax's fast-variance statistics and normalisation, in its order of operations.
    mu = jnp.mean(x, -1, keepdims=True)
    mu2 = jnp.mean(lax.square(x), -1, keepdims=True)
    var = jnp.maximum(0.0, mu2 - lax.square(mu))
    centred = x - mu
    rstd = lax.rsqrt(var + epsilon)
    return centred * (rstd * scale) + bias, (centred, rstd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, epsilon):
    """LayerNorm over the last axis of float32 `x`, with (D,) `scale` and `bias`."""
    return _layer_norm_forward(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, epsilon):
    y, (centred, rstd) = _layer_norm_forward(x, scale, bias, epsilon)
    return y, (centred, rstd, scale)


def _layer_norm_bwd(epsilon, res, g):
    del epsilon
    centred, rstd, scale = res
    xhat = centred * rstd
    gs = g * scale
    # d/dx of (x - mean) / std: remove the mean of the incoming gradient and its
    # component along the normalised input, then divide by the standard deviation.
    dx = rstd * (gs - jnp.mean(gs, -1, keepdims=True) - xhat * jnp.mean(gs * xhat, -1, keepdims=True))
    rows = tuple(range(g.ndim - 1))
    return dx, jnp.sum(g * xhat, rows), jnp.sum(g, rows)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """`nn.LayerNorm` over the last axis (its `scale` and `bias`, statistics in float32)."""

    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (d,), self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        f32 = jnp.promote_types(jnp.result_type(x, scale, bias), jnp.float32)
        y = layer_norm(x.astype(f32), scale.astype(f32), bias.astype(f32), self.epsilon)
        return y.astype(dtype)


def _plain_nhwc(lhs, rhs, kw) -> bool:
    """Whether lax.conv_general_dilated's keyword arguments `kw` ask for the convolution the
    hand-written gradients handle: NHWC input, HWIO kernel, no dilation, one group."""
    dilations = tuple(kw.get("lhs_dilation") or ()) + tuple(kw.get("rhs_dilation") or ())
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    return (
        all(d == 1 for d in dilations)
        and kw.get("feature_group_count", 1) == 1
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, kw.get("dimension_numbers")) == nhwc
    )


def patch_conv(lhs, rhs, window_strides, padding, **kw):
    """`lax.conv_general_dilated` (same arguments) for `nn.Conv(conv_general_dilated=...)` when
    the convolution cuts the image into patches (stride equal to the kernel size, VALID, no
    dilation, NHWC); any other convolution goes to lax unchanged."""
    patches = (
        tuple(window_strides) == tuple(rhs.shape[:2])
        and padding == "VALID"
        and _plain_nhwc(lhs, rhs, kw)
        and lhs.shape[1] % rhs.shape[0] == 0
        and lhs.shape[2] % rhs.shape[1] == 0
    )
    if not patches:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kw)
    return _patch_conv(lhs, rhs, tuple(window_strides), tuple(sorted(kw.items())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _patch_conv(x, kernel, strides, kw):
    return lax.conv_general_dilated(x, kernel, strides, "VALID", **dict(kw))


def _patch_conv_fwd(x, kernel, strides, kw):
    return _patch_conv(x, kernel, strides, kw), (x, kernel)


def _patch_conv_bwd(strides, kw, res, g):
    del strides, kw
    x, kernel = res
    ph, pw, c, d = kernel.shape
    n, h, w, _ = x.shape
    # Each output pixel is one (ph * pw * c) patch times the flattened kernel: both
    # gradients are single matmuls over the patches.
    patches = jnp.transpose(x.reshape(n, h // ph, ph, w // pw, pw, c), (0, 1, 3, 2, 4, 5)).reshape(-1, ph * pw * c)
    g2 = g.reshape(-1, d)
    dkernel = (patches.T @ g2).reshape(kernel.shape)
    dpatches = (g2 @ kernel.reshape(-1, d).T).reshape(n, h // ph, w // pw, ph, pw, c)
    dx = jnp.transpose(dpatches, (0, 1, 3, 2, 4, 5)).reshape(x.shape)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_patch_conv.defvjp(_patch_conv_fwd, _patch_conv_bwd)


def window_conv(lhs, rhs, window_strides, padding, **kw):
    """`lax.conv_general_dilated` (same arguments) for `nn.Conv(conv_general_dilated=...)` whose
    kernel gradient is one matmul over explicitly gathered windows (NHWC, HWIO, no dilation,
    one group, on the CPU backend); any other convolution, or any on another backend, goes to
    lax unchanged.

    The hybrid's ResNet stem uses it. XLA's CPU backend computes a convolution's kernel gradient
    as a convolution over the whole feature map with batch and features swapped, which ran 20
    to 50 times slower than the forward convolution at the Fashion-MNIST hybrid's sizes
    (BENCHMARKS.md, "The hybrid's stem"). The forward pass and the input gradient are lax's
    own; only the kernel gradient is computed differently (the same sum in another order).
    The gathered windows hold (kh * kw) / (sh * sw) times the input, so accelerators, whose
    convolutions have no such problem, keep lax's gradient.
    """
    windows = jax.default_backend() == "cpu" and _plain_nhwc(lhs, rhs, kw)
    if not windows:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kw)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    pads = tuple(tuple(int(v) for v in p) for p in padding)
    return _window_conv(lhs, rhs, tuple(window_strides), pads, tuple(sorted(kw.items())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _window_conv(x, kernel, strides, pads, kw):
    return lax.conv_general_dilated(x, kernel, strides, pads, **dict(kw))


def _window_conv_fwd(x, kernel, strides, pads, kw):
    return _window_conv(x, kernel, strides, pads, kw), (x, kernel)


def _window_conv_bwd(strides, pads, kw, res, g):
    x, kernel = res
    kh, kw_, c, d = kernel.shape
    n, ho, wo, _ = g.shape
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    # Window (i, j) of every output pixel: the padded input from (i, j) on, every stride-th row
    # and column. Stacked as (N, Ho, Wo, kh, kw, C), each row is one output pixel's receptive
    # field in the kernel's (kh, kw, C) order, so the kernel gradient is one matmul.
    windows = jnp.stack(
        [
            lax.slice(xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
            for i in range(kh)
            for j in range(kw_)
        ],
        axis=3,
    ).reshape(-1, kh * kw_ * c)
    dkernel = (windows.T @ g.reshape(-1, d)).reshape(kernel.shape)
    # The input gradient is lax's own transpose of the convolution (dropped by XLA when, as for
    # the stem's first convolution, nothing asks for it).
    _, vjp_x = jax.vjp(lambda x: lax.conv_general_dilated(x, kernel, strides, pads, **dict(kw)), x)
    (dx,) = vjp_x(g)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_window_conv.defvjp(_window_conv_fwd, _window_conv_bwd)


def _attention_forward(qkv):
    # The fused formulation of models_attention: (B, H, T, dh) operands, batched matmuls.
    q, k, v = (jnp.transpose(qkv[..., i, :, :], (0, 2, 1, 3)) for i in range(3))
    dh = q.shape[-1]
    logits = (q / jnp.sqrt(dh).astype(q.dtype)) @ jnp.swapaxes(k, -1, -2)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.transpose(weights @ v, (0, 2, 1, 3)), (q, k, v, weights)


@jax.custom_vjp
def self_attention(qkv):
    """Softmax attention of float32 (B, T, 3, H, dh) queries, keys and values -> (B, T, H, dh)."""
    return _attention_forward(qkv)[0]


def _self_attention_bwd(res, g):
    q, k, v, weights = res
    inv = 1.0 / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    dout = jnp.transpose(g, (0, 2, 1, 3))
    dv = jnp.swapaxes(weights, -1, -2) @ dout
    dweights = dout @ jnp.swapaxes(v, -1, -2)
    dlogits = weights * (dweights - jnp.sum(dweights * weights, -1, keepdims=True))
    dq = (dlogits @ k) * inv
    dk = jnp.swapaxes(dlogits, -1, -2) @ (q * inv)
    # One (B, T, 3, H, dh) gradient, instead of three padded slices summed.
    return (jnp.stack([jnp.transpose(d, (0, 2, 1, 3)) for d in (dq, dk, dv)], axis=2),)


self_attention.defvjp(_attention_forward, _self_attention_bwd)  # its residuals are what the backward needs
