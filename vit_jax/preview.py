"""See what the model sees: the training inputs of one step, as the train step feeds them.

    python -m vit_jax.preview --config CONFIG [--config.FIELD=VALUE ...] --step N [--out grid.png] [--npy batch.npy]

Reads the global batch of step N (the batch the update from step N to N + 1 trains on) the way
training reads it, host crop included, then applies that step's device augmentation with that
step's keys (`steps.micro_inputs`: pad-and-crop, RandAugment, erasing, Mixup / CutMix, per
micro-batch with config.accum_steps). Writes a PNG grid of the model inputs and, with --npy,
the float32 (B, H, W, C) array, rows in the batch's order; prints one JSON line
{"step": N, "images": B, "seconds": T}. Only step N's examples are read, so the time does not
grow with N.
"""

import json
import logging
import math
import sys
import time

from absl import flags

from vit_jax import main as main_lib

flags.DEFINE_integer("step", 0, "The step whose inputs to show (0: the first batch of a run).")
flags.DEFINE_string("out", "preview.png", "Where the PNG grid goes (empty: no grid).")
flags.DEFINE_string("npy", None, "Also write the inputs as a float32 (B, H, W, C) .npy file here.")
FLAGS = flags.FLAGS


def step_inputs(config, step: int):
    """(inputs (B, H, W, C) float32, soft targets (B, classes)) of `step` of a resolved config."""
    import jax
    import numpy as np

    from vit_jax import data, preprocess, steps

    source = data.get_source(config, "train")
    batches = source.train_batches(batch=config.batch, seed=config.seed, start_step=step)
    try:
        batch = next(batches)
    finally:
        if hasattr(batches, "close"):
            batches.close()
    pp = preprocess.pp_dict(config, host_crop=source.host_crop)
    mixup, accum = preprocess.mixup_dict(config), int(config.accum_steps)
    base_rng = jax.random.PRNGKey(config.seed + 1)  # the train loop's base key

    @jax.jit
    def micro(images, labels, i):
        rng = steps.step_rng(base_rng, step, i if accum > 1 else None)
        return steps.micro_inputs(images, labels, rng, pp, source.num_classes, float(config.label_smoothing), mixup)

    images, labels = steps.split_micro(batch["image"], accum), steps.split_micro(batch["label"], accum)
    parts = [micro(images[i], labels[i], i) for i in range(accum)]
    x = np.stack([np.asarray(p[0]) for p in parts], 1)  # (B / accum, accum, ...): row r is micro-batch r % accum
    t = np.stack([np.asarray(p[1]) for p in parts], 1)
    return x.reshape(-1, *x.shape[2:]), t.reshape(-1, t.shape[-1])


def write_grid(x, path: str) -> None:
    """The inputs ([-1, 1]) as one PNG, a near-square grid with a 2-pixel gap."""
    import numpy as np
    from PIL import Image

    b, h, w, c = x.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, c), 255, np.uint8)
    pixels = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    for i in range(b):
        r, k = divmod(i, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + k * (w + 2) : 2 + k * (w + 2) + w] = pixels[i]
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from vit_jax import errors

    try:
        config, _, _ = main_lib.parse(argv)
        from vit_jax import config as config_lib

        config = config_lib.resolve(config)
        if FLAGS.step < 0:
            raise config_lib.ConfigError(f"--step={FLAGS.step}: use a step from 0 on.")
        t = time.perf_counter()
        x, _ = step_inputs(config, FLAGS.step)
        if FLAGS.out:
            write_grid(x, FLAGS.out)
        if FLAGS.npy:
            import numpy as np

            np.save(FLAGS.npy, x.astype(np.float32))
    except errors.UserError as e:
        return errors.report(e)
    print(json.dumps({"step": FLAGS.step, "images": int(x.shape[0]), "seconds": round(time.perf_counter() - t, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
