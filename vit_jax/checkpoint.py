"""The original release's `vit_jax.checkpoint`: .npz checkpoints and fine-tuning surgery.

The format itself (`load`, `save`, the tree helpers) lives in `vit_jax.weights.npz` and is
re-exported here with the names the original gave it; this module keeps what fine-tuning
does with a checkpoint: `load_pretrained` (a new head, the position embedding resized to the
new grid, token and GAP heads converted, blocks stacked for `scan=True`),
`interpolate_posembed`, `inspect_params`, `recover_tree`, `copy` and `get_augreg_df`.
"""

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from vit_jax import errors
from vit_jax.weights.npz import (  # noqa: F401 (the original's names)
    CheckpointError,
    convert_pre_linen,
    flatten,
    is_stacked,
    load,
    open_file,
    save,
    stack_blocks,
    to_published_flat,
    unflatten,
    unstack_blocks,
)

log = logging.getLogger(__name__)

POSEMB_KEY = "Transformer/posembed_input/pos_embedding"
ROW_KEY = "Transformer/posembed_input/row_embedding"
COL_KEY = "Transformer/posembed_input/col_embedding"
RESIZE_METHODS = ("spline", "bilinear", "bicubic")

# ----------------------------------------------------------------------------- resizing


def _square_grid(n: int, what: str) -> tuple[int, int]:
    g = int(round(np.sqrt(n)))
    if g * g != n:
        raise CheckpointError(
            f"The {what} grid has {n} tokens, which is not square; pass {what}_grid_shape=(rows, cols)."
        )
    return g, g


def resize_grid(grid: np.ndarray, new_shape: tuple[int, int], method: str = "spline") -> np.ndarray:
    """Resizes (rows, cols, D) embeddings to (new_rows, new_cols, D).

    `spline` is the original's resize: an order-1 spline with corner-aligned samples
    (scipy.ndimage.zoom, order=1). `bilinear` and `bicubic` sample at half-pixel
    centres (jax.image.resize, no antialiasing).
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"Unknown resize method {method!r}; choose one of {', '.join(RESIZE_METHODS)}.")
    grid = np.asarray(grid)
    (gh, gw), (nh, nw) = grid.shape[:2], tuple(new_shape)
    if (gh, gw) == (nh, nw):
        return grid
    if method == "spline":
        from vit_jax.weights import resample

        out = resample.spline(grid, (nh, nw))
    else:
        out = np.asarray(jax.image.resize(grid, (nh, nw, grid.shape[2]), method=method, antialias=False))
    assert out.shape[:2] == (nh, nw), (out.shape, new_shape)
    return out.astype(grid.dtype)


def interpolate_posembed(
    posemb,
    num_tokens: int,
    has_class_token: bool,
    *,
    method: str = "spline",
    old_grid_shape: tuple[int, int] | None = None,
    new_grid_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Resizes a (1, N, D) 1-D position embedding to (1, num_tokens, D).

    The grid part is resized as an image (see `resize_grid`); the cls row, if any,
    is kept apart and unchanged. Non-square grids need their shapes passed.
    """
    posemb = np.asarray(posemb)
    p = int(has_class_token)
    tok, grid = posemb[:, :p], posemb[0, p:]
    old = tuple(old_grid_shape) if old_grid_shape else _square_grid(len(grid), "old")
    new = tuple(new_grid_shape) if new_grid_shape else _square_grid(num_tokens - p, "new")
    if old[0] * old[1] != len(grid):
        raise CheckpointError(f"old_grid_shape={old} does not match the {len(grid)} grid tokens of the embedding.")
    if new[0] * new[1] != num_tokens - p:
        raise CheckpointError(f"new_grid_shape={new} does not match {num_tokens - p} grid tokens.")
    log.info("Resizing position embedding grid %s -> %s (%s)", old, new, method)
    grid = resize_grid(grid.reshape(*old, -1), new, method).reshape(1, new[0] * new[1], -1)
    return np.concatenate([tok, grid], axis=1)


# ----------------------------------------------------------------------------- fine-tuning


def _field(config, name, default=None):
    getter = getattr(config, "get", None)
    return getter(name, default) if getter else getattr(config, name, default)


