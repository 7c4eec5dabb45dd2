"""Device-side preprocessing: from the uint8 batches the data sources yield to model inputs.

Runs inside the jitted train and eval steps, so augmentation costs no host time and is
keyed by the step's RNG (a resumed run draws the same crops and flips). Training takes,
in this order: an optional black border of `pad` pixels; an Inception crop (a random box
of `area_min` to 100% of the image, aspect ratio 3/4 to 4/3) resized to `crop`, or with
area_min = 1 and a border a random crop of the original size; an optional horizontal
flip; RandAugment (`randaug`, on the image rounded to whole gray levels); the scaling to
the model's input; random erasing (`erase_prob`). Mixup and CutMix (`mixup_dict`) act on
the batch after this, in the train step. Evaluation resizes the whole image to `crop`.
Both scale to [-1, 1], the original release's input range (or, with `pp.mean` and `pp.std`,
a pretrained checkpoint's normalisation: (x / 255 - mean) / std), and repeat a single channel
to three for RGB models (or average three to one).
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

from vit_jax import augment
from vit_jax.utils import to_pair


def _to_model_input(x, pp):
    """uint8-valued float images -> [-1, 1] (or (x / 255 - mean) / std with `pp` mean and std, a
    pretrained checkpoint's), with 1 channel repeated to 3 if needed."""
    channels = pp["channels"]
    if pp.get("mean") is None:
        x = x / 127.5 - 1.0
    if x.shape[-1] == 1 and channels == 3:
        x = jnp.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 3 and channels == 1:
        x = jnp.mean(x, axis=-1, keepdims=True)
    if pp.get("mean") is not None:
        mean, std = jnp.asarray(pp["mean"], jnp.float32), jnp.asarray(pp["std"], jnp.float32)
        if x.shape[-1] == 1:
            mean, std = jnp.mean(mean, keepdims=True), jnp.mean(std, keepdims=True)
        x = (x / 255.0 - mean) / std
    return x


def _crop_resize(image, box, size):
    """Crops `box` = (top, left, height, width) (pixels, float) and resizes to `size`."""
    top, left, h, w = box
    out_h, out_w = size
    scale = jnp.array([out_h / h, out_w / w])
    translation = -jnp.array([top, left]) * scale
    return jax.image.scale_and_translate(
        image, (out_h, out_w, image.shape[-1]), (0, 1), scale, translation, method="linear", antialias=True
    )


def inception_box(rng, height: int, width: int, area_range=(0.05, 1.0), ratio_range=(3 / 4, 4 / 3)):
    """A random crop box covering area_range of the image with aspect ratio in ratio_range."""
    k1, k2, k3, k4 = jax.random.split(rng, 4)
    area = jax.random.uniform(k1, (), minval=area_range[0], maxval=area_range[1]) * height * width
    log_ratio = jax.random.uniform(k2, (), minval=math.log(ratio_range[0]), maxval=math.log(ratio_range[1]))
    ratio = jnp.exp(log_ratio)
    h = jnp.minimum(jnp.sqrt(area / ratio), height)
    w = jnp.minimum(jnp.sqrt(area * ratio), width)
    top = jax.random.uniform(k3, ()) * (height - h)
    left = jax.random.uniform(k4, ()) * (width - w)
    return top, left, h, w


def preprocess_train(images, rng, pp) -> jax.Array:
    """uint8 batch -> float [-1, 1] at pp.crop, augmented as the module doc says."""
    b, height, width, _ = images.shape
    crop = to_pair(pp["crop"])
    pad = pp.get("pad", 0)
    num_layers, magnitude = pp.get("randaug", (0, 0.0))
    erase = pp.get("erase_prob", 0.0)
    x = images.astype(jnp.float32)
    keys = jax.random.split(rng, b)

    def one(image, key):
        kc, kf = jax.random.split(key)
        h, w = height, width
        if pad:
            image = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
            h, w = h + 2 * pad, w + 2 * pad
        if pp["area_min"] < 1.0:
            box = inception_box(kc, h, w, (pp["area_min"], 1.0))
            image = _crop_resize(image, box, crop)
        else:
            if pad:  # a random window of the original size, at whole-pixel offsets
                top, left = jax.random.randint(kc, (2,), 0, 2 * pad + 1)
                image = jax.lax.dynamic_slice(image, (top, left, 0), (height, width, image.shape[-1]))
            if (height, width) != crop:
                image = jax.image.resize(image, (*crop, image.shape[-1]), "linear", antialias=True)
        if pp["flip"]:
            image = jnp.where(jax.random.bernoulli(kf), image[:, ::-1], image)
        if num_layers:
            image = jnp.clip(jnp.round(image), 0.0, 255.0)
            image = augment.randaugment(image, jax.random.fold_in(key, 2), num_layers, magnitude)
        image = _to_model_input(image, pp)
        if erase:
            image = augment.random_erase(image, jax.random.fold_in(key, 3), erase)
        return image

    return jax.vmap(one)(x, keys)


def preprocess_eval(images, pp) -> jax.Array:
    """uint8 batch -> float [-1, 1] resized to pp.crop."""
    return _to_model_input(_eval_pixels(images, pp), pp)


def _eval_pixels(images, pp) -> jax.Array:
    """uint8 batch -> float pixel values (0 to 255) resized to pp.crop."""
    crop = to_pair(pp["crop"])
    x = images.astype(jnp.float32)
    if x.shape[1:3] != crop:
        x = jax.image.resize(x, (x.shape[0], *crop, x.shape[-1]), "linear", antialias=True)
    return x


def tta_views(flip: bool, shift: int) -> list[tuple[int, int, int]]:
    """Test-time views as (flipped, dy, dx): every translation by -shift..shift whole pixels
    in each direction, each also mirrored when `flip`; the plain image (0, 0, 0) comes first."""
    offsets = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)]
    views = [(f, dy, dx) for f in ((0, 1) if flip else (0,)) for dy, dx in offsets]
    views.remove((0, 0, 0))
    return [(0, 0, 0), *views]


