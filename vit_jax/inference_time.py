"""Inference throughput of a registered model, as the original release's `inference_time` measured it.

Random parameters, a batch of ones, `config.initial_steps` untimed forward passes after
the compiling one, then `config.steps` timed ones. Images per second per local device
(min, max, mean, std over the timed passes) are logged and written as TensorBoard
scalars at step 0 into the workdir itself, where the original's writer put them.
The config is `vit_jax/configs/inference_time.py`.
"""

import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vit_jax import benchmark, errors, metrics, models
from vit_jax.configs import models as model_configs

log = logging.getLogger(__name__)


def inference_time(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Times forward passes of `config.model_name` on `config.batch` images of `config.image_size`.

    The batch is split over this process's devices (jit over a one-axis mesh of them,
    parameters replicated). The original timed `initial_steps` passes where it meant
    `steps` (its loop ran over the wrong field); this one times `config.steps`, as the
    config's comments say. Returns the four imgs_sec_core_* numbers it writes.
    """
    unset = [f"config.{k}" for k in ("batch", "num_classes", "image_size") if not config.get(k)]
    if unset:
        raise errors.UserError(f"Set {', '.join(unset)} to a positive number (e.g. --config.batch=64).")
    devices = jax.local_devices()
    if config.batch % len(devices):
        raise errors.UserError(
            f"config.batch={config.batch} is not a multiple of the {len(devices)} local devices it is split over."
        )
    if int(config.steps) < 1:
        raise errors.UserError(f"config.steps={config.steps}: time at least one forward pass.")
    try:
        model_config = model_configs.get_config(config.model_name)
    except KeyError as e:
        raise errors.UserError(str(e.args[0])) from None
    model = models.VisionTransformer(num_classes=int(config.num_classes), **model_config)

    mesh = Mesh(np.array(devices), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
    size = int(config.image_size)
    params = jax.jit(
        lambda rng: model.init(rng, jnp.ones((1, size, size, 3), jnp.float32), train=False)["params"],
        out_shardings=replicated,
    )(jax.random.PRNGKey(0))
    images = jax.device_put(np.ones((int(config.batch), size, size, 3), np.float32), split)
    forward = jax.jit(
        lambda p, x: model.apply({"params": p}, x, train=False),
        in_shardings=(replicated, split),
        out_shardings=split,
    )

    log.info(
        "Timing %s: %d warm-up and %d timed passes of %d images (%dx%d) on %d device(s); compiling first...",
        config.model_name,
        config.initial_steps,
        config.steps,
        config.batch,
        size,
        size,
        len(devices),
    )
    times = benchmark._time(lambda: forward(params, images), int(config.steps), warmup=1 + int(config.initial_steps))
    log.info("times=%s", times)
    per_core = config.batch / len(devices) / np.asarray(times)
    stats = {
        "imgs_sec_core_min": float(per_core.min()),
        "imgs_sec_core_max": float(per_core.max()),
        "imgs_sec_core_mean": float(per_core.mean()),
        "imgs_sec_core_std": float(per_core.std()),
    }
    for k, v in stats.items():
        log.info("%s=%f", k, v)
    if jax.process_index() == 0:
        _write_scalars(workdir, 0, stats)
    return stats


def _write_scalars(workdir: str, step: int, values: dict[str, Any]) -> None:
    """TensorBoard scalars in an events.out.tfevents.* file directly in `workdir` (tag = key).

    `metrics.MetricWriter` keeps its events in WORKDIR/tensorboard; the original's tools
    and tests look for them in the workdir itself.
    """
    if "://" in workdir:  # gs://...: tensorboard writes there through TensorFlow's file layer
        import tensorflow  # noqa: F401
    else:
        os.makedirs(workdir, exist_ok=True)
        metrics._tensorboard_without_tensorflow()
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(workdir)
    try:
        summary = Summary(value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))
    finally:
        writer.close()
