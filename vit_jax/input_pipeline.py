"""The original release's `vit_jax.input_pipeline`: its functions, names, signatures and meaning.

For code and notebooks written for the original (`input_pipeline.get_data_from_tfds(config=,
mode=)` and the rest). Their `config` is an original-style ConfigDict (dataset, tfds_data_dir,
tfds_manual_dir, batch, batch_eval, shuffle_buffer, pp.train, pp.test, pp.crop). Batches come in
the original's pmap layout: 'image' float32 [local devices, batch / devices, crop, crop, C] in
[-1, 1] and 'label' one-hot float32 [local devices, batch / devices, classes], built with
tf.data as the original built them; the host only decodes and resizes to crop x crop and the
augmentation is ours (`vit_jax.preprocess`, jitted). On several processes each reads its own
part of the split and batch / process_count of each batch.

Runs of this project read data through `vit_jax.data` (`get_source`); the names it had here
before that wing existed are re-exported at the end of this module.
"""

import os

import numpy as np

from vit_jax.data import tfds_source
from vit_jax.data.common import DataError, split_name, split_slice
from vit_jax.data.folder import folder_classes, scan
from vit_jax.data.tfds_source import TfdsSplit, tfds_builder, tfds_examples
from vit_jax.utils import to_pair


def _folder_paths(directory: str, classes: list[str], with_labels: bool = False):
    """Every image below `directory`/<class>/ (class by class, sorted), and their labels."""
    listing, _ = scan(directory, classes, strict=False)
    paths = [listing.path(i) for i in range(len(listing))]
    return (paths, listing.labels.tolist()) if with_labels else paths


def _tf_resize_uint8(im, size: tuple[int, int]):
    """A decoded image resized (antialiased) to `size` and rounded back to uint8, on the host."""
    tf = tfds_source.tf()
    im = tf.image.resize(im, size, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(im), 0, 255), tf.uint8)


def get_tfds_info(dataset: str, split: str) -> dict:
    """num_examples (of any split expression), num_classes, int2str and examples_glob (None) of a
    prepared TFDS dataset in the default data dir ($TFDS_DATA_DIR, else ~/tensorflow_datasets)."""
    builder = tfds_builder({"dataset": dataset, "tfds_data_dir": os.environ.get("TFDS_DATA_DIR")})
    label = builder.info.features["label"]
    n = tfds_examples(builder, split, "split")
    return dict(num_examples=n, num_classes=label.num_classes, int2str=label.int2str, examples_glob=None)


