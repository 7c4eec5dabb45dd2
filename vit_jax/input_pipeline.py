"""Data sources and per-host batching: the file readers.

A source is an in-memory split of uint8 images (N, H, W, C) with int labels
(`ArraySource`), or a TFDS split streamed with tf.data (`TfdsSource`); each batches
itself (`train_batches`, `eval_batches`). The host side only selects and stacks
examples: which examples form the batch of step s is a pure function of (seed, s), so a
run resumed at step s reads exactly what the uninterrupted run read. Augmentation runs
on the device inside the jitted step (`vit_jax.preprocess`).

`config.dataset` is one of:
- `digits`: scikit-learn's bundled 8x8 handwritten digits, split deterministically;
- a directory holding MNIST-family IDX files (`train-images-idx3-ubyte.gz`, ...);
- a directory in image-folder layout: `DIR/{train,test}/<class>/*.jpg|png`;
- any other string: a TFDS name, read from `config.tfds_data_dir`.

`config.train_split` / `config.test_split` take any TFDS split expression ('train[:98%]',
'train+validation', ...) for TFDS datasets, and NAME or NAME[a:b] for the sources held in
memory (a slice of the split, rounded as TFDS rounds). The end of the module keeps the
original release's functions (`get_datasets`, `get_data`, ...) for code written for it.
"""

import dataclasses
import gzip
import importlib.util
import logging
import math
import os
import re
import struct
from collections.abc import Iterator

import numpy as np

from vit_jax import errors
from vit_jax.utils import to_pair

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_NAMES = tuple(name for pair in IDX_FILES.values() for name in pair)
DIGITS_TEST_FRACTION = 0.2


class DataError(errors.UserError):
    """A dataset that is missing, empty or malformed; the message says how to fix it."""


DATASET_FIX = (
    "Set --config.dataset to a directory of IDX files (as MNIST and Fashion-MNIST ship), a directory of "
    "image folders (<dir>/{train,test}/<class>/*.jpg|png), 'digits', or a TFDS dataset name."
)
IDX_FIX = "fetch the file again from its source."


@dataclasses.dataclass
class ArraySource:
    """One split held in memory: uint8 images (N, H, W, C) and int32 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.labels)

    def check_labels(self, split: str) -> None:
        """Every label is a class id in 0..num_classes-1 (one_hot would silently zero the others)."""
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= self.num_classes))
        if len(bad):
            i = int(bad[0])
            raise DataError(
                f"{self.name} {split}: {len(bad)} label(s) outside 0..{self.num_classes - 1} (first: label "
                f"{int(self.labels[i])} at example {i}); the labels do not match the dataset's {self.num_classes} "
                f"classes: fix the label file so every label is a class id from 0 to {self.num_classes - 1}."
            )

    def take(self, idx, field: str, value: str) -> "ArraySource":
        """The examples at `idx` (a split slice); selecting none is the user's mistake, said in one line."""
        if not len(idx):
            raise DataError(f"{field}={value!r} selects no examples of {self.name} (that split has {len(self)}).")
        if len(idx) == len(self):
            return self
        idx = np.asarray(idx)
        return dataclasses.replace(self, images=self.images[idx], labels=self.labels[idx])

    def subset(self, n: int, seed: int) -> "ArraySource":
        """`n` examples with balanced classes (`balanced_subset`), for data-size ablations."""
        if not 0 < n <= len(self):
            raise DataError(
                f"config.train_examples={n}: the training split of {self.name} has {len(self)} examples; "
                f"use a number from 1 to {len(self)}."
            )
        idx = balanced_subset(self.labels, n, seed)
        return dataclasses.replace(self, images=self.images[idx], labels=self.labels[idx])

    def train_batches(
        self, *, batch: int, seed: int, start_step: int = 0, process_index: int = 0, process_count: int = 1, rows=None
    ) -> Iterator[dict[str, np.ndarray]]:
        """This process's rows of every global training batch from `start_step` on (see `batch_rows`).

        The global batch of step s is `global_batch_indices(seed, s, ...)`: the same whatever
        the process count, so a run resumed with another count continues the same stream.
        """
        start_row, stop_row = batch_rows(batch, process_index, process_count, rows)
        step = start_step
        while True:
            idx = global_batch_indices(seed, step, len(self), batch)[start_row:stop_row]
            yield {"image": self.images[idx], "label": self.labels[idx]}
            step += 1

    def eval_batches(self, *, batch: int, process_index: int = 0, process_count: int = 1, rows=None):
        """Every example once, in order, in padded batches with a `mask` (see `batch_rows`)."""
        start_row, stop_row = batch_rows(batch, process_index, process_count, rows)
        n = len(self)
        for b in range(max(math.ceil(n / batch), 1)):
            idx = np.arange(b * batch, (b + 1) * batch)[start_row:stop_row]
            valid = idx < n
            idx = np.where(valid, idx, 0)
            yield {"image": self.images[idx], "label": self.labels[idx], "mask": valid.astype(np.float32)}


