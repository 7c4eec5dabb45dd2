"""TFDS datasets: found without downloading, read by index when prepared as ArrayRecord.

- Prepared as ArrayRecord (`python -m vit_jax.data.prepare NAME --data_dir DIR` builds one, or
  converts a TFRecord preparation in place): a
  `StreamingSource` over TFDS's random-access data source, images left encoded until a worker
  decodes them; exact resume in O(1), as for image folders.
- Small datasets of fixed-size images (MNIST, CIFAR: at most `IN_MEMORY_BYTES` decoded) are
  read into memory once, like the IDX files, and cropped on the device.
- Prepared only as TFRecord, which is read in sequence: it still trains, each process reading
  its part of the split, shuffled as encoded bytes, and the run says once what a resume costs
  (it re-reads, without decoding, every example before the step it resumes at).

Every TFDS call here passes download=False unless config.tfds_download allows it, so an
offline machine gets one line in a second, not minutes of network retries.
"""

import json
import logging
import os

import numpy as np

from vit_jax import errors
from vit_jax.data.arrays import ArraySource
from vit_jax.data.common import DataError
from vit_jax.data.index import batch_rows
from vit_jax.data.pool import Job
from vit_jax.data.streaming import StreamingSource, TrainStream, padded_eval_batches

log = logging.getLogger("vit_jax")

IN_MEMORY_BYTES = 2**30


def tf():
    """TensorFlow for tf.data only: hidden from the GPUs, which belong to JAX."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    return tf


def tfds_builder(config):
    """The prepared builder of `config.dataset`; downloads only where `config.tfds_download` allows
    (fields read with `.get`, so the original release's configs, which lack it, never download)."""
    import tensorflow_datasets as tfds

    name = config["dataset"]
    try:
        builder = tfds.builder(name, data_dir=config.get("tfds_data_dir"))
    except Exception as e:  # DatasetNotFoundError and friends
        raise DataError(tfds_missing(config, errors.error_line(e))) from None
    if not builder.is_prepared():
        if not config.get("tfds_download"):
            raise DataError(tfds_missing(config, "it is not prepared there"))
        dl_config = tfds.download.DownloadConfig(manual_dir=config.get("tfds_manual_dir"))
        try:
            builder.download_and_prepare(download_config=dl_config, file_format="array_record")
        except Exception as e:  # no network, a refused URL, a missing manual download
            raise DataError(
                f"Downloading TFDS dataset {name!r} failed ({errors.error_line(e)}). "
                f"Check the network, or prepare it on a machine with network access (`python -m "
                f"vit_jax.data.prepare {name} --data_dir DIR`) and set --config.tfds_data_dir=DIR."
            ) from None
    return builder


def tfds_missing(config, why: str) -> str:
    data_dir = config.get("tfds_data_dir") or "the TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    return (
        f"TFDS dataset {config['dataset']!r} was not found in {data_dir} ({why}). Prepare it on a machine with "
        f"network access (`python -m vit_jax.data.prepare {config['dataset']} --data_dir DIR`, with "
        "--manual_dir for ImageNet) and set --config.tfds_data_dir=DIR, or set --config.tfds_download=True to let "
        "this run download it."
    )


def tfds_examples(builder, split, field: str) -> int:
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


