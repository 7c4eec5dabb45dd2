"""The paper's analyses (Figure 7 and the attention maps), as numbers and plots.

All functions take `images` as the model takes them: float arrays in [-1, 1] of
shape (B, H, W, C), as passed to `model.apply`.

- `mean_attention_distance`: per block and head, the attention-weighted distance
  in input pixels between query and key patch centres, averaged over query patches
  and images (the "attention distance" of Figure 7, right).
- `attention_rollout`: the cls (or mean) row of the product of head-averaged,
  residual-corrected attention matrices, as a map over the patch grid.
- `posemb_similarity`: cosine similarity between the position embeddings of every
  pair of patches (Figure 7, centre).
- `embedding_filters`: the top principal components of the patch-embedding
  filters (Figure 7, left).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import models, models_posemb, models_vit

# ----------------------------------------------------------------------------- geometry


def has_class_token(model) -> bool:
    return models_vit.has_class_token(getattr(model, "class_token", None), model.classifier)


def num_prefix_tokens(model) -> int:
    """Tokens before the patches for this model: class, distillation and register tokens."""
    return int(has_class_token(model)) + int(getattr(model, "distilled", False)) + int(getattr(model, "reg_tokens", 0))


def token_grid(model, image_shape: tuple[int, int]) -> tuple[tuple[int, int], tuple[float, float]]:
    """((rows, cols) of the token grid, (height, width) in input pixels of one token).

    For a pure ViT a token is one patch; for a hybrid it is the patch times the
    ResNet stem's stride (its effective stride).
    """
    gh, gw = models.grid_shape({"patches": model.patches, "resnet": model.resnet}, image_shape)
    return (gh, gw), (image_shape[0] / gh, image_shape[1] / gw)


def patch_distances(grid_shape: tuple[int, int], cell: tuple[float, float]) -> np.ndarray:
    """(N, N) Euclidean distances between token centres, in pixels (rows and columns scaled apart)."""
    gh, gw = grid_shape
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    dy = (rows[:, None] - rows[None, :]) * cell[0]
    dx = (cols[:, None] - cols[None, :]) * cell[1]
    return np.sqrt(dy**2 + dx**2)


# ----------------------------------------------------------------------------- attention distance


def attention_distance_from_weights(
    attention, grid_shape: tuple[int, int], patch_size, num_prefix_tokens: int = 0
) -> np.ndarray:
    """Mean attention distance from precomputed weights.

    attention: (layers, B, heads, T, T) or (B, heads, T, T), rows = queries, as the
    model computed them (not renormalised after the prefix tokens are dropped).
    patch_size: pixels per token, an int or (height, width).
    Returns (layers, heads) (or (heads,) for a single layer) in pixels.
    """
    attention = np.asarray(attention, np.float64)
    single = attention.ndim == 4
    if single:
        attention = attention[None]
    cell = (float(patch_size), float(patch_size)) if np.isscalar(patch_size) else tuple(map(float, patch_size))
    p = num_prefix_tokens
    n = grid_shape[0] * grid_shape[1]
    if attention.shape[-1] != p + n or attention.shape[-2] != p + n:
        raise ValueError(
            f"Attention over {attention.shape[-1]} tokens does not match a {grid_shape[0]}x{grid_shape[1]} grid "
            f"plus {p} prefix token(s)."
        )
    weights = attention[..., p:, p:]  # (L, B, H, N, N): patch queries x patch keys
    dist = patch_distances(grid_shape, cell)
    per_query = np.einsum("lbhqk,qk->lbhq", weights, dist)
    out = per_query.mean(axis=(1, 3))  # over images and query patches
    return out[0] if single else out


def _attention_batches(model, params, images, batch_size: int):
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False, return_intermediates=True)[1]["attention"])
    for i in range(0, len(images), batch_size):
        yield fn(params, jnp.asarray(images[i : i + batch_size], jnp.float32))


def mean_attention_distance(model, params, images, batch_size: int = 32) -> np.ndarray:
    """(num_layers, num_heads) mean attention distance in input pixels (see module doc)."""
    images = np.asarray(images)
    grid, cell = token_grid(model, images.shape[1:3])
    p = num_prefix_tokens(model)
    total = None
    for attention in _attention_batches(model, params, images, batch_size):
        d = attention_distance_from_weights(attention, grid, cell, p) * attention.shape[1]
        total = d if total is None else total + d
    return total / len(images)


# ----------------------------------------------------------------------------- rollout


def rollout_from_weights(attention, num_prefix_tokens: int, class_token: bool | None = None) -> np.ndarray:
    """Rollout maps over the patches from (layers, B, heads, T, T) weights: (B, N). With a class
    token (the first token; by default when there are prefix tokens) its row, else the mean of
    the patch rows; the other prefix tokens (distillation, registers) are left out of the map."""
    attention = np.asarray(attention, np.float64)
    a = attention.mean(axis=2)  # (L, B, T, T): mean over heads
    a = a + np.eye(a.shape[-1])
    a = a / a.sum(axis=-1, keepdims=True)
    r = a[0]
    for layer in a[1:]:
        r = layer @ r  # R = A_l R: later blocks multiply from the left
    p = num_prefix_tokens
    if class_token is None:
        class_token = p > 0
    if class_token:
        return r[:, 0, p:]
    return r[:, p:, p:].mean(axis=1)


def attention_rollout(model, params, images, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(maps on the grid (B, gh, gw), maps resized to the image (B, H, W))."""
    images = np.asarray(images)
    grid, _ = token_grid(model, images.shape[1:3])
    p, cls = num_prefix_tokens(model), has_class_token(model)
    maps = [rollout_from_weights(a, p, cls) for a in _attention_batches(model, params, images, batch_size)]
    grid_maps = np.concatenate(maps).reshape(len(images), *grid)
    resized = jax.image.resize(jnp.asarray(grid_maps), (len(images), *images.shape[1:3]), "linear")
    return grid_maps, np.asarray(resized)


