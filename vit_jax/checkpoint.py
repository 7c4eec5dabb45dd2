"""Checkpoints in the original release's .npz format, and fine-tuning surgery.

The published files are flat `np.savez` archives with '/'-joined keys written by
pre-Linen Flax: inside each encoder block the modules are numbered across types
(`LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`) and old
hybrid files store GroupNorm scale/bias as (1, 1, 1, C). `load` maps both to the Linen
tree; `save` writes the published layout back, so files round-trip and tools that
read the original files read ours.

A model built with `scan=True` stacks its blocks under `Transformer/encoderblock`
with a leading layer axis; `load(..., stacked=True)`, `save` and `load_pretrained`
convert between that and the per-block layout.
"""

import logging
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import scipy.ndimage

from vit_jax import parallel

log = logging.getLogger(__name__)

POSEMB_KEY = "Transformer/posembed_input/pos_embedding"
ROW_KEY = "Transformer/posembed_input/row_embedding"
COL_KEY = "Transformer/posembed_input/col_embedding"
RESIZE_METHODS = ("spline", "bilinear", "bicubic")
PUBLISHED_URL = "https://console.cloud.google.com/storage/vit_models/"

_MODULE_NUM = re.compile(r"^(.*)_(\d+)$")
_GROUPNORM = re.compile(r"(^|/)gn(\d+|_root|_proj)/(scale|bias)$")
_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/(.*)$")
# Linen name inside a block -> the name pre-Linen Flax gave it in the published files.
_LINEN_TO_PUBLISHED = {
    "LayerNorm_0": "LayerNorm_0",
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


# ----------------------------------------------------------------------------- trees


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a/b/c': leaf}; empty sub-dicts (parameter-less layers) vanish."""
    flat = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            flat.update(flatten(v, path))
        else:
            flat[path] = v
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    """{'a/b/c': leaf} -> nested dict."""
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def convert_pre_linen(tree: Any) -> Any:
    """Renumbers `Type_N` modules per type within each scope, as Linen names them.

    Pre-Linen Flax numbered submodules across types (`LayerNorm_0`,
    `MultiHeadDotProductAttention_1`, `LayerNorm_2`, ...); Linen counts per type
    (`LayerNorm_0`, `MultiHeadDotProductAttention_0`, `LayerNorm_1`). Linen trees are
    left unchanged.
    """
    if not isinstance(tree, Mapping):
        return tree

    def order(name):
        m = _MODULE_NUM.match(name)
        return (m.group(1), int(m.group(2))) if m else (name, -1)

    out, counts = {}, {}
    for name in sorted(tree, key=order):
        new = name
        m = _MODULE_NUM.match(name)
        if m:
            kind = m.group(1)
            new = f"{kind}_{counts.get(kind, 0)}"
            counts[kind] = counts.get(kind, 0) + 1
        out[new] = convert_pre_linen(tree[name])
    return out


def is_stacked(params: Mapping) -> bool:
    """True for the layout of a `scan=True` model (blocks stacked on a leading axis)."""
    return "encoderblock" in params.get("Transformer", {})


def stack_blocks(params: Mapping) -> dict:
    """Per-block tree (`encoderblock_{i}`) -> stacked tree (`encoderblock`, layer axis 0)."""
    params = dict(params)
    transformer = dict(params.get("Transformer", {}))
    idx = sorted(int(m.group(1)) for k in transformer if (m := re.fullmatch(r"encoderblock_(\d+)", k)))
    if not idx:
        return params
    if idx != list(range(len(idx))):
        raise CheckpointError(f"Encoder blocks are not numbered 0..{len(idx) - 1}: found {idx}.")
    blocks = [transformer.pop(f"encoderblock_{i}") for i in idx]
    transformer["encoderblock"] = jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *blocks)
    params["Transformer"] = transformer
    return params


def unstack_blocks(params: Mapping) -> dict:
    """Stacked tree (`encoderblock`, layer axis 0) -> per-block tree (`encoderblock_{i}`)."""
    if not is_stacked(params):
        return dict(params)
    params = dict(params)
    transformer = dict(params["Transformer"])
    stacked = transformer.pop("encoderblock")
    num_layers = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(num_layers):
        transformer[f"encoderblock_{i}"] = jax.tree.map(lambda a, i=i: np.asarray(a[i]), stacked)
    params["Transformer"] = transformer
    return params