def readable_by_index(builder):
    """`builder`, or one reopened from its directory, when its dataset is prepared in a format read
    by index (ArrayRecord); else None. A registered builder's info ignores the formats that a
    conversion added to dataset_info.json (TFDS 4.9.10), so the file is read too, and a builder
    made from the directory (which reads them) is returned."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import file_adapters

    random_access = set(file_adapters.FileFormat.with_random_access())
    if builder.info.available_file_formats() & random_access:
        return builder
    try:
        with open(os.path.join(str(builder.data_dir), "dataset_info.json")) as f:
            listed = set(json.load(f).get("alternativeFileFormats", []))
    except (OSError, ValueError):
        return None
    if not listed & {f.value for f in random_access}:
        return None
    return tfds.builder_from_directory(str(builder.data_dir))


class TfdsSplit:
    """A split of a prepared TFDS dataset: its builder, size and classes (nothing read yet)."""

    def __init__(self, config, split: str, field: str = "split"):
        """`split`: any TFDS split expression; `field` names where it was set, for the messages."""
        self.builder = tfds_builder(config)
        self.split_name = split
        features = self.builder.info.features
        if "image" not in features or "label" not in features:
            raise DataError(
                f"TFDS dataset {config['dataset']!r} has no 'image' and 'label' features (it has: "
                f"{', '.join(features.keys())}); only image classification datasets can be read."
            )
        self.num_classes = features["label"].num_classes
        self.class_names = list(features["label"].names)
        self.name = config["dataset"]
        self.num_examples = tfds_examples(self.builder, split, field)

    def __len__(self) -> int:
        return self.num_examples

    def random_access(self) -> bool:
        """Prepared in a format read by index (ArrayRecord); see `readable_by_index`."""
        builder = readable_by_index(self.builder)
        if builder is None:
            return False
        self.builder = builder
        return True

    def part_sizes(self, process_count: int) -> list[int]:
        """Examples in each process's part of the split. TFDS splits each piece of an expression
        evenly, so the parts of 'a[3:-4]+b[:5]' may differ by more than one."""
        import tensorflow_datasets as tfds

        parts = (
            tfds.split_for_jax_process(self.split_name, process_index=i, process_count=process_count)
            for i in range(process_count)
        )
        return [self.builder.info.splits[p].num_examples for p in parts]

    def decoded_bytes(self) -> int | None:
        """Bytes of the split decoded, when every image has the same known shape, else None."""
        shape = self.builder.info.features["image"].shape
        if any(d is None for d in shape):
            return None
        return self.num_examples * int(np.prod(shape))


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, value) of a protobuf message buf[start:end]: an int for a varint, a
    (start, end) span for a length-delimited field; fixed-width fields are skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = (pos, pos + n), pos + n
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            continue
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {pos}")
        yield key >> 3, value


def parse_example(record: bytes, keys=("image", "label")) -> dict:
    """The `keys` features of a serialized tf.train.Example, without TensorFlow: a bytes feature as
    bytes (its first value), an int64 feature as an int (its first value). The wire format:
    Example{1: Features{1: map entry{1: key, 2: Feature{1: BytesList{1: bytes}, 3: Int64List{1: int}}}}}."""
    out = {}
    buf = memoryview(record)
    for num, features in _fields(buf, 0, len(buf)):
        if num != 1:
            continue
        for _, entry in _fields(buf, *features):
            name = feature = None
            for k, v in _fields(buf, *entry):
                if k == 1:
                    name = bytes(buf[v[0] : v[1]]).decode()
                elif k == 2:
                    feature = v
            if name not in keys or feature is None:
                continue
            for kind, span in _fields(buf, *feature):
                for k, v in _fields(buf, *span):
                    if k != 1:
                        continue
                    if kind == 1:  # BytesList
                        out[name] = bytes(buf[v[0] : v[1]])
                    elif kind == 3 and isinstance(v, int):  # Int64List, unpacked
                        out[name] = v if v < 2**63 else v - 2**64
                    elif kind == 3:  # Int64List, packed
                        value = _varint(buf, v[0])[0]
                        out[name] = value if value < 2**63 else value - 2**64
                    break
    return out


class TfdsReader:
    """Encoded images and labels of a TFDS split prepared as ArrayRecord, by index (picklable):
    the records come from array_record's own reader and are parsed here, so a decode worker
    imports neither TFDS nor TensorFlow."""

    def __init__(self, records, name: str, index: np.ndarray | None = None):
        self.records = records  # array_record's ArrayRecordDataSource over the split's shards
        self.name = name
        self.index = index
        self._labels = None

    def __len__(self) -> int:
        return len(self.records) if self.index is None else len(self.index)

    def _at(self, i: int) -> int:
        return int(i) if self.index is None else int(self.index[i])

    def read(self, i: int) -> tuple[bytes, int]:
        example = parse_example(self.records[self._at(i)])
        if "image" not in example or "label" not in example:
            raise OSError(f"record {self._at(i)} has no 'image' bytes and 'label' integer")
        return example["image"], int(example["label"])

    def describe(self, i: int) -> str:
        return f"{self.name} example {self._at(i)}"

    @property
    def labels(self) -> np.ndarray:
        """Every label (reads every record once: only the few-shot and subset tools ask)."""
        if self._labels is None:
            n = len(self.records)
            labels = (parse_example(self.records[i], ("label",))["label"] for i in range(n))
            everything = np.fromiter(labels, np.int32, n)
            self._labels = everything if self.index is None else everything[self.index]
        return self._labels

    def select(self, idx: np.ndarray) -> "TfdsReader":
        idx = np.asarray(idx, np.int64)
        return TfdsReader(self.records, self.name, idx if self.index is None else self.index[idx])

    def __getstate__(self):
        return {**self.__dict__, "_labels": None}


class InlineReader:
    """Examples handed over with the task itself (the TFRecord stream's encoded batches)."""

    def __init__(self, images: list[bytes], labels: np.ndarray, describe: str):
        self.images, self.labels, self.what = images, labels, describe

    def __len__(self) -> int:
        return len(self.images)

    def read(self, i: int) -> tuple[bytes, int]:
        return self.images[i], int(self.labels[i])

    def describe(self, i: int) -> str:
        return f"{self.what}, row {i}"


def open_tfds(config, split: str, field: str, spec, workers: int):
    """The source of one TFDS split (module doc: ArrayRecord, in memory, or a TFRecord stream)."""
    info = TfdsSplit(config, split, field)
    size = info.decoded_bytes()
    if size is not None and size <= IN_MEMORY_BYTES:
        return load_in_memory(info)
    if info.random_access():
        import tensorflow_datasets as tfds

        # TFDS finds the split's ArrayRecord shards; the reader keeps array_record's own data source
        # (opened from the directory: the registered builder may not know the converted format).
        reopened = tfds.builder_from_directory(str(info.builder.data_dir))
        ds = reopened.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        reader = TfdsReader(ds.data_source, f"{info.name} {split}")
        return StreamingSource(reader, info.num_classes, info.class_names, info.name, spec, workers)
    data_dir = config.get("tfds_data_dir") or "DIR"
    log.warning(
        "TFDS dataset %r is prepared as TFRecord, which is read in sequence: a resumed run first re-reads "
        "(without decoding) every example before its step, and the batches depend on the process count. Convert "
        "it once to read by index: python -m vit_jax.data.prepare %s --data_dir %s",
        info.name,
        info.name,
        data_dir,
    )
    return TfrecordSource(info, spec, workers)


def load_in_memory(info: TfdsSplit) -> ArraySource:
    """A small split of fixed-size images, decoded into memory once (in the split's order)."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import file_adapters

    if info.builder.info.file_format != file_adapters.FileFormat.TFRECORD:
        ds = info.builder.as_data_source(split=info.split_name)
        images = np.stack([ds[i]["image"] for i in range(len(ds))])
        labels = np.fromiter((ds[i]["label"] for i in range(len(ds))), np.int32, len(ds))
    else:
        tf()
        data = tfds.as_numpy(info.builder.as_dataset(split=info.split_name, batch_size=-1))
        images, labels = data["image"], data["label"].astype(np.int32)
    return ArraySource(images, labels, info.num_classes, info.class_names, info.name)


class TfrecordSource(StreamingSource):
    """A TFRecord-only split: tf.data reads and shuffles encoded examples, the workers decode."""

    def __init__(self, info: TfdsSplit, spec, workers: int):
        super().__init__(None, info.num_classes, info.class_names, info.name, spec, workers)
        self.info = info

    def __len__(self) -> int:
        return len(self.info)

    def _encoded(self, process_index: int, process_count: int, shuffle_seed: int | None):
        import tensorflow_datasets as tfds

        t = tf()
        split = tfds.split_for_jax_process(
            self.info.split_name, process_index=process_index, process_count=process_count
        )
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, skip_prefetch=True)
        ds = self.info.builder.as_dataset(
            split=split,
            shuffle_files=shuffle_seed is not None,
            read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        options = t.data.Options()
        options.deterministic = True
        return ds.with_options(options)

    def _unsupported(self, what: str):
        raise DataError(
            f"{what} needs TFDS dataset {self.info.name!r} readable by index; convert it once: "
            f"python -m vit_jax.data.prepare {self.info.name} --data_dir DIR."
        )

    @property
    def labels(self):
        self._unsupported("Reading every label")

    def select(self, idx):
        self._unsupported("Choosing examples by index (config.train_examples, few-shot pools)")

    def train_batches(self, *, batch, seed, start_step=0, process_index=0, process_count=1, rows=None):
        """This process's part of the split, shuffled within each epoch as encoded bytes (10,000
        at a time), repeated; a resume skips the encoded batches before `start_step`."""
        start_row, stop_row = batch_rows(batch, process_index, process_count, rows)
        local = stop_row - start_row
        n_local = self.info.part_sizes(process_count)[process_index]
        ds = self._encoded(process_index, process_count, seed)
        ds = ds.shuffle(min(max(n_local, 1), 10_000), seed=seed, reshuffle_each_iteration=True).repeat()
        ds = ds.batch(local, drop_remainder=True).skip(start_step).prefetch(2)
        rows_ = np.arange(start_row, stop_row)

        def jobs():
            for step, ex in enumerate(ds.as_numpy_iterator(), start_step):
                reader = InlineReader(list(ex["image"]), ex["label"], f"{self.info.name} step {step}")
                yield Job(reader, None, "train", self.spec, np.arange(local), rows_, seed=seed, step=step, cache=False)

        return TrainStream(self, jobs(), local)

    def eval_batches(self, *, batch, process_index=0, process_count=1, rows=None):
        """This process's part of the split once, in padded batches with a `mask`; every process
        yields the same number of batches (enough for the largest part) so the collective eval
        steps line up."""
        start_row, stop_row = batch_rows(batch, process_index, process_count, rows)
        local = stop_row - start_row
        num_batches = max(-(-max(self.info.part_sizes(process_count)) // local), 1)
        encoded = self._encoded(process_index, process_count, None).batch(local).as_numpy_iterator()

        def jobs():
            for b in range(num_batches):
                ex = next(encoded, None)
                images, labels = (list(ex["image"]), ex["label"]) if ex is not None else ([], np.zeros(0, np.int64))
                reader = InlineReader(images, labels, f"{self.info.name} evaluation batch {b}")
                yield Job(reader, None, "eval", self.spec, np.arange(len(images)), np.arange(len(images)), cache=False)

        return padded_eval_batches(self, jobs(), local)