# ----------------------------------------------------------------------------- split slices

_SLICE_RE = re.compile(r"([\w-]+)(?:\[(-?\d+(?:\.\d+)?)?(%?):(-?\d+(?:\.\d+)?)?(%?)\])?")
_ONLY_SLICES = (
    "only NAME or NAME[a:b] work there (a, b integers or percentages, e.g. 'train[:90%]'); full split "
    "expressions such as 'train+test' work for TFDS datasets"
)


def split_slice(value: str, field: str, what: str = "this dataset"):
    """NAME or NAME[a:b] -> (NAME, select); `select(n)` is the range of a split of n examples
    that the slice takes. As in TFDS: a percent bound is rounded to the closest example (ties to
    even, Python's `round`), a bound may be negative, and one beyond the split is an error."""
    m = _SLICE_RE.fullmatch(value) if isinstance(value, str) else None
    percent = bool(m and (m[3] or m[5]))
    bounds = (m[2], m[4]) if m else ()
    if not m or ("[" in value and not any(bounds)) or (not percent and "." in "".join(b or "" for b in bounds)):
        raise DataError(f"{field}={value!r}: {what} is held in memory, where {_ONLY_SLICES}.")

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


# ----------------------------------------------------------------------------- sources


def digits_file() -> str:
    """Where scikit-learn keeps the digits it bundles: `datasets/data/digits.csv.gz`.

    Found without importing scikit-learn: its import (scipy with it) made a tiny 8-step run with
    its programs in the compilation cache, of which the test suite starts dozens, take 6.0 s
    instead of 4.8 (three runs each, alternated, on the 2-core machine).
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None:
        path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
        if os.path.exists(path):
            return path
    raise DataError("The digits dataset comes with scikit-learn (requirements.txt), which is not installed")


def load_digits(split: str) -> ArraySource:
    """scikit-learn's bundled digits (1,797 8x8 images), 80/20 split by a fixed permutation.

    Read from the file itself, as `sklearn.datasets.load_digits` reads it: 1,797 rows of 64
    pixel values in 0..16, then the label.
    """
    with gzip.open(digits_file(), "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    images = np.round(table[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = table[:, -1].astype(np.int32)
    order = np.random.default_rng(0).permutation(len(labels))
    n_test = int(round(len(labels) * DIGITS_TEST_FRACTION))
    idx = order[n_test:] if split == "train" else order[:n_test]
    return ArraySource(images[idx], labels[idx], 10, [str(i) for i in range(10)], "digits")


def read_idx(path: str) -> np.ndarray:
    """Reads a (gzipped) IDX file: uint8 images (N, rows, cols) or labels (N,)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"Cannot read IDX file {path} ({e}); {IDX_FIX}") from None
    if len(data) < 8:
        raise DataError(f"{path} is too short to be an IDX file; {IDX_FIX}")
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2049:
        arr = np.frombuffer(data, np.uint8, count=count, offset=8) if len(data) >= 8 + count else None
        shape = (count,)
    elif magic == 2051:
        if len(data) < 16:
            raise DataError(f"{path} is truncated: its header is incomplete; {IDX_FIX}")
        rows, cols = struct.unpack(">II", data[8:16])
        n = count * rows * cols
        arr = np.frombuffer(data, np.uint8, count=n, offset=16) if len(data) >= 16 + n else None
        shape = (count, rows, cols)
    else:
        raise DataError(f"{path} is not an IDX file of uint8 images or labels (magic number {magic}); {IDX_FIX}")
    if arr is None:
        raise DataError(f"{path} is truncated: its header announces {count} entries; {IDX_FIX}")
    return arr.reshape(shape)


