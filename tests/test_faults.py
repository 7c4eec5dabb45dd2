"""Faults and bad input: preemption, kills at random moments, damaged checkpoints,
non-finite training, failing disks, a busy workdir, and garbage files.

The kill tests run `python -m vit_jax.main` in a subprocess (a tiny ViT on digits) and
compare final parameters bitwise with the uninterrupted run on one CPU device; the rest
run the loop in-process on the same tiny config.
"""

import glob
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, error_lines, tiny_run_config

from vit_jax import checkpoint, input_pipeline, preemption, train, train_state
from vit_jax import config as config_lib
from vit_jax import data as data_lib

RUN = [
    "--config",
    "configs/quickstart.py",
    "--config.total_steps=40",
    "--config.checkpoint_every=10",
    "--config.eval_every=25",
    "--config.eval_batch=8",  # a longer evaluation, to be killed in
    "--config.progress_every=5",
    "--config.model.hidden_size=16",
    "--config.model.transformer.num_layers=1",
    "--config.model.transformer.mlp_dim=32",
    "--config.model.transformer.dropout_rate=0.1",
    "--config.batch=32",
]


def start(workdir, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "vit_jax.main", *RUN, "--workdir", str(workdir), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc, timeout=120):
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, out[-3000:]
    return out


def wait_for_line(proc, text, timeout=120):
    """Reads the run's output until a line contains `text`; returns what was read."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError(f"never saw {text!r}:\n" + "".join(seen)[-3000:])


def final_params(workdir):
    with np.load(os.path.join(workdir, "model.npz")) as z:
        return {k: z[k] for k in z.files}


def assert_bitwise(a, b):
    pa, pb = final_params(a), final_params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults") / "uninterrupted"
    finish(start(workdir))
    return workdir


# ----------------------------------------------------------------------------- preemption and kills


def _sigterm(proc, workdir):
    """SIGTERM between checkpoints: the run saves the step it reached and exits with status 0."""
    wait_for_line(proc, "step 15/40")  # between the checkpoints at 10 and 20
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert "Stopped by SIGTERM at step" in out and "Traceback" not in out
    step = int(out.split("Stopped by SIGTERM at step ")[1].split()[0])
    assert 15 <= step < 40
    assert json.loads(out.strip().splitlines()[-1]) == {"workdir": str(workdir), "stopped": "SIGTERM", "step": step}
    assert os.path.isdir(workdir / "checkpoints" / str(step))  # the step it reached, not the last interval
    return step


def _kill_during_checkpoint_write(proc, workdir, rng):
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(str(workdir / "checkpoints" / "*orbax-checkpoint-tmp*")):
        time.sleep(0.002)
    proc.kill()


def _kill_after_line(text, spread):
    def kill(proc, workdir, rng):
        wait_for_line(proc, text)
        time.sleep(rng.uniform(0, spread))
        proc.kill()

    return kill


def test_sigterm_then_sigkills_at_random_moments_resume_bitwise(reference, tmp_path):
    """One run interrupted four times: SIGTERM, then SIGKILL during a checkpoint write, during an
    evaluation and during a step (at random moments after each trigger); every restart resumes
    from the last completed checkpoint, and the end is bitwise the uninterrupted run."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    step = _sigterm(start(tmp_path), tmp_path)
    kills = [
        ("during a checkpoint write", _kill_during_checkpoint_write),
        ("during evaluation", _kill_after_line("step 25/40", 0.05)),  # evaluation follows step 25
        ("during a step", _kill_after_line("step 30/40", 0.02)),  # ten steps and more remain
    ]
    for what, kill in kills:
        proc = start(tmp_path)
        wait_for_line(proc, "Resumed from")
        kill(proc, tmp_path, rng)
        proc.wait()
        assert not (tmp_path / "model.npz").exists(), f"the run ended before the kill {what} (seed {seed})"
    out = finish(start(tmp_path))
    assert "Resumed from" in out and "Traceback" not in out
    assert step <= 40
    assert_bitwise(reference, tmp_path)