# ----------------------------------------------------------------------------- files


def _open(path: str, mode: str):
    if "://" in path:  # gs://, s3:// ...: the filesystems TensorFlow knows.
        from tensorflow.io import gfile

        return gfile.GFile(path, mode)
    return open(path, mode)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    path = os.fspath(path)
    if "://" not in path and not os.path.isfile(path):
        raise CheckpointError(
            f"Checkpoint file not found: {path}. The original release's files are published at {PUBLISHED_URL}"
        )
    try:
        with _open(path, "rb") as f:
            with np.load(f, allow_pickle=False) as npz:
                flat = {k: np.asarray(npz[k]) for k in npz.files}
    except CheckpointError:
        raise
    except Exception as e:  # a damaged archive can fail in zipfile, zlib or numpy in many ways
        try:
            with _open(path, "rb") as f:
                is_zip = f.read(2) == b"PK"
        except Exception:
            is_zip = False
        why = f"{type(e).__name__}: {e}" if is_zip else "not a zip archive, which every .npz is"
        raise CheckpointError(
            f"{path} is not a readable .npz checkpoint ({why}); give a ViT .npz such as ViT-B_16.npz, or fetch "
            f"the file again if it was cut short."
        ) from None
    if not flat:
        raise CheckpointError(f"{path} holds no arrays; it is not a model checkpoint.")
    for k, v in flat.items():
        if v.dtype.kind not in "fiub":
            raise CheckpointError(f"{path}: entry {k!r} has dtype {v.dtype}, not numbers.")
    return flat


def load(path: str, *, stacked: bool = False) -> dict:
    """Reads an original-format .npz (or one written by `save`) as the Linen tree.

    Pre-Linen block names are renumbered and (1, 1, 1, C) GroupNorm parameters
    squeezed, so the result fits `VisionTransformer` directly. With `stacked=True`
    the blocks are stacked for a `scan=True` model.
    """
    flat = _read_npz(path)
    fixed = {}
    for k, v in flat.items():
        if _GROUPNORM.search(k) and v.ndim > 1:
            v = v.reshape(-1)
        fixed[k] = v
    try:
        params = convert_pre_linen(unflatten(fixed))
        return stack_blocks(params) if stacked else params
    except Exception as e:  # keys that do not form a parameter tree
        raise CheckpointError(f"{path} does not hold a model's parameter tree ({type(e).__name__}: {e}).") from None


def to_published_flat(params: Mapping) -> dict[str, np.ndarray]:
    """The flat '/'-keyed arrays exactly as the published files lay them out."""
    params = unstack_blocks(jax.device_get(params))
    flat = {}
    for k, v in flatten(params).items():
        v = np.asarray(v)
        if v.dtype.kind == "V" or v.dtype.name == "bfloat16":
            v = v.astype(np.float32)
        m = _BLOCK.match(k)
        if m:
            head, *rest = m.group(2).split("/")
            k = "/".join([f"Transformer/encoderblock_{m.group(1)}", _LINEN_TO_PUBLISHED.get(head, head), *rest])
        if _GROUPNORM.search(k) and v.ndim == 1:
            v = v.reshape(1, 1, 1, -1)
        flat[k] = v
    return flat


