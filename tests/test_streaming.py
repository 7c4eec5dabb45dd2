"""Image folders read by index: listing and its cache, the host crop, exact resume from any step,
the same batch for any process or worker count, and bad files in a long run.

Every folder is made by the test (JPEGs and PNGs of known content); the worker-process tests
start two decode workers each.
"""

import io
import logging
import os
import tracemalloc

import jax
import numpy as np
import pytest
from conftest import error_lines, read_metrics, run_main, tiny_run_config
from PIL import Image

from vit_jax import checkpoint, train
from vit_jax.configs import defaults
from vit_jax.data import decode, folder, get_source
from vit_jax.data.common import DataError
from vit_jax.data.index import global_batch_indices


def noise_folder(root, counts, size=(24, 32), classes=("ant", "bee", "cat"), fmt="JPEG", seed=0):
    """root/{split}/{class}/{i}.jpg of random pixels; counts: {split: images per class}."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i:04d}.{'jpg' if fmt == 'JPEG' else 'png'}", fmt)
    return root


def folder_config(root, crop=16, workers=0, **fields):
    c = defaults.get_config()
    c.dataset = str(root)
    c.pp.crop = crop
    c.data_workers = workers
    for k, v in fields.items():
        *parents, leaf = k.split(".")
        target = c
        for p in parents:
            target = target[p]
        target[leaf] = v
    return c


class CountReads:
    """Counts the files a FolderReader opens (data_workers=0: they are read in this process)."""

    def __init__(self, monkeypatch):
        self.paths = []
        real = folder.FolderReader.read

        def read(reader, i):
            self.paths.append(reader.describe(i))
            return real(reader, i)

        monkeypatch.setattr(folder.FolderReader, "read", read)


# ----------------------------------------------------------------------------- listing


def test_folder_classes_nesting_and_what_is_not_an_image(tmp_path):
    noise_folder(tmp_path, {"train": 2, "test": 1}, classes=("b_cat", "a_dog"))
    nested = tmp_path / "train" / "a_dog" / "more" / "deeper"
    nested.mkdir(parents=True)
    Image.new("L", (9, 7), 128).save(nested / "gray.PNG")  # grayscale, upper-case suffix, two levels down
    Image.new("RGBA", (12, 12), (0, 0, 255, 40)).save(tmp_path / "train" / "b_cat" / "alpha.png")
    Image.new("CMYK", (10, 10), (0, 255, 255, 0)).save(tmp_path / "train" / "b_cat" / "cmyk.jpg")
    for junk in (".DS_Store", "README", "labels.csv", "notes.txt"):
        (tmp_path / "train" / "b_cat" / junk).write_text("not an image")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "train" / ".ipynb_checkpoints" / "x.jpg").write_bytes(b"hidden")
    src = get_source(folder_config(tmp_path, crop=8), "train")
    assert src.class_names == ["a_dog", "b_cat"] and src.num_classes == 2  # hidden folder is no class
    assert len(src) == 2 + 1 + 2 + 2  # a_dog: 2 + the nested one; b_cat: 2 + alpha + cmyk
    paths = [src.reader.describe(i) for i in range(len(src))]
    assert paths[2].endswith("a_dog/more/deeper/gray.PNG")
    by_name = {os.path.basename(p): i for i, p in enumerate(paths)}
    batch = next(iter(src.eval_batches(batch=len(src))))
    np.testing.assert_array_equal(batch["label"], [0, 0, 0, 1, 1, 1, 1])
    assert tuple(batch["image"][by_name["gray.PNG"], 4, 4]) == (128, 128, 128)  # gray repeated to RGB
    assert tuple(batch["image"][by_name["alpha.png"], 4, 4]) == (0, 0, 255)  # alpha dropped
    r, g, b = batch["image"][by_name["cmyk.jpg"], 4, 4].astype(int)  # CMYK (0, 255, 255, 0) is red
    assert r > 200 and g < 60 and b < 60
    assert batch["mask"].sum() == len(src)


def test_empty_classes_missing_classes_and_empty_folders(tmp_path):
    noise_folder(tmp_path / "d", {"train": 2, "test": 1}, classes=("a", "b", "c"))
    for f in (tmp_path / "d" / "test" / "b").iterdir():
        f.unlink()  # an empty class folder in test: that class has no test examples
    (tmp_path / "d" / "test" / "b").rmdir()
    test = get_source(folder_config(tmp_path / "d"), "test")  # a class present in train but not in test
    assert test.num_classes == 3 and sorted(set(test.labels.tolist())) == [0, 2]
    (tmp_path / "d" / "train" / "e").mkdir()  # an empty class folder in train: the user's mistake
    with pytest.raises(DataError, match=r"Class folder .*d/train/e has no images.*remove the folder"):
        get_source(folder_config(tmp_path / "d"), "train")
    junk = tmp_path / "junk"
    for split in ("train", "test"):
        (junk / split / "a").mkdir(parents=True)
        (junk / split / "a" / "README").write_text("no images here")
    with pytest.raises(DataError, match=r"junk/test holds no images"):
        get_source(folder_config(junk), "test")


def test_the_listing_is_cached_and_listed_again_when_a_folder_changes(tmp_path, monkeypatch):
    root = noise_folder(tmp_path / "d", {"train": 3, "test": 1})
    calls = []
    real_scan = folder.scan
    monkeypatch.setattr(folder, "scan", lambda *a, **kw: calls.append(a[0]) or real_scan(*a, **kw))
    first = get_source(folder_config(root), "train")
    assert len(calls) == 1 and (root / ".vit_jax" / "listing-train.npz").exists()
    again = get_source(folder_config(root), "train")
    assert len(calls) == 1 and len(again) == len(first) == 9
    Image.new("RGB", (8, 8)).save(root / "train" / "bee" / "new.jpg")
    changed = get_source(folder_config(root), "train")
    assert len(calls) == 2 and len(changed) == 10
    real_access = os.access  # a read-only dataset: the listing goes to the cache directory given
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(root) in str(p) else real_access(p, mode))
    get_source(folder_config(root), "test", cache_dir=str(tmp_path / "workdir_data"))
    assert (tmp_path / "workdir_data" / "listing-test.npz").exists()
    assert not (root / ".vit_jax" / "listing-test.npz").exists()


def test_start_up_and_memory_do_not_grow_with_the_folder(tmp_path, monkeypatch):
    """10x the images: the same files read before the first batch (its own), and the same memory
    within the listing's few bytes per file (the folder was decoded whole before)."""
    reads = CountReads(monkeypatch)
    measured = {}
    for n in (20, 200):
        root = noise_folder(tmp_path / str(n), {"train": n, "test": 1}, size=(64, 64))
        tracemalloc.start()
        src = get_source(folder_config(root, crop=64), "train")
        batch = next(src.train_batches(batch=8, seed=0))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert batch["image"].shape == (8, 64, 64, 3)
        measured[n] = (len(reads.paths), peak)
        reads.paths.clear()
    assert measured[20][0] == measured[200][0] == 8
    # 540 more files: about 50 bytes each in the listing; decoded, they would be 6.6 MB.
    assert measured[200][1] - measured[20][1] < 200_000, measured


