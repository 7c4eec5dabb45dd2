"""Image folders of any size: `DIR/{train,test}/<class>/**/<image>`, listed once, read on demand.

A split folder is listed into compact arrays (every file's path below the split folder, as
one byte string with offsets, and its label): nothing is decoded before training starts and
the host keeps a few dozen bytes per file. Class ids come from the sorted class folder names
of `DIR/train`, so they mean the same in every split. Files in subfolders of a class folder
belong to that class. What is not an image is skipped: hidden files and folders (`.DS_Store`,
`.ipynb_checkpoints`), and files whose suffix is not an image's (a README, a labels.csv).

The listing is cached in `DIR/.vit_jax/` (or, where DIR is read-only, in the run's workdir)
with the modification time of every folder it read: a later run stats the folders (ImageNet:
about a thousand) instead of listing 1.28 million files, and lists again when any folder
changed, since a file added, removed or renamed changes its folder's time.
"""

import json
import logging
import os

import numpy as np

from vit_jax.data.common import IMAGE_EXTENSIONS, DataError

log = logging.getLogger(__name__)

CACHE_DIR = ".vit_jax"
CACHE_VERSION = 1
FOLDER_FIX = "expected {d}/<class>/*.jpg|png."


def visible_dirs(directory: str) -> list[str]:
    """Sorted names of the folders in `directory`, hidden ones left out."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def folder_classes(split_dir: str) -> list[str]:
    """Class names of a split folder: those of its sibling train/ when there is one (class ids
    must mean the same in every split), else its own."""
    train_dir = os.path.join(os.path.dirname(os.path.normpath(split_dir)), "train")
    if not os.path.isdir(train_dir):
        train_dir = split_dir
    classes = visible_dirs(train_dir)
    if not classes:
        raise DataError(f"{train_dir} has no class folders; {FOLDER_FIX.format(d=train_dir)}")
    unknown = sorted(set(visible_dirs(split_dir)) - set(classes))
    if unknown:
        raise DataError(
            f"{split_dir} has classes that train lacks: {', '.join(unknown)}; add them to {train_dir} "
            f"or remove them from {split_dir}."
        )
    return classes


def _scan_class(split_dir: str, cls: str, stamps: dict[str, int]) -> tuple[list[str], int]:
    """Image paths below one class folder (relative to the split folder, sorted) and the count of
    other files; records each folder's modification time in `stamps`."""
    found, skipped, pending = [], 0, [cls]
    while pending:
        rel = pending.pop()
        path = os.path.join(split_dir, rel)
        stamps[rel] = os.stat(path).st_mtime_ns
        with os.scandir(path) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                child = f"{rel}/{e.name}"
                if e.is_dir():
                    pending.append(child)
                elif e.name.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(child)
                else:
                    skipped += 1
    return sorted(found), skipped


