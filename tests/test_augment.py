"""vit_jax.augment against independent routes: PIL for the photometric RandAugment ops, numpy
slicing and per-pixel loops for the geometric ones and Cutout, and the defining formulas (or
the shape of the changed region) for Mixup, CutMix and random erasing.

Every op is jitted once per (op, magnitude, shape) through one cached jit and reused."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from vit_jax import augment

apply_op = jax.jit(augment.apply_op, static_argnames=("name", "magnitude"))
randaugment = jax.jit(augment.randaugment, static_argnames=("num_layers", "magnitude"))
KEY = jax.random.PRNGKey(0)
KEYS = jax.random.split(jax.random.PRNGKey(1), 8)


def _images():
    """(name, uint8 image (H, W) or (H, W, 3)): full-range noise, and a low-contrast 32x32 one
    (enough pixels for Equalize's step to be nonzero, a narrow range for AutoContrast to stretch)."""
    rng = np.random.default_rng(0)
    out = []
    for mode, channels in (("RGB", (3,)), ("L", ())):
        out.append((f"{mode}-noise", rng.integers(0, 256, (16, 12, *channels), dtype=np.uint8)))
        skewed = 40 + rng.binomial(120, 0.3, (32, 32, *channels))
        out.append((f"{mode}-skewed", skewed.astype(np.uint8)))
    return out


IMAGES = _images()


def _run(x_uint8, name, magnitude, key=KEY):
    """apply_op on a uint8 image given as PIL stores it ((H, W) for 'L'), returned the same way."""
    x = jnp.asarray(x_uint8, jnp.float32)
    if x.ndim == 2:
        x = x[..., None]
    out = np.asarray(apply_op(x, name=name, magnitude=magnitude, rng=key))
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, np.floor(out))
    assert out.min() >= 0 and out.max() <= 255
    return out.reshape(x_uint8.shape)


def _factor(m):
    return m / 10 * 1.8 + 0.1


PIL_OPS = {
    "Invert": lambda im, m: ImageOps.invert(im),
    "Equalize": lambda im, m: ImageOps.equalize(im),
    "Posterize": lambda im, m: ImageOps.posterize(im, int(m / 10 * 4)),
    "Solarize": lambda im, m: ImageOps.solarize(im, int(m / 10 * 256)),
    "Color": lambda im, m: ImageEnhance.Color(im).enhance(_factor(m)),
    "Contrast": lambda im, m: ImageEnhance.Contrast(im).enhance(_factor(m)),
    "Brightness": lambda im, m: ImageEnhance.Brightness(im).enhance(_factor(m)),
    "Sharpness": lambda im, m: ImageEnhance.Sharpness(im).enhance(_factor(m)),
}


def test_op_names():
    assert augment.RANDAUG_OPS == (
        "AutoContrast",
        "Equalize",
        "Invert",
        "Rotate",
        "Posterize",
        "Solarize",
        "Color",
        "Contrast",
        "Brightness",
        "Sharpness",
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "Cutout",
        "SolarizeAdd",
    )
    assert augment.randaug_op_names(3) == augment.RANDAUG_OPS
    gray_ops = augment.randaug_op_names(1)
    assert len(gray_ops) == 15 and "Color" not in gray_ops
    with pytest.raises(ValueError):
        augment.apply_op(jnp.zeros((4, 4, 3)), "Blur", 5, KEY)


@pytest.mark.parametrize("name", sorted(PIL_OPS))
def test_photometric_ops_match_pil_exactly(name):
    # Magnitude 3 blends with a factor below 1 (PIL's interpolation branch), 9 above 1 (its
    # clipped extrapolation); 9 also posterizes to 3 bits and solarizes from 230 up.
    changed = False
    for label, x in IMAGES:
        for m in (3, 9):
            expected = np.asarray(PIL_OPS[name](Image.fromarray(x), m))
            out = _run(x, name, m)
            np.testing.assert_array_equal(out, expected, err_msg=f"{name} m={m} on {label}")
            changed |= not np.array_equal(out, x)
    if name != "Color":  # Color of a gray image is itself, but it must change the RGB ones
        assert changed
    else:
        assert not np.array_equal(_run(IMAGES[0][1], "Color", 9), IMAGES[0][1])