def preprocess_eval_view(images, pp, view, shift: int) -> jax.Array:
    """preprocess_eval of one test-time view: the crop mirrored when view[0] is 1, then moved
    down by view[1] and right by view[2] pixels (traced values from -shift to shift), the
    uncovered border black as in training's pad-and-crop."""
    x = _eval_pixels(images, pp)
    x = jnp.where(view[0] == 1, x[:, :, ::-1], x)
    _, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    x = jax.lax.dynamic_slice(padded, (0, shift - view[1], shift - view[2], 0), x.shape)
    return _to_model_input(x, pp)


def pp_dict(config, host_crop: bool = False) -> dict[str, Any]:
    """The preprocessing fields the jitted steps need, as plain Python values. With `host_crop`
    (a streaming source: the host took the Inception crop and flip, `vit_jax.data.decode`), the
    device takes neither: it keeps pad-and-crop, the resize to pp.crop and what follows."""
    pp = config.pp
    return {
        "crop": to_pair(pp.crop),
        "area_min": 1.0 if host_crop else float(pp.area_min),
        "flip": False if host_crop else bool(pp.flip),
        "channels": int(pp.channels),
        "pad": int(pp.pad),
        "randaug": (int(pp.randaug.num_layers), float(pp.randaug.magnitude)),
        "erase_prob": float(pp.erase_prob),
        "mean": tuple(float(v) for v in pp.mean) if pp.get("mean") is not None else None,
        "std": tuple(float(v) for v in pp.std) if pp.get("std") is not None else None,
    }


def mixup_dict(config) -> dict[str, float] | None:
    """augment.mix_batch's keyword arguments from config.mixup; None when it is off."""
    m = config.mixup
    if not (m.alpha or m.cutmix_alpha) or not m.prob:
        return None
    return {
        "mixup_alpha": float(m.alpha),
        "cutmix_alpha": float(m.cutmix_alpha),
        "switch_prob": float(m.switch_prob),
        "prob": float(m.prob),
    }
