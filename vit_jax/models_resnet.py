"""Hybrid stem: a ResNet (v1.5 bottlenecks) whose feature map feeds the ViT.

Numerics follow the original release: weight-standardized convolutions
(standardisation divides by std + 1e-5), GroupNorm with 32 groups, post-activation
bottleneck units and a zero-initialised last GroupNorm scale in every unit, so each
unit starts as the identity on its residual path.

timm's hybrids compute two things differently, and the `resnet` config says so:
`ws_epsilon_in_sqrt=True, ws_epsilon=1e-8` standardises by sqrt(variance + 1e-8), and
`gn_epsilon=1e-5` is their GroupNorm epsilon (the original's is 1e-6).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vit_jax.models_layers import window_conv

Dtype = Any


# The `resnet` config's numerics fields and their defaults (the original's).
NUMERICS = {"ws_epsilon": 1e-5, "ws_epsilon_in_sqrt": False, "gn_epsilon": 1e-6}


def weight_standardize(w, axis, eps: float, eps_in_sqrt: bool = False):
    """Subtracts the mean and divides by (std + eps) over `axis`, or by sqrt(variance + eps)."""
    w = w - jnp.mean(w, axis=axis)
    if eps_in_sqrt:
        return w / jnp.sqrt(jnp.var(w, axis=axis) + eps)
    return w / (jnp.std(w, axis=axis) + eps)


class StdConv(nn.Conv):
    """Convolution with weight standardization.

    The stem builds each one with `conv_general_dilated=window_conv`: lax's convolution with
    the kernel gradient as one matmul on the CPU backend (models_layers.window_conv).

    The kernel is standardised where the conv fetches it, so the layer keeps the
    plain `kernel` parameter of `nn.Conv` (no extra state) and checkpoints store the
    raw weights, as in the original.
    """

    ws_epsilon: float = 1e-5
    ws_epsilon_in_sqrt: bool = False

    def param(self, name: str, init_fn, *init_args, **init_kwargs):
        param = super().param(name, init_fn, *init_args, **init_kwargs)
        if name == "kernel":
            param = weight_standardize(param, [0, 1, 2], self.ws_epsilon, self.ws_epsilon_in_sqrt)
        return param


class ResidualUnit(nn.Module):
    """Bottleneck unit: 1x1 -> 3x3 (strided) -> 1x1, each followed by GroupNorm."""

    features: int
    strides: Sequence[int] = (1, 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    numerics: Any = None  # NUMERICS fields; None: the original's

    @nn.compact
    def __call__(self, x):
        num = {**NUMERICS, **(self.numerics or {})}
        conv = lambda f, k, s, name: StdConv(  # noqa: E731
            features=f,
            kernel_size=k,
            strides=s,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            ws_epsilon=num["ws_epsilon"],
            ws_epsilon_in_sqrt=num["ws_epsilon_in_sqrt"],
            conv_general_dilated=window_conv,
            name=name,
        )
        norm = lambda name, **kw: nn.GroupNorm(  # noqa: E731
            epsilon=num["gn_epsilon"], dtype=self.dtype, param_dtype=self.param_dtype, name=name, **kw
        )
        strides = tuple(self.strides)
        needs_projection = x.shape[-1] != self.features * 4 or strides != (1, 1)

        residual = x
        if needs_projection:
            residual = conv(self.features * 4, (1, 1), strides, "conv_proj")(residual)
            residual = norm("gn_proj")(residual)

        y = conv(self.features, (1, 1), (1, 1), "conv1")(x)
        y = nn.relu(norm("gn1")(y))
        y = conv(self.features, (3, 3), strides, "conv2")(y)
        y = nn.relu(norm("gn2")(y))
        y = conv(self.features * 4, (1, 1), (1, 1), "conv3")(y)
        y = norm("gn3", scale_init=nn.initializers.zeros)(y)
        return nn.relu(residual + y)


class ResNetStage(nn.Module):
    """A stage of `block_size` units; the first one may downsample."""

    block_size: int
    nout: int
    first_stride: Sequence[int]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    numerics: Any = None

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, numerics=self.numerics)
        x = ResidualUnit(self.nout, strides=self.first_stride, name="unit1", **kw)(x)
        for i in range(1, self.block_size):
            x = ResidualUnit(self.nout, strides=(1, 1), name=f"unit{i + 1}", **kw)(x)
        return x


def num_downsamplings(num_layers: Sequence[int]) -> int:
    """Stride-2 layers in the stem: root conv and pool, then every stage after the first."""
    return 2 + max(len(tuple(num_layers)) - 1, 0)


def apply_stem(x, num_layers: Sequence[int], resnet: dict, dtype, param_dtype):
    """Runs the hybrid stem (`resnet`: width_factor and the NUMERICS fields) in the calling
    module's scope.

    Called from inside VisionTransformer's compact `__call__`, so the layers land at
    the top of the tree under the original names `conv_root`, `gn_root`,
    `block{k}/unit{j}/...`.
    """
    num = {k: resnet.get(k, v) for k, v in NUMERICS.items()}
    width = int(64 * resnet.get("width_factor", 1))
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    x = StdConv(
        features=width,
        kernel_size=(7, 7),
        strides=(2, 2),
        use_bias=False,
        ws_epsilon=num["ws_epsilon"],
        ws_epsilon_in_sqrt=num["ws_epsilon_in_sqrt"],
        name="conv_root",
        conv_general_dilated=window_conv,
        **kw,
    )(x)
    x = nn.GroupNorm(epsilon=num["gn_epsilon"], name="gn_root", **kw)(x)
    kw["numerics"] = num
    x = nn.relu(x)
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")
    if num_layers:
        x = ResNetStage(block_size=num_layers[0], nout=width, first_stride=(1, 1), name="block1", **kw)(x)
        for i, block_size in enumerate(num_layers[1:], 1):
            x = ResNetStage(
                block_size=block_size,
                nout=width * 2**i,
                first_stride=(2, 2),
                name=f"block{i + 1}",
                **kw,
            )(x)
    return x