def test_color_and_equalize_cases():
    gray = IMAGES[2][1]
    np.testing.assert_array_equal(_run(gray, "Color", 9), gray)  # 1 channel: no-op, as in PIL
    flat = np.full((16, 16, 3), 77, np.uint8)  # a single level: Equalize and AutoContrast keep it
    np.testing.assert_array_equal(_run(flat, "Equalize", 5), flat)
    np.testing.assert_array_equal(_run(flat, "AutoContrast", 5), flat)
    skewed = IMAGES[1][1]
    assert not np.array_equal(_run(skewed, "Equalize", 5), skewed)


def test_autocontrast_matches_pil_within_one_level():
    # We stretch with exact integers, floor((x - lo) * 255 / (hi - lo)); PIL evaluates
    # x * scale + offset in double precision and truncates, which lands one level lower where the
    # exact value is a whole number but the double falls a hair below it. So: equal to the exact
    # formula, and equal to PIL except at such points, where PIL is exactly one level lower.
    for label, x in IMAGES:
        expected = np.asarray(ImageOps.autocontrast(Image.fromarray(x)))
        out = _run(x, "AutoContrast", 5)
        xi = x.astype(np.int64)
        lo = xi.min(axis=(0, 1), keepdims=True)
        hi = xi.max(axis=(0, 1), keepdims=True)
        exact = (xi - lo) * 255 // (hi - lo)
        np.testing.assert_array_equal(out, exact, err_msg=label)
        diff = out - expected
        assert set(np.unique(diff)) <= {0, 1}, label
        whole = (xi - lo) * 255 % (hi - lo) == 0
        assert np.all(whole[diff == 1]), label
        assert out.min() == 0 and out.max() == 255


def test_posterize_shift_is_clamped_like_tf():
    x = IMAGES[0][1]
    np.testing.assert_array_equal(_run(x, "Posterize", 20), x)  # 8 bits kept
    np.testing.assert_array_equal(_run(x, "Posterize", 30), x)  # "12 bits": shift clamped to 0
    np.testing.assert_array_equal(_run(x, "Posterize", 1), x & 0x80)  # 0 bits: shift clamped to 7


def test_solarize_add_against_loop():
    for _, x in IMAGES:
        for m in (4, 10, 20):
            addition = int(m / 10 * 110)
            expected = x.astype(np.int64).copy()
            for idx in np.ndindex(x.shape):
                if x[idx] < 128:
                    expected[idx] = min(255, int(x[idx]) + addition)
            np.testing.assert_array_equal(_run(x, "SolarizeAdd", m), expected)


def _cutout_loop(x, cy, cx, pad):
    out = x.astype(np.float64).copy()
    for y in range(x.shape[0]):
        for xx in range(x.shape[1]):
            if cy - pad <= y < cy + pad and cx - pad <= xx < cx + pad:
                out[y, xx] = 128
    return out


def test_cutout_against_loop():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 120, (16, 16, 3)).astype(np.uint8)  # no 128s: the box is unambiguous
    # cutout_const 40 for 224 pixels is 40 * 16 / 224 = 2.86 here: magnitude 20 -> half-size 5.
    pad = int(20 / 10 * 40 * 16 / 224)
    assert pad == 5
    sizes = set()
    for key in KEYS:
        out = _run(x, "Cutout", 20, key)
        matches = [
            (cy, cx) for cy in range(16) for cx in range(16) if np.array_equal(out, _cutout_loop(x, cy, cx, pad))
        ]
        assert len(matches) == 1
        sizes.add(int((out[..., 0] == 128).sum()))
    assert len(sizes) > 1  # boxes clipped by the border differ in size


def test_rotate_90_degrees_matches_rot90():
    x = np.random.default_rng(2).integers(0, 256, (9, 9, 3)).astype(np.uint8)
    seen = set()
    for key in KEYS:
        out = _run(x, "Rotate", 30, key)  # 30 / 10 * 30 = 90 degrees, in a random direction
        hits = [k for k in (1, -1) if np.array_equal(out, np.rot90(x, k, axes=(0, 1)))]
        assert len(hits) == 1
        seen.add(hits[0])
    assert seen == {1, -1}


