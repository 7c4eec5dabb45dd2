"""Small helpers every layer of the package uses (sizes), with no dependencies of their own."""

import numpy as np


def to_pair(v) -> tuple[int, int]:
    """(h, w) from an int or a pair: image, crop, patch and grid sizes may be given either way."""
    if isinstance(v, int | np.integer):
        return int(v), int(v)
    h, w = v
    return int(h), int(w)
