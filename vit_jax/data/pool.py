"""Decode workers: processes that turn batches of example indices into images, in order.

A job is one batch, split into chunks of consecutive rows; chunk c of the whole stream goes to
worker c % W, so every worker decodes its share of every batch. A thread of the main process
sends chunks ahead (at most `ahead` batches) and receives them in job order: each worker
decodes straight into a slot of one shared memory region and sends back only a small header,
and the thread copies the slot into the batch's own array. The consumer takes finished batches
from a queue. The result is the same whatever the number of workers: a chunk's images depend
on its indices, rows, seed and step only.

Workers are plain Python subprocesses (`worker.main`) talking over pipes: they import neither
JAX nor the program that started them, and they exit when the pool closes or the program dies
(end of file on their pipe). The shared memory is an anonymous file passed to them as a file
descriptor, so nothing is left behind in /dev/shm whatever way the processes end.
`InlinePool` runs the same jobs in the calling thread (config.data_workers = 0).
"""

import collections
import mmap
import os
import queue
import subprocess
import sys
import tempfile
import threading
import uuid

import numpy as np

import vit_jax.data.worker as worker_lib


def chunk_bounds(rows: int, workers: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) chunks of a batch of `rows`, one per worker (fewer when small)."""
    parts = max(1, min(workers, rows))
    edges = [rows * p // parts for p in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


class Job:
    """One batch: the reader, the example indices and global rows, and how to decode them."""

    def __init__(self, reader, key, mode: str, spec, indices, rows, seed: int = 0, step: int = 0, cache=True):
        self.reader, self.key, self.mode, self.spec = reader, key, mode, spec
        self.indices, self.rows = np.asarray(indices, np.int64), np.asarray(rows, np.int64)
        self.seed, self.step, self.cache = seed, step, cache

    def task(self, start: int, stop: int, with_reader: bool, slot: int = 0) -> dict:
        return {
            "key": self.key if self.cache else None,
            "reader": self.reader if with_reader else None,
            "mode": self.mode,
            "spec": self.spec,
            "seed": self.seed,
            "step": self.step,
            "indices": self.indices[start:stop],
            "rows": self.rows[start:stop],
            "slot": slot,
        }

    def empty(self) -> dict:
        """The batch's arrays, to be filled."""
        k = len(self.indices)
        return {
            "image": np.empty((k, *self.spec.size, 3), np.uint8),
            "label": np.empty(k, np.int32),
            "status": np.empty(k, np.int8),
            "failures": [],
        }


def _fill(out: dict, start: int, stop: int, header: dict) -> None:
    out["label"][start:stop] = header["labels"]
    out["status"][start:stop] = header["status"]
    out["failures"] += header["failures"]


class InlinePool:
    """The same jobs, decoded in the calling thread."""

    workers = 0

    def imap(self, jobs, ahead: int = 1):
        for job in jobs:
            out = job.empty()
            header, _ = worker_lib.run_task(job.task(0, len(job.indices), True), job.reader, out["image"])
            _fill(out, 0, len(job.indices), header)
            yield out

    def close(self) -> None:
        pass


