"""On-device augmentation in pure JAX: RandAugment, Mixup/CutMix and random erasing.

Everything here is traced inside the jitted train step, keyed by a JAX PRNG key: shapes are
static, random choices go through `jnp.where` or `jax.lax.switch`, and the per-image functions
vmap. Doing augmentation on the device keeps the host input pipeline trivial and makes a
resumed run draw exactly the augmentations it would have drawn.

RandAugment follows big_vision's `distort_image_with_randaugment` (`big_vision/pp/autoaugment.py`),
which trained the AugReg checkpoints, so that `randaug(num_layers, magnitude)` settings from that
paper mean the same here. Its images are float32 (H, W, C) arrays of whole gray levels 0..255
(the caller rounds first); every op returns whole gray levels 0..255 again, truncating as a
uint8 cast would. The 16 ops, their levels and their fills are big_vision's, with these
adaptations and choices (each said again where it is implemented):

* Small images. big_vision's pixel constants, translate_const = 100 and cutout_const = 40, are
  meant for 224-pixel images; here both are scaled by (image width / 224), so that a 32-pixel
  image is shifted or cut out by the same fraction of its size as a 224-pixel one.
* One-channel images. Color (a blend towards the grayscale image) does nothing to a gray image,
  so RandAugment never draws it for C == 1 (it draws from the other 15 ops; `apply_op` with
  Color returns a 1-channel image unchanged), and Contrast takes the image itself as its
  grayscale.
* Photometric blends follow PIL's ImageEnhance, which big_vision's TF code set out to copy:
  Contrast blends towards the mean of the grayscale image (big_vision divides the pixel count by
  256 instead of taking the mean, a known bug); the grayscale image and the Sharpness smoothing
  are rounded as PIL rounds them (big_vision truncates). The blend itself reproduces PIL's
  single-precision arithmetic bit for bit, also where XLA would fuse its multiply-add (`_blend`).
* AutoContrast computes its linear stretch in exact integer arithmetic (PIL and big_vision use
  floating point, which can land one gray level lower where the exact value is a whole number).
* Posterize clamps its shift to 0..7, as TensorFlow's bitwise shifts (and so big_vision) do:
  magnitudes of 20 or more keep all 8 bits, magnitudes under 2.5 keep 1 bit rather than none.
* Translations move the content by +p or -p pixels, each with probability 1/2, as big_vision's
  do; the sign convention of p is therefore immaterial.

Mixup follows big_vision (`get_mixup`), CutMix and random erasing follow timm; the few fixed-shape
adaptations are in their docstrings.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

RANDAUG_OPS: tuple[str, ...] = (
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

_MAX_LEVEL = 10.0  # big_vision's magnitude scale: level m means m / 10 of each op's reference strength
_FILL = 128.0  # gray for pixels that geometric ops bring in from outside the image, and for Cutout
_REFERENCE_WIDTH = 224.0  # the image width big_vision's pixel constants were chosen for
_TRANSLATE_CONST = 100.0
_CUTOUT_CONST = 40.0


# ---------------------------------------------------------------------------------------------
# Small helpers


def _as_int(image: jax.Array) -> jax.Array:
    """Whole gray levels as int32, for the ops that are integer arithmetic in PIL."""
    return image.astype(jnp.int32)


def _to_levels(x: jax.Array, dtype) -> jax.Array:
    """Clips to 0..255 and truncates, the float -> uint8 conversion PIL and TF perform."""
    return jnp.floor(jnp.clip(x, 0.0, 255.0)).astype(dtype)


def _split_factor(factor: float) -> tuple[float, float]:
    """float32(factor) as hi + lo, hi with 16 significant bits and lo with the other 8.

    Times a whole number of magnitude <= 255 (8 bits), each part is exact in float32.
    """
    f = np.asarray(factor, np.float32)
    hi = (f.view(np.uint32) & np.uint32(0xFFFFFF00)).view(np.float32)
    return float(hi), float(f - hi)


def _blend(degenerate: jax.Array, image: jax.Array, factor: float) -> jax.Array:
    """PIL's Image.blend(degenerate, image, factor), which all ImageEnhance classes use.

    PIL computes degenerate + factor * (image - degenerate) in single precision (its factor is a
    C float), rounding the product and then the sum, and truncates to uint8 after clipping. A
    plain float32 expression here would not reproduce that: XLA contracts the multiply-add into
    a fused multiply-add (one rounding), which lands a level lower wherever PIL's rounded result
    is a whole number. So the product is formed from the two halves of the factor, each product
    exact, and their sum rounds once to exactly PIL's float32 product whether or not XLA fuses.
    """
    hi, lo = _split_factor(factor)
    degenerate = degenerate.astype(jnp.float32)
    diff = image.astype(jnp.float32) - degenerate  # a whole number in -255..255, exact
    product = jnp.float32(hi) * diff + jnp.float32(lo) * diff
    return _to_levels(degenerate + product, image.dtype)


def _grayscale(image: jax.Array) -> jax.Array:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma), as int32 (H, W).

    PIL evaluates L = R * 299/1000 + G * 587/1000 + B * 114/1000 in 16-bit fixed point with
    rounding; the same integers here make Color and Contrast match PIL exactly. A one-channel
    image is already its own grayscale.
    """
    x = _as_int(image)
    if x.shape[-1] == 1:
        return x[..., 0]
    return (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16


def _round_half_away(x: jax.Array) -> jax.Array:
    """C's std::round (ties away from zero), which TF's nearest-neighbour sampling uses.

    jnp.round rounds ties to even, which would pick the other neighbour at exact half-pixel
    coordinates.
    """
    truncated = jnp.trunc(x)
    tie = jnp.abs(x - truncated) == 0.5
    return jnp.where(tie, truncated + jnp.sign(x), jnp.round(x))


def _warp(image: jax.Array, transform: tuple) -> jax.Array:
    """Nearest-neighbour inverse warp with TF's `ImageProjectiveTransform` semantics.

    `transform` = (a0, a1, a2, b0, b1, b2) maps each output pixel (x, y) to the input point
    (a0 x + a1 y + a2, b0 x + b1 y + b2), evaluated in float32 like the TF kernel. The point is
    rounded to the nearest pixel; output pixels whose source lies outside the image get 128 in
    every channel (big_vision's wrap/unwrap trick amounts to exactly this).
    """
    a0, a1, a2, b0, b1, b2 = (jnp.asarray(t, jnp.float32) for t in transform)
    height, width = image.shape[:2]
    xs = jnp.arange(width, dtype=jnp.float32)[None, :]
    ys = jnp.arange(height, dtype=jnp.float32)[:, None]
    src_x = _round_half_away(a0 * xs + a1 * ys + a2)
    src_y = _round_half_away(b0 * xs + b1 * ys + b2)
    inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    ix = jnp.clip(src_x, 0, width - 1).astype(jnp.int32)
    iy = jnp.clip(src_y, 0, height - 1).astype(jnp.int32)
    ix, iy = jnp.broadcast_to(ix, (height, width)), jnp.broadcast_to(iy, (height, width))
    sampled = image[iy, ix]
    return jnp.where(inside[..., None], sampled, jnp.asarray(_FILL, image.dtype))


def _random_sign(rng: jax.Array) -> jax.Array:
    """+1 or -1 with probability 1/2 each, big_vision's `_randomly_negate_tensor`."""
    return jnp.where(jax.random.bernoulli(rng, 0.5), 1.0, -1.0).astype(jnp.float32)


def _pixel_const(const: float, width: int) -> float:
    """big_vision's 224-pixel constant scaled to this image width (see the module docstring)."""
    return const * width / _REFERENCE_WIDTH


# ---------------------------------------------------------------------------------------------
# The 16 RandAugment ops. Each takes (image, magnitude, rng) and leaves shape and dtype alone.


def _autocontrast(image, magnitude, rng):
    """Each channel's min..max stretched to 0..255 (PIL `ImageOps.autocontrast`, no cutoff).

    The stretch is floor((x - lo) * 255 / (hi - lo)) in exact integers (see the module docstring
    for why not floating point); a constant channel is left alone.
    """
    del magnitude, rng
    x = _as_int(image)
    lo = jnp.min(x, axis=(0, 1), keepdims=True)
    hi = jnp.max(x, axis=(0, 1), keepdims=True)
    stretched = ((x - lo) * 255) // jnp.maximum(hi - lo, 1)
    return jnp.where(hi > lo, stretched, x).astype(image.dtype)


def _equalize_channel(x: jax.Array) -> jax.Array:
    hist = jnp.bincount(x.ravel(), length=256)
    last_nonzero = 255 - jnp.argmax(hist[::-1] > 0)
    step = (jnp.sum(hist) - hist[last_nonzero]) // 255
    # lut[i] = (step // 2 + number of pixels below level i) // step, clipped to 255 as PIL's
    # point() does; a step of 0 (one level, or too few pixels) leaves the channel unchanged.
    below = jnp.cumsum(hist) - hist
    lut = jnp.clip((below + step // 2) // jnp.maximum(step, 1), 0, 255)
    return jnp.where(step == 0, x, lut[x])


def _equalize(image, magnitude, rng):
    """PIL's `ImageOps.equalize`, per channel (the lookup table big_vision's `equalize` spells out)."""
    del magnitude, rng
    x = _as_int(image)
    out = jax.vmap(_equalize_channel, in_axes=-1, out_axes=-1)(x)
    return out.astype(image.dtype)


def _invert(image, magnitude, rng):
    del magnitude, rng
    return 255.0 - image


def _rotate(image, magnitude, rng):
    """Rotation about the image centre by magnitude / 10 * 30 degrees, in a random direction.

    The inverse map is TF's `angles_to_projective_transforms`: output (x, y) comes from
    (cos x - sin y + dx, sin x + cos y + dy), with the offsets that keep ((W-1)/2, (H-1)/2) fixed.
    """
    radians = magnitude / _MAX_LEVEL * 30.0 * math.pi / 180.0
    cos = jnp.float32(math.cos(radians))
    sin = _random_sign(rng) * jnp.float32(math.sin(radians))
    height, width = image.shape[:2]
    w1, h1 = jnp.float32(width - 1), jnp.float32(height - 1)
    x_offset = (w1 - (cos * w1 - sin * h1)) / 2.0
    y_offset = (h1 - (sin * w1 + cos * h1)) / 2.0
    return _warp(image, (cos, -sin, x_offset, sin, cos, y_offset))


def _posterize(image, magnitude, rng):
    """Keeps the top int(magnitude / 10 * 4) bits; the shift is clamped to 0..7 as TF clamps it."""
    del rng
    bits = int(magnitude / _MAX_LEVEL * 4)
    shift = min(max(8 - bits, 0), 7)
    x = _as_int(image)
    return jnp.left_shift(jnp.right_shift(x, shift), shift).astype(image.dtype)


def _solarize(image, magnitude, rng):
    """Levels at or above int(magnitude / 10 * 256) inverted (PIL `ImageOps.solarize`)."""
    del rng
    threshold = int(magnitude / _MAX_LEVEL * 256)
    return jnp.where(image < threshold, image, 255.0 - image)


def _solarize_add(image, magnitude, rng):
    """int(magnitude / 10 * 110) added to levels below 128, clipped to 255."""
    del rng
    addition = int(magnitude / _MAX_LEVEL * 110)
    return jnp.where(image < 128, jnp.clip(image + addition, 0.0, 255.0), image)


def _enhance_factor(magnitude: float) -> float:
    return magnitude / _MAX_LEVEL * 1.8 + 0.1


def _color(image, magnitude, rng):
    """PIL `ImageEnhance.Color`: a blend with the grayscale image (identity for 1 channel)."""
    del rng
    if image.shape[-1] == 1:
        return image
    gray = _grayscale(image)[..., None]
    return _blend(jnp.broadcast_to(gray, image.shape), image, _enhance_factor(magnitude))


def _contrast(image, magnitude, rng):
    """PIL `ImageEnhance.Contrast`: a blend with a flat image at the grayscale mean.

    PIL rounds the mean to the nearest level (int(mean + 0.5)); the integer form here is exact.
    big_vision's TF port divides the pixel count by 256 instead of averaging (a known bug that
    makes its degenerate image depend on the image size, not its content); this follows PIL.
    """
    del rng
    gray = _grayscale(image)
    count = gray.size
    mean = (2 * jnp.sum(gray) + count) // (2 * count)
    return _blend(jnp.full(image.shape, mean, jnp.float32), image, _enhance_factor(magnitude))


def _brightness(image, magnitude, rng):
    """PIL `ImageEnhance.Brightness`: a blend with black."""
    del rng
    return _blend(jnp.zeros_like(image), image, _enhance_factor(magnitude))


def _sharpness(image, magnitude, rng):
    """PIL `ImageEnhance.Sharpness`: a blend with the image smoothed by PIL's SMOOTH filter.

    The 3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 is summed in integers and rounded to the
    nearest level as PIL does (never a tie: the sum over 13 is never half-way); the one-pixel
    border keeps the original pixels, as in PIL and big_vision.
    """
    del rng
    x = _as_int(image)
    height, width = x.shape[:2]
    degenerate = x
    if height >= 3 and width >= 3:
        total = 4 * x[1:-1, 1:-1]
        for dy in range(3):
            for dx in range(3):
                total = total + x[dy : height - 2 + dy, dx : width - 2 + dx]
        smoothed = (2 * total + 13) // 26
        degenerate = x.at[1:-1, 1:-1].set(smoothed)
    return _blend(degenerate, image, _enhance_factor(magnitude))


def _shear_level(magnitude: float, rng: jax.Array) -> jax.Array:
    return _random_sign(rng) * jnp.float32(magnitude / _MAX_LEVEL * 0.3)


def _shear_x(image, magnitude, rng):
    """Output (x, y) from input (x + level y, y): a shear about the top-left corner, as big_vision."""
    level = _shear_level(magnitude, rng)
    return _warp(image, (1.0, level, 0.0, 0.0, 1.0, 0.0))


def _shear_y(image, magnitude, rng):
    """Output (x, y) from input (x, level x + y)."""
    level = _shear_level(magnitude, rng)
    return _warp(image, (1.0, 0.0, 0.0, level, 1.0, 0.0))


def _translate_pixels(image: jax.Array, magnitude: float, rng: jax.Array) -> jax.Array:
    const = _pixel_const(_TRANSLATE_CONST, image.shape[1])
    return _random_sign(rng) * jnp.float32(magnitude / _MAX_LEVEL * const)


def _translate_x(image, magnitude, rng):
    """Content moved by p = +-magnitude / 10 * translate_const pixels along x (rounded per pixel)."""
    p = _translate_pixels(image, magnitude, rng)
    return _warp(image, (1.0, 0.0, -p, 0.0, 1.0, 0.0))


def _translate_y(image, magnitude, rng):
    """As TranslateX, along y."""
    p = _translate_pixels(image, magnitude, rng)
    return _warp(image, (1.0, 0.0, 0.0, 0.0, 1.0, -p))


def _cutout(image, magnitude, rng):
    """A gray (128) square of half-size int(magnitude / 10 * cutout_const), clipped to the image.

    As big_vision's `cutout`: the centre is a uniformly random pixel, and the square covers rows
    [cy - pad, cy + pad) and columns [cx - pad, cx + pad).
    """
    height, width = image.shape[:2]
    pad = int(magnitude / _MAX_LEVEL * _pixel_const(_CUTOUT_CONST, width))
    cy, cx = jax.random.randint(rng, (2,), 0, jnp.array([height, width]))
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    box = (rows >= cy - pad) & (rows < cy + pad) & (cols >= cx - pad) & (cols < cx + pad)
    return jnp.where(box[..., None], jnp.asarray(_FILL, image.dtype), image)


_OP_FUNCS: dict[str, Callable] = {
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Invert": _invert,
    "Rotate": _rotate,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "Color": _color,
    "Contrast": _contrast,
    "Brightness": _brightness,
    "Sharpness": _sharpness,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Cutout": _cutout,
    "SolarizeAdd": _solarize_add,
}


def _check_image(image: jax.Array) -> None:
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected one (H, W, C) image with C in (1, 3), got shape {image.shape}")


def apply_op(image: jax.Array, name: str, magnitude: float, rng: jax.Array) -> jax.Array:
    """Applies one RandAugment op `name` (one of RANDAUG_OPS) at `magnitude` to one image.

    `image` is float (H, W, C), C in (1, 3), holding whole levels 0..255; the result has the same
    shape and dtype and again holds whole levels 0..255. `rng` draws the op's own randomness (the
    direction of Rotate, ShearX/Y and TranslateX/Y, the centre of Cutout) and is ignored by the
    other ops. Public so that a single op can be tested or used on its own; `name` and
    `magnitude` are static.
    """
    if name not in _OP_FUNCS:
        raise ValueError(f"unknown RandAugment op {name!r}; expected one of {RANDAUG_OPS}")
    _check_image(image)
    return _OP_FUNCS[name](image, float(magnitude), rng)


def randaug_op_names(num_channels: int) -> tuple[str, ...]:
    """The ops RandAugment draws from: all 16, less Color for 1-channel images (a no-op there)."""
    if num_channels == 1:
        return tuple(name for name in RANDAUG_OPS if name != "Color")
    return RANDAUG_OPS


def randaug_choices(rng: jax.Array, num_layers: int, num_ops: int) -> tuple[jax.Array, jax.Array]:
    """The draws `randaugment` makes from `rng`: (op indices (num_layers,), one key per layer).

    Split out so that a test (or a caller logging its augmentations) can see which ops a key
    selects: index i of layer l picks `randaug_op_names(C)[i]`, applied with key l.
    """
    index_rng, op_rng = jax.random.split(rng)
    indices = jax.random.randint(index_rng, (num_layers,), 0, num_ops)
    return indices, jax.random.split(op_rng, num_layers)


def randaugment(image: jax.Array, rng: jax.Array, num_layers: int, magnitude: float) -> jax.Array:
    """big_vision's RandAugment on one float (H, W, C) image of whole levels 0..255.

    Each of `num_layers` layers draws one op uniformly from `randaug_op_names(C)` and always
    applies it at `magnitude` (big_vision draws a per-op probability but never uses it for
    RandAugment). `num_layers` and `magnitude` are static Python numbers; the op choice is a
    `jax.lax.switch`, so the function jits and vmaps (under vmap every op is evaluated and the
    drawn one selected). See the module docstring for the adaptations to small and gray images.
    """
    _check_image(image)
    if num_layers == 0:
        return image
    names = randaug_op_names(image.shape[-1])
    magnitude = float(magnitude)
    branches = [lambda im, key, op=_OP_FUNCS[name]: op(im, magnitude, key) for name in names]
    indices, keys = randaug_choices(rng, num_layers, len(names))

    def layer(im, drawn):
        index, key = drawn
        return jax.lax.switch(index, branches, im, key), None

    # A scan compiles the 16-way switch once, however many layers there are.
    image, _ = jax.lax.scan(layer, image, (indices, keys))
    return image


# ---------------------------------------------------------------------------------------------
# Batch mixing


def _mix_with_partner(x: jax.Array, lam: jax.Array) -> jax.Array:
    """lam * x + (1 - lam) * x rolled by one along the batch, big_vision's partner rule."""
    lam = lam.astype(x.dtype)
    return lam * x + (1 - lam) * jnp.roll(x, 1, axis=0)


def _mixup_with(images: jax.Array, targets: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    lam = jnp.maximum(lam, 1.0 - lam)
    return _mix_with_partner(images, lam), _mix_with_partner(targets, lam)


def _cutmix_with(images: jax.Array, targets: jax.Array, lam: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    _, height, width, _ = images.shape
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    cy, cx = jax.random.randint(rng, (2,), 0, jnp.array([height, width]))
    y_lo, y_hi = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x_lo, x_hi = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    box = (rows >= y_lo) & (rows < y_hi) & (cols >= x_lo) & (cols < x_hi)
    mixed = jnp.where(box[None, :, :, None], jnp.roll(images, 1, axis=0), images)
    lam = 1.0 - ((y_hi - y_lo) * (x_hi - x_lo)).astype(jnp.float32) / (height * width)
    return mixed, _mix_with_partner(targets, lam)


def mixup(images: jax.Array, targets: jax.Array, rng: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
    """Mixup (https://arxiv.org/abs/1710.09412) as big_vision's `get_mixup` does it.

    One lam ~ Beta(alpha, alpha) for the whole batch, folded to max(lam, 1 - lam) so that every
    example stays the dominant part of its own mix; each example is mixed with its neighbour in
    the batch (a roll by one, which keeps the batch's sharding). Images and float targets
    (one-hot or smoothed, (B, K)) are mixed with the same lam.
    """
    return _mixup_with(images, targets, jax.random.beta(rng, alpha, alpha))


def cutmix(images: jax.Array, targets: jax.Array, rng: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
    """CutMix (https://arxiv.org/abs/1905.04899) with timm's box and lam correction.

    lam ~ Beta(alpha, alpha) sets a box of int(H sqrt(1 - lam)) x int(W sqrt(1 - lam)) pixels,
    centred on a uniformly random pixel and clipped to the image (timm's `rand_bbox`: rows
    [cy - cut_h // 2, cy + cut_h // 2)); inside the box every image takes its partner's pixels
    (the same roll-by-one partner as `mixup`; timm flips the batch). One box serves the batch.
    Targets are mixed with lam corrected to the box's actual share, 1 - box area / image area,
    since clipping makes the box smaller than drawn.
    """
    k_lam, k_box = jax.random.split(rng)
    return _cutmix_with(images, targets, jax.random.beta(k_lam, alpha, alpha), k_box)


def mix_batch(
    images: jax.Array,
    targets: jax.Array,
    rng: jax.Array,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float = 0.5,
    prob: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """timm's Mixup/CutMix switch on a (B, H, W, C) batch and its (B, K) float targets.

    With probability `prob` the batch is mixed, otherwise returned unchanged. When both alphas are
    positive, CutMix is chosen with probability `switch_prob` and Mixup otherwise; when only one
    is, that one. The alphas and probabilities are static and only prune what is computed; the
    random choices are `jnp.where` selections. One Beta draw serves whichever is chosen, its alpha
    selected first (a Beta sampler is slow to compile, and this keeps the train step to one).
    Every target row is replaced by a convex mix of itself and one other row, so rows that share
    one sum (one-hot, label-smoothed) keep that sum.
    """
    use_mixup, use_cutmix = mixup_alpha > 0, cutmix_alpha > 0
    if prob <= 0 or not (use_mixup or use_cutmix):
        return images, targets
    k_coins, k_lam, k_box = jax.random.split(rng, 3)
    coins = jax.random.uniform(k_coins, (2,))
    pick_cutmix = coins[1] < switch_prob
    if use_mixup and use_cutmix:
        alpha = jnp.where(pick_cutmix, cutmix_alpha, mixup_alpha)
    else:
        alpha = jnp.asarray(cutmix_alpha if use_cutmix else mixup_alpha)
    lam = jax.random.beta(k_lam, alpha, alpha)
    candidates = []
    if use_mixup:
        candidates.append(_mixup_with(images, targets, lam))
    if use_cutmix:
        candidates.append(_cutmix_with(images, targets, lam, k_box))
    mixed = candidates[0]
    if len(candidates) == 2:
        mixed = jax.tree.map(lambda m, c: jnp.where(pick_cutmix, c, m), *candidates)
    apply = coins[0] < prob
    return jax.tree.map(lambda new, old: jnp.where(apply, new, old), mixed, (images, targets))


# ---------------------------------------------------------------------------------------------
# Random erasing

_ERASE_ATTEMPTS = 10


def random_erase(
    image: jax.Array,
    rng: jax.Array,
    prob: float,
    area_range: tuple[float, float] = (0.02, 1 / 3),
    aspect_range: tuple[float, float] = (0.3, 3.3),
) -> jax.Array:
    """timm's RandomErasing (mode 'pixel', one box) on one float (H, W, C) model input.

    With probability `prob`, a box of area uniform in area_range * H * W and aspect ratio
    (height / width) log-uniform in aspect_range, h = round(sqrt(area * aspect)) and
    w = round(sqrt(area / aspect)), is filled with independent standard-normal values per pixel
    and channel (noise in the normalised input space). Like timm, up to 10 candidate boxes are
    drawn and the first one strictly smaller than the image in both sides is used (none fitting:
    the image is left alone); here all 10 are drawn at once so the shapes stay static, and the
    box is a mask over the whole image rather than a slice. Its top-left corner is uniform over
    the positions that keep it inside the image. Vmap it for a batch.
    """
    height, width, _ = image.shape
    k_uniform, k_noise = jax.random.split(rng)
    # One draw for all the scalars (each jax.random call is its own block of generator code):
    # 10 areas, 10 log aspect ratios, the top and left of the box, and the coin for `prob`.
    u = jax.random.uniform(k_uniform, (2 * _ERASE_ATTEMPTS + 3,))
    u_area, u_aspect = u[:_ERASE_ATTEMPTS], u[_ERASE_ATTEMPTS : 2 * _ERASE_ATTEMPTS]
    u_top, u_left, u_apply = u[2 * _ERASE_ATTEMPTS :]
    areas = (area_range[0] + (area_range[1] - area_range[0]) * u_area) * (height * width)
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u_aspect)
    box_h = jnp.round(jnp.sqrt(areas * aspect)).astype(jnp.int32)  # Python's round: ties to even
    box_w = jnp.round(jnp.sqrt(areas / aspect)).astype(jnp.int32)
    fits = (box_h < height) & (box_w < width)
    first = jnp.argmax(fits)
    h, w = box_h[first], box_w[first]
    top = jnp.minimum(jnp.floor(u_top * (height - h + 1)).astype(jnp.int32), height - h)
    left = jnp.minimum(jnp.floor(u_left * (width - w + 1)).astype(jnp.int32), width - w)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    erase = (u_apply < prob) & jnp.any(fits)
    noise = jax.random.normal(k_noise, image.shape, image.dtype)
    return jnp.where((box & erase)[..., None], noise, image)
