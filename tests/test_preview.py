"""`python -m vit_jax.preview`: the inputs of step N as the train step feeds them to the model."""

import json
import os

import jax
import numpy as np
import optax
from conftest import run_main, tiny_run_config

from vit_jax import config as config_lib
from vit_jax import data, preview, train


def test_the_preview_is_what_the_train_step_trains_on():
    """The train step's loss at step 37 equals the loss of the model on the preview's inputs and
    targets (RandAugment, pad-and-crop, flips and Mixup all on, no dropout)."""
    c = tiny_run_config(**{"pp.pad": 1, "pp.flip": True, "pp.randaug.num_layers": 1, "mixup.alpha": 0.4})
    c.model.transformer.dropout_rate = 0.0
    config = config_lib.resolve(c)
    x, targets = preview.step_inputs(config, 37)
    source = data.get_source(config, "train")
    prog = train.build(config, source.num_classes, 40, host_crop=source.host_crop)
    state = prog.init_state(jax.random.PRNGKey(0))
    params = state["params"]
    logits = prog.model.apply({"params": params}, x, train=False)
    expected = float(optax.softmax_cross_entropy(logits, targets).mean())
    state = dict(state, step=state["step"] + 37)
    batch = next(source.train_batches(batch=config.batch, seed=config.seed, start_step=37))
    from vit_jax import parallel

    base_rng = jax.device_put(jax.random.PRNGKey(config.seed + 1), prog.replicated)
    _, out = prog.train_step(state, parallel.global_batch(batch, prog.data_sharding), base_rng)
    assert abs(float(out["loss"]) - expected) < 1e-5


def test_rows_keep_the_batch_order_with_micro_batches():
    c = tiny_run_config(**{"pp.area_min": 1.0, "accum_steps": 4})
    config = config_lib.resolve(c)
    x, _ = preview.step_inputs(config, 3)
    batch = next(data.get_source(config, "train").train_batches(batch=config.batch, seed=config.seed, start_step=3))
    np.testing.assert_allclose(x, batch["image"] / 127.5 - 1.0, atol=1e-6)


def test_the_command_on_an_image_folder_at_a_far_step(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            os.makedirs(tmp_path / "d" / split / cls)
            for i in range(3):
                pixels = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "d" / split / cls / f"{i}.jpg")
    args = [
        "--config", "configs/quickstart.py", f"--config.dataset={tmp_path / 'd'}", "--config.pp.channels=3",
        "--config.batch=6", "--config.data_workers=0", "--step", "1000000",
        "--out", str(tmp_path / "grid.png"), "--npy", str(tmp_path / "batch.npy"),
    ]  # fmt: skip
    proc = run_main(*args, module="vit_jax.preview")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["step"] == 1_000_000 and line["images"] == 6 and line["seconds"] < 30
    x = np.load(tmp_path / "batch.npy")
    assert x.shape == (6, 8, 8, 3) and x.dtype == np.float32 and -1 <= x.min() and x.max() <= 1
    assert (tmp_path / "grid.png").stat().st_size > 0
