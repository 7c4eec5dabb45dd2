"""What every data module shares: the error type, the file kinds, split slices.

Kept free of NumPy's heavier company (no TensorFlow, no JAX, no image libraries) so the
decode workers and the command-line tools import it for nothing.
"""

import re

from vit_jax import errors


class DataError(errors.UserError):
    """A dataset that is missing, empty or malformed; the message says how to fix it."""


DATASET_FIX = (
    "Set --config.dataset to a directory of IDX files (as MNIST and Fashion-MNIST ship), a directory of "
    "image folders (<dir>/{train,test}/<class>/*.jpg|png), 'digits', or a TFDS dataset name."
)

# Files an image folder reads (lower-cased suffixes); anything else in it (a README, a
# .DS_Store, a labels.csv) is not an example.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_SLICE_RE = re.compile(r"([\w-]+)(?:\[(-?\d+(?:\.\d+)?)?(%?):(-?\d+(?:\.\d+)?)?(%?)\])?")
_ONLY_SLICES = (
    "only NAME or NAME[a:b] work there (a, b integers or percentages, e.g. 'train[:90%]'); full split "
    "expressions such as 'train+test' work for TFDS datasets"
)


def split_name(value) -> str | None:
    """The split NAME of 'NAME' or 'NAME[a:b]', else None."""
    m = _SLICE_RE.fullmatch(value) if isinstance(value, str) else None
    return m[1] if m else None


def split_slice(value: str, field: str, what: str = "this dataset"):
    """NAME or NAME[a:b] -> (NAME, select); `select(n)` is the range of a split of n examples
    that the slice takes. As in TFDS: a percent bound is rounded to the closest example (ties to
    even, Python's `round`), a bound may be negative, and one beyond the split is an error."""
    m = _SLICE_RE.fullmatch(value) if isinstance(value, str) else None
    percent = bool(m and (m[3] or m[5]))
    bounds = (m[2], m[4]) if m else ()
    if not m or ("[" in value and not any(bounds)) or (not percent and "." in "".join(b or "" for b in bounds)):
        raise DataError(f"{field}={value!r}: {what} is read by example index, where {_ONLY_SLICES}.")

    def select(n: int) -> range:
        out = []
        for b in bounds:
            x = None if b is None else float(b) if percent else int(b)
            if x is not None and abs(x) > (100 if percent else n):
                raise DataError(
                    f"{field}={value!r}: the bound {b}{'%' if percent else ''} lies outside "
                    f"'{m[1]}', which has {n} examples."
                )
            out.append(int(round(x * n / 100)) if percent and x is not None else x)
        return range(n)[out[0] : out[1]] if out else range(n)

    return m[1], select