@pytest.mark.parametrize("when", ["reading data", "compiling"])
def test_a_stop_signal_before_the_loop_stops_at_once_and_keeps_the_checkpoints(
    two_checkpoints, tmp_path, monkeypatch, when
):
    """SIGTERM while data loads interrupts the load; during the compile it stops the run
    once the step is built. Either way nothing is written and the checkpoints stay as
    they were (a signal is never taken for a damaged checkpoint)."""
    src, _ = two_checkpoints
    workdir = _copy_run(src, tmp_path / "run")
    before = sorted(os.listdir(workdir / "checkpoints"))
    target, name = (data_lib, "get_source") if when == "reading data" else (train, "build")
    real = getattr(target, name)

    def signalled(*args, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # handled during the sleep when the stop is immediate
        return real(*args, **kw)

    monkeypatch.setattr(target, name, signalled)
    t = time.time()
    with pytest.raises(preemption.StoppedEarly) as e:
        train.train_and_evaluate(tiny_run_config(total_steps=30), str(workdir))
    assert e.value.signal_name == "SIGTERM" and time.time() - t < 60
    assert sorted(os.listdir(workdir / "checkpoints")) == before
    assert not (workdir / train_state.Workdir.DAMAGED).exists() and not (workdir / "model.npz").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are restored


# ----------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A finished tiny run with checkpoints at steps 10 and 20; its final parameters."""
    workdir = tmp_path_factory.mktemp("damage") / "run"
    train.train_and_evaluate(tiny_run_config(total_steps=20), str(workdir))
    return workdir, checkpoint.load(str(workdir / "model.npz"))


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    os.remove(dst / "model.npz")
    return dst


def _flip_data_bytes(step_dir):
    """Flips one byte in the middle of every array data file of the checkpoint."""
    for f in glob.glob(str(step_dir / "state" / "**" / "d" / "*"), recursive=True):
        data = bytearray(open(f, "rb").read())
        data[len(data) // 2] ^= 0x5A
        open(f, "wb").write(data)


def _truncate_data(step_dir):
    for f in glob.glob(str(step_dir / "state" / "**" / "d" / "*"), recursive=True):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 3)


def _garble_meta(step_dir):
    (step_dir / "meta" / "metadata").write_text("{not json")


@pytest.mark.parametrize(
    "damage", [_flip_data_bytes, _truncate_data, _garble_meta], ids=["flipped", "truncated", "meta"]
)
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact(two_checkpoints, tmp_path, caplog, damage):
    src, expected = two_checkpoints
    workdir = _copy_run(src, tmp_path / "run")
    damage(workdir / "checkpoints" / "20")
    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(tiny_run_config(total_steps=20), str(workdir))
    assert any("Checkpoint step 20" in r.message and "damaged" in r.message for r in caplog.records), caplog.text
    assert os.path.isdir(workdir / train_state.Workdir.DAMAGED / "20")  # kept for inspection, not deleted
    got = checkpoint.load(str(workdir / "model.npz"))  # resumed from 10, retrained to 20: the same parameters
    jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_damaged_checkpoint_through_the_command_is_one_warning_then_bitwise(reference, tmp_path):
    """Through `vit_jax.main`: the damaged newest step is one warning line (not a traceback per
    array still being read), and the run resumed from the older one ends bitwise as the reference."""
    workdir = _copy_run(reference, tmp_path / "run")
    _flip_data_bytes(workdir / "checkpoints" / "40")
    out = finish(start(workdir))
    assert "Traceback" not in out and "Event loop is closed" not in out, out[-3000:]
    assert len([line for line in out.splitlines() if "Checkpoint step 40" in line and "damaged" in line]) == 1
    assert "Resumed from" in out and "at step 30" in out
    assert_bitwise(reference, workdir)


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(two_checkpoints, tmp_path):
    src, _ = two_checkpoints
    workdir = _copy_run(src, tmp_path / "run")
    for step in ("10", "20"):
        _truncate_data(workdir / "checkpoints" / step)
    with pytest.raises(checkpoint.CheckpointError, match=r"Every checkpoint in .* is damaged \(steps 20, 10\)"):
        train.train_and_evaluate(tiny_run_config(total_steps=20), str(workdir))
    assert not (workdir / "model.npz").exists()


def test_checksums_see_one_bit_and_not_the_layout():
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    state = {"w": a, "step": np.int32(3)}
    sums = train_state.state_checksums(state)
    assert train_state.state_checksums(jax.device_put(state)) == sums  # host or device: the same
    flipped = a.copy()
    flipped.view(np.uint32)[2, 3] ^= 1  # the lowest mantissa bit of one element
    assert train_state.state_checksums({"w": flipped, "step": np.int32(3)})["w"] != sums["w"]
    swapped = a.copy()
    swapped[0, 0], swapped[0, 1] = a[0, 1], a[0, 0]
    assert train_state.state_checksums({"w": swapped, "step": np.int32(3)})["w"] != sums["w"]
    # By hand for a 2-element uint32 view: bits x (2 i + 1), modulo 2**32.
    b = np.array([1.0, 2.0], np.float32)
    bits = b.view(np.uint32).astype(np.uint64)
    assert train_state.state_checksums({"b": b})["b"] == int((bits[0] * 1 + bits[1] * 3) % 2**32)


def test_checkpoint_of_another_model_names_the_parameters(two_checkpoints, tmp_path):
    src, _ = two_checkpoints
    workdir = _copy_run(src, tmp_path / "run")
    wider = tiny_run_config(total_steps=20, **{"model.hidden_size": 32, "model.transformer.mlp_dim": 32})
    with pytest.raises(
        checkpoint.CheckpointError,
        match=r"written by a different model or optimizer: .*encoder_norm/bias has shape \(16,\) there, \(32,\) here",
    ):
        train.train_and_evaluate(wider, str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]  # untouched
    sgd = tiny_run_config(total_steps=20, **{"optim.name": "sgd"})
    with pytest.raises(checkpoint.CheckpointError, match=r"different model or optimizer: .*opt_state"):
        train.train_and_evaluate(sgd, str(workdir))


# ----------------------------------------------------------------------------- numerical faults


def _exploding(**overrides):
    # Plain SGD at a learning rate of 1e6 after 4 warm-up steps: the parameters overflow.
    return tiny_run_config(
        total_steps=12,
        checkpoint_every=2,
        progress_every=4,
        eval_every=100,
        **{"optim.name": "sgd", "lr.base": 1e6, "lr.warmup_steps": 4, "grad_clip_norm": None, **overrides},
    )


def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(train.NumericalError, match=r"Non-finite training at step (\d+)") as info:
        train.train_and_evaluate(_exploding(), str(tmp_path))
    bad = int(str(info.value).split("at step ")[1].split()[0])
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert steps and max(steps) < bad, (steps, bad)
    assert f"the last good checkpoint is step {max(steps)}" in str(info.value)
    state, meta = train_state.restore_state(str(tmp_path), _abstract_state(_exploding()), 3)
    assert meta["step"] == max(steps)
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(state["params"]))


