"""The sources held in memory: scikit-learn's digits and MNIST-family IDX files.

Small, fixed-size images (N, H, W, C) uint8 with int32 labels (`ArraySource`). Every crop,
flip and augmentation of theirs runs on the device inside the train step
(`vit_jax.preprocess`), so a batch is a gather of rows.
"""

import dataclasses
import gzip
import importlib.util
import os
import struct
from collections.abc import Iterator

import numpy as np

from vit_jax.data.common import DataError, split_slice
from vit_jax.data.index import batch_rows, eval_rows, global_batch_indices

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_NAMES = tuple(name for pair in IDX_FILES.values() for name in pair)
DIGITS_TEST_FRACTION = 0.2
IDX_FIX = "fetch the file again from its source."
_ONLY_FIXED = (
    "only NAME or NAME[a:b] work there (a, b integers or percentages, e.g. 'train[:90%]'); full split "
    "expressions such as 'train+test' work for TFDS datasets"
)


@dataclasses.dataclass
class ArraySource:
    """One split held in memory: uint8 images (N, H, W, C) and int32 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: list[str]
    name: str
    # Crops and flips of training images run on the device (vit_jax.preprocess); a streaming
    # source crops on the host instead and says so here.
    host_crop = False

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
        return self.select(np.asarray(idx))

    def select(self, idx: np.ndarray) -> "ArraySource":
        """The examples at indices `idx`, in that order."""
        return dataclasses.replace(self, images=self.images[idx], labels=self.labels[idx])

    def subset(self, n: int, seed: int) -> "ArraySource":
        """`n` examples with balanced classes (`balanced_subset`), for data-size ablations."""
        check_subset_size(n, len(self), self.name)
        return self.select(balanced_subset(self.labels, n, seed))

    def first_images(self, n: int) -> np.ndarray:
        """The first `n` images as the evaluation reads them (here: as stored)."""
        return self.images[:n]

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
        for idx, valid in eval_rows(len(self), batch, start_row, stop_row):
            yield {"image": self.images[idx], "label": self.labels[idx], "mask": valid.astype(np.float32)}


def check_subset_size(n: int, size: int, name: str) -> None:
    if not 0 < n <= size:
        raise DataError(
            f"config.train_examples={n}: the training split of {name} has {size} examples; "
            f"use a number from 1 to {size}."
        )


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


def fixed_split(field: str, value: str, what: str):
    """Digits and IDX directories have a train and a test split, and slices of them (`split_slice`)."""
    try:
        name, select = split_slice(value, field, what)
    except DataError:
        name = None
    if name not in ("train", "test"):
        raise DataError(
            f"{field}={value!r}: {what} has fixed train and test splits, NAME being train or test; {_ONLY_FIXED}. "
            "(config.train_examples takes a class-balanced subset.)"
        )
    return name, select


# ----------------------------------------------------------------------------- digits


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


# ----------------------------------------------------------------------------- IDX files


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


def is_idx_dir(directory: str) -> bool:
    """Holds any of the MNIST-family files, gzipped or not."""
    return any(_find_idx(directory, name) for name in IDX_NAMES)
