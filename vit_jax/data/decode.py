"""The host half of preprocessing: an encoded image in, the model's input size out (uint8 RGB).

Training takes the original release's Inception crop: a box of `area_min` to 100% of the
image's area with aspect ratio (width / height) 3/4 to 4/3, sampled on the full-resolution
image as TensorFlow's `sample_distorted_bounding_box` samples it (the ratio uniform, then the
box height uniform over the heights whose area fits, up to 100 tries), the box's own aspect
kept; only the box is resized to the output size, then flipped with probability 1/2. Where
no box fits (a 4:1 panorama with a large `area_min`), the largest centred box in the ratio
range is taken, never the whole image squashed (TensorFlow falls back to the whole image).
Evaluation resizes the whole image, as the original does, or with `eval_crop_pct` takes
timm's centre crop (the centred box of the output's aspect, that fraction of the largest).

The box and flip of example `row` of step `step` are drawn from a generator seeded with
(seed, step, row) alone, so a batch is the same in any process, worker or resumed run.

JPEGs are decoded by libjpeg-turbo (simplejpeg) at the smallest power-of-two reduction
(1/2, 1/4, 1/8, done inside the inverse DCT) that still leaves the box at least the output
size: a large photo costs a fraction of a full decode, and the remaining resize shrinks by
less than 2. Other formats (PNG, BMP, GIF, WebP, TIFF) go through Pillow. Grayscale,
palette, RGBA (alpha dropped) and CMYK images all become RGB. The resize is bilinear with
half-pixel centres (OpenCV's INTER_LINEAR, the original's `tf.image.resize`), or an area
average where a non-JPEG shrinks by 2 or more.
"""

import dataclasses
import io
import math

import numpy as np

RATIO_RANGE = (3 / 4, 4 / 3)
ATTEMPTS = 100
_BOX_TAG = 0x1C0B  # separates the crop generator's seed from the run's other streams


class DecodeError(Exception):
    """An example that cannot be decoded (a damaged or unsupported file); the message says why."""


@dataclasses.dataclass(frozen=True)
class HostSpec:
    """What the host makes of each image: output size (h, w) and the training crop's fields."""

    size: tuple[int, int]
    area_min: float = 0.05
    flip: bool = True
    eval_crop_pct: float = 0.0  # 0: evaluation resizes the whole image


def _libs():
    import cv2

    cv2.setNumThreads(1)  # one decode per worker process; the workers are the parallelism
    return cv2


# ----------------------------------------------------------------------------- boxes


def center_box(height: int, width: int, ratio_range=RATIO_RANGE) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the largest centred box whose aspect ratio lies in `ratio_range`."""
    lo, hi = ratio_range
    h, w = height, width
    if width < lo * height:
        h = max(1, min(height, math.floor(width / lo)))
    elif width > hi * height:
        w = max(1, min(width, math.floor(height * hi)))
    return (height - h) // 2, (width - w) // 2, h, w


def _round(x: float) -> int:
    return int(round(x))  # ties to even, as C's lrintf


def _try_box(rng, height, width, min_area, max_area, ratio, ratio_range):
    """One of TensorFlow's tries: a box of aspect `ratio` and an area in [min_area, max_area], or None."""
    h = _round(math.sqrt(min_area / ratio))
    max_h = _round(math.sqrt(max_area / ratio))
    if _round(max_h * ratio) > width:  # the tallest box whose rounded width still fits
        max_h = int((width + 0.5 - 1e-7) / ratio)
        if _round(max_h * ratio) > width:
            max_h -= 1
    max_h = min(max_h, height)
    h = min(h, max_h)
    if h < max_h:
        h += int(rng.integers(0, max_h - h + 1))

    def width_of(h):  # rounded, then kept inside the ratio range (matters for boxes a few pixels high)
        lo, hi = ratio_range
        return min(max(_round(h * ratio), math.ceil(h * lo - 1e-9)), math.floor(h * hi + 1e-9))

    w = width_of(h)
    if w * h < min_area:
        h += 1
        w = width_of(h)
    if w * h > max_area:
        h -= 1
        w = width_of(h)
    if not (min_area <= w * h <= max_area and 0 < w <= width and 0 < h <= height):
        return None
    return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