@pytest.mark.parametrize("axis_name", ["TranslateX", "TranslateY"])
def test_translate_whole_pixels(axis_name):
    x = np.random.default_rng(3).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    # translate_const 100 for 224 pixels: magnitude 7 on a 16-pixel image is 7 / 10 * 100 * 16 / 224 = 5.
    shift = 5
    axis = 1 if axis_name == "TranslateX" else 0

    def shifted(sign):
        out = np.full(x.shape, 128.0)
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        if sign > 0:
            src[axis], dst[axis] = slice(0, 16 - shift), slice(shift, 16)
        else:
            src[axis], dst[axis] = slice(shift, 16), slice(0, 16 - shift)
        out[tuple(dst)] = x[tuple(src)]
        return out

    seen = set()
    for key in KEYS:
        out = _run(x, axis_name, 7, key)
        hits = [s for s in (1, -1) if np.array_equal(out, shifted(s))]
        assert len(hits) == 1
        seen.add(hits[0])
    assert seen == {1, -1}


def _round_half_away(v):
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def _warp_loop(x, a, b):
    """Output (x, y) <- input (a0 x + a1 y + a2, b0 x + b1 y + b2), nearest pixel (ties away from
    zero, as TF's kernel), evaluated in float32 as that kernel does; 128 from outside the image."""
    a = [np.float32(v) for v in a]
    b = [np.float32(v) for v in b]
    h, w = x.shape[:2]
    out = np.full(x.shape, 128.0)
    for y in range(h):
        for xx in range(w):
            fx, fy = np.float32(xx), np.float32(y)
            sx = _round_half_away(float(a[0] * fx + a[1] * fy + a[2]))
            sy = _round_half_away(float(b[0] * fx + b[1] * fy + b[2]))
            if 0 <= sx < w and 0 <= sy < h:
                out[y, xx] = x[sy, sx]
    return out


@pytest.mark.parametrize("name", ["ShearX", "ShearY"])
def test_shear_against_loop(name):
    x = np.random.default_rng(4).integers(0, 256, (12, 10, 3)).astype(np.uint8)
    level = 7 / 10 * 0.3
    seen = set()
    for key in KEYS:
        out = _run(x, name, 7, key)
        hits = []
        for sign in (1, -1):
            if name == "ShearX":
                ref = _warp_loop(x, (1, sign * level, 0), (0, 1, 0))
            else:
                ref = _warp_loop(x, (1, 0, 0), (sign * level, 1, 0))
            if np.array_equal(out, ref):
                hits.append(sign)
        assert len(hits) == 1
        seen.add(hits[0])
    assert seen == {1, -1}


def test_rotate_general_angle_against_loop():
    x = np.random.default_rng(5).integers(0, 256, (12, 10, 3)).astype(np.uint8)
    theta = 7 / 10 * 30 * math.pi / 180
    c = np.float32(math.cos(theta))
    h1, w1 = np.float32(11), np.float32(9)
    refs = {}
    for sign in (1, -1):
        s = np.float32(sign * math.sin(theta))
        dx = (w1 - (c * w1 - s * h1)) / np.float32(2)
        dy = (h1 - (s * w1 + c * h1)) / np.float32(2)
        refs[sign] = _warp_loop(x, (c, -s, dx), (s, c, dy))
    for key in KEYS[:4]:
        out = _run(x, "Rotate", 7, key)
        assert any(np.array_equal(out, r) for r in refs.values())


def _rgb_batch(n, shape=(16, 16, 3), seed=6):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, *shape)), jnp.float32)


def test_randaugment_zero_layers_is_identity():
    x = _rgb_batch(1)[0]
    np.testing.assert_array_equal(np.asarray(randaugment(x, KEY, num_layers=0, magnitude=10.0)), x)


def _check_drawn_ops(images, keys, outs, num_layers, magnitude):
    """Each output equals the ops `randaug_choices` says its key drew, applied one by one."""
    names = augment.randaug_op_names(images.shape[-1])
    drawn = set()
    for image, key, out in zip(images, keys, outs, strict=True):
        out = np.asarray(out)
        assert out.shape == image.shape and out.dtype == np.float32
        np.testing.assert_array_equal(out, np.floor(out))
        assert out.min() >= 0 and out.max() <= 255
        indices, op_keys = augment.randaug_choices(key, num_layers, len(names))
        expected = image
        for index, op_key in zip(np.asarray(indices), op_keys, strict=True):
            drawn.add(names[index])
            expected = apply_op(expected, name=names[index], magnitude=magnitude, rng=op_key)
        np.testing.assert_array_equal(out, np.asarray(expected))
    return drawn