def test_skipping_non_finite_steps_is_a_choice(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(_exploding(skip_nonfinite_steps=True), str(tmp_path))
    assert "non-finite loss or gradient" in caplog.text
    params = checkpoint.load(str(tmp_path / "model.npz"))
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(params))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert any(r.get("skipped_steps") for r in records if r["kind"] == "train")


def _abstract_state(config):
    prog = train.build(config_lib.resolve(config, 1), 10, int(config.total_steps))
    return prog.init_state(jax.random.PRNGKey(0))


# ----------------------------------------------------------------------------- disk


def test_a_failing_checkpoint_write_leaves_the_earlier_ones_usable(two_checkpoints, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    _, expected = two_checkpoints
    original = ocp.StandardCheckpointHandler.async_save
    calls = []

    class FullDisk:
        """The write's own future, failing as a full disk does once the data is being written."""

        def __init__(self, future):
            self.future = future

        def result(self, timeout=None):
            self.future.result(timeout=timeout)
            raise OSError(28, "No space left on device")

    async def failing(self, *args, **kwargs):
        futures = await original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) < 2:  # the second checkpoint's write fails
            return futures
        return [FullDisk(f) for f in futures or []] or [FullDisk(_Done())]

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing)
    with pytest.raises(train_state.CheckpointWriteError, match=r"No space left on device.*steps 10\) are intact"):
        train.train_and_evaluate(tiny_run_config(total_steps=20), str(tmp_path))
    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", original)
    assert not (tmp_path / "model.npz").exists()
    train.train_and_evaluate(tiny_run_config(total_steps=20), str(tmp_path))  # resumes from 10
    jax.tree.map(np.testing.assert_array_equal, checkpoint.load(str(tmp_path / "model.npz")), expected)


class _Done:
    def result(self, timeout=None):
        return None


# ----------------------------------------------------------------------------- bad input


