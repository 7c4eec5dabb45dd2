"""Benchmark the real train step (or inference) of a config against the machine's matmul rate.

    python -m vit_jax.benchmark --config configs/fashion_mnist.py [--config.FIELD=VALUE ...]
    python -m vit_jax.benchmark --model ViT-B_16 --image_size 224 --batch 8
    options: --mode train|infer|both|input  --batch N  --steps N  --warmup N  --json  --cpu_devices N

With --config, the step is the one `vit_jax.main` compiles for that config
(`train.build`): the same model, optimizer, micro-batching, mesh and shardings.
With --model, a registered model is benchmarked with the default training setup
(`vit_jax/configs/common.py`: SGD with momentum, clipping, no accumulation) on
`--image_size` inputs. Batches are synthetic; `--mode input` instead times the
config's real input pipeline alone (host reading plus transfer), to compare with
the step's demand.

Reported per mode: compile time; median step time with min and max; images per
second; FLOPs per image, counted by XLA's cost analysis of the same step compiled
without loops (XLA counts a loop body once) or recomputation; achieved FLOP/s; the
same process's measured float32 and bfloat16 matmul rates over all devices; model
FLOP utilisation (achieved over the measured rate of the compute dtype); and peak
memory (XLA's buffer assignment of the step, the device's own peak counter where it
has one, and the process's peak resident memory). Absolute times drift between runs
on a shared CPU; the ratio within one run is the figure to compare.
"""

import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FlagValues()  # its own registry: vit_jax.main's flags live in the global one
config_flags.DEFINE_config_file("config", None, "Run config to benchmark (its real train step).", flag_values=FLAGS)
flags.DEFINE_string(
    "model", None, "Registered model name (ViT-B_16, B/16, R50+ViT-B_16), instead of --config.", flag_values=FLAGS
)
flags.DEFINE_integer("image_size", 224, "Input size with --model.", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", 1000, "Head size with --model.", flag_values=FLAGS)
flags.DEFINE_integer("batch", None, "Global batch (default: the config's; 8 with --model).", flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "Timed steps.", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.", flag_values=FLAGS)
flags.DEFINE_enum("mode", "both", ["train", "infer", "both", "input"], "What to time.", flag_values=FLAGS)
flags.DEFINE_bool("json", False, "Print one JSON object per mode.", flag_values=FLAGS)
flags.DEFINE_integer(
    "cpu_devices", None, "Number of CPU devices (jax_num_cpu_devices); set before JAX starts.", flag_values=FLAGS
)
flags.DEFINE_string(
    "attention", None, "With --model: attention_impl (auto, fused, einsum, dot_product_attention).", flag_values=FLAGS
)


def _time(fn: Callable[[], Any], steps: int, warmup: int = 1) -> list[float]:
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return times


def matmul_rate(dtype=None, n: int = 4096, steps: int = 5, mesh=None) -> float:
    """Measured FLOP/s of n x n matmuls in `dtype`, one per device of `mesh` at once (median)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    dtype = dtype or jnp.float32
    devices = mesh.size if mesh is not None else 1
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((devices, n, n)), dtype)
    b = jnp.asarray(rng.standard_normal((devices, n, n)), dtype)
    if mesh is not None:
        sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
        a, b = jax.device_put(a, sharding), jax.device_put(b, sharding)
    f = jax.jit(lambda a, b: jnp.einsum("dij,djk->dik", a, b))
    return devices * 2 * n**3 / float(np.median(_time(lambda: f(a, b), steps)))


def compiled_flops(compiled) -> float | None:
    """FLOPs of a compiled computation from XLA's cost analysis (None if unavailable)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def memory_bytes(compiled) -> int | None:
    """Peak of XLA's buffer assignment for one device: arguments + outputs - aliased + temporaries."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def device_peak_bytes() -> int | None:
    """The device's own peak-allocation counter (GPU, TPU); None where it has none (CPU)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def host_peak_bytes() -> int:
    """Peak resident memory of this process (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def model_config(name: str, image_size: int, batch: int):
    """The default training setup around a registered model, on synthetic RGB inputs."""
    from vit_jax.configs import common
    from vit_jax.configs import models as model_configs

    c = common.get_config()
    c.model_name = model_configs.resolve_name(name)
    c.pp.crop = image_size
    c.pp.channels = 3
    c.batch = batch
    return c


def flop_count_config(config):
    """The same step without loops or recomputation, so XLA's count covers all of it."""
    c = config.copy_and_resolve_references()
    c.accum_steps = 1
    c.model.scan = False
    c.model.remat = "none"
    return c


def synthetic_batch(config, batch: int, num_classes: int, with_mask: bool = False) -> dict[str, Any]:
    import numpy as np

    from vit_jax import input_pipeline

    rng = np.random.default_rng(0)
    h, w = input_pipeline.storage_size(config)
    out = {
        "image": rng.integers(0, 256, (batch, h, w, config.pp.channels), dtype=np.uint8),
        "label": rng.integers(0, num_classes, batch).astype(np.int32),
    }
    if with_mask:
        out["mask"] = np.ones(batch, np.float32)
    return out


def _one_device_mesh():
    import jax
    import numpy as np

    return jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))


