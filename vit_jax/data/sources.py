"""`get_source(config, split)`: the source a config names, from `config.dataset`.

- `digits`: scikit-learn's bundled 8x8 handwritten digits, split deterministically;
- a directory holding MNIST-family IDX files (`train-images-idx3-ubyte.gz`, ...);
- a directory in image-folder layout: `DIR/{train,test}/<class>/*.jpg|png`, of any size;
- any other string: a TFDS name, read from `config.tfds_data_dir`.

Digits, IDX files and small TFDS datasets of fixed-size images are held in memory
(`arrays.ArraySource`) and cropped on the device; image folders and larger TFDS datasets are
read by index and decoded on the host as each batch needs them (`streaming.StreamingSource`).
`config.train_split` / `config.test_split` take NAME or NAME[a:b] (a slice, rounded as TFDS
rounds) everywhere, and any TFDS split expression ('train[:98%]', 'train+validation') for TFDS.
"""

import logging
import os

from vit_jax.data.arrays import fixed_split, is_idx_dir, load_digits, load_idx_dir
from vit_jax.data.common import DATASET_FIX, DataError, split_slice
from vit_jax.data.decode import HostSpec
from vit_jax.data.folder import FolderReader, list_split, visible_dirs
from vit_jax.data.streaming import StreamingSource, default_workers
from vit_jax.utils import to_pair

log = logging.getLogger("vit_jax")


def host_size(config) -> tuple[int, int]:
    """The size the host makes every image of a streaming source: pp.resize, else pp.crop (the
    device then resizes to pp.crop where they differ)."""
    return to_pair(config.pp.get("resize") or config.pp.crop)


def host_spec(config) -> HostSpec:
    pp = config.pp
    return HostSpec(
        size=host_size(config),
        area_min=float(pp.area_min),
        flip=bool(pp.flip),
        eval_crop_pct=float(pp.get("eval_crop_pct") or 0.0),
    )


def data_workers(config) -> int:
    """Decode processes: config.data_workers, or one per core when unset."""
    workers = config.get("data_workers")
    return default_workers() if workers is None else int(workers)


def get_source(config, split: str, cache_dir: str | None = None):
    """The source of `split` ('train' or 'test') for `config.dataset`.

    With `config.train_examples` set, the training split is cut to that many examples
    (`balanced_subset`); the test split is always whole. `cache_dir` is where an image
    folder's listing may be cached when the folder itself is read-only (the run's workdir).
    """
    source = _get_source(config, split, cache_dir)
    source.check_labels(split)
    if split != "train" or config.get("train_examples") is None:
        return source
    return source.subset(config.train_examples, config.train_subset_seed)


def _get_source(config, split: str, cache_dir: str | None):
    name = config.dataset
    field, value = f"config.{split}_split", config[f"{split}_split"]
    if name == "digits":
        base, select = fixed_split(field, value, "digits")
        source = load_digits(base)
        return source.take(select(len(source)), field, value)
    looks_like_path = os.sep in name or name.startswith(".") or os.path.isdir(name)
    if looks_like_path:
        if os.path.exists(name) and not os.path.isdir(name):
            raise DataError(f"Dataset {name} is a file, not a directory. {DATASET_FIX}")
        if not os.path.isdir(name):
            raise DataError(f"Dataset directory {name} does not exist. {DATASET_FIX}")
        if not os.listdir(name):
            raise DataError(f"Dataset directory {name} is empty. {DATASET_FIX}")
        if is_idx_dir(name):
            base, select = fixed_split(field, value, f"the IDX directory {name}")
            source = load_idx_dir(name, base)
            return source.take(select(len(source)), field, value)
        return open_image_folder(config, name, value, field, cache_dir)
    from vit_jax.data.tfds_source import open_tfds

    return open_tfds(config, value, field, host_spec(config), data_workers(config))


def open_image_folder(config, directory: str, split: str, field: str, cache_dir: str | None = None):
    """DIR/<split>/<class>/**/<image> as a streaming source; class ids from the sorted class
    folder names of DIR/train. `split` is NAME or NAME[a:b] (a slice of the file list: class by
    class, names sorted)."""
    name, select = split_slice(split, field, f"the image folder {directory}")
    for d in (os.path.join(directory, "train"), os.path.join(directory, name)):
        if not os.path.isdir(d):
            have = ", ".join(visible_dirs(directory)) or "none"
            raise DataError(
                f"{field}={split!r}: image folder {directory} has no '{os.path.basename(d)}' split (it has: {have}); "
                f"expected {directory}/{{train,test}}/<class>/*.jpg|png."
            )
    listing, classes = list_split(directory, name, cache_dir)
    idx = select(len(listing))
    if not len(idx):
        raise DataError(f"{field}={split!r} selects no examples of the {len(listing)} in {listing.split_dir}.")
    reader = FolderReader(listing)
    if len(idx) != len(listing):
        reader = reader.select(range(idx.start, idx.stop))
    title = os.path.basename(os.path.normpath(directory))
    return StreamingSource(reader, len(classes), classes, title, host_spec(config), data_workers(config))