def _find_idx(directory: str, name: str) -> str | None:
    """`name` (gzipped) in `directory`, or the same file un-gzipped; None when neither is there."""
    for candidate in (name, name.removesuffix(".gz")):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _idx_path(directory: str, name: str) -> str:
    path = _find_idx(directory, name)
    if path is None:
        raise DataError(
            f"IDX directory {directory} lacks {name} (or {name.removesuffix('.gz')}); it needs all four files: "
            f"{', '.join(IDX_NAMES)}."
        )
    return path


def load_idx_dir(directory: str, split: str) -> ArraySource:
    image_file, label_file = IDX_FILES[split]
    images = read_idx(_idx_path(directory, image_file))
    labels = read_idx(_idx_path(directory, label_file)).astype(np.int32)
    if len(images) != len(labels):
        raise DataError(f"{directory}: {len(images)} {split} images but {len(labels)} labels.")
    name = os.path.basename(os.path.normpath(directory))
    return ArraySource(images[..., None], labels, 10, [str(i) for i in range(10)], name)


def _is_idx_dir(directory: str) -> bool:
    """Holds any of the MNIST-family files, gzipped or not."""
    return any(_find_idx(directory, name) for name in IDX_NAMES)


def _class_dirs(split_dir: str) -> list[str]:
    return sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))


def decode_image(path: str, size: tuple[int, int] | None) -> np.ndarray:
    """Decodes an image file to uint8 RGB (H, W, 3), resized to `size` if given."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # grayscale, palette and RGBA all become RGB
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"Cannot read image {path} ({e}); replace or remove the file.") from None
    except Exception as e:  # a damaged file can fail deep inside a decoder in any way
        raise DataError(f"Cannot read image {path} ({type(e).__name__}: {e}); replace or remove the file.") from None


def available_memory() -> int | None:
    """Bytes of physical memory free now (Linux and macOS), or None where unknown."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits_in_memory(split_dir: str, count: int, size: tuple[int, int] | None) -> None:
    """Image folders are decoded into memory: a size that cannot fit is an error before any decode,
    not a process the kernel kills minutes later."""
    free = available_memory()
    if size is None or not free:
        return
    need = count * size[0] * size[1] * 3
    if need > 0.8 * free:
        raise DataError(
            f"{split_dir}: {count} images decoded at {size[0]}x{size[1]} need {need / 2**30:.1f} GiB of memory, "
            f"more than the {free / 2**30:.1f} GiB free; lower config.pp.resize (or config.pp.crop)."
        )


def _folder_classes(split_dir: str) -> list[str]:
    """Class names of a split folder: those of its sibling train/ when there is one (class ids
    must mean the same in every split), else its own."""
    train_dir = os.path.join(os.path.dirname(os.path.normpath(split_dir)), "train")
    if not os.path.isdir(train_dir):
        train_dir = split_dir
    classes = _class_dirs(train_dir)
    if not classes:
        raise DataError(f"{train_dir} has no class folders; expected {train_dir}/<class>/*.jpg|png.")
    unknown = sorted(set(_class_dirs(split_dir)) - set(classes))
    if unknown:
        raise DataError(
            f"{split_dir} has classes that train lacks: {', '.join(unknown)}; add them to {train_dir} "
            f"or remove them from {split_dir}."
        )
    return classes