# ----------------------------------------------------------------------------- the index


def test_a_far_step_reads_only_its_batch_and_is_that_steps_batch(tmp_path, monkeypatch):
    root = noise_folder(tmp_path, {"train": 5, "test": 1})
    src = get_source(folder_config(root), "train")
    reads = CountReads(monkeypatch)
    far = next(src.train_batches(batch=6, seed=3, start_step=100_000))
    assert len(reads.paths) == 6
    expected = global_batch_indices(3, 100_000, len(src), 6)
    assert reads.paths == [src.reader.describe(i) for i in expected]
    np.testing.assert_array_equal(far["label"], src.labels[expected])
    stream = src.train_batches(batch=6, seed=3, start_step=99_998)
    next(stream), next(stream)
    np.testing.assert_array_equal(next(stream)["image"], far["image"])  # the same crops, reached in sequence


def test_the_global_batch_is_the_same_for_any_process_and_worker_count(tmp_path):
    root = noise_folder(tmp_path, {"train": 4, "test": 1}, size=(40, 30))
    src = get_source(folder_config(root, crop=16), "train")
    whole = next(src.train_batches(batch=8, seed=1, start_step=7))
    halves = [next(src.train_batches(batch=8, seed=1, start_step=7, process_index=i, process_count=2)) for i in (0, 1)]
    for key in ("image", "label"):
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
    with_workers = get_source(folder_config(root, crop=16, workers=2), "train")
    stream = with_workers.train_batches(batch=8, seed=1, start_step=6)
    try:
        next(stream)
        np.testing.assert_array_equal(next(stream)["image"], whole["image"])
    finally:
        stream.close()
    evaluated = list(with_workers.eval_batches(batch=5))
    inline = list(src.eval_batches(batch=5))
    assert len(evaluated) == len(inline) == 3 and evaluated[-1]["mask"].tolist() == [1, 1, 0, 0, 0]
    for a, b in zip(evaluated, inline, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


# ----------------------------------------------------------------------------- the crop


def checkerboard_png(height, width, period):
    """A PNG checkerboard of square cells `period` pixels wide."""
    y, x = np.mgrid[:height, :width]
    board = (((y // period) + (x // period)) % 2 * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.repeat(board[..., None], 3, -1)).save(buf, "PNG")
    return buf.getvalue()


def cell_size(line):
    """Mean run length between the changes of a 0/255 profile (a crop's cell size, in pixels)."""
    edges = np.flatnonzero(np.diff((line > 127).astype(int)))
    return float(np.mean(np.diff(edges)))


@pytest.mark.parametrize("area_min", [0.05, 0.9])
def test_the_crop_keeps_the_aspect_ratio_on_a_panorama(area_min):
    """A 4:1 checkerboard with 10-pixel square cells: in every crop resized to 96x96, the cells'
    width / height is the box's height / width, which the Inception crop keeps in 3/4..4/3,
    also when no box of that area fits (area_min 0.9: the centred fallback)."""
    data = checkerboard_png(200, 800, 10)
    spec = decode.HostSpec(size=(96, 96), area_min=area_min, flip=True)
    out = np.empty((96, 96, 3), np.uint8)
    for row in range(12):
        decode.train_image(data, spec, seed=0, step=3, row=row, out=out)
        w, h = cell_size(out[48, :, 0]), cell_size(out[:, 48, 0])
        assert 0.75 * 0.95 <= w / h <= 4 / 3 / 0.95, (row, w, h)  # measured on edges rounded to pixels
        if area_min == 0.9:  # the largest 4:3 box: 200 x 266 pixels, 96 / 200 of a cell each way
            assert h == pytest.approx(10 * 96 / 200, rel=0.05) and w == pytest.approx(10 * 96 / 266, rel=0.05)


def test_inception_boxes_on_any_shape():
    rng = np.random.default_rng(0)
    for height, width in [(200, 800), (800, 200), (375, 500), (32, 32), (7, 300), (1, 1)]:
        for area_min in (0.05, 0.5, 0.95):
            for _ in range(50):
                top, left, h, w = decode.inception_box(rng, height, width, area_min)
                assert 0 <= top and 0 <= left and top + h <= height and left + w <= width and h >= 1 and w >= 1
                if min(h, w) > 1:
                    assert 3 / 4 - 1e-9 <= w / h <= 4 / 3 + 1e-9, (height, width, area_min, h, w)
                if (top, left, h, w) != decode.center_box(height, width):
                    assert area_min * height * width - 1e-6 <= h * w <= height * width


def test_the_crop_of_a_step_row_is_fixed_and_flips_are_half():
    data = checkerboard_png(60, 90, 7)
    spec = decode.HostSpec(size=(20, 20), area_min=0.3, flip=True)
    a, b = np.empty((20, 20, 3), np.uint8), np.empty((20, 20, 3), np.uint8)
    decode.train_image(data, spec, 5, 11, 2, a)
    decode.train_image(data, spec, 5, 11, 2, b)
    np.testing.assert_array_equal(a, b)
    flips = [decode.example_rng(0, 0, r).random() < 0.5 for r in range(400)]
    assert 160 < sum(flips) < 240


def test_evaluation_resizes_the_whole_image_or_a_timm_centre_crop():
    """A 40x80 image whose left and right quarters are white: the whole image keeps them at the
    edges; eval_crop_pct=0.5 keeps the centred 20x20 box, all black."""
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :20] = pixels[:, 60:] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    out = np.empty((10, 10, 3), np.uint8)
    decode.eval_image(buf.getvalue(), decode.HostSpec(size=(10, 10)), out)
    assert out[:, 0].min() > 200 and out[:, 5].max() == 0
    assert decode.eval_box(40, 80, (10, 10), 0.5) == (10, 30, 20, 20)
    decode.eval_image(buf.getvalue(), decode.HostSpec(size=(10, 10), eval_crop_pct=0.5), out)
    assert out.max() == 0


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_with_the_same_picture():
    """A 1024x1024 JPEG resized to 64x64: decoded at 1/8 (the box still covers 128 pixels), and
    within a few levels of the full-size decode resized the same way."""
    y, x = np.mgrid[:1024, :1024]
    smooth = np.stack([x / 4, y / 4, (x + y) / 8], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, "JPEG", quality=95)
    assert decode._jpeg_scaled(buf.getvalue(), (64, 64), 1024, 1024).shape == (128, 128, 3)
    out = np.empty((64, 64, 3), np.uint8)
    decode.eval_image(buf.getvalue(), decode.HostSpec(size=(64, 64)), out)
    import cv2

    reference = cv2.resize(smooth, (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - reference).mean() < 3


# ----------------------------------------------------------------------------- runs and bad files


def folder_run(root, **overrides):
    fields = {"pp.crop": 8, "pp.channels": 3, "pp.area_min": 0.5, "batch": 12, "total_steps": 12}
    fields.update({"checkpoint_every": 4, "eval_every": 100, "progress_every": 4})
    c = tiny_run_config(**{**fields, **overrides})
    c.dataset = str(root)
    return c


def test_training_from_a_folder_resumes_bitwise_with_another_worker_count(tmp_path):
    from conftest import resume_without_newest

    root = noise_folder(tmp_path / "d", {"train": 6, "test": 2}, size=(20, 28))
    config = folder_run(root, data_workers=2)
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["count"] == 6
    params = checkpoint.load(str(tmp_path / "run" / "model.npz"))
    resumed = resume_without_newest(folder_run(root, data_workers=0), tmp_path / "run", tmp_path / "again", 12)
    leaves = jax.tree_util.tree_leaves_with_path
    for (path, a), (_, b) in zip(leaves(params), leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_a_bad_file_is_replaced_logged_once_and_counted(tmp_path, caplog):
    root = noise_folder(tmp_path / "d", {"train": 100, "test": 1}, size=(12, 12))
    bad = root / "train" / "bee" / "0003.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    caplog.set_level(logging.WARNING, "vit_jax")
    config = folder_run(root, total_steps=8, batch=100)  # one bad file in 100 rows is 1%: not more than the limit
    train.train_and_evaluate(config, str(tmp_path / "run"))
    warned = [r.getMessage() for r in caplog.records if "Cannot read" in r.getMessage()]
    assert len(warned) == 1 and str(bad) in warned[0] and "replaced by the next example" in warned[0]
    src = get_source(folder_config(root), "train")
    index = [src.reader.describe(i) for i in range(len(src))].index(str(bad))
    steps = [s for s in range(8) if index in global_batch_indices(0, s, len(src), 100)]
    counts = [r["bad_examples"] for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert sum(counts) == len(steps) >= 2  # 800 examples of a 300-image folder: it comes round 2 or 3 times
    row = int(np.flatnonzero(global_batch_indices(0, steps[0], len(src), 100) == index)[0])
    batch = next(src.train_batches(batch=100, seed=0, start_step=steps[0]))
    assert batch["label"][row] == src.labels[index + 1]  # replaced by the next example of the split


def test_too_many_bad_files_stop_the_run_with_one_line(tmp_path):
    root = noise_folder(tmp_path / "d", {"train": 4, "test": 1}, size=(12, 12))
    for name in ("0000.jpg", "0001.jpg"):
        (root / "train" / "ant" / name).write_bytes(b"garbage")
    proc = run_main(
        "--config", "configs/quickstart.py", f"--config.dataset={root}", "--config.pp.channels=3",
        "--config.batch=12", "--config.total_steps=3", "--config.data_workers=0",
        "--workdir", str(tmp_path / "run"),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "could not be read (more than 1%)" in errors[0] and "ant/0000.jpg" in errors[0]
    nothing = tmp_path / "nothing"
    for split in ("train", "test"):
        for i in range(3):
            (nothing / split / "a").mkdir(parents=True, exist_ok=True)
            (nothing / split / "a" / f"{i}.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"could not be read .*nothing/train/a/0.png"):
        next(get_source(folder_config(nothing), "train").train_batches(batch=3, seed=0))
