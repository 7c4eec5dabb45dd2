"""Make a TFDS dataset readable by index (ArrayRecord), which exact O(1) resume needs.

    python -m vit_jax.data.prepare NAME --data_dir DIR [--manual_dir MANUAL]

- Prepared as TFRecord already (TFDS's default): its records are copied, unchanged and in the
  same order, into ArrayRecord shards beside the TFRecord ones, and the dataset's metadata
  lists ArrayRecord as a second format. Nothing is downloaded or decoded; TFRecord readers
  (the original release's input pipeline) go on reading the TFRecord shards.
- Not prepared: TFDS downloads and prepares it as ArrayRecord (needs the network, and
  --manual_dir for datasets such as ImageNet that are downloaded by hand).

TFDS's own `tfds build --file_format=array_record` does the second, where its command line
runs (TFDS 4.9.10 needs apache-beam for it to start).
"""

import argparse
import json
import os
import struct
import sys

from vit_jax import errors
from vit_jax.data.common import DataError
from vit_jax.data.tfds_source import readable_by_index

SHARD_MARK = ".tfrecord-"


def tfrecord_records(path: str):
    """The raw records of a TFRecord file: 8-byte length, 4-byte checksum, data, 4-byte checksum."""
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise DataError(f"{path} is truncated (a record header of {len(head)} bytes); prepare it again.")
            (length,) = struct.unpack("<Q", head[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                raise DataError(f"{path} is truncated inside a record; prepare the dataset again.")
            yield data


def convert(builder) -> list[str]:
    """Writes an ArrayRecord twin of every TFRecord shard of `builder`'s prepared dataset and
    adds the format to its metadata; returns the files written."""
    from array_record.python.array_record_module import ArrayRecordWriter

    directory = str(builder.data_dir)
    shards = sorted(f for f in os.listdir(directory) if SHARD_MARK in f)
    if not shards:
        raise DataError(f"{directory} holds no TFRecord shards (*{SHARD_MARK}*) to convert.")
    written = []
    for name in shards:
        target = os.path.join(directory, name.replace(SHARD_MARK, ".array_record-"))
        writer = ArrayRecordWriter(target + ".tmp", "group_size:1")
        for record in tfrecord_records(os.path.join(directory, name)):
            writer.write(record)
        writer.close()
        os.replace(target + ".tmp", target)
        written.append(target)
    info_path = os.path.join(directory, "dataset_info.json")
    with open(info_path) as f:
        info = json.load(f)
    formats = info.setdefault("alternativeFileFormats", [])
    if "array_record" not in formats and info.get("fileFormat") != "array_record":
        formats.append("array_record")
    with open(info_path + ".tmp", "w") as f:
        json.dump(info, f, indent=2)
    os.replace(info_path + ".tmp", info_path)
    return written


def prepare(name: str, data_dir: str | None, manual_dir: str | None = None) -> str:
    """Converts or builds `name` in `data_dir` (module doc); returns what was done, in one line."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        raise DataError(f"TFDS dataset {name!r}: {errors.error_line(e)}") from None
    if builder.is_prepared():
        if readable_by_index(builder) is not None:
            return f"{name} in {builder.data_dir} is already readable by index."
        written = convert(builder)
        return f"{name}: wrote {len(written)} ArrayRecord shard(s) beside the TFRecord ones in {builder.data_dir}."
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        builder.download_and_prepare(download_config=config, file_format="array_record")
    except Exception as e:  # no network, a missing manual download
        raise DataError(f"Preparing TFDS dataset {name!r} failed ({errors.error_line(e)}).") from None
    return f"{name}: prepared as ArrayRecord in {builder.data_dir}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="TFDS dataset name, e.g. imagenet2012 or cifar10")
    parser.add_argument("--data_dir", default=None, help="TFDS data directory (default: TFDS's)")
    parser.add_argument("--manual_dir", default=None, help="where a by-hand download lies (ImageNet)")
    args = parser.parse_args(argv)
    try:
        print(prepare(args.name, args.data_dir, args.manual_dir))
    except errors.UserError as e:
        return errors.report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