def save(params: Mapping, path: str) -> None:
    """Writes params in the published .npz layout; atomic for local paths."""
    flat = to_published_flat(params)
    path = os.fspath(path)
    if "://" in path:
        with _open(path, "wb") as f:
            np.savez(f, **flat)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **flat)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
        out = scipy.ndimage.zoom(grid, (nh / gh, nw / gw, 1), order=1)
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
) -> dict:
    """Adapts a pretrained checkpoint to the model that produced `init_params`.

    - the head always comes from `init_params` (a fresh classifier);
    - `pre_logits` is dropped when `model_config.representation_size` is None;
    - token <-> GAP: the `cls` parameter and the cls row of the position embedding
      are dropped, or taken fresh from `init_params`;
    - position embeddings (1-D, 2-D row/col tables, relative bias tables) are resized
      to the new grid with `resize` (default: the original's spline);
    - stacked (`scan`) and per-block layouts are converted to match `init_params`.
    A parameter missing from the checkpoint or left over is an error listing the keys,
    unless `allow_missing` (take it from `init_params`) or `allow_extra` (drop it).
    A shape that does not fit is always an error naming every mismatch.
    """
    restored = flatten(load(pretrained_path))
    init_is_stacked = is_stacked(init_params)
    init = flatten(unstack_blocks(jax.device_get(init_params)))

    for k in [k for k in restored if k.startswith("head/")]:
        del restored[k]
    restored.update({k: v for k, v in init.items() if k.startswith("head/")})

    representation = _field(model_config, "representation_size")
    has_pre_logits = any(k.startswith("pre_logits/") for k in restored)
    if representation is None and has_pre_logits:
        log.info("load_pretrained: dropping the checkpoint's pre_logits (representation_size is None).")
        restored = {k: v for k, v in restored.items() if not k.startswith("pre_logits/")}
    elif representation is not None and not has_pre_logits:
        log.info("load_pretrained: fresh pre_logits layer (the checkpoint has none).")
        restored.update({k: v for k, v in init.items() if k.startswith("pre_logits/")})

    old_cls, new_cls = "cls" in restored, "cls" in init
    if old_cls and not new_cls:
        del restored["cls"]
    elif new_cls and not old_cls:
        restored["cls"] = init["cls"]

    if POSEMB_KEY in restored and POSEMB_KEY in init:
        posemb, posemb_new = restored[POSEMB_KEY], init[POSEMB_KEY]
        grid = posemb[:, 1:] if old_cls else posemb
        n_new = posemb_new.shape[1] - int(new_cls)
        if grid.shape[1] != n_new:
            grid = interpolate_posembed(
                grid,
                n_new,
                False,
                method=resize,
                old_grid_shape=old_grid_shape,
                new_grid_shape=new_grid_shape,
            )
        if new_cls:
            cls_row = posemb[:, :1] if old_cls else posemb_new[:, :1]
            grid = np.concatenate([cls_row, grid], axis=1)
        restored[POSEMB_KEY] = grid

    for key in (ROW_KEY, COL_KEY):
        if key in restored and key in init and restored[key].shape != init[key].shape:
            n = init[key].shape[0]
            restored[key] = resize_grid(restored[key][:, None], (n, 1), resize)[:, 0]

    for key, new in init.items():
        if key.endswith("/relative_bias") and key in restored and restored[key].shape != new.shape:
            restored[key] = resize_grid(restored[key], new.shape[:2], resize)

    missing = sorted(init.keys() - restored.keys())
    extra = sorted(restored.keys() - init.keys())
    if missing and not allow_missing:
        raise CheckpointError(
            f"{pretrained_path} lacks {len(missing)} parameter(s) the model has: {', '.join(missing)}. "
            "Is it a checkpoint for another architecture? Pass allow_missing=True to take them from init_params."
        )
    if extra and not allow_extra:
        raise CheckpointError(
            f"{pretrained_path} has {len(extra)} parameter(s) the model lacks: {', '.join(extra)}. "
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
            f"{pretrained_path} does not fit the model (a checkpoint for another architecture?): "
            + "; ".join(mismatched)
        )

    out = unflatten({k: np.asarray(restored[k], dtype=np.asarray(init[k]).dtype) for k in init})
    return stack_blocks(out) if init_is_stacked else out


# ----------------------------------------------------------------------------- train-state checkpoints
#
# The run's own checkpoints (Orbax, asynchronous): parameters, optimizer state, step, and a
# JSON `meta` with the data position and a checksum of every array. Restore verifies the
# checksums and falls back to the newest intact checkpoint, moving a damaged one aside
# (nothing is deleted); a checkpoint of another model or optimizer is refused by name.

STATE_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"
LOCK_FILE = ".lock"


class CheckpointWriteError(CheckpointError):
    """A train-state checkpoint could not be written (disk full, permissions); older ones are intact."""


def _ocp():
    import orbax.checkpoint as ocp  # heavy: only the training run needs it

    return ocp


def state_manager(workdir: str, keep: int):
    """Orbax manager of `workdir/checkpoints`, keeping the newest `keep` steps."""
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, STATE_DIR)),
        options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )


def _uint_view(a):
    import jax.numpy as jnp

    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[a.dtype.itemsize]
    return jax.lax.bitcast_convert_type(a, width).astype(jnp.uint32)