def _step_flops(config, num_classes: int, batch: int, mode: str) -> float | None:
    """FLOPs of one global step, compiled on one device without loops (not run)."""
    import jax

    from vit_jax import parallel, train

    c = flop_count_config(config)
    prog = train.build(c, num_classes, steps=1, mesh=_one_device_mesh())
    state = jax.eval_shape(prog.init_state, jax.random.PRNGKey(0))
    data = parallel.global_batch(synthetic_batch(c, batch, num_classes, mode == "infer"), prog.data_sharding)
    if mode == "train":
        compiled = prog.train_step.lower(state, data, jax.random.PRNGKey(1)).compile()
    else:
        compiled = prog.eval_step.lower(state["params"], data).compile()
    return compiled_flops(compiled)


def _measure(config, num_classes: int, batch: int, mode: str, steps: int, warmup: int) -> dict[str, Any]:
    import jax
    import numpy as np

    from vit_jax import parallel, train

    prog = train.build(config, num_classes, steps=max(steps + warmup, 1))
    state = prog.init_state(jax.random.PRNGKey(0))
    data = parallel.global_batch(synthetic_batch(config, batch, num_classes, mode == "infer"), prog.data_sharding)
    rng = jax.device_put(jax.random.PRNGKey(1), prog.replicated)
    t0 = time.perf_counter()
    if mode == "train":
        compiled = prog.train_step.lower(state, data, rng).compile()
    else:
        compiled = prog.eval_step.lower(state["params"], data).compile()
    compile_s = time.perf_counter() - t0
    box = {"state": state}

    def train_once():
        box["state"], out = compiled(box["state"], data, rng)
        return out["loss"]

    def infer_once():
        return compiled(state["params"], data)["correct"]

    times = _time(train_once if mode == "train" else infer_once, steps, warmup)
    med = float(np.median(times))
    return {
        "mode": mode,
        "batch": batch,
        "accum_steps": int(config.accum_steps),
        "step_ms": med * 1e3,
        "step_ms_min": min(times) * 1e3,
        "step_ms_max": max(times) * 1e3,
        "images_per_s": batch / med,
        "compile_s": compile_s,
        "xla_memory_bytes": memory_bytes(compiled),
        "devices": prog.mesh.size,
        "mesh": prog.mesh,
    }