# ----------------------------------------------------------------------------- embeddings


def position_embeddings(params, grid_shape: tuple[int, int], posemb: str | None = None) -> np.ndarray:
    """(gh * gw, D) position embeddings of the patches, for every variant that has them.

    The variant is read from the parameters (`pos_embedding` = 1-D learned,
    `row_embedding`/`col_embedding` = 2-D learned); `posemb='sincos2d'` gives the
    fixed embedding for the model's width.
    """
    gh, gw = grid_shape
    pe = params.get("Transformer", {}).get("posembed_input", {})
    if "pos_embedding" in pe:
        table = np.asarray(pe["pos_embedding"])[0]
        prefix = len(table) - gh * gw
        if prefix < 0:
            raise ValueError(f"The position embedding has {len(table)} rows, fewer than the {gh}x{gw} grid.")
        return table[prefix:]
    if "row_embedding" in pe:
        row, col = np.asarray(pe["row_embedding"]), np.asarray(pe["col_embedding"])
        half = row.shape[1]
        return np.concatenate(
            [np.broadcast_to(row[:, None], (gh, gw, half)), np.broadcast_to(col[None], (gh, gw, half))], axis=-1
        ).reshape(gh * gw, 2 * half)
    if posemb == "sincos2d":
        width = np.asarray(params["embedding"]["kernel"]).shape[-1]
        return models_posemb.posemb_sincos_2d(gh, gw, width)
    raise ValueError(
        "These parameters have no position embedding table (posemb 'none' or 'relative'); "
        "pass posemb='sincos2d' for the fixed 2-D embedding."
    )


def posemb_similarity(params, grid_shape: tuple[int, int], posemb: str | None = None) -> np.ndarray:
    """(gh, gw, gh, gw): cosine similarity of each patch's position embedding with every other."""
    pe = position_embeddings(params, grid_shape, posemb).astype(np.float64)
    unit = pe / np.maximum(np.linalg.norm(pe, axis=-1, keepdims=True), 1e-12)
    sim = unit @ unit.T
    return sim.reshape(*grid_shape, *grid_shape)


