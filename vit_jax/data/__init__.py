"""The data wing: where examples come from and how the host prepares them.

    common.py     the error type, file kinds, split slices
    index.py      the global batch of step s as a function of (seed, s)
    arrays.py     sources held in memory: digits, IDX files (cropped on the device)
    folder.py     image folders listed once (and cached), read by index
    tfds_source.py  TFDS: ArrayRecord by index, small datasets in memory, TFRecord in sequence
    decode.py     the host crop: decode, Inception crop or evaluation resize, flip
    worker.py, pool.py  decode worker processes and the ordered pool that feeds them batches
    streaming.py  the sources read by index: batches, bad files, evaluation padding
    sources.py    get_source(config, split): which of them a config names
    prepare.py    command: prepare or convert a TFDS dataset for reading by index

`vit_jax.input_pipeline` keeps the original release's functions and re-exports what its
users and ours imported from it before this wing existed.
"""

from vit_jax.data.common import DataError
from vit_jax.data.sources import data_workers, get_source, host_size, host_spec

__all__ = ["DataError", "data_workers", "get_source", "host_size", "host_spec"]