def load_pretrained(
    *,
    pretrained_path: str,
    init_params: Mapping,
    model_config: Any,
    allow_missing: bool = False,
    allow_extra: bool = False,
    resize: str = "spline",
    old_grid_shape: tuple[int, int] | None = None,
    new_grid_shape: tuple[int, int] | None = None,
    fresh: tuple[str, ...] = (),
    keep_head: bool = False,
) -> dict:
    """Adapts a pretrained checkpoint to the model that produced `init_params`.

    - the head comes from `init_params` (a fresh classifier), unless `keep_head` (the same
      task, e.g. at a higher resolution: the checkpoint's head, which must fit the model's);
    - `pre_logits` is dropped when `model_config.representation_size` is None;
    - token <-> GAP: the `cls` parameter and the cls row of the position embedding
      are dropped, or taken fresh from `init_params`;
    - position embeddings (1-D, 2-D row/col tables, relative bias tables) are resized
      to the new grid with `resize` (default: the original's spline);
    - stacked (`scan`) and per-block layouts are converted to match `init_params`.
    A parameter missing from the checkpoint or left over is an error listing the keys,
    unless `allow_missing` (take it from `init_params`) or `allow_extra` (drop it).
    A shape that does not fit is always an error naming every mismatch. The parameters whose
    paths start with one of `fresh` (e.g. 'Transformer/posembed_input') come from `init_params`.
    """
    restored = flatten(_load_any(pretrained_path, _field(model_config, "model_name")))
    init = flatten(unstack_blocks(jax.device_get(init_params)))
    # The position embedding's rows of the class (and distillation) token go with the tokens.
    old_prefix, new_prefix = _posemb_prefix(restored, model_config), _posemb_prefix(init, model_config)
    _fit_head(restored, init, _field(model_config, "representation_size"), keep_head)
    _fit_position_embeddings(restored, init, (old_prefix, new_prefix), resize, old_grid_shape, new_grid_shape)
    _check_keys(restored, init, pretrained_path, allow_missing, allow_extra)
    taken = [k for k in init if any(k.startswith(p) for p in fresh)]
    if fresh and not taken:
        raise CheckpointError(f"pretrained_fresh={tuple(fresh)} names no parameter of the model; use paths such "
                              "as 'Transformer/posembed_input'.")  # fmt: skip
    restored.update({k: init[k] for k in taken})
    out = unflatten({k: np.asarray(restored[k], dtype=np.asarray(init[k]).dtype) for k in init})
    return stack_blocks(out) if is_stacked(init_params) else out


def _load_any(path: str, model_name: str | None = None) -> dict:
    """The parameter tree of an original .npz, or of timm's or transformers' weights (vit_jax.pretrained)."""
    from vit_jax.weights import readers

    if readers.is_layout_source(path):  # a directory names its architecture; a bare file needs the name
        name = model_name if os.fspath(path).endswith(".safetensors") else None
        return readers.load_cached(os.fspath(path), name).params
    return load(path)


def _fit_head(restored: dict, init: dict, representation_size, keep_head: bool = False) -> None:
    """A fresh head (or the checkpoint's, with `keep_head`); the pre-logits layer kept, dropped or
    fresh as the model has one; the cls token dropped (token -> GAP) or fresh (GAP -> token)."""
    heads = ("head/", "head_dist/")  # DeiT's distillation head is a head too
    if keep_head:
        _check_head_fits(restored, init, heads)
    else:
        for k in [k for k in restored if k.startswith(heads)]:
            del restored[k]
        restored.update({k: v for k, v in init.items() if k.startswith(heads)})
    has_pre_logits = any(k.startswith("pre_logits/") for k in restored)
    if representation_size is None and has_pre_logits:
        log.info("load_pretrained: dropping the checkpoint's pre_logits (representation_size is None).")
        for k in [k for k in restored if k.startswith("pre_logits/")]:
            del restored[k]
    elif representation_size is not None and not has_pre_logits:
        log.info("load_pretrained: fresh pre_logits layer (the checkpoint has none).")
        restored.update({k: v for k, v in init.items() if k.startswith("pre_logits/")})
    if "cls" in restored and "cls" not in init:
        del restored["cls"]
    elif "cls" in init and "cls" not in restored:
        restored["cls"] = init["cls"]