def test_randaugment_equals_drawn_ops_vmapped_rgb():
    # Shape and magnitude as in the PIL tests, so most single-op programs are already compiled.
    images = _rgb_batch(len(KEYS), (16, 12, 3))
    keys = jax.random.split(jax.random.key(3), len(KEYS))  # new-style typed keys
    outs = jax.jit(jax.vmap(lambda im, k: augment.randaugment(im, k, 3, 9.0)))(images, keys)
    assert len(_check_drawn_ops(images, keys, outs, 3, 9.0)) > 5


def test_randaugment_equals_drawn_ops_gray():
    images = _rgb_batch(len(KEYS), (16, 12, 1))
    outs = [randaugment(image, key, num_layers=3, magnitude=9.0) for image, key in zip(images, KEYS, strict=True)]
    drawn = _check_drawn_ops(images, KEYS, outs, 3, 9.0)
    assert len(drawn) > 5 and "Color" not in drawn


def test_gray_images_never_get_color():
    # Over many draws, the indices for a 1-channel image only ever name the 15 other ops.
    names = augment.randaug_op_names(1)
    indices, keys = augment.randaug_choices(KEY, 3000, len(names))
    assert keys.shape[0] == 3000
    assert set(np.unique(np.asarray(indices))) == set(range(len(names)))
    assert "Color" not in names


# ---------------------------------------------------------------------------------------------
# Mixup / CutMix

B, K = 6, 5
LABELS = np.array([0, 1, 2, 3, 4, 1])  # each label differs from the previous one (cyclically)


def _batch():
    images = jnp.asarray(np.random.default_rng(7).normal(size=(B, 8, 10, 3)), jnp.float32)
    targets = jax.nn.one_hot(LABELS, K)
    return images, targets