def _shared_file(size: int) -> int:
    """A file descriptor of `size` bytes of memory that no name points to."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("vit_jax-decode", 0)
    else:  # macOS: an unlinked temporary file, in memory where /dev/shm exists
        with tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, size)
    return fd


class Pool:
    """`workers` decode processes for chunks of at most `chunk_rows` images of `size` (h, w);
    `imap` one job stream at a time, at most `ahead` batches in flight."""

    def __init__(self, workers: int, chunk_rows: int, size: tuple[int, int], ahead: int = 2):
        from multiprocessing.connection import Connection

        self.workers, self.ahead = workers, ahead
        self.slots = ahead + 1  # a worker holds at most `ahead` chunks that are not yet received
        self.slot_bytes = max(1, chunk_rows * size[0] * size[1] * 3)
        fd = _shared_file(workers * self.slots * self.slot_bytes)
        self.memory = mmap.mmap(fd, workers * self.slots * self.slot_bytes)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.procs, self.send, self.recv = [], [], []
        try:
            for w in range(workers):
                offset = w * self.slots * self.slot_bytes
                code = f"from vit_jax.data.worker import main; main({fd}, {offset}, {self.slot_bytes}, {self.slots})"
                p = subprocess.Popen(
                    [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, pass_fds=(fd,)
                )
                self.procs.append(p)
                self.send.append(Connection(os.dup(p.stdin.fileno()), readable=False))
                self.recv.append(Connection(os.dup(p.stdout.fileno()), writable=False))
                p.stdin.close()
                p.stdout.close()
        finally:
            os.close(fd)  # the workers and our mapping keep the memory
        self.known = [set() for _ in range(workers)]  # reader keys each worker holds
        self.used = [0] * workers  # chunks sent to each worker so far (its slot is used % slots)
        self.next_worker = 0
        self.closed = False

    def _slot_view(self, w: int, slot: int, k: int, size) -> np.ndarray:
        offset = (w * self.slots + slot) * self.slot_bytes
        return np.ndarray((k, *size, 3), np.uint8, self.memory, offset)

    def _dispatch(self, job: Job) -> list[tuple[int, int, int, int]]:
        sent = []
        for start, stop in chunk_bounds(len(job.indices), self.workers):
            w = self.next_worker
            self.next_worker = (w + 1) % self.workers
            slot = self.used[w] % self.slots
            self.used[w] += 1
            fresh = not job.cache or job.key not in self.known[w]
            self.send[w].send(job.task(start, stop, with_reader=fresh, slot=slot))
            if job.cache:
                self.known[w].add(job.key)
            sent.append((w, slot, start, stop))
        return sent

    def _receive(self, job: Job, sent) -> dict:
        out = job.empty()
        for w, slot, start, stop in sent:
            try:
                header = self.recv[w].recv()
            except (EOFError, OSError):
                try:
                    code = self.procs[w].wait(timeout=2)
                except subprocess.TimeoutExpired:
                    code = None
                raise RuntimeError(f"decode worker {w} stopped (exit status {code}); see its error above.") from None
            out["image"][start:stop] = self._slot_view(w, slot, stop - start, job.spec.size)
            _fill(out, start, stop, header)
        return out

    def imap(self, jobs, ahead: int | None = None):
        """Finished batches of `jobs`, in order (`ahead` is fixed by the pool's slots)."""
        finished: queue.Queue = queue.Queue(maxsize=self.ahead)

        def put(item) -> None:  # gives up once the pool is closed (the consumer left)
            while not self.closed:
                try:
                    return finished.put(item, timeout=0.5)
                except queue.Full:
                    continue

        def produce():
            try:
                pending = collections.deque()
                for job in jobs:
                    pending.append((job, self._dispatch(job)))
                    if len(pending) >= self.ahead:
                        put(self._receive(*pending.popleft()))
                while pending:
                    put(self._receive(*pending.popleft()))
                put(None)
            except BaseException as e:  # handed to the consumer, raised there
                put(e)

        threading.Thread(target=produce, daemon=True, name="vit_jax-decode").start()
        while True:
            item = finished.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                self.close()
                raise item
            yield item

    def close(self) -> None:
        """Stops the workers (their pipes close; they exit at once)."""
        if self.closed:
            return
        self.closed = True
        for conn in self.send:  # end of file: each worker returns from its loop
            conn.close()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for conn in self.recv:  # only now: a thread may still be reading from them
            conn.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def make_pool(workers: int, rows: int, size: tuple[int, int], ahead: int = 4):
    """A pool of `workers` processes for batches of `rows` images of `size`, or the inline one for 0."""
    if workers <= 0:
        return InlinePool()
    return Pool(workers, max(b - a for a, b in chunk_bounds(max(rows, 1), workers)), size, ahead)


def new_key() -> str:
    """A key naming one reader for the workers' caches."""
    return uuid.uuid4().hex