def _check_head_fits(restored: dict, init: dict, heads: tuple[str, ...]) -> None:
    ours = {k: np.shape(v) for k, v in init.items() if k.startswith(heads)}
    theirs = {k: np.shape(v) for k, v in restored.items() if k.startswith(heads)}
    if ours != theirs:
        raise CheckpointError(f"pretrained_keep_head: the checkpoint's head {theirs} does not fit the model's {ours} "
                              "(another number of classes?); leave it False for a fresh head.")  # fmt: skip


def _posemb_prefix(params: dict, model_config) -> int:
    """Rows of the 1-D position embedding before the grid: the class and distillation tokens',
    unless the table covers the patches only (posemb_prefix False, timm's no_embed_class)."""
    if _field(model_config, "posemb_prefix") is False:
        return 0
    return int("cls" in params) + int("dist" in params)


def _fit_position_embeddings(
    restored: dict, init: dict, prefix: tuple[int, int], resize: str, old_grid_shape, new_grid_shape
) -> None:
    """Every kind of position embedding resized to the model's token grid (the prefix rows of the
    class and distillation tokens kept apart: kept, dropped, or fresh where the checkpoint has none)."""
    old_p, new_p = prefix
    if POSEMB_KEY in restored and POSEMB_KEY in init:
        posemb, posemb_new = restored[POSEMB_KEY], init[POSEMB_KEY]
        grid = posemb[:, old_p:]
        n_new = posemb_new.shape[1] - new_p
        if grid.shape[1] != n_new:
            grid = interpolate_posembed(
                grid, n_new, False, method=resize, old_grid_shape=old_grid_shape, new_grid_shape=new_grid_shape
            )
        if new_p:
            rows = posemb[:, :new_p] if old_p == new_p else posemb_new[:, :new_p]
            grid = np.concatenate([rows, grid], axis=1)
        restored[POSEMB_KEY] = grid
    for key in (ROW_KEY, COL_KEY):
        if key in restored and key in init and restored[key].shape != init[key].shape:
            n = init[key].shape[0]
            restored[key] = resize_grid(restored[key][:, None], (n, 1), resize)[:, 0]
    for key, new in init.items():
        if key.endswith("/relative_bias") and key in restored and restored[key].shape != new.shape:
            restored[key] = resize_grid(restored[key], new.shape[:2], resize)


def _check_keys(restored: dict, init: dict, path: str, allow_missing: bool, allow_extra: bool) -> None:
    """The checkpoint has exactly the model's parameters, in its shapes (or says which do not fit)."""
    missing = sorted(init.keys() - restored.keys())
    extra = sorted(restored.keys() - init.keys())
    if missing and not allow_missing:
        raise CheckpointError(
            f"{path} lacks {len(missing)} parameter(s) the model has: {', '.join(missing)}. "
            "Is it a checkpoint for another architecture? Pass allow_missing=True to take them from init_params."
        )
    if extra and not allow_extra:
        raise CheckpointError(
            f"{path} has {len(extra)} parameter(s) the model lacks: {', '.join(extra)}. "
            "Is it a checkpoint for another architecture? Pass allow_extra=True to drop them."
        )
    for k in missing:
        log.warning("load_pretrained: %s not in checkpoint, keeping its initial value.", k)
        restored[k] = init[k]
    for k in extra:
        log.warning("load_pretrained: dropping %s from the checkpoint.", k)
        del restored[k]
    mismatched = [
        f"{k}: checkpoint {tuple(restored[k].shape)} vs model {tuple(init[k].shape)}"
        for k in sorted(init)
        if tuple(restored[k].shape) != tuple(init[k].shape)
    ]
    if mismatched:
        raise CheckpointError(
            f"{path} does not fit the model (a checkpoint for another architecture?): " + "; ".join(mismatched)
        )


# ----------------------------------------------------------------------------- the original's helpers


