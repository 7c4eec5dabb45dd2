"""The hand-written backward passes of vit_jax/models_layers.py.

Forward passes must be bitwise those of the Flax modules they stand in for; gradients are
checked against autodiff of those modules and against float64 central differences.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturb, tiny_config

from vit_jax import models
from vit_jax.models_attention import MultiHeadDotProductAttention
from vit_jax.models_layers import LayerNorm, layer_norm, patch_conv, self_attention, window_conv


def _normal(seed, shape, scale=1.0, shift=0.0):
    return jax.random.normal(jax.random.PRNGKey(seed), shape) * scale + shift


def _grads(module, params, x, cotangent):
    def loss(p, x):
        return jnp.sum(module.apply(p, x).astype(jnp.float32) * cotangent)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)


def _model_value_and_grads(model, params, images):
    """A scalar of a whole model's logits and its gradient, compiled afresh at each call (so a
    monkeypatched layer takes effect)."""
    f = lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, images, train=False)))  # noqa: E731
    return jax.jit(jax.value_and_grad(f))(params)


def _assert_trees_close(a, b, tol):
    """Leaf by leaf, within `tol` of the largest reference gradient: some leaves are zero
    in exact arithmetic (a key bias does not change a softmax) and hold rounding only."""
    scale = max(float(jnp.max(jnp.abs(v.astype(jnp.float32)))) for v in jax.tree.leaves(b))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert u.shape == v.shape and u.dtype == v.dtype
        u, v = np.asarray(u, np.float32), np.asarray(v, np.float32)
        if tol == 0:
            np.testing.assert_array_equal(u, v)
        else:
            np.testing.assert_allclose(u, v, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_forward_is_flax_bitwise_and_gradients_agree(dtype):
    x = _normal(0, (3, 7, 32), 3.0, 1.5).astype(dtype)
    ours, flax_ln = LayerNorm(epsilon=1e-6, dtype=dtype), nn.LayerNorm(epsilon=1e-6, dtype=dtype)
    params = perturb(flax_ln.init(jax.random.PRNGKey(1), x), scale=0.3)
    assert jax.tree.structure(ours.init(jax.random.PRNGKey(1), x)) == jax.tree.structure(params)
    y = jax.jit(ours.apply)(params, x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(jax.jit(flax_ln.apply)(params, x), np.float32))
    ct = _normal(2, x.shape)
    _assert_trees_close(
        _grads(ours, params, x, ct), _grads(flax_ln, params, x, ct), 1e-5 if dtype == jnp.float32 else 1e-2
    )


def test_layer_norm_gradient_matches_central_differences():
    rng = np.random.default_rng(0)
    x, scale, bias, ct = rng.normal(size=(4, 6)), rng.normal(size=6), rng.normal(size=6), rng.normal(size=(4, 6))

    def f64(x, s, b):  # the definition, in float64
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * s + b

    def loss(*args):
        return float(np.sum(f64(*args) * ct))

    grads = jax.grad(lambda *a: jnp.sum(layer_norm(*a, 1e-6) * ct), argnums=(0, 1, 2))(
        *(jnp.asarray(a, jnp.float32) for a in (x, scale, bias))
    )
    for i, g in enumerate(grads):
        args = [x, scale, bias]
        numeric = np.zeros_like(args[i])
        for idx in np.ndindex(args[i].shape):
            hi, lo = [a.copy() for a in args], [a.copy() for a in args]
            hi[i][idx] += 1e-6
            lo[i][idx] -= 1e-6
            numeric[idx] = (loss(*hi) - loss(*lo)) / 2e-6
        np.testing.assert_allclose(np.asarray(g), numeric, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels,patch", [(1, 4), (3, 7)])
def test_patch_conv_forward_is_lax_bitwise_and_gradients_agree(channels, patch):
    x = _normal(0, (2, 28, 28, channels))
    ours = nn.Conv(16, (patch, patch), strides=(patch, patch), padding="VALID", conv_general_dilated=patch_conv)
    plain = nn.Conv(16, (patch, patch), strides=(patch, patch), padding="VALID")
    params = plain.init(jax.random.PRNGKey(1), x)
    _assert_trees_close(ours.init(jax.random.PRNGKey(1), x), params, 0.0)
    np.testing.assert_array_equal(jax.jit(ours.apply)(params, x), jax.jit(plain.apply)(params, x))
    ct = _normal(2, (2, 28 // patch, 28 // patch, 16))
    # Both the kernel's and the input's gradient (a hybrid's stem is trained through it).
    _assert_trees_close(_grads(ours, params, x, ct), _grads(plain, params, x, ct), 1e-5)


def test_patch_conv_kernel_gradient_by_hand():
    # One 2x2 patch per image, one output channel: dL/dkernel = sum over images of ct * patch.
    x = jnp.arange(2 * 2 * 2 * 1, dtype=jnp.float32).reshape(2, 2, 2, 1)
    ct = jnp.array([1.0, -2.0])
    conv = lambda k: patch_conv(x, k, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    g = jax.grad(lambda k: jnp.sum(conv(k)[:, 0, 0, 0] * ct))(jnp.ones((2, 2, 1, 1)))
    np.testing.assert_array_equal(
        g[..., 0, 0], np.array([[0.0, 1.0], [2.0, 3.0]]) - 2 * np.array([[4.0, 5.0], [6.0, 7.0]])
    )


def test_other_convolutions_are_left_to_lax():
    x = _normal(0, (2, 9, 9, 3))
    for kw in (dict(strides=(1, 1), padding="SAME"), dict(strides=(2, 2), padding="VALID")):
        ours, plain = (nn.Conv(4, (3, 3), conv_general_dilated=c, **kw) for c in (patch_conv, None))
        params = plain.init(jax.random.PRNGKey(1), x)
        np.testing.assert_array_equal(ours.apply(params, x), plain.apply(params, x))
        ct = _normal(2, plain.apply(params, x).shape)
        _assert_trees_close(_grads(ours, params, x, ct), _grads(plain, params, x, ct), 0.0)


@pytest.mark.parametrize(
    "shape,kernel,stride,padding",
    [
        ((2, 28, 28, 1), 7, 2, "SAME"),  # the hybrid's root on a 1-channel image
        ((2, 32, 32, 3), 7, 2, "SAME"),
        ((2, 9, 11, 3), 3, 2, "VALID"),
        ((2, 10, 10, 2), 3, 2, ((1, 2), (0, 1))),
        ((2, 7, 7, 8), 3, 1, "SAME"),  # a bottleneck's 3x3
        ((2, 7, 7, 8), 1, 1, "VALID"),  # and its 1x1 convolutions
        ((2, 8, 8, 8), 1, 2, "VALID"),  # a strided projection
    ],
)
def test_window_conv_forward_is_lax_bitwise_and_gradients_agree(shape, kernel, stride, padding):
    x = _normal(0, shape)
    kw = dict(strides=(stride, stride), padding=padding, use_bias=False)
    ours = nn.Conv(8, (kernel, kernel), conv_general_dilated=window_conv, **kw)
    plain = nn.Conv(8, (kernel, kernel), **kw)
    params = plain.init(jax.random.PRNGKey(1), x)
    np.testing.assert_array_equal(jax.jit(ours.apply)(params, x), jax.jit(plain.apply)(params, x))
    ct = _normal(2, plain.apply(params, x).shape)
    (gk, gx), (rk, rx) = _grads(ours, params, x, ct), _grads(plain, params, x, ct)
    _assert_trees_close(gk, rk, 1e-5)
    _assert_trees_close(gx, rx, 0.0)  # the input gradient is lax's own transpose


@pytest.mark.parametrize(
    "padding,pixel,window",
    [
        # 5x5 input holding 5 * row + col, 3x3 kernel, stride 2. VALID: output (1, 0) sees rows
        # 2-4 and columns 0-2. SAME pads one row and column on each side: output (0, 0) sees
        # rows and columns -1 to 1, the first of each being padding.
        ("VALID", (1, 0), [[10, 11, 12], [15, 16, 17], [20, 21, 22]]),
        ("SAME", (0, 0), [[0, 0, 0], [0, 0, 1], [0, 5, 6]]),
    ],
)
def test_window_conv_kernel_gradient_by_hand(padding, pixel, window):
    x = jnp.arange(25, dtype=jnp.float32).reshape(1, 5, 5, 1)
    dn = ("NHWC", "HWIO", "NHWC")

    def pick(k):  # one output pixel with cotangent 1: dL/dkernel is that pixel's window
        return window_conv(x, k, (2, 2), padding, dimension_numbers=dn)[0, pixel[0], pixel[1], 0]

    g = jax.grad(pick)(jnp.ones((3, 3, 1, 1)))
    np.testing.assert_array_equal(g[..., 0, 0], np.array(window, np.float32))


def test_window_conv_leaves_dilated_and_grouped_convolutions_to_lax():
    x = _normal(0, (2, 9, 9, 4))
    for kw in (dict(kernel_dilation=(2, 2)), dict(feature_group_count=2), dict(input_dilation=(2, 2))):
        ours, plain = (
            nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), conv_general_dilated=c, **kw) for c in (window_conv, None)
        )
        params = plain.init(jax.random.PRNGKey(1), x)
        ct = _normal(2, plain.apply(params, x).shape)
        _assert_trees_close(_grads(ours, params, x, ct), _grads(plain, params, x, ct), 0.0)


def test_hybrid_gradients_agree_with_lax_convolutions(monkeypatch):
    # The root and one bottleneck unit: every kind of convolution of the stem (7x7 strided,
    # 3x3, 1x1, the projection), each with its kernel gradient through window_conv.
    cfg = tiny_config(patches={"size": (1, 1)}, resnet=dict(num_layers=(1,), width_factor=0.5))
    model = models.VisionTransformer(num_classes=5, **cfg)
    images = _normal(0, (2, 16, 16, 3))
    params = perturb(model.init(jax.random.PRNGKey(0), images, train=False)["params"], scale=0.2)

    value, grads = _model_value_and_grads(model, params, images)
    from vit_jax import models_resnet

    monkeypatch.setattr(models_resnet, "window_conv", jax.lax.conv_general_dilated)
    ref_value, ref_grads = _model_value_and_grads(model, params, images)
    assert value == ref_value
    _assert_trees_close(grads, ref_grads, 1e-5)


def test_self_attention_is_the_autodiff_path_forward_bitwise_and_backward_close():
    x = _normal(0, (3, 11, 32))
    mha = MultiHeadDotProductAttention(num_heads=4, attention_impl="fused")
    params = perturb(mha.init(jax.random.PRNGKey(1), x), scale=0.5)

    def ours(p, x):
        return mha.apply(p, x)[0]

    def autodiff(p, x):  # asking for the weights takes the same formulation with plain autodiff
        return mha.apply(p, x, return_weights=True)[0]

    np.testing.assert_array_equal(jax.jit(ours)(params, x), jax.jit(autodiff)(params, x))
    ct = _normal(2, x.shape)
    grad = lambda f: jax.jit(jax.grad(lambda p, x: jnp.sum(f(p, x) * ct), argnums=(0, 1)))(params, x)  # noqa: E731
    _assert_trees_close(grad(ours), grad(autodiff), 1e-5)


def test_self_attention_gradient_matches_float64_reference():
    rng = np.random.default_rng(0)
    qkv, ct = rng.normal(size=(2, 5, 3, 2, 4)), rng.normal(size=(2, 5, 2, 4))

    def loss(qkv):  # softmax(q k^T / sqrt(d)) v in float64
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return float(np.sum(np.einsum("bhqk,bkhd->bqhd", p, v) * ct))

    g = jax.grad(lambda a: jnp.sum(self_attention(a) * ct))(jnp.asarray(qkv, jnp.float32))
    numeric = np.zeros_like(qkv)
    for idx in np.ndindex(qkv.shape):
        hi, lo = qkv.copy(), qkv.copy()
        hi[idx] += 1e-6
        lo[idx] -= 1e-6
        numeric[idx] = (loss(hi) - loss(lo)) / 2e-6
    np.testing.assert_allclose(np.asarray(g), numeric, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("overrides", [{}, {"classifier": "gap", "scan": True, "remat": "full"}])
def test_vit_gradients_agree_with_flax_layers(overrides, monkeypatch):
    cfg = tiny_config(**overrides)
    model = models.VisionTransformer(num_classes=5, **cfg)
    images = _normal(0, (2, 32, 32, 3))
    params = perturb(model.init(jax.random.PRNGKey(0), images, train=False)["params"], scale=0.2)

    value, grads = _model_value_and_grads(model, params, images)
    # The same model built from Flax's own LayerNorm and convolution and autodiff attention.
    from vit_jax import models_attention, models_blocks, models_layers, models_vit

    monkeypatch.setattr(models_vit, "LayerNorm", nn.LayerNorm)
    monkeypatch.setattr(models_blocks, "LayerNorm", nn.LayerNorm)
    monkeypatch.setattr(models_vit, "patch_conv", jax.lax.conv_general_dilated)
    monkeypatch.setattr(models_attention, "self_attention", lambda qkv: models_layers._attention_forward(qkv)[0])
    ref_value, ref_grads = _model_value_and_grads(model, params, images)
    assert value == ref_value
    _assert_trees_close(grads, ref_grads, 1e-5)
