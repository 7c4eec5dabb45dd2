"""Position embeddings resampled for another resolution, as each source library resamples them.

- `timm`: once at load, bicubic with antialiasing (PyTorch's PIL-style filter, Keys a = -0.5,
  weights normalised over the taps inside the grid), which `jax.image.resize(..., 'cubic',
  antialias=True)` computes; transformers' DINOv2 with registers resamples the same way.
- `torch_bicubic`: PyTorch's bicubic without antialiasing (`F.interpolate(mode='bicubic',
  align_corners=False)`), which transformers' DINOv2 applies at run time and its CLIP, SigLIP
  and DeiT with `interpolate_pos_encoding=True`: Keys a = -0.75, source index
  (i + 0.5) * in / out - 0.5, four taps with the indices clamped to the grid. No
  `jax.image.resize` mode computes it, so its matrices are built here.
- `spline`: the original release's order-1 spline with corner-aligned samples
  (`spline`, which `checkpoint.resize_grid` uses too).

The prefix rows (class and distillation tokens) are kept as they are.
"""

import numpy as np

METHODS = ("timm", "torch_bicubic", "spline")


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def torch_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch's non-antialiased bicubic along one axis (float64)."""
    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        i0 = int(np.floor(src))
        t = src - i0
        for k in range(-1, 3):
            m[i, min(max(i0 + k, 0), n_in - 1)] += _cubic(np.array(t - k), -0.75)
    return m


def spline(grid: np.ndarray, new_shape: tuple[int, int]) -> np.ndarray:
    """The original's resize: an order-1 spline with corner-aligned samples (scipy.ndimage.zoom)."""
    import scipy.ndimage  # here, not at the top: its import is 0.3 s of every run's start-up

    (gh, gw), (nh, nw) = grid.shape[:2], new_shape
    return scipy.ndimage.zoom(grid, (nh / gh, nw / gw, 1), order=1)


def resample_grid(grid: np.ndarray, new_shape: tuple[int, int], method: str) -> np.ndarray:
    """(rows, cols, D) -> (new rows, new cols, D), in float32 as the libraries compute it."""
    if method not in METHODS:
        raise ValueError(f"Unknown resampling {method!r}; choose one of {', '.join(METHODS)}.")
    grid = np.asarray(grid)
    (gh, gw), (nh, nw) = grid.shape[:2], tuple(new_shape)
    if (gh, gw) == (nh, nw):
        return grid
    if method == "spline":
        return spline(grid, (nh, nw))
    if method == "timm":
        import jax

        out = jax.image.resize(grid.astype(np.float32), (nh, nw, grid.shape[2]), method="cubic", antialias=True)
        return np.asarray(out).astype(grid.dtype)
    mh, mw = torch_bicubic_matrix(gh, nh), torch_bicubic_matrix(gw, nw)
    out = np.einsum("ih,hwd,jw->ijd", mh, grid.astype(np.float64), mw)
    return out.astype(np.float32).astype(grid.dtype)


def resample_posemb(posemb: np.ndarray, prefix: int, new_grid: tuple[int, int], method: str) -> np.ndarray:
    """A (1, prefix + N, D) table for a square N -> (1, prefix + new rows * new cols, D)."""
    posemb = np.asarray(posemb)
    n = posemb.shape[1] - prefix
    g = int(round(np.sqrt(n)))
    if g * g != n:
        raise ValueError(f"The position embedding's {n} grid rows are not a square grid.")
    grid = resample_grid(posemb[0, prefix:].reshape(g, g, -1), new_grid, method)
    return np.concatenate([posemb[:, :prefix], grid.reshape(1, -1, posemb.shape[-1])], axis=1)