class Listing:
    """Every image of one split folder: `path(i)`, `labels`; picklable and compact."""

    def __init__(self, split_dir: str, names: np.ndarray, offsets: np.ndarray, labels: np.ndarray):
        self.split_dir = split_dir
        self.names = names  # uint8: every relative path, UTF-8, back to back
        self.offsets = offsets  # int64 (N + 1,)
        self.labels = labels  # int32 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def relative(self, i: int) -> str:
        return self.names[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")

    def path(self, i: int) -> str:
        return os.path.join(self.split_dir, self.relative(i))

    @classmethod
    def from_paths(cls, split_dir: str, paths: list[str], labels: list[int]) -> "Listing":
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        names = np.frombuffer(b"".join(encoded), np.uint8).copy()
        return cls(split_dir, names, offsets, np.asarray(labels, np.int32))


def scan(split_dir: str, classes: list[str], strict: bool) -> tuple[Listing, dict[str, int]]:
    """Lists a split folder: (listing, folder modification times). `strict` (the training split):
    a class folder without images is an error rather than a class with no examples."""
    paths, labels, skipped = [], [], 0
    stamps = {".": os.stat(split_dir).st_mtime_ns}
    for label, cls in enumerate(classes):
        if not os.path.isdir(os.path.join(split_dir, cls)):
            continue
        found, n_other = _scan_class(split_dir, cls, stamps)
        skipped += n_other
        if not found and strict:
            raise DataError(
                f"Class folder {os.path.join(split_dir, cls)} has no images (.jpg, .png, ...); add its images "
                "or remove the folder."
            )
        paths += found
        labels += [label] * len(found)
    loose = [f for f in os.listdir(split_dir) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if loose:
        log.warning("%d image(s) directly in %s are in no class folder and are not read.", len(loose), split_dir)
    if skipped:
        log.info("%s: skipped %d file(s) that are not images (by their suffix).", split_dir, skipped)
    return Listing.from_paths(split_dir, paths, labels), stamps


def _cache_file(directory: str, split: str, cache_dir: str | None) -> str | None:
    """Where the listing of `split` is cached: DIR/.vit_jax/ when writable, else `cache_dir`."""
    beside = os.path.join(directory, CACHE_DIR)
    if os.access(directory, os.W_OK) or os.access(beside, os.W_OK):
        return os.path.join(beside, f"listing-{split}.npz")
    return os.path.join(cache_dir, f"listing-{split}.npz") if cache_dir else None


def _load_cached(path: str, split_dir: str, classes: list[str]) -> Listing | None:
    """The cached listing when every folder it read is unchanged, else None."""
    try:
        with np.load(path) as f:
            meta = json.loads(f["meta"].tobytes())
            if meta.get("version") != CACHE_VERSION or meta.get("classes") != classes:
                return None
            for rel, mtime in meta["stamps"].items():
                if os.stat(os.path.join(split_dir, rel)).st_mtime_ns != mtime:
                    return None
            return Listing(split_dir, f["names"], f["offsets"], f["labels"])
    except (OSError, ValueError, KeyError):  # absent, unreadable, a folder gone: list again
        return None


def _save_cache(path: str, listing: Listing, classes: list[str], stamps: dict[str, int]) -> None:
    meta = json.dumps({"version": CACHE_VERSION, "classes": classes, "stamps": stamps}).encode()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        arrays = {"names": listing.names, "offsets": listing.offsets, "labels": listing.labels}
        np.savez(tmp, **arrays, meta=np.frombuffer(meta, np.uint8))
        os.replace(tmp, path)
    except OSError as e:  # a cache that cannot be written costs the next run a listing, nothing more
        log.info("Could not cache the listing of %s (%s).", listing.split_dir, e)


def list_split(directory: str, split: str, cache_dir: str | None = None) -> tuple[Listing, list[str]]:
    """(listing, class names) of DIR/<split>, from the cache when it is still valid."""
    split_dir = os.path.join(directory, split)
    classes = folder_classes(split_dir)
    path = _cache_file(directory, split, cache_dir)
    listing = _load_cached(path, split_dir, classes) if path else None
    if listing is None:
        listing, stamps = scan(split_dir, classes, strict=split == "train")
        if path:
            _save_cache(path, listing, classes, stamps)
    if not len(listing):
        raise DataError(f"{split_dir} holds no images; {FOLDER_FIX.format(d=split_dir)}")
    return listing, classes


class FolderReader:
    """Encoded examples of a listing, by index (what the decode workers call)."""

    def __init__(self, listing: Listing, index: np.ndarray | None = None):
        self.listing = listing
        self.index = index  # the split slice or subset, as indices into the listing

    def __len__(self) -> int:
        return len(self.listing) if self.index is None else len(self.index)

    def _at(self, i: int) -> int:
        return int(i) if self.index is None else int(self.index[i])

    def read(self, i: int) -> tuple[bytes, int]:
        j = self._at(i)
        with open(self.listing.path(j), "rb") as f:
            return f.read(), int(self.listing.labels[j])

    def describe(self, i: int) -> str:
        return self.listing.path(self._at(i))

    @property
    def labels(self) -> np.ndarray:
        return self.listing.labels if self.index is None else self.listing.labels[self.index]

    def select(self, idx: np.ndarray) -> "FolderReader":
        idx = np.asarray(idx, np.int64)
        return FolderReader(self.listing, idx if self.index is None else self.index[idx])

    def key(self) -> tuple:
        """Identifies the reader for the workers' cache: same key, same examples."""
        sel = None if self.index is None else hash(self.index.tobytes())
        return ("folder", self.listing.split_dir, len(self.listing), hash(self.listing.names.tobytes()), sel)