def measure_input(config, batch: int, steps: int) -> dict[str, Any]:
    """Images per second of the config's real input pipeline alone (read, gather, transfer)."""
    import jax

    from vit_jax import input_pipeline, parallel

    source = input_pipeline.get_source(config, "train")
    sharding = parallel.batch_sharding(parallel.make_mesh())
    batches = input_pipeline.train_batches(
        source,
        batch=batch,
        seed=0,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    jax.block_until_ready(parallel.global_batch(next(batches), sharding))
    t = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(parallel.global_batch(next(batches), sharding))
    dt = (time.perf_counter() - t) / steps
    return {"mode": "input", "batch": batch, "step_ms": dt * 1e3, "images_per_s": batch / dt}


def num_classes_of(config) -> int:
    """The dataset's class count when its data is at hand, else 1000 (the head barely matters)."""
    from vit_jax import input_pipeline

    try:
        return input_pipeline.get_source(config, "test").num_classes
    except (input_pipeline.DataError, OSError):
        return 1000


def run(config, *, name: str, num_classes: int, modes: list[str], steps: int = 10, warmup: int = 2):
    """One report dict per mode; see the module docstring for the fields."""
    import jax
    import jax.numpy as jnp

    from vit_jax import train

    train.validate(config)
    batch = int(config.batch)
    compute = "bfloat16" if config.model.dtype == "bfloat16" else "float32"
    results = []
    for mode in modes:
        if mode == "input":
            results.append(measure_input(config, batch, steps))
            continue
        r = _measure(config, num_classes, batch, mode, steps, warmup)
        r["flops_per_step"] = _step_flops(config, num_classes, batch, mode)
        results.append(r)
    mesh = next((r["mesh"] for r in results if "mesh" in r), None)
    report = []
    if any(r["mode"] != "input" for r in results):
        rate_f32 = matmul_rate(jnp.float32, mesh=mesh)
        rate_bf16 = matmul_rate(jnp.bfloat16, mesh=mesh)
    for r in results:
        r = dict(r, config=name, backend=jax.default_backend())
        r.pop("mesh", None)
        flops = r.pop("flops_per_step", None)
        if r["mode"] != "input":
            limit = rate_bf16 if compute == "bfloat16" else rate_f32
            achieved = flops / (r["step_ms"] / 1e3) if flops else None
            r.update(
                compute_dtype=compute,
                gflops_per_image=flops / batch / 1e9 if flops else None,
                achieved_gflops=achieved / 1e9 if achieved else None,
                matmul_f32_gflops=rate_f32 / 1e9,
                matmul_bf16_gflops=rate_bf16 / 1e9,
                utilisation=achieved / limit if achieved else None,
                device_peak_bytes=device_peak_bytes(),
                host_peak_bytes=host_peak_bytes(),
            )
        report.append(r)
    return report


def _gib(b):
    return f"{b / 2**30:.2f} GiB" if b else "n/a"


def format_line(r: dict[str, Any]) -> str:
    if r["mode"] == "input":
        return f"{r['config']} input: {r['step_ms']:.1f} ms/batch of {r['batch']}, {r['images_per_s']:.0f} img/s"
    util = f"{100 * r['utilisation']:.0f}%" if r["utilisation"] else "n/a"
    flops = f"{r['gflops_per_image']:.3f} GFLOP/img" if r["gflops_per_image"] else "FLOPs n/a"
    achieved = f"{r['achieved_gflops']:.0f} GFLOP/s" if r["achieved_gflops"] else "n/a"
    return (
        f"{r['config']} {r['mode']} batch {r['batch']} (accum {r['accum_steps']}, {r['devices']} devices, "
        f"{r['compute_dtype']}): {r['step_ms']:.1f} ms/step (min {r['step_ms_min']:.1f}, max {r['step_ms_max']:.1f}), "
        f"{r['images_per_s']:.1f} img/s, compile {r['compile_s']:.1f} s, {flops}, {achieved} achieved, "
        f"matmul f32 {r['matmul_f32_gflops']:.0f} / bf16 {r['matmul_bf16_gflops']:.0f} GFLOP/s, "
        f"utilisation {util}, memory: XLA {_gib(r['xla_memory_bytes'])}, device peak {_gib(r['device_peak_bytes'])}, "
        f"process peak {_gib(r['host_peak_bytes'])}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if {"-h", "--help", "--helpfull"} & set(argv[1:]):
        print(__doc__ + "\n" + FLAGS.get_help())
        return 0
    FLAGS.unparse_flags()  # a second call in one process starts from the defaults
    try:
        FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if (FLAGS.config is None) == (FLAGS.model is None):
        print("error: give exactly one of --config CONFIG or --model NAME (e.g. --model ViT-B_16)", file=sys.stderr)
        return 2
    import jax

    if FLAGS.cpu_devices:
        jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
    from vit_jax import input_pipeline, train

    if FLAGS.model:
        config = model_config(FLAGS.model, FLAGS.image_size, FLAGS.batch or 8)
        if FLAGS.attention:
            config.model.attention_impl = FLAGS.attention
        name, num_classes = f"{config.model_name} {FLAGS.image_size}px", FLAGS.num_classes
    else:
        config = FLAGS.config
        if FLAGS.batch:
            config.unlock()
            config.batch = FLAGS.batch
        name, num_classes = FLAGS["config"].config_filename, num_classes_of(FLAGS.config)
    modes = ["infer", "train"] if FLAGS.mode == "both" else [FLAGS.mode]
    try:
        report = run(config, name=name, num_classes=num_classes, modes=modes, steps=FLAGS.steps, warmup=FLAGS.warmup)
    except (train.ConfigError, input_pipeline.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in report:
        print(json.dumps(r) if FLAGS.json else format_line(r))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