def inspect_params(*, params, expected, fail_if_extra=True, fail_if_missing=True):
    """Compares the parameter names of `params` with those of `expected` (values are not looked at).

    Empty sub-dicts count as names: Flax drops parameter-less layers (such as an identity
    `pre_logits`) when it serialises, so one that `expected` has and `params` lacks is put
    back into `params` as {} (in place, as the original did) rather than reported. Other
    missing or extra names are logged, and raise a CheckpointError (a ValueError) listing
    them when `fail_if_missing` / `fail_if_extra`. Returns `params`.
    """
    params_flat = flatten(params, keep_empty=True)
    expected_flat = flatten(expected, keep_empty=True)
    missing = expected_flat.keys() - params_flat.keys()
    extra = params_flat.keys() - expected_flat.keys()
    empty = {k for k in missing if isinstance(expected_flat[k], Mapping)}
    missing -= empty
    if empty:
        if not isinstance(params, dict):  # a FrozenDict: recover into a mutable copy
            params = dict(params)
        for k in sorted(empty):
            node = params
            *parents, leaf = k.split("/")
            for p in parents:
                child = node.get(p)
                if not isinstance(child, dict):
                    child = dict(child) if isinstance(child, Mapping) else {}
                    node[p] = child
                node = child
            node[leaf] = {}
        log.warning("inspect_params: put back parameter-less layers: %s", sorted(empty))
    if missing:
        log.info("inspect_params: missing from params: %s", sorted(missing))
    if extra:
        log.info("inspect_params: extra in params: %s", sorted(extra))
    if (missing and fail_if_missing) or (extra and fail_if_extra):
        raise CheckpointError(
            f"The parameters do not match the expected tree: missing {sorted(missing)}, extra {sorted(extra)} "
            f"(given {len(params_flat)} names, expected {len(expected_flat)})."
        )
    return params


def recover_tree(keys, values) -> dict:
    """The nested dict whose '/'-joined leaf names are `keys` and leaves `values` (e.g. an .npz's
    names and arrays), to look into a checkpoint without the code that wrote it."""
    return unflatten(dict(zip(keys, values, strict=True)))


def _file_size(path: str) -> int:
    if "://" in path:
        from tensorflow.io import gfile

        return int(gfile.stat(path).length)
    return os.path.getsize(path)


def copy(src, dst, progress=True, block_size=1024 * 1024 * 10) -> None:
    """Copies the file `src` to `dst` in blocks of `block_size` bytes; either may be a local path or
    one tf.io.gfile opens (gs://...). With `progress`, shows a progress bar when tqdm is
    installed, and logs the size copied either way. A local destination's directory is created.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    size = _file_size(src)
    if "://" not in dst:
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    bar = None
    if progress:
        try:
            import tqdm

            bar = tqdm.tqdm(total=size, unit="B", unit_scale=True, desc=os.path.basename(src))
        except ImportError:
            pass
    try:
        with open_file(src, "rb") as fin, open_file(dst, "wb") as fout:
            while block := fin.read(block_size):
                fout.write(block)
                if bar is not None:
                    bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()
    if progress:
        log.info("Copied %s (%.1f MB) to %s.", src, size / 1e6, dst)


def get_augreg_df(directory="gs://vit_models/augreg"):
    """The index of the AugReg checkpoints ("How to train your ViT?", Steiner et al. 2021) as a
    pandas DataFrame: DIRECTORY/index.csv, read through tf.io.gfile for remote directories.

    One row per fine-tuning run: the upstream model (`name`, e.g. 'B/16'), its pre-training
    (`ds`, `lr`, `aug`, `wd`, `do`, `sd`, accuracies `best_val`, `final_val`, `final_test`),
    the fine-tuning (`adapt_ds`, `adapt_lr`, `adapt_steps`, `adapt_resolution`,
    `adapt_final_val`, `adapt_final_test`), `params`, `infer_samples_per_sec`, and the two
    checkpoints, DIRECTORY/{filename}.npz and DIRECTORY/{adapt_filename}.npz. Select with
    pandas, e.g. `df.query('ds=="i21k"').sort_values('final_val')`.
    """
    import pandas as pd

    path = f"{os.fspath(directory).rstrip('/')}/index.csv"
    if "://" not in path and not os.path.isfile(path):
        raise CheckpointError(f"No AugReg index at {path}; the published one is gs://vit_models/augreg/index.csv.")
    try:
        with open_file(path, "r") as f:
            return pd.read_csv(f)
    except Exception as e:
        if "://" not in path:
            raise
        # no network, no permission, no such object
        raise CheckpointError(f"Cannot read {path} ({errors.error_line(e)}).") from None