@jax.jit
def _checksum_arrays(tree):
    """Per array: sum over elements of bits x (2 x flat index + 1), modulo 2**32.

    Integer arithmetic, so the value does not depend on how the array is split across
    devices or in which order XLA adds; the odd weights make every single-bit change and
    most moves of values change the sum.
    """
    import jax.numpy as jnp

    def one(a):
        u = _uint_view(a)
        index, stride = jnp.zeros(a.shape, jnp.uint32), 1
        for d in reversed(range(a.ndim)):
            index = index + jax.lax.broadcasted_iota(jnp.uint32, a.shape, d) * jnp.uint32(stride % 2**32)
            stride *= a.shape[d]
        return jnp.sum(u * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)

    return jax.tree.map(one, tree)


def state_checksums(state) -> dict[str, int]:
    """{array path: checksum} of a train state (on devices or host); see _checksum_arrays."""
    sums = jax.device_get(_checksum_arrays(state))
    return {parallel.path_name(p): int(v) for p, v in jax.tree_util.tree_flatten_with_path(sums)[0]}


@jax.jit
def _device_copy(tree):
    import jax.numpy as jnp

    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def save_state(mngr, state, meta: dict) -> None:
    """Starts an asynchronous save of `state` at step meta['step'], with its checksums in the meta.

    The live buffers are donated to the next step, so a snapshot is saved: on the host when
    this process holds the whole state, else a device copy (Orbax writes each process's
    shards). A failure of this or of the previous asynchronous write is a CheckpointWriteError.
    """
    ocp = _ocp()
    step = int(meta["step"])
    sums = state_checksums(state)
    if all(a.is_fully_addressable for a in jax.tree.leaves(state)):
        snapshot = jax.device_get(state)
    else:
        snapshot = _device_copy(state)
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(snapshot), meta=ocp.args.JsonSave({**meta, "checksums": sums})
    )
    try:
        mngr.save(step, args=args)
    except Exception as e:  # the message says what happened; the run stops here
        raise CheckpointWriteError(_write_failure(mngr, step, e)) from None


def finish_writes(mngr) -> None:
    """Waits for the asynchronous writes; a failed one is a CheckpointWriteError."""
    try:
        mngr.wait_until_finished()
    except Exception as e:
        raise CheckpointWriteError(_write_failure(mngr, None, e)) from None


def _write_failure(mngr, step, error: Exception) -> str:
    directory = str(mngr.directory)
    intact = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
    what = f"checkpoint step {step}" if step is not None else "a checkpoint"
    kept = (
        f"the checkpoints already written (steps {', '.join(map(str, intact))}) are intact"
        if intact
        else ("no earlier checkpoint exists")
    )
    return (
        f"Could not write {what} to {directory} ({type(error).__name__}: {error}); {kept}. Free disk space or fix "
        f"the directory's permissions, then run the same command to resume."
    )


def _paths_and_shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {parallel.path_name(p): (tuple(v.shape), str(v.dtype)) for p, v in flat}


def structure_mismatch(saved, target) -> str | None:
    """None when `saved` (checkpoint metadata) has the arrays of `target`, else what differs, by name."""
    have, want = _paths_and_shapes(saved), _paths_and_shapes(target)
    diffs = [
        f"{k} has shape {have[k][0]} there, {want[k][0]} here" for k in want if k in have and have[k][0] != want[k][0]
    ]
    diffs += [f"{k} is missing there" for k in want if k not in have]
    diffs += [f"{k} is there but not in this model" for k in have if k not in want]
    if not diffs:
        return None
    more = f"; and {len(diffs) - 5} more" if len(diffs) > 5 else ""
    return "; ".join(diffs[:5]) + more


