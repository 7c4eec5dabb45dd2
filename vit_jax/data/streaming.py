"""Sources read by example index and decoded on demand: image folders and TFDS ArrayRecord.

A `StreamingSource` holds a reader (the encoded bytes and label of example i, nothing decoded)
and hands batches of indices to the decode workers (`vit_jax.data.pool`). The training batch
of step s is `global_batch_indices(seed, s, ...)`, cut to this process's rows, its crops drawn
from (seed, s, row): a function of (seed, s) alone, so a resumed run reads exactly and only
that batch. Crops and flips happen on the host (`vit_jax.data.decode`); the device-side steps
(pad-and-crop, RandAugment, erasing, Mixup) run in the train step as for every source.

Bad files: a training example that cannot be read is replaced deterministically (the worker
takes the next example of the split), its path logged once and counted (`take_replaced`, which
the training loop writes to metrics.jsonl as `bad_examples`). When more than 1% of a batch's
examples fail, or an example and its replacements all fail, the run stops with one error
naming the files. Evaluation leaves a failed example out (its mask is 0) under the same 1% rule.
"""

import itertools
import logging
import os

import numpy as np

from vit_jax.data.arrays import balanced_subset, check_subset_size
from vit_jax.data.common import DataError
from vit_jax.data.index import batch_rows, eval_rows, global_batch_indices
from vit_jax.data.pool import Job, make_pool, new_key
from vit_jax.data.worker import FAILED, OK

log = logging.getLogger("vit_jax")

MAX_BAD_FRACTION = 0.01


def default_workers() -> int:
    """Decode processes when config.data_workers is unset: one per core, at most 32."""
    return max(1, min(os.cpu_count() or 1, 32))


class BadData:
    """Keeps the failures of one stream: logs each file once, counts replaced examples, stops on
    too many (the module doc)."""

    def __init__(self, what: str):
        self.what = what
        self.logged: set[str] = set()
        self.replaced = 0

    def check(self, out: dict, where: str, train: bool) -> np.ndarray:
        """The rows that failed; raises DataError when they are too many."""
        status = out["status"]
        failed = status != OK
        for path, why in out["failures"]:
            if path not in self.logged:
                self.logged.add(path)
                action = "replaced by the next example" if train else "left out of the evaluation"
                log.warning("Cannot read %s (%s); %s.", path, why, action)
        bad = int(np.count_nonzero(failed))
        if bad > MAX_BAD_FRACTION * len(status) or (train and np.any(status == FAILED)):
            files = sorted({p for p, _ in out["failures"]})
            named = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            first = out["failures"][0][1] if out["failures"] else "unknown"
            raise DataError(
                f"{bad} of the {len(status)} examples of {where} of {self.what} could not be read (more than "
                f"{MAX_BAD_FRACTION:.0%}): {named} (first error: {first}). Replace or remove the files, or check "
                "that the dataset is readable from this machine."
            )
        self.replaced += bad if train else 0
        return failed


class TrainStream:
    """This process's rows of every training batch from a step on; `close()` stops its workers."""

    def __init__(self, source: "StreamingSource", jobs, rows: int):
        self.source = source
        self.pool = make_pool(source.workers, rows, source.spec.size)
        self.bad = BadData(source.name)
        self.rows = rows
        self._it = self.pool.imap(jobs)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        out = next(self._it)
        self.bad.check(out, f"a training batch ({self.rows} rows on this process)", train=True)
        return {"image": out["image"], "label": out["label"]}

    def take_replaced(self) -> int:
        """Examples replaced since the last call."""
        n, self.bad.replaced = self.bad.replaced, 0
        return n

    def close(self) -> None:
        self.pool.close()


class StreamingSource:
    """A split read by index through `reader` (`read(i) -> (bytes, label)`, `describe(i)`,
    `labels`, `select(idx)`) and decoded by `workers` processes to `spec` (decode.HostSpec)."""

    host_crop = True

    def __init__(self, reader, num_classes: int, class_names: list[str], name: str, spec, workers: int):
        self.reader = reader
        self.key = new_key()
        self.num_classes = num_classes
        self.class_names = class_names
        self.name = name
        self.spec = spec
        self.workers = workers

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.reader.labels, np.int32)

    def check_labels(self, split: str) -> None:
        """Nothing to do: the labels are class ids by construction (folder names, ClassLabel)."""

    def select(self, idx) -> "StreamingSource":
        """The examples at indices `idx`, in that order (nothing is read)."""
        return StreamingSource(
            self.reader.select(np.asarray(idx)), self.num_classes, self.class_names, self.name, self.spec, self.workers
        )

    def take(self, idx, field: str, value: str) -> "StreamingSource":
        if not len(idx):
            raise DataError(f"{field}={value!r} selects no examples of {self.name} (that split has {len(self)}).")
        return self if len(idx) == len(self) else self.select(np.asarray(idx))

    def subset(self, n: int, seed: int) -> "StreamingSource":
        """`n` examples with balanced classes (`arrays.balanced_subset`), for data-size ablations."""
        check_subset_size(n, len(self), self.name)
        return self.select(balanced_subset(self.labels, n, seed))

    def first_images(self, n: int) -> np.ndarray:
        """The first `n` images as the evaluation decodes them."""
        batches = self.eval_batches(batch=min(n, len(self)))
        try:
            return next(batches)["image"][:n]
        finally:
            batches.close()  # its workers stop now, not when the generator is collected

    def train_batches(
        self, *, batch: int, seed: int, start_step: int = 0, process_index: int = 0, process_count: int = 1, rows=None
    ) -> TrainStream:
        """This process's rows of the global batch of every step from `start_step` on."""
        start_row, stop_row = batch_rows(batch, process_index, process_count, rows)
        n, local_rows = len(self), np.arange(start_row, stop_row)

        def jobs():
            for step in itertools.count(start_step):
                idx = global_batch_indices(seed, step, n, batch)[start_row:stop_row]
                yield Job(self.reader, self.key, "train", self.spec, idx, local_rows, seed=seed, step=step)

        return TrainStream(self, jobs(), stop_row - start_row)

    def eval_batches(self, *, batch: int, process_index: int = 0, process_count: int = 1, rows=None):
        """Every example once, in order, in padded batches with a `mask`: 0 for the padding and
        for an example that could not be read."""
        start_row, stop_row = batch_rows(batch, process_index, process_count, rows)
        jobs = (
            Job(self.reader, self.key, "eval", self.spec, idx[valid], np.arange(int(valid.sum())), step=b)
            for b, (idx, valid) in enumerate(eval_rows(len(self), batch, start_row, stop_row))
        )
        return padded_eval_batches(self, jobs, stop_row - start_row)


def padded_eval_batches(source: StreamingSource, jobs, local: int):
    """The decoded `jobs` (each this process's readable rows of one evaluation batch), padded to
    `local` rows with a `mask`; the workers stop when the evaluation ends or fails."""
    pool, bad = make_pool(source.workers, local, source.spec.size), BadData(source.name)
    try:
        for b, out in enumerate(pool.imap(jobs)):
            failed = bad.check(out, f"evaluation batch {b}", train=False)
            k = len(out["label"])
            image = np.zeros((local, *source.spec.size, 3), np.uint8)
            label, mask = np.zeros(local, np.int32), np.zeros(local, np.float32)
            image[:k], label[:k], mask[:k] = out["image"], out["label"], ~failed
            yield {"image": image, "label": label, "mask": mask}
    finally:
        pool.close()
