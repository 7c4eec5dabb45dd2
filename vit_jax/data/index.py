"""Which examples a step reads: the global batch of step s as a function of (seed, s).

Example k of the training stream is `epoch_permutation(seed, k // n)[k % n]`, and the global
batch of step s is stream positions s * batch .. (s + 1) * batch - 1. Nothing depends on how
many processes read it (each takes its rows, `batch_rows`) or on the steps before s, so a run
resumed at step s, with any process count, reads exactly what the uninterrupted run read, and
reading it touches only that batch's examples. The permutation of the current epoch is kept
(a few bytes per example), so a step costs O(batch) after the first of its epoch.
"""

import functools

import numpy as np


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of epoch `epoch` over n examples (read-only: it is shared by every caller)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    perm.flags.writeable = False
    return perm


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


def eval_rows(n: int, batch: int, start_row: int, stop_row: int):
    """(example indices, valid mask) of this process's rows of every evaluation batch: batch b
    covers examples b * batch .. (b + 1) * batch - 1, the rows past the end padded (index 0)."""
    for b in range(max(-(-n // batch), 1)):
        idx = np.arange(b * batch, (b + 1) * batch)[start_row:stop_row]
        valid = idx < n
        yield np.where(valid, idx, 0), valid
