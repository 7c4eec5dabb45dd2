"""Small helpers: sizes (used everywhere, no dependencies), and the original release's `utils` API.

`create_learning_rate_schedule`, `accumulate_gradient` and `add_gfile_logger` keep the
signatures and meaning they had in the original `vit_jax.utils`, so code written for that
release runs unchanged. JAX and TensorFlow are imported inside them: the model modules
import `to_pair` from here and must not pay for either.
"""

import logging
import os
import time

import numpy as np


def to_pair(v) -> tuple[int, int]:
    """(h, w) from an int or a pair: image, crop, patch and grid sizes may be given either way."""
    if isinstance(v, int | np.integer):
        return int(v), int(v)
    h, w = v
    return int(h), int(w)


# ----------------------------------------------------------------------------- the original's API

DECAY_TYPES = ("linear", "cosine")


def create_learning_rate_schedule(total_steps, base, decay_type, warmup_steps, linear_end=1e-5):
    """step -> learning rate (float32): `base` decayed to `linear_end` (linear) or 0 (cosine) over
    the steps after warm-up, multiplied during warm-up by step / warmup_steps.

    Written out rather than built on `optimizer.make_schedule`: optax's pieces compute the same
    function but round differently (up to 2 float32 ulps of `base`), and a drop-in schedule
    should log the very numbers the original did. The tests check that both agree. Works
    on Python ints and on traced step counters alike.
    """
    import jax.numpy as jnp

    if decay_type not in DECAY_TYPES:
        raise ValueError(f"Unknown decay_type {decay_type!r}: use one of {', '.join(DECAY_TYPES)}.")

    def schedule(step):
        # Fraction of the decay phase done: 0 throughout warm-up, 1 from total_steps on.
        done = jnp.clip((step - warmup_steps) / float(total_steps - warmup_steps), 0.0, 1.0)
        if decay_type == "linear":
            lr = linear_end + (base - linear_end) * (1.0 - done)
        else:
            lr = base * 0.5 * (1.0 + jnp.cos(jnp.pi * done))
        if warmup_steps:
            lr = lr * jnp.minimum(1.0, step / warmup_steps)
        return jnp.asarray(lr, dtype=jnp.float32)

    return schedule


def accumulate_gradient(loss_and_grad_fn, params, images, labels, accum_steps):
    """(loss, grads) of `loss_and_grad_fn(params, images, labels)`, averaged over `accum_steps`
    consecutive slices of the batch, so a large batch fits in memory.

    `images` and `labels` may be arrays or trees of arrays, all split along their first axis;
    accum_steps None, 0 or 1 means one call on the whole batch. The slices are processed one
    after another (a scan), so only one slice's activations are alive at a time. The sum is
    taken in the original's order (first slice, then the rest) before dividing.
    """
    if not accum_steps or accum_steps <= 1:
        return loss_and_grad_fn(params, images, labels)

    import jax
    import jax.numpy as jnp

    accum = int(accum_steps)
    sizes = {x.shape[0] for x in jax.tree.leaves((images, labels))}
    if len(sizes) != 1:
        raise ValueError(f"images and labels disagree on the batch size: {sorted(sizes)}.")
    (batch,) = sizes
    if batch % accum:
        raise ValueError(
            f"accum_steps={accum} does not divide the batch of {batch} examples; choose a batch that is a "
            f"multiple of accum_steps (e.g. {batch - batch % accum or accum})."
        )

    def slices(x):  # (B, ...) -> (accum, B / accum, ...): slice i is rows [i * B/accum, (i+1) * B/accum)
        return jnp.reshape(x, (accum, batch // accum, *x.shape[1:]))

    images, labels = jax.tree.map(slices, (images, labels))
    first = jax.tree.map(lambda x: x[0], (images, labels))
    rest = jax.tree.map(lambda x: x[1:], (images, labels))
    total = loss_and_grad_fn(params, *first)

    def add(carry, xs):
        return jax.tree.map(jnp.add, carry, loss_and_grad_fn(params, *xs)), None

    total, _ = jax.lax.scan(add, total, rest)
    return jax.tree.map(lambda x: x / accum, total)


class _GFileHandler(logging.Handler):
    """Log records appended to a file that tf.io.gfile opens (gs:// and other remote paths).

    Remote files are written whole on every flush, so the handler flushes at most every
    `flush_secs` seconds (and on close), not after every record.
    """

    def __init__(self, filename: str, flush_secs: float = 1.0):
        super().__init__()
        from tensorflow.io import gfile

        gfile.makedirs(os.path.dirname(filename))
        self._file = gfile.GFile(filename, "a" if gfile.exists(filename) else "w")
        self._flush_secs = flush_secs
        self._last_flush = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._file.write(self.format(record) + "\n")
            if time.monotonic() - self._last_flush >= self._flush_secs:
                self.flush()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.acquire()
        try:
            self._file.flush()
            self._last_flush = time.monotonic()
        finally:
            self.release()

    def close(self) -> None:
        self.acquire()
        try:
            self._file.close()
        finally:
            self.release()
            super().close()


def add_gfile_logger(workdir, *, basename="train", level=logging.INFO):
    """Appends the records of Python's root logger at `level` and above to WORKDIR/BASENAME.log.

    The directory is created. Local paths get a plain file handler; remote ones (gs://...)
    go through tf.io.gfile. Returns the handler (the original returned nothing), so a
    caller can remove it again. Records still have to pass the root logger's own level.
    """
    from absl import logging as absl_logging

    workdir = os.fspath(workdir)
    path = f"{workdir.rstrip('/')}/{basename}.log"
    if "://" in workdir:
        handler = _GFileHandler(path)
    else:
        os.makedirs(workdir, exist_ok=True)
        handler = logging.FileHandler(path, mode="a")
    handler.setLevel(level)
    handler.setFormatter(absl_logging.PythonFormatter())
    logging.getLogger().addHandler(handler)
    return handler