def inception_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    area_min: float,
    area_max: float = 1.0,
    ratio_range=RATIO_RANGE,
    attempts: int = ATTEMPTS,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) in whole pixels: the Inception crop of an image of that size (module doc)."""
    min_area, max_area = area_min * height * width, area_max * height * width
    for _ in range(attempts):
        ratio = ratio_range[0] + rng.random() * (ratio_range[1] - ratio_range[0])
        box = _try_box(rng, height, width, min_area, max_area, ratio, ratio_range)
        if box is not None:
            return box
    return center_box(height, width, ratio_range)


def eval_box(height: int, width: int, size: tuple[int, int], crop_pct: float) -> tuple[int, int, int, int]:
    """The region evaluation resizes: the whole image, or with crop_pct timm's centre crop."""
    if not crop_pct:
        return 0, 0, height, width
    out_h, out_w = size
    if width * out_h > height * out_w:  # wider than the output: the full height
        h, w = height, height * out_w / out_h
    else:
        h, w = width * out_h / out_w, width
    h, w = max(1, _round(h * crop_pct)), max(1, _round(w * crop_pct))
    return (height - h) // 2, (width - w) // 2, h, w


def example_rng(seed: int, step: int, row: int) -> np.random.Generator:
    """The generator of the crop and flip of row `row` of the global batch of step `step`."""
    return np.random.default_rng((seed % 2**32, _BOX_TAG, step, row))


# ----------------------------------------------------------------------------- decoding


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _jpeg_scaled(data: bytes, need: tuple[int, int], height: int, width: int) -> np.ndarray:
    """The pixels of a (height x width) JPEG decoded at the smallest power-of-two reduction whose
    size is still at least `need` (h, w)."""
    import simplejpeg

    k = 1
    while k < 8 and -(-height // (2 * k)) >= need[0] and -(-width // (2 * k)) >= need[1]:
        k *= 2
    if k == 1:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    scaled = {"min_height": -(-height // k), "min_width": -(-width // k), "min_factor": k}
    return simplejpeg.decode_jpeg(data, colorspace="RGB", **scaled)


def _pil_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")  # grayscale, palette, RGBA (alpha dropped), CMYK
        return np.asarray(im)


def decode_box(data: bytes, box_of, size: tuple[int, int], flip: bool, out: np.ndarray) -> None:
    """Decodes `data`, takes the box `box_of(height, width)` and writes it resized to `size`
    (and mirrored when `flip`) into `out` (h, w, 3) uint8. Raises DecodeError."""
    try:
        _decode_box(data, box_of, size, flip, out)
    except DecodeError:
        raise
    except Exception as e:  # a damaged file can fail deep inside a decoder in any way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DecodeError(f"{type(e).__name__}: {first}") from None


def _decode_box(data, box_of, size, flip, out) -> None:
    cv2 = _libs()
    out_h, out_w = size
    if not data:
        raise DecodeError("empty file")
    if is_jpeg(data):
        import simplejpeg

        height, width = simplejpeg.decode_jpeg_header(data)[:2]
        top, left, h, w = box_of(height, width)
        pixels = _jpeg_scaled(data, (math.ceil(height * out_h / h), math.ceil(width * out_w / w)), height, width)
    else:
        pixels = _pil_pixels(data)
        height, width = pixels.shape[:2]
        top, left, h, w = box_of(height, width)
    sy, sx = pixels.shape[0] / height, pixels.shape[1] / width
    y0, x0 = int(top * sy), int(left * sx)
    y1 = max(y0 + 1, min(pixels.shape[0], math.ceil((top + h) * sy)))
    x1 = max(x0 + 1, min(pixels.shape[1], math.ceil((left + w) * sx)))
    region = pixels[y0:y1, x0:x1]
    if region.shape[:2] == (out_h, out_w):
        out[...] = region
    else:
        shrink = min(region.shape[0] / out_h, region.shape[1] / out_w)
        method = cv2.INTER_AREA if shrink >= 2 else cv2.INTER_LINEAR
        cv2.resize(region, (out_w, out_h), dst=out, interpolation=method)
    if flip:
        cv2.flip(out, 1, dst=out)


def train_image(data: bytes, spec: HostSpec, seed: int, step: int, row: int, out: np.ndarray) -> None:
    """Row `row` of the training batch of step `step`: Inception crop (or, with area_min 1, the
    whole image), resized, flipped with probability 1/2 when spec.flip (module doc)."""
    rng = example_rng(seed, step, row)
    flip = bool(rng.random() < 0.5) and spec.flip  # drawn first, so the box is the same either way

    def box_of(height, width):
        if spec.area_min >= 1.0:
            return 0, 0, height, width
        return inception_box(rng, height, width, spec.area_min)

    decode_box(data, box_of, spec.size, flip, out)


def eval_image(data: bytes, spec: HostSpec, out: np.ndarray) -> None:
    """An evaluation image: the whole image (or timm's centre crop) resized to spec.size."""
    decode_box(data, lambda h, w: eval_box(h, w, spec.size, spec.eval_crop_pct), spec.size, False, out)
