"""Position embeddings: the original's learned 1-D table and the paper's ablation variants.

`learn` (the original) adds a learned (1, N, D) table to every token, cls included;
`learn_2d` concatenates learned row and column tables of D/2 each; `sincos2d` is a fixed
2-D sine-cosine embedding; `relative` is a learned per-head bias of the attention logits,
indexed by the 2-D offset between patches (`relative_position_index`, used by the
attention module). Prefix tokens (cls) get no 2-D embedding.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

Dtype = Any


def posemb_sincos_2d(gh: int, gw: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding, shape (gh * gw, width).

    The first half of the channels encodes the column (x), the second half the row
    (y); each half is [sin, cos] over width/4 frequencies spaced geometrically from
    1 to 1/temperature.
    """
    if width % 4:
        raise ValueError(f"posemb='sincos2d' needs hidden_size divisible by 4, got {width}.")
    y, x = np.mgrid[:gh, :gw]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4))
    ang_y = y.reshape(-1, 1) * omega[None]
    ang_x = x.reshape(-1, 1) * omega[None]
    pe = np.concatenate([np.sin(ang_x), np.cos(ang_x), np.sin(ang_y), np.cos(ang_y)], axis=1)
    return pe.astype(np.float32)


def relative_position_index(gh: int, gw: int) -> np.ndarray:
    """(N, N) index into a flattened (2gh-1, 2gw-1) table of 2-D offsets.

    Entry [p, q] is the flat index of the offset (row_p - row_q, col_p - col_q),
    shifted to be non-negative; N = gh * gw, patches in row-major order.
    """
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    dr = rows[:, None] - rows[None, :] + gh - 1
    dc = cols[:, None] - cols[None, :] + gw - 1
    return dr * (2 * gw - 1) + dc


class AddPositionEmbs(nn.Module):
    """Learned 1-D position embedding over every token (the original)."""

    posemb_init: Any = nn.initializers.normal(stddev=0.02)
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs):
        shape = (1, inputs.shape[1], inputs.shape[2])
        pe = self.param("pos_embedding", self.posemb_init, shape, self.param_dtype)
        return inputs + pe.astype(inputs.dtype)


class AddPositionEmbs2D(nn.Module):
    """The paper's 2-D learned embedding: row and column tables of D/2 each.

    The patch at (i, j) gets concat(row_embedding[i], col_embedding[j]); prefix
    tokens (cls) get none.
    """

    grid_shape: tuple[int, int]
    num_prefix_tokens: int = 0
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs):
        d = inputs.shape[-1]
        if d % 2:
            raise ValueError(f"posemb='learn_2d' needs an even hidden_size, got {d}.")
        gh, gw = self.grid_shape
        init = nn.initializers.normal(stddev=0.02)
        row = self.param("row_embedding", init, (gh, d // 2), self.param_dtype)
        col = self.param("col_embedding", init, (gw, d // 2), self.param_dtype)
        pe = jnp.concatenate(
            [jnp.broadcast_to(row[:, None], (gh, gw, d // 2)), jnp.broadcast_to(col[None], (gh, gw, d // 2))],
            axis=-1,
        ).reshape(1, gh * gw, d)
        return add_to_patches(inputs, pe.astype(inputs.dtype), self.num_prefix_tokens)


def add_to_patches(x, pe, num_prefix_tokens: int):
    """Adds `pe` (1, N, D) to the last N tokens of x, leaving prefix tokens alone."""
    if num_prefix_tokens == 0:
        return x + pe
    return jnp.concatenate([x[:, :num_prefix_tokens], x[:, num_prefix_tokens:] + pe], axis=1)


def add_position_embedding(x, posemb: str, grid_shape: tuple[int, int], num_prefix_tokens: int, param_dtype):
    """Adds the `posemb` variant's embedding to the (B, T, D) tokens, inside a compact module
    (the learned tables are its `posembed_input` submodule). `none` and `relative` add nothing
    here (`relative` acts in every attention layer)."""
    if posemb == "learn":
        return AddPositionEmbs(param_dtype=param_dtype, name="posembed_input")(x)
    if posemb == "learn_2d":
        return AddPositionEmbs2D(
            grid_shape=grid_shape, num_prefix_tokens=num_prefix_tokens, param_dtype=param_dtype, name="posembed_input"
        )(x)
    if posemb == "sincos2d":
        pe = posemb_sincos_2d(*grid_shape, x.shape[-1])[None]
        return add_to_patches(x, jnp.asarray(pe, x.dtype), num_prefix_tokens)
    return x


def rope_tables(grid_shape: tuple[int, int], head_dim: int, ref_grid=None, temperature: float = 10_000.0):
    """EVA-02's 2-D rotary embedding of a (gh, gw) patch grid: (sin, cos), each (gh * gw, head_dim).

    A quarter of the head dimensions' frequencies, temperature ** (-i / (head_dim / 4)), rotate
    by the row position and a quarter by the column position; each frequency covers two
    adjacent dimensions, rows first then columns (timm's RotaryEmbeddingCat, interleaved). With
    `ref_grid` (EVA-02: 16 x 16) the positions are rescaled to that grid, arange(g) / g * ref,
    so a model fine-tuned at 448 px sees the same angles as at 224 px across the image.
    """
    if head_dim % 4:
        raise ValueError(f"The rotary embedding needs a head dimension divisible by 4, got {head_dim}.")
    gh, gw = grid_shape
    bands = 1.0 / temperature ** (np.arange(head_dim // 4) / (head_dim // 4))
    rh, rw = ref_grid if ref_grid is not None else grid_shape
    ty, tx = np.arange(gh) / gh * rh, np.arange(gw) / gw * rw
    grid = np.stack(np.meshgrid(ty, tx, indexing="ij"), axis=-1)  # (gh, gw, 2)
    angles = (grid[..., None] * bands).reshape(gh * gw, -1)  # (N, 2 * head_dim / 4): rows, then columns
    angles = np.repeat(angles, 2, axis=-1)  # each frequency for a pair of dimensions
    return np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)


def apply_rope(x, sin, cos, num_prefix_tokens: int):
    """Rotates the patch tokens of x (B, T, H, dh) by the angles of `rope_tables`: pairs
    (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin); the prefix tokens are left alone."""
    p = num_prefix_tokens
    patches = x[:, p:]
    rotated = jnp.stack([-patches[..., 1::2], patches[..., ::2]], axis=-1).reshape(patches.shape)
    sin, cos = (jnp.asarray(a, x.dtype)[None, :, None, :] for a in (sin, cos))
    patches = patches * cos + rotated * sin
    return jnp.concatenate([x[:, :p], patches], axis=1) if p else patches