def _lam_from_targets(targets):
    """The weight each example kept of itself, read off its own label's column."""
    targets = np.asarray(targets)
    lams = targets[np.arange(B), LABELS]
    np.testing.assert_allclose(targets[np.arange(B), np.roll(LABELS, 1)], 1 - lams, atol=1e-6)
    np.testing.assert_allclose(lams, lams[0], atol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    return float(lams[0])


def _assert_mixup(images, targets, out_images, out_targets):
    lam = _lam_from_targets(out_targets)
    assert 0.5 <= lam <= 1.0
    expected = lam * np.asarray(images) + (1 - lam) * np.roll(np.asarray(images), 1, axis=0)
    np.testing.assert_allclose(np.asarray(out_images), expected, rtol=1e-5, atol=1e-5)
    return lam


def _assert_cutmix(images, targets, out_images, out_targets):
    """The changed pixels are one rectangle shared by the batch, holding the partner's pixels,
    and cover 1 - lam of the image; returns its area fraction."""
    lam = _lam_from_targets(out_targets)
    images, out_images = np.asarray(images), np.asarray(out_images)
    changed = np.any(out_images != images, axis=-1)  # (B, H, W)
    assert np.all(changed == changed[0])
    mask = changed[0]
    partner = np.roll(images, 1, axis=0)
    np.testing.assert_array_equal(out_images[:, mask], partner[:, mask])
    np.testing.assert_array_equal(out_images[:, ~mask], images[:, ~mask])
    if mask.any():
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        assert mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
        assert mask.sum() == len(rows) * len(cols)
    np.testing.assert_allclose(mask.mean(), 1 - lam, atol=1e-6)
    return mask.mean()


def _kind(images, targets, out):
    """Which of unchanged / Mixup / CutMix produced `out`, after checking that one's invariants."""
    out_images, out_targets = out
    if np.array_equal(np.asarray(out_targets), np.asarray(targets)):
        np.testing.assert_array_equal(np.asarray(out_images), np.asarray(images))
        return "same"
    if np.all(np.asarray(out_images) != np.asarray(images)):
        _assert_mixup(images, targets, *out)
        return "mixup"
    _assert_cutmix(images, targets, *out)
    return "cutmix"


def test_mixup():
    images, targets = _batch()
    lams = [_assert_mixup(images, targets, *augment.mixup(images, targets, key, alpha=0.4)) for key in KEYS]
    assert len(set(lams)) == len(lams)


def test_cutmix():
    images, targets = _batch()
    areas = [_assert_cutmix(images, targets, *augment.cutmix(images, targets, key, alpha=1.0)) for key in KEYS]
    assert sum(a > 0 for a in areas) >= len(KEYS) // 2 and len(set(areas)) > 2


def test_mix_batch_branches():
    images, targets = _batch()
    both = {"mixup_alpha": 0.5, "cutmix_alpha": 1.0}
    for key in KEYS[:4]:
        out = augment.mix_batch(images, targets, key, **both, prob=0.0)
        assert out[0] is images and out[1] is targets
        assert _kind(images, targets, augment.mix_batch(images, targets, key, **both, switch_prob=0.0)) == "mixup"
        kind = _kind(images, targets, augment.mix_batch(images, targets, key, **both, switch_prob=1.0))
        assert kind in ("cutmix", "same")  # "same": a box that rounds to nothing
        kind = _kind(images, targets, augment.mix_batch(images, targets, key, mixup_alpha=0.5, cutmix_alpha=0.0))
        assert kind == "mixup"
        kind = _kind(images, targets, augment.mix_batch(images, targets, key, mixup_alpha=0.0, cutmix_alpha=1.0))
        assert kind in ("cutmix", "same")
    out = augment.mix_batch(images, targets, KEY, mixup_alpha=0.0, cutmix_alpha=0.0)
    assert out[0] is images and out[1] is targets


def test_mix_batch_jit_and_probabilities():
    # prob 0.5, switch_prob 0.5 under jit and vmap over 40 keys: about 20 batches left alone,
    # 10 mixed up, 10 cut and mixed; each one checked against its rule.
    images, targets = _batch()
    f = jax.jit(jax.vmap(lambda k: augment.mix_batch(images, targets, k, mixup_alpha=0.5, cutmix_alpha=1.0, prob=0.5)))
    all_images, all_targets = f(jax.random.split(KEY, 40))
    kinds = [_kind(images, targets, out) for out in zip(all_images, all_targets, strict=True)]
    counts = {kind: kinds.count(kind) for kind in ("same", "mixup", "cutmix")}
    assert 8 <= counts["same"] <= 32 and counts["mixup"] >= 3 and counts["cutmix"] >= 3, counts


# ---------------------------------------------------------------------------------------------
# Random erasing

AREA_RANGE, ASPECT_RANGE = (0.02, 1 / 3), (0.3, 3.3)


# prob is traced here: one program serves both tests.
erase = jax.jit(
    jax.vmap(lambda im, k, prob: augment.random_erase(im, k, prob, AREA_RANGE, ASPECT_RANGE), in_axes=(0, 0, None))
)
ERASE_IMAGES = jnp.asarray(np.random.default_rng(8).uniform(-1, 1, (len(KEYS), 16, 12, 3)), jnp.float32)


def test_random_erase_prob_zero_is_identity():
    np.testing.assert_array_equal(np.asarray(erase(ERASE_IMAGES, KEYS, 0.0)), np.asarray(ERASE_IMAGES))


def test_random_erase_one_rectangle():
    height, width = ERASE_IMAGES.shape[1:3]
    images = ERASE_IMAGES
    outs = np.asarray(erase(images, KEYS, 1.0))
    shapes, noise = set(), []
    for image, out in zip(np.asarray(images), outs, strict=True):
        changed = out != image
        mask = changed.any(axis=-1)
        assert np.all(changed == mask[..., None])  # every channel of an erased pixel is new noise
        np.testing.assert_array_equal(out[~mask], image[~mask])
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        h, w = len(rows), len(cols)
        assert h > 0 and mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all() and mask.sum() == h * w
        assert h < height and w < width
        # h and w are the rounded sqrt(area * aspect) and sqrt(area / aspect), so the drawn area
        # lies in [(h - 0.5)(w - 0.5), (h + 0.5)(w + 0.5)], which must meet the allowed range.
        assert (h - 0.5) * (w - 0.5) <= AREA_RANGE[1] * height * width
        assert (h + 0.5) * (w + 0.5) >= AREA_RANGE[0] * height * width
        shapes.add((h, w))
        noise.append(out[mask].ravel())
    assert len(shapes) > 2
    noise = np.concatenate(noise)  # standard normal fill: pooled moments near 0 and 1
    assert abs(noise.mean()) < 0.2 and 0.8 < noise.std() < 1.2