def get_directory_info(directory: str) -> dict:
    """The same for one split folder `directory`/<class>/<image>: its image count, its classes
    (those of the sibling train/ when there is one, so ids agree across splits) and a glob of
    its files."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory} is not a directory; expected {directory}/<class>/*.jpg|png.")
    classes = folder_classes(directory)
    paths = _folder_paths(directory, classes)
    return dict(
        num_examples=len(paths), num_classes=len(classes), int2str=classes.__getitem__, examples_glob=f"{directory}/*/*"
    )


def get_dataset_info(dataset: str, split: str) -> dict:
    """Information about `split` of `dataset` (see get_tfds_info): a directory dataset when
    `dataset`/<split name> is a folder (sliceable as NAME[a:b]), else a TFDS dataset."""
    name = split_name(split)
    if not (name and os.path.isdir(os.path.join(dataset, name))):
        return get_tfds_info(dataset, split)
    name, select = split_slice(split, "split", f"the directory {dataset}")
    info = get_directory_info(os.path.join(dataset, name))
    info["num_examples"] = len(select(info["num_examples"]))
    return info


def get_datasets(config) -> tuple:
    """(ds_train, ds_test) of `config.dataset`: a directory with train/ and test/ folders, else a
    TFDS dataset read as the splits `config.pp.train` and `config.pp.test`."""
    if not os.path.isdir(config.dataset):
        return get_data_from_tfds(config=config, mode="train"), get_data_from_tfds(config=config, mode="test")
    train_dir, test_dir = (os.path.join(config.dataset, s) for s in ("train", "test"))
    if not (os.path.isdir(train_dir) and os.path.isdir(test_dir)):
        raise DataError(
            f"Dataset directory {config.dataset} needs both {train_dir} and {test_dir} (<class>/*.jpg|png)."
        )
    return (
        get_data_from_directory(config=config, directory=train_dir, mode="train"),
        get_data_from_directory(config=config, directory=test_dir, mode="test"),
    )


def _batch_size(config, mode: str) -> int:
    return (config.get("batch_eval") or config.batch) if mode == "test" else config.batch


def get_data_from_directory(*, config, directory: str, mode: str):
    """The batches of one split folder `directory`/<class>/<image> (see get_data)."""
    import jax

    tf = tfds_source.tf()
    classes = folder_classes(directory)
    paths, labels = _folder_paths(directory, classes, with_labels=True)
    if not paths:
        raise DataError(f"{directory} holds no images.")
    data = tf.data.Dataset.from_tensor_slices({"image": paths, "label": np.asarray(labels, np.int64)})
    return get_data(
        data=data.shard(jax.process_count(), jax.process_index()),
        mode=mode,
        num_classes=len(classes),
        image_decoder=lambda path: tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False),
        repeats=None if mode == "train" else 1,
        batch_size=_batch_size(config, mode),
        image_size=config.pp["crop"],
        shuffle_buffer=min(len(paths), config.get("shuffle_buffer", 50_000)),
    )


def get_data_from_tfds(*, config, mode: str):
    """The batches of TFDS dataset `config.dataset`, split `config.pp[mode]` (any split expression),
    from `config.tfds_data_dir`; never downloads (see _tfds_builder). Images stay encoded until
    after the shuffle, so the shuffle buffer holds compressed bytes."""
    import jax
    import tensorflow_datasets as tfds

    split = config.pp[mode]
    source = TfdsSplit(config, split, field=f"config.pp.{mode}")
    part = tfds.split_for_jax_process(split, process_index=jax.process_index(), process_count=jax.process_count())
    data = source.builder.as_dataset(
        split=part, decoders={"image": tfds.decode.SkipDecoding()}, shuffle_files=mode == "train"
    )
    return get_data(
        data=data,
        mode=mode,
        num_classes=source.num_classes,
        image_decoder=source.builder.info.features["image"].decode_example,
        repeats=None if mode == "train" else 1,
        batch_size=_batch_size(config, mode),
        image_size=config.pp["crop"],
        shuffle_buffer=min(len(source), config.get("shuffle_buffer", 50_000)),
    )


def get_data(
    *, data, mode, num_classes, image_decoder, repeats, batch_size, image_size, shuffle_buffer, preprocess=None
):
    """Batches of the tf.data dataset `data` of {'image', 'label'} for training ('train': shuffled,
    Inception crop of 5-100% of the area and a random flip) or evaluation ('test': resized).

    `image_decoder` decodes `data['image']` after the shuffle; `repeats` None repeats forever;
    `batch_size` is the global batch (remainders dropped); `image_size` the output side;
    `preprocess` an optional map applied before decoding. The result is a tf.data.Dataset in the
    layout above whose cardinality is known where the input's is.
    """
    import jax

    from vit_jax import preprocess as device_pp

    tf = tfds_source.tf()
    devices, size = jax.local_device_count(), to_pair(image_size)
    local = batch_size // jax.process_count()
    if local % devices or not local:
        raise DataError(
            f"batch size {batch_size} does not split evenly over {jax.process_count()} process(es) "
            f"x {devices} local device(s); use a multiple of {jax.process_count() * devices}."
        )
    data = data.repeat(repeats)
    if mode == "train":
        data = data.shuffle(shuffle_buffer)
    if preprocess is not None:
        data = data.map(preprocess, tf.data.AUTOTUNE)
    data = data.map(
        lambda ex: {"image": _tf_resize_uint8(image_decoder(ex["image"]), size), "label": ex["label"]}, tf.data.AUTOTUNE
    )
    data = data.batch(local, drop_remainder=True).prefetch(1)
    channels = data.element_spec["image"].shape[-1]
    pp = {"crop": size, "area_min": 0.05, "flip": True, "channels": channels or 0}  # 0: channels as decoded
    if mode == "train":
        augment = jax.jit(lambda x, key: device_pp.preprocess_train(x, key, pp))
    else:
        augment = jax.jit(lambda x, key: device_pp.preprocess_eval(x, pp))
    one_hot = np.eye(num_classes, dtype=np.float32)

    def batches():
        for i, ex in enumerate(data.as_numpy_iterator()):
            image = np.asarray(augment(ex["image"], jax.random.fold_in(jax.random.PRNGKey(0), i)))
            yield {
                "image": image.reshape(devices, -1, *image.shape[1:]),
                "label": one_hot[ex["label"]].reshape(devices, -1, num_classes),
            }

    spec = (devices, local // devices)
    out = tf.data.Dataset.from_generator(
        batches,
        output_signature={
            "image": tf.TensorSpec((*spec, *size, channels), tf.float32),
            "label": tf.TensorSpec((*spec, num_classes), tf.float32),
        },
    )
    n = int(data.cardinality())
    if n >= 0:
        out = out.apply(tf.data.experimental.assert_cardinality(n))
    elif n == tf.data.INFINITE_CARDINALITY:
        out = out.repeat()  # the generator never ends; this makes the dataset say so
    return out.prefetch(1)


def prefetch(dataset, n_prefetch: int):
    """Iterates `dataset` as trees of numpy arrays; with n_prefetch > 0, as arrays already on the
    local devices (leading axis split over them), n_prefetch batches ahead, as pmap wants them."""
    import jax

    it = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else iter(dataset)
    it = (jax.tree.map(np.asarray, x) for x in it)
    if n_prefetch:
        from flax import jax_utils

        it = jax_utils.prefetch_to_device(it, n_prefetch)
    return it


# What this module held before the data wing, for the code that imports it from here.
from vit_jax.data.arrays import (  # noqa: E402
    IDX_FILES,
    ArraySource,
    balanced_subset,
    load_digits,
    load_idx_dir,
    read_idx,
)
from vit_jax.data.common import IMAGE_EXTENSIONS  # noqa: E402
from vit_jax.data.index import batch_rows, global_batch_indices  # noqa: E402
from vit_jax.data.sources import get_source, host_size  # noqa: E402

storage_size = host_size

__all__ = [
    "IDX_FILES",
    "IMAGE_EXTENSIONS",
    "ArraySource",
    "DataError",
    "balanced_subset",
    "batch_rows",
    "get_data",
    "get_data_from_directory",
    "get_data_from_tfds",
    "get_dataset_info",
    "get_datasets",
    "get_directory_info",
    "get_source",
    "get_tfds_info",
    "global_batch_indices",
    "load_digits",
    "load_idx_dir",
    "prefetch",
    "read_idx",
    "storage_size",
]
