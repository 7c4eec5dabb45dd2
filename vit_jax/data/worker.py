"""A decode worker process, started by `vit_jax.data.pool` (`worker.main(...)` in a fresh Python).

It reads tasks (pickled) from its stdin, decodes each task's examples straight into a slot of
the pool's shared memory, and answers on its stdout with a small header (labels, status per
example, the failures); anything it prints goes to stderr. It imports NumPy, OpenCV, Pillow
and simplejpeg, never JAX or TensorFlow, so it starts in a fraction of a second. It ignores
SIGINT and SIGTERM (the main process decides when to stop, after saving a checkpoint) and
exits when its stdin closes. `run_task` is also what the main process calls itself when
config.data_workers is 0.

A training example that cannot be read or decoded is replaced by the next example of the
split (then the one after, up to `REPLACE_TRIES` of them): the choice depends on the index
alone, so a resumed run makes the same replacement. An evaluation example is never replaced:
its status marks it failed and the evaluation leaves it out.
"""

import os
import signal
import sys

import numpy as np

import vit_jax.data.decode as decode

REPLACE_TRIES = 8
OK, REPLACED, FAILED = 0, 1, 2


def run_task(task: dict, reader, images: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """(header, images (k, h, w, 3) uint8) of one chunk of a batch (`vit_jax.data.pool`),
    written into `images` when given."""
    spec: decode.HostSpec = task["spec"]
    indices, rows = task["indices"], task["rows"]
    train = task["mode"] == "train"
    k, n = len(indices), len(reader)
    if images is None:
        images = np.empty((k, *spec.size, 3), np.uint8)
    labels = np.zeros(k, np.int32)
    status = np.full(k, OK, np.int8)
    failures = []
    for j in range(k):
        for attempt in range(REPLACE_TRIES + 1 if train else 1):
            i = (int(indices[j]) + attempt) % n
            try:
                data, label = reader.read(i)
                if train:
                    decode.train_image(data, spec, task["seed"], task["step"], int(rows[j]), images[j])
                else:
                    decode.eval_image(data, spec, images[j])
            except (decode.DecodeError, OSError) as e:
                failures.append((reader.describe(i), str(e)))
                continue
            labels[j] = label
            status[j] = REPLACED if attempt else OK
            break
        else:
            status[j] = FAILED
            images[j] = 0
    return {"labels": labels, "status": status, "failures": failures}, images


def main(fd: int, offset: int, slot_bytes: int, slots: int) -> None:
    """The worker's loop: `fd` is the pool's shared memory, this worker's `slots` slots of
    `slot_bytes` bytes each starting at `offset`; each task names the slot its images go to."""
    import mmap
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out_fd = os.dup(1)
    os.dup2(2, 1)  # a stray print must not corrupt the channel
    sys.stdout = sys.stderr
    tasks, results = Connection(0, writable=False), Connection(out_fd, readable=False)
    memory = mmap.mmap(fd, offset + slots * slot_bytes)
    readers = {}
    while True:
        try:
            task = tasks.recv()
        except (EOFError, OSError):
            return
        reader = task.get("reader")
        if reader is None:
            reader = readers[task["key"]]
        elif task["key"] is not None:  # kept for the tasks after it (inline examples are not)
            readers[task["key"]] = reader
        shape = (len(task["indices"]), *task["spec"].size, 3)
        images = np.ndarray(shape, np.uint8, memory, offset + task["slot"] * slot_bytes)
        header, _ = run_task(task, reader, images)
        try:
            results.send(header)
        except (BrokenPipeError, OSError):
            return