def restore_state(workdir: str, target, keep: int) -> tuple[Any, dict] | None:
    """The newest intact checkpoint in `workdir`, restored onto `target`'s shapes and shardings.

    None when the workdir has no checkpoint. A checkpoint that cannot be read or whose
    checksums do not match is damaged: a warning names it, it is moved to
    `workdir/checkpoints_damaged/`, and the next older one is tried. A checkpoint written
    by another model or optimizer is a CheckpointError naming the differing arrays. When
    checkpoints exist but none is intact, that is a CheckpointError too: the run never
    starts from scratch silently.
    """
    ocp = _ocp()
    directory = os.path.join(workdir, STATE_DIR)
    # A directory another process may be creating right now must not send the processes down
    # different paths of collective calls: process 0's view decides.
    if not parallel.process_zero_says(os.path.isdir(directory)):
        return None
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), target)
    mngr = state_manager(workdir, keep)
    damaged: list[tuple[int, str]] = []
    try:
        for step in sorted(mngr.all_steps(), reverse=True):
            problem, result = None, None
            try:
                saved = mngr.item_metadata(step)["state"]
            except Exception as e:
                saved, problem = None, f"unreadable metadata ({parallel.error_line(e)})"
            if saved is not None:
                mismatch = structure_mismatch(saved, abstract)
                if mismatch is not None:  # every process reads the same metadata
                    raise CheckpointError(
                        f"The checkpoint at step {step} in {directory} was written by a different model or "
                        f"optimizer: {mismatch}. Run with the config that wrote it, or use another --workdir."
                    )
            elif problem is None:
                problem = "no array metadata"
            if problem is None:
                try:
                    restored = mngr.restore(
                        step,
                        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
                    )
                    result = (restored["state"], dict(restored["meta"]))
                    problem = _checksum_problem(result[0], result[1].get("checksums"))
                except Exception as e:
                    problem = parallel.error_line(e)
            if parallel.every_process(problem is None):  # all act alike
                return _with_step(result, step)
            damaged.append((step, problem or "damaged on another process"))
            _quiet_late_read_callbacks()
            log.warning(
                "Checkpoint step %d in %s is damaged (%s); trying an older one.", step, directory, damaged[-1][1]
            )
    finally:
        mngr.close()
        _move_aside(workdir, [s for s, _ in damaged])
    if damaged:
        raise CheckpointError(
            f"Every checkpoint in {directory} is damaged (steps {', '.join(str(s) for s, _ in damaged)}); they were "
            f"moved to {os.path.join(workdir, DAMAGED_DIR)}. Nothing was restored: run again to start from scratch "
            f"in this workdir, or restore the checkpoints from a copy."
        )
    return None


def _quiet_late_read_callbacks() -> None:
    """Silences the reads of a failed restore that finish after their event loop closed.

    When one array of a damaged checkpoint fails, the restore gives up while TensorStore is
    still reading the others; each of those reads then reports `RuntimeError: Event loop is
    closed` through sys.unraisablehook, a traceback apiece, hundreds for one damaged step.
    The warning above already says what happened, so exactly that error is dropped; every
    other unraisable exception still reaches the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_vit_jax_quiet", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            previous(unraisable)

    hook._vit_jax_quiet = True
    sys.unraisablehook = hook


def _with_step(result, step):
    state, meta = result
    meta.setdefault("step", step)
    return state, meta


def _checksum_problem(state, expected: dict[str, int] | None) -> str | None:
    if not expected:  # written before checksums were recorded
        return None
    got = state_checksums(state)
    bad = [k for k, v in expected.items() if got.get(k) != v]
    if not bad:
        return None
    return f"checksum mismatch in {len(bad)} array(s), first {bad[0]}"


def _move_aside(workdir: str, steps: list[int]) -> None:
    """Moves damaged step directories to workdir/checkpoints_damaged/ (process 0; every process waits)."""
    if not steps:
        return
    if jax.process_index() == 0:
        target_dir = os.path.join(workdir, DAMAGED_DIR)
        os.makedirs(target_dir, exist_ok=True)
        for step in steps:
            src = os.path.join(workdir, STATE_DIR, str(step))
            dst = os.path.join(target_dir, str(step))
            n = 1
            while os.path.exists(dst):
                dst, n = os.path.join(target_dir, f"{step}.{n}"), n + 1
            if os.path.exists(src):
                os.replace(src, dst)
                log.warning("Moved damaged checkpoint %s to %s.", src, dst)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vit_jax checkpoints moved aside")


class WorkdirLock:
    """An exclusive lock on a workdir while a run uses it (`workdir/.lock`, flock).

    The operating system releases it when the holding process ends, however it ends, so a
    killed run's lock is taken over by the next one. The file records who holds it, for
    the message a second run gets.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        import fcntl
        import socket
        import time

        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CheckpointError(
                f"Workdir {os.path.dirname(self.path)} is in use by another run ({holder}). Wait for it to end, "
                f"or use another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
