"""The original release's .npz checkpoint format, and the parameter-tree helpers around it.

The published files are flat `np.savez` archives with '/'-joined keys written by
pre-Linen Flax: inside each encoder block the modules are numbered across types
(`LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`) and old
hybrid files store GroupNorm scale/bias as (1, 1, 1, C). `load` maps both to the Linen
tree; `save` writes the published layout back, so files round-trip and tools that
read the original files read ours.

A model built with `scan=True` stacks its blocks under `Transformer/encoderblock`
with a leading layer axis; `load(..., stacked=True)`, `save` and `stack_blocks` /
`unstack_blocks` convert between that and the per-block layout.
"""

import io
import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from vit_jax import errors

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


class CheckpointError(errors.UserError):
    """A checkpoint that cannot be read or does not fit the model."""


# ----------------------------------------------------------------------------- trees


def flatten(tree: Mapping, prefix: str = "", *, sep: str = "/", keep_empty: bool = False) -> dict[str, Any]:
    """Nested dict -> {'a/b/c': leaf}. Empty sub-dicts (parameter-less layers) vanish, or with
    `keep_empty` stay as {} leaves."""
    flat = {}
    for k, v in tree.items():
        path = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping) and (v or not keep_empty):
            flat.update(flatten(v, path, sep=sep, keep_empty=keep_empty))
        else:
            flat[path] = {} if isinstance(v, Mapping) else v
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


def open_file(path: str, mode: str):
    """A local file, or a remote one (gs://, s3:// ...) through tf.io.gfile."""
    if "://" in path:  # gs://, s3:// ...: the filesystems TensorFlow knows.
        from tensorflow.io import gfile

        return gfile.GFile(path, mode)
    return open(path, mode)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    path = os.fspath(path)
    if "://" not in path and not os.path.isfile(path):
        raise CheckpointError(
            f"Checkpoint file not found: {path}. The original ViTs are published on the Hugging Face Hub "
            "(vit_jax.pretrained.load('hf-hub:ORG/NAME'); the README lists them)."
        )
    try:
        with open_file(path, "rb") as f:
            data = f.read()
    except Exception as e:  # a remote path: no network, no permission, no such object
        raise CheckpointError(
            f"Cannot read {path} ({errors.error_line(e)}): a network or storage failure, not a damaged file. Check "
            "the connection and the path, or copy the file here and pass the local path."
        ) from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            flat = {k: np.asarray(npz[k]) for k in npz.files}
    except Exception as e:  # a damaged archive can fail in zipfile, zlib or numpy in many ways
        is_zip = data[:2] == b"PK"
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
        with open_file(path, "wb") as f:
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