def _folder_files(split_dir: str, classes: list[str], strict: bool) -> tuple[list[str], list[int]]:
    """Image paths of a split folder, class by class, sorted by name within each, and their labels."""
    paths, labels = [], []
    for label, cls in enumerate(classes):
        cls_dir = os.path.join(split_dir, cls)
        if not os.path.isdir(cls_dir):
            continue
        files = sorted(f for f in os.listdir(cls_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files and strict:
            raise DataError(
                f"Class folder {cls_dir} has no images (.jpg, .png, ...); add its images or remove the folder."
            )
        paths += [os.path.join(cls_dir, f) for f in files]
        labels += [label] * len(files)
    return paths, labels


def load_image_folder(directory: str, split: str, size: tuple[int, int], field: str = "split") -> ArraySource:
    """DIR/{train,test}/<class>/*.jpg|png; class ids from the sorted train class names.

    `split` is NAME or NAME[a:b] (`split_slice`): the slice applies to the split's file list
    (class by class, sorted names), before anything is decoded.
    """
    name, select = split_slice(split, field, f"the image folder {directory}")
    train_dir, split_dir = os.path.join(directory, "train"), os.path.join(directory, name)
    for d in (train_dir, split_dir):
        if not os.path.isdir(d):
            have = ", ".join(_class_dirs(directory)) or "none"
            raise DataError(
                f"{field}={split!r}: image folder {directory} has no '{os.path.basename(d)}' split (it has: {have}); "
                f"expected {directory}/{{train,test}}/<class>/*.jpg|png."
            )
    classes = _folder_classes(split_dir)
    paths, labels = _folder_files(split_dir, classes, strict=name == "train")
    if not paths:
        raise DataError(f"{split_dir} holds no images.")
    idx = select(len(paths))
    if not len(idx):
        raise DataError(f"{field}={split!r} selects no examples of the {len(paths)} in {split_dir}.")
    paths, labels = paths[idx.start : idx.stop], labels[idx.start : idx.stop]
    _check_fits_in_memory(split_dir, len(paths), size)
    images = np.stack([decode_image(p, size) for p in paths])
    return ArraySource(images, np.asarray(labels, np.int32), len(classes), classes, os.path.basename(directory))


# ----------------------------------------------------------------------------- TFDS


def _tf():
    """TensorFlow for tf.data only: hidden from the GPUs, which belong to JAX."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    return tf


def _tf_resize_uint8(im, size: tuple[int, int]):
    """A decoded image resized (antialiased) to `size` and rounded back to uint8, on the host."""
    tf = _tf()
    im = tf.image.resize(im, size, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(im), 0, 255), tf.uint8)


def _tfds_builder(config):
    """The prepared builder of `config.dataset`; downloads only where `config.tfds_download` allows
    (fields read with `.get`, so the original release's configs, which lack it, never download)."""
    import tensorflow_datasets as tfds

    name = config["dataset"]
    try:
        builder = tfds.builder(name, data_dir=config.get("tfds_data_dir"))
    except Exception as e:  # DatasetNotFoundError and friends
        raise DataError(_tfds_missing(config, errors.error_line(e))) from None
    if not builder.is_prepared():
        if not config.get("tfds_download"):
            raise DataError(_tfds_missing(config, "it is not prepared there"))
        dl_config = tfds.download.DownloadConfig(manual_dir=config.get("tfds_manual_dir"))
        try:
            builder.download_and_prepare(download_config=dl_config)
        except Exception as e:  # no network, a refused URL, a missing manual download
            raise DataError(
                f"Downloading TFDS dataset {name!r} failed ({errors.error_line(e)}). "
                f"Check the network, or prepare it on a machine with network access (`tfds build "
                f"{name} --data_dir DIR`) and set --config.tfds_data_dir=DIR."
            ) from None
    return builder


def _tfds_missing(config, why: str) -> str:
    data_dir = config.get("tfds_data_dir") or "the TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    return (
        f"TFDS dataset {config['dataset']!r} was not found in {data_dir} ({why}). Prepare it on a machine with "
        f"network access (`tfds build {config['dataset']} --data_dir DIR`, with --manual_dir for ImageNet) and set "
        "--config.tfds_data_dir=DIR, or set --config.tfds_download=True to let this run download it."
    )


def _tfds_examples(builder, split, field: str) -> int:
    """Examples in `split`, a split name or any TFDS split expression (TFDS counts them from its
    metadata); an unreadable expression, an unknown split or an empty selection is one line."""
    splits = builder.info.splits
    have = ", ".join(f"{k} ({v.num_examples} examples)" for k, v in splits.items())
    try:
        n = splits[split].num_examples
    except Exception as e:  # ValueError, KeyError, NotImplementedError ('all[:5]'), over many lines
        why = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
        raise DataError(
            f"{field}={split!r}: TFDS dataset {builder.name!r} cannot read that split ({why}); its splits are "
            f"{have}. Use one of them or a TFDS split expression such as 'train[:90%]' or 'train+test'."
        ) from None
    if not n:
        raise DataError(f"{field}={split!r} selects no examples of TFDS dataset {builder.name!r} (its splits: {have}).")
    return n


class TfdsSource:
    """A TFDS split streamed with tf.data; images resized on the host to `size`."""

    def __init__(self, config, split: str, size: tuple[int, int], field: str = "split"):
        """`split`: any TFDS split expression; `field` names where it was set, for the messages."""
        self.builder = _tfds_builder(config)
        self.config = config
        self.split_name = split
        self.size = size
        label = self.builder.info.features["label"]
        self.num_classes = label.num_classes
        self.class_names = list(label.names)
        self.name = config["dataset"]
        self.num_examples = _tfds_examples(self.builder, split, field)

    def __len__(self) -> int:
        return self.num_examples

    def part_sizes(self, process_count: int) -> list[int]:
        """Examples in each process's part of the split. TFDS splits each piece of an expression
        evenly, so the parts of 'a[3:-4]+b[:5]' may differ by more than one."""
        import tensorflow_datasets as tfds

        parts = (
            tfds.split_for_jax_process(self.split_name, process_index=i, process_count=process_count)
            for i in range(process_count)
        )
        return [self.builder.info.splits[p].num_examples for p in parts]

    def dataset(self, *, process_index: int, process_count: int, shuffle_seed: int | None):
        import tensorflow_datasets as tfds

        tf = _tf()
        split = tfds.split_for_jax_process(self.split_name, process_index=process_index, process_count=process_count)
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, skip_prefetch=True)
        ds = self.builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None, read_config=read_config)
        options = tf.data.Options()
        options.deterministic = True
        ds = ds.with_options(options)
        h, w = self.size

        def prep(ex):
            im = ex["image"]
            if im.shape[-1] == 1:
                im = tf.image.grayscale_to_rgb(im)
            return {"image": _tf_resize_uint8(im[..., :3], (h, w)), "label": ex["label"]}

        return ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def check_labels(self, split: str) -> None:
        """Nothing to do: TFDS's ClassLabel feature only holds ids of its own classes."""

    def subset(self, n: int, seed: int):
        raise DataError(
            f"config.train_examples={n} needs a dataset held in memory (a directory or digits); for a "
            f"TFDS dataset slice the split instead, e.g. --config.train_split='train[:{n}]'."
        )

    def train_batches(
        self, *, batch: int, seed: int, start_step: int = 0, process_index: int = 0, process_count: int = 1, rows=None
    ) -> Iterator[dict[str, np.ndarray]]:
        """This process's rows of every training batch from `start_step` on: each process reads its
        own part of the split, shuffled within each epoch (then repeated), so every epoch sees every
        example once."""
        start_row, stop_row = batch_rows(batch, process_index, process_count, rows)
        ds = self.dataset(process_index=process_index, process_count=process_count, shuffle_seed=seed)
        n_local = self.part_sizes(process_count)[process_index]
        ds = ds.shuffle(min(max(n_local, 1), 10_000), seed=seed, reshuffle_each_iteration=True).repeat()
        ds = ds.batch(stop_row - start_row, drop_remainder=True).skip(start_step).prefetch(2)
        for ex in ds.as_numpy_iterator():
            yield {"image": ex["image"], "label": ex["label"].astype(np.int32)}

    def eval_batches(self, *, batch: int, process_index: int = 0, process_count: int = 1, rows=None):
        """This process's part of the split once, in padded batches with a `mask`; every process
        yields the same number of batches (enough for the largest part) so the collective eval
        steps line up."""
        start_row, stop_row = batch_rows(batch, process_index, process_count, rows)
        local = stop_row - start_row
        ds = self.dataset(process_index=process_index, process_count=process_count, shuffle_seed=None)
        num_batches = max(math.ceil(max(self.part_sizes(process_count)) / local), 1)
        it = ds.batch(local).as_numpy_iterator()
        for _ in range(num_batches):
            ex = next(it, None)
            if ex is None:
                ex = {"image": np.zeros((0, *self.size, 3), np.uint8), "label": np.zeros((0,), np.int32)}
            k = len(ex["label"])
            pad = local - k
            yield {
                "image": np.concatenate([ex["image"], np.zeros((pad, *ex["image"].shape[1:]), np.uint8)]),
                "label": np.concatenate([ex["label"].astype(np.int32), np.zeros(pad, np.int32)]),
                "mask": np.concatenate([np.ones(k, np.float32), np.zeros(pad, np.float32)]),
            }