def test_a_busy_workdir_is_refused_until_its_run_is_gone(tmp_path):
    hold = (
        f"from vit_jax import train_state; import time; train_state.WorkdirLock({str(tmp_path)!r}).acquire(); "
        "print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t = time.time()
    with pytest.raises(
        train_state.WorkdirError, match=rf"in use by another run \(pid {holder.pid} on .*another --workdir"
    ):
        train.train_and_evaluate(tiny_run_config(total_steps=2), str(tmp_path))
    assert time.time() - t < 5
    holder.kill()  # a process that dies without cleaning up: its lock goes with it
    holder.wait()
    train.train_and_evaluate(tiny_run_config(total_steps=2), str(tmp_path))
    assert (tmp_path / "model.npz").exists()


def test_labels_out_of_range_are_refused(tmp_path):
    import gzip

    d = tmp_path / "idx"
    d.mkdir()
    images = np.zeros((3, 4, 4), np.uint8)
    for split, (img_name, lbl_name) in input_pipeline.IDX_FILES.items():
        labels = np.array([1, 12, 3] if split == "train" else [0, 1, 2], np.uint8)
        with gzip.open(d / img_name, "wb") as f:
            f.write(np.array([2051, 3, 4, 4], ">u4").tobytes() + images.tobytes())
        with gzip.open(d / lbl_name, "wb") as f:
            f.write(np.array([2049, 3], ">u4").tobytes() + labels.tobytes())
    config = tiny_run_config(dataset=str(d))
    with pytest.raises(input_pipeline.DataError, match=r"1 label\(s\) outside 0\.\.9 \(first: label 12 at example 1\)"):
        input_pipeline.get_source(config, "train")


def test_pretrained_checkpoint_of_another_architecture_is_named(tmp_path):
    from vit_jax import models

    other = tiny_run_config(**{"model.hidden_size": 24, "model.transformer.mlp_dim": 32})
    params = models.VisionTransformer(num_classes=10, **config_lib.model_kwargs(other)).init(
        jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1)), train=False
    )["params"]
    checkpoint.save(params, str(tmp_path / "other.npz"))
    config = tiny_run_config(total_steps=2, pretrained_path=str(tmp_path / "other.npz"))
    with pytest.raises(checkpoint.CheckpointError, match=r"does not fit the model.*\(24,\)"):
        train.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--config.dataset=/nonexistent/data"], "Dataset directory /nonexistent/data does not exist"),
        (["--config.model.transformer.num_heads=3"], "num_heads=3 does not divide hidden_size=16"),
    ],
)
def test_bad_input_through_the_command_ends_in_one_line(tmp_path, extra, message):
    t = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "vit_jax.main", *RUN, "--workdir", str(tmp_path), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and time.time() - t < 30
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# ----------------------------------------------------------------------------- fuzz


def _garbage(rng, valid: bytes) -> list[bytes]:
    """Random bytes, truncations of a valid file, and the valid file with random bytes changed."""
    out = [rng.bytes(int(n)) for n in rng.integers(0, 4096, 12)]
    out += [valid[: int(n)] for n in rng.integers(0, len(valid), 12)]
    for _ in range(24):
        b = bytearray(valid)
        for i in rng.integers(0, len(b), int(rng.integers(1, 16))):
            b[i] = int(rng.integers(0, 256))
        out.append(bytes(b))
    return out


def test_fuzz_garbage_images_give_our_error_or_an_image(tmp_path):
    """Damaged image files, decoded as a training batch would: each is named in the batch's
    failures (the file path) or, where the decoder tolerates the change, a well-formed image."""
    from PIL import Image

    from vit_jax.data import decode, folder, worker

    rng = np.random.default_rng(0)
    spec = decode.HostSpec(size=(16, 16), area_min=0.3)
    for fmt in ("PNG", "JPEG"):
        path = tmp_path / f"valid.{fmt.lower()}"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path, fmt)
        paths = []
        for i, data in enumerate(_garbage(rng, path.read_bytes())):
            bad = tmp_path / f"g{i}.{fmt.lower()}"
            bad.write_bytes(data)
            paths.append(bad.name)
        reader = folder.FolderReader(folder.Listing.from_paths(str(tmp_path), paths, [0] * len(paths)))
        for i, name in enumerate(paths):
            task = {"spec": spec, "indices": np.array([i]), "rows": np.array([i]), "mode": "eval", "seed": 0, "step": 0}
            header, images = worker.run_task(task, reader)
            if header["status"][0] == worker.OK:  # a change the decoder tolerates still gives a well-formed image
                assert images.shape == (1, 16, 16, 3) and images.dtype == np.uint8
            else:
                assert header["failures"][0][0] == str(tmp_path / name) and header["failures"][0][1]


def test_fuzz_garbage_npz_and_idx_give_our_error(tmp_path):
    rng = np.random.default_rng(1)
    valid = tmp_path / "valid.npz"
    np.savez(valid, **{"head/kernel": np.ones((4, 3), np.float32), "head/bias": np.zeros(3, np.float32)})
    idx = tmp_path / "valid-idx"
    idx.write_bytes(np.array([2051, 2, 3, 3], ">u4").tobytes() + bytes(range(18)))
    for kind, reader, error, src in (
        ("npz", checkpoint.load, checkpoint.CheckpointError, valid),
        ("idx", input_pipeline.read_idx, input_pipeline.DataError, idx),
    ):
        for i, data in enumerate(_garbage(rng, src.read_bytes())):
            bad = tmp_path / f"g{i}.{kind}"
            bad.write_bytes(data)
            try:
                reader(str(bad))  # a change that leaves a readable file is fine
            except error as e:
                assert str(bad) in str(e)