def embedding_filters(params, k: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Top-k principal components of the patch-embedding filters.

    The D filters of the embedding (each a ph x pw x C patch) are the samples;
    returns (components (k, ph, pw, C), explained variance ratio (k,)).
    """
    kernel = np.asarray(params["embedding"]["kernel"], np.float64)  # (ph, pw, C, D)
    ph, pw, c, d = kernel.shape
    x = kernel.reshape(ph * pw * c, d).T  # (D, ph*pw*C)
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(k, vt.shape[0])
    var = s**2
    return vt[:k].reshape(k, ph, pw, c), var[:k] / var.sum()


# ----------------------------------------------------------------------------- plots


def plot_attention_distance(distances: np.ndarray, path: str, title: str = "Mean attention distance") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads = distances.shape
    fig, ax = plt.subplots(figsize=(5, 4))
    for h in range(heads):
        ax.scatter(np.arange(layers), distances[:, h], s=14, label=f"head {h}" if heads <= 16 else None)
    ax.set_xlabel("Network depth (block)")
    ax.set_ylabel("Mean attention distance (pixels)")
    ax.set_title(title)
    ax.set_xticks(np.arange(layers))
    if heads <= 16:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attention_maps(images: np.ndarray, maps: np.ndarray, path: str, titles: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2 * n, 4.2), squeeze=False)
    for i in range(n):
        im = (np.asarray(images[i]) + 1) / 2
        im = np.clip(im[..., 0] if im.shape[-1] == 1 else im, 0, 1)
        axes[0, i].imshow(im, cmap="gray" if im.ndim == 2 else None)
        axes[0, i].set_title(titles[i] if titles else f"image {i}", fontsize=8)
        axes[1, i].imshow(im, cmap="gray" if im.ndim == 2 else None)
        axes[1, i].imshow(maps[i], cmap="jet", alpha=0.5)
        axes[1, i].set_title("attention rollout", fontsize=8)
        for ax in axes[:, i]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_posemb_similarity(sim: np.ndarray, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gh, gw = sim.shape[:2]
    fig, axes = plt.subplots(gh, gw, figsize=(max(gw, 2) * 0.8 + 1, max(gh, 2) * 0.8), squeeze=False)
    for i in range(gh):
        for j in range(gw):
            axes[i, j].imshow(sim[i, j], vmin=-1, vmax=1, cmap="viridis")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    fig.suptitle("Position embedding similarity (cosine): one panel per patch")
    fig.supxlabel("Input patch column")
    fig.supylabel("Input patch row")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_embedding_filters(components: np.ndarray, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(components)
    cols = min(k, 7)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.1 + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < k:
            c = components[i]
            c = (c - c.min()) / max(c.max() - c.min(), 1e-12)
            ax.imshow(c[..., 0] if c.shape[-1] == 1 else c[..., :3], cmap="gray" if c.shape[-1] == 1 else None)
    fig.suptitle("Principal components of the patch-embedding filters")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyze(model, params, images, outdir: str, *, posemb: str | None = None, num_maps: int = 8) -> dict[str, Any]:
    """Every analysis on `images`; writes the four PNGs and analysis.json into `outdir`."""
    import json
    import os

    os.makedirs(outdir, exist_ok=True)
    images = np.asarray(images, np.float32)
    grid, cell = token_grid(model, images.shape[1:3])
    dist = mean_attention_distance(model, params, images)
    plot_attention_distance(dist, os.path.join(outdir, "mean_attention_distance.png"))
    _, maps = attention_rollout(model, params, images[:num_maps])
    plot_attention_maps(images[:num_maps], maps, os.path.join(outdir, "attention_maps.png"))
    result: dict[str, Any] = {
        "num_images": len(images),
        "grid_shape": list(grid),
        "token_size_pixels": list(cell),
        "mean_attention_distance": dist.tolist(),
        "mean_attention_distance_per_layer": {
            "min_head": dist.min(axis=1).tolist(),
            "max_head": dist.max(axis=1).tolist(),
            "mean": dist.mean(axis=1).tolist(),
        },
    }
    try:
        sim = posemb_similarity(params, grid, posemb or model.posemb)
        plot_posemb_similarity(sim, os.path.join(outdir, "posemb_similarity.png"))
        result["posemb_similarity"] = sim.tolist()
    except ValueError as e:
        result["posemb_similarity"] = None
        result["posemb_similarity_note"] = str(e)
    components, explained = embedding_filters(params)
    plot_embedding_filters(components, os.path.join(outdir, "embedding_filters.png"))
    result["embedding_filters_explained_variance"] = explained.tolist()
    with open(os.path.join(outdir, "analysis.json"), "w") as f:
        json.dump(result, f)
    return result