# ----------------------------------------------------------------------------- selection


def storage_size(config) -> tuple[int, int]:
    """Size variable-size sources are decoded to on the host (pp.resize, else pp.crop)."""
    size = config.pp.resize or config.pp.crop
    return to_pair(size)


def get_source(config, split: str):
    """The source of `split` ('train' or 'test') for `config.dataset`.

    With `config.train_examples` set, the training split is cut to that many examples
    (`balanced_subset`); the test split is always whole.
    """
    source = _get_source(config, split)
    source.check_labels(split)
    if split != "train" or config.train_examples is None:
        return source
    return source.subset(config.train_examples, config.train_subset_seed)


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of `n` examples with the classes as even as the data allows, sorted.

    Each class's examples are shuffled (by `seed`); the subset takes them round-robin
    over the classes (the first of every class, then the second, ...), so the class
    counts differ by at most one unless a class runs out. Nested: a smaller subset
    with the same seed is contained in a larger one.
    """
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[rng.permutation(members)] = np.arange(len(members))
    order = np.lexsort((labels, rank))  # by rank within the class, then by class
    return np.sort(order[:n])


def _fixed_split(field: str, value: str, what: str):
    """Digits and IDX directories have a train and a test split, and slices of them (`split_slice`)."""
    try:
        name, select = split_slice(value, field, what)
    except DataError:
        name = None
    if name not in ("train", "test"):
        raise DataError(
            f"{field}={value!r}: {what} has fixed train and test splits, NAME being train or test; {_ONLY_SLICES}. "
            "(config.train_examples takes a class-balanced subset.)"
        )
    return name, select


def _get_source(config, split: str):
    name = config.dataset
    field, value = f"config.{split}_split", config[f"{split}_split"]
    if name == "digits":
        base, select = _fixed_split(field, value, "digits")
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
        if _is_idx_dir(name):
            base, select = _fixed_split(field, value, f"the IDX directory {name}")
            source = load_idx_dir(name, base)
            return source.take(select(len(source)), field, value)
        return load_image_folder(name, value, storage_size(config), field=field)
    return TfdsSource(config, value, storage_size(config), field=field)


# ----------------------------------------------------------------------------- batching


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_batch_indices(seed: int, step: int, n: int, batch: int) -> np.ndarray:
    """Example indices of the global batch of `step`: epochs of fixed-seed permutations.

    Example k of the stream is permutation(epoch = k // n)[k % n]; batches are
    consecutive slices of that stream, so batch s is a function of (seed, s).
    """
    start = step * batch
    ks = np.arange(start, start + batch)
    epochs = ks // n
    out = np.empty(batch, np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = epoch_permutation(seed, int(e), n)[ks[sel] % n]
    return out


def batch_rows(batch: int, process_index: int, process_count: int, rows) -> tuple[int, int]:
    """[start, stop) of the global batch this process reads.

    `rows` comes from the batch sharding (`parallel.local_rows`); without it, the
    process_index-th of process_count equal slices. The last evaluation batch is padded
    (mask 0) rather than dropped, so every example is counted exactly once.
    """
    if rows is not None:
        return int(rows[0]), int(rows[1])
    local = batch // process_count
    return process_index * local, (process_index + 1) * local


# The original release's functions (get_dataset_info, get_data_from_tfds, get_datasets, get_data,
# prefetch, ...) live in input_pipeline_original.py and are importable from here, as they were.
from vit_jax.input_pipeline_original import (  # noqa: E402
    get_data,
    get_data_from_directory,
    get_data_from_tfds,
    get_dataset_info,
    get_datasets,
    get_directory_info,
    get_tfds_info,
    prefetch,
)

__all__ = [
    "get_data",
    "get_data_from_directory",
    "get_data_from_tfds",
    "get_dataset_info",
    "get_datasets",
    "get_directory_info",
    "get_tfds_info",
    "prefetch",
]
