"""Benchmark the real train step (or inference) of a config against the machine's matmul rate.

    python -m vit_jax.benchmark --config configs/fashion_mnist.py [--config.FIELD=VALUE ...]
    python -m vit_jax.benchmark --model ViT-B_16 --image_size 224 --batch 8 [--scan] [--remat full|dots]
    options: --mode train|infer|both|input  --batch N  --steps N  --warmup N  --json  --cpu_devices N
    with --model: --dtype bfloat16  --accum_steps N  --attention IMPL  --num_classes N

With --config, the step is the one `vit_jax.main` compiles for that config
(`train.build`): the same model, optimizer, micro-batching, mesh and shardings.
With --model, a registered model is benchmarked with the default training setup
(`vit_jax/configs/defaults.py`: SGD with momentum, clipping, no accumulation) on
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
import os
import resource
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from absl import flags
from ml_collections import config_flags

from vit_jax.config import DTYPES
from vit_jax.models_vit import REMAT_POLICIES

FLAGS = flags.FlagValues()  # its own registry: vit_jax.main's flags live in the global one
config_flags.DEFINE_config_file("config", None, "Run config to benchmark (its real train step).", flag_values=FLAGS)
flags.DEFINE_string(
    "model", None, "Registered model name (ViT-B_16, B/16, R50+ViT-B_16), instead of --config.", flag_values=FLAGS
)
flags.DEFINE_integer("image_size", 224, "Input size with --model.", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", 1000, "Head size with --model.", flag_values=FLAGS)
flags.DEFINE_integer("batch", None, "Global batch (default: the config's; 8 with --model).", flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "Timed steps (0: compile and report memory only).", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.", flag_values=FLAGS)
flags.DEFINE_enum("mode", "both", ["train", "infer", "both", "input"], "What to time.", flag_values=FLAGS)
flags.DEFINE_bool("json", False, "Print one JSON object per mode.", flag_values=FLAGS)
flags.DEFINE_integer(
    "matmul_size", 4096, "Side of the square matmuls that measure the machine's rate.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "cpu_devices", None, "Number of CPU devices (jax_num_cpu_devices); set before JAX starts.", flag_values=FLAGS
)
flags.DEFINE_string(
    "attention", None, "With --model: attention_impl (auto, fused, einsum, dot_product_attention).", flag_values=FLAGS
)
flags.DEFINE_enum("remat", None, list(REMAT_POLICIES), "With --model: rematerialisation policy.", flag_values=FLAGS)
flags.DEFINE_bool("scan", None, "With --model: scan over the encoder blocks.", flag_values=FLAGS)
flags.DEFINE_enum("dtype", None, list(DTYPES), "With --model: compute dtype.", flag_values=FLAGS)
flags.DEFINE_integer("accum_steps", None, "With --model: micro-batches per step.", flag_values=FLAGS)
flags.DEFINE_string(
    "profile", None, "Also trace the timed steps into this directory and print time per XLA op kind.", flag_values=FLAGS
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
    from vit_jax.configs import defaults
    from vit_jax.configs import models as model_configs

    c = defaults.get_config()
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

    from vit_jax import data

    rng = np.random.default_rng(0)
    h, w = data.host_size(config)
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


def step_flops(config, num_classes: int, batch: int, mode: str, host_crop: bool = False) -> float | None:
    """FLOPs of one global step, compiled on one device without loops (not run)."""
    import jax

    from vit_jax import parallel, train

    c = flop_count_config(config)
    prog = train.build(c, num_classes, steps=1, mesh=_one_device_mesh(), host_crop=host_crop)
    state = jax.eval_shape(prog.init_state, jax.random.PRNGKey(0))
    data = parallel.global_batch(synthetic_batch(c, batch, num_classes, mode == "infer"), prog.data_sharding)
    if mode == "train":
        compiled = prog.train_step.lower(state, data, jax.random.PRNGKey(1)).compile()
    else:
        compiled = prog.eval_step.lower(state["params"], data).compile()
    return compiled_flops(compiled)


def _measure(
    config, num_classes: int, batch: int, mode: str, steps: int, warmup: int, host_crop: bool = False
) -> dict[str, Any]:
    import jax
    import numpy as np

    from vit_jax import parallel, train

    prog = train.build(config, num_classes, steps=max(steps + warmup, 1), host_crop=host_crop)
    # With steps=0 only the compilation is measured: the state stays abstract (no memory).
    state = (prog.init_state if steps else partial(jax.eval_shape, prog.init_state))(jax.random.PRNGKey(0))
    data = parallel.global_batch(synthetic_batch(config, batch, num_classes, mode == "infer"), prog.data_sharding)
    rng = jax.device_put(jax.random.PRNGKey(1), prog.replicated)
    t0 = time.perf_counter()
    if mode == "train":
        compiled = prog.train_step.lower(state, data, rng).compile()
    else:
        compiled = prog.eval_step.lower(state["params"], data).compile()
    compile_s = time.perf_counter() - t0
    out = {
        "mode": mode,
        "batch": batch,
        "accum_steps": int(config.accum_steps),
        "step_ms": None,
        "step_ms_min": None,
        "step_ms_max": None,
        "images_per_s": None,
        "compile_s": compile_s,
        "xla_memory_bytes": memory_bytes(compiled),
        "devices": prog.mesh.size,
        "mesh": prog.mesh,
    }
    if not steps:
        return out
    box = {"state": state}

    def train_once():
        box["state"], out = compiled(box["state"], data, rng)
        return out["loss"]

    def infer_once():
        return compiled(state["params"], data)["correct"]

    times = _time(train_once if mode == "train" else infer_once, steps, warmup)
    med = float(np.median(times))
    out.update(step_ms=med * 1e3, step_ms_min=min(times) * 1e3, step_ms_max=max(times) * 1e3, images_per_s=batch / med)
    return out


def measure_input(config, batch: int, steps: int) -> dict[str, Any]:
    """Images per second of the config's real input pipeline alone: reading, decoding and the host
    crop (in config.data_workers processes, for the sources read by index), the batch handed to
    the device. The first batch (the workers starting) is timed apart."""
    import jax

    from vit_jax import data, parallel

    source = data.get_source(config, "train")
    sharding = parallel.batch_sharding(parallel.make_mesh())
    batches = source.train_batches(
        batch=batch,
        seed=0,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    try:
        t = time.perf_counter()
        jax.block_until_ready(parallel.global_batch(next(batches), sharding))
        first = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(steps):
            jax.block_until_ready(parallel.global_batch(next(batches), sharding))
        dt = (time.perf_counter() - t) / steps
    finally:
        if hasattr(batches, "close"):
            batches.close()
    cores = os.cpu_count() or 1
    workers = data.data_workers(config) if source.host_crop else 0
    return {
        "mode": "input",
        "batch": batch,
        "step_ms": dt * 1e3,
        "images_per_s": batch / dt,
        "images_per_s_per_core": batch / dt / cores,
        "cores": cores,
        "data_workers": workers,
        "first_batch_s": first,
    }


def op_breakdown(trace_dir: str, steps: int, top: int = 12) -> list[dict[str, Any]]:
    """Device time per XLA op kind (the op name without its number) from a profiler trace.

    Reads the Perfetto trace jax.profiler writes; kinds are sorted by total time, given
    per step and as a share of all op time.
    """
    import collections
    import glob
    import gzip
    import re

    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
    if not files:
        return []
    with gzip.open(files[-1]) as f:
        events = json.load(f)["traceEvents"]
    runtime = ("ThunkExecutor", "$", "SlinkyThreadPool", "PjitFunction", "Thunk", "TfrtCpu", "PjRt")
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or not name or name.startswith(runtime):
            continue
        kind = re.sub(r"[.\d]+$", "", name)
        total[kind] += e.get("dur", 0)
        count[kind] += 1
    all_us = sum(total.values()) or 1
    return [
        {"op": k, "ms_per_step": v / 1e3 / steps, "share": v / all_us, "calls_per_step": count[k] / steps}
        for k, v in total.most_common(top)
    ]


def profile_step(
    config, num_classes: int, mode: str, steps: int, trace_dir: str, host_crop: bool = False
) -> list[dict[str, Any]]:
    """Runs `steps` of the compiled step under the profiler; returns op_breakdown."""
    import jax

    from vit_jax import parallel, train

    prog = train.build(config, num_classes, steps=steps + 1, host_crop=host_crop)
    state = prog.init_state(jax.random.PRNGKey(0))
    data = parallel.global_batch(
        synthetic_batch(config, int(config.batch), num_classes, mode == "infer"), prog.data_sharding
    )
    rng = jax.device_put(jax.random.PRNGKey(1), prog.replicated)

    def run_once(state):
        if mode == "train":
            return prog.train_step(state, data, rng)[0]
        jax.block_until_ready(prog.eval_step(state["params"], data))
        return state

    state = jax.block_until_ready(run_once(state))  # compile outside the trace
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(steps):
            state = run_once(state)
        jax.block_until_ready(state)
    return op_breakdown(trace_dir, steps)


def dataset_facts(config) -> tuple[int, bool]:
    """(class count, whether the host crops) of the config's dataset when it is at hand, else
    (1000, False): the head barely matters, and synthetic batches are cropped on the device."""
    from vit_jax import data

    try:
        source = data.get_source(config, "test")
    except (data.DataError, OSError):
        return 1000, False
    return source.num_classes, source.host_crop


def run(
    config,
    *,
    name: str,
    num_classes: int,
    modes: list[str],
    steps: int = 10,
    warmup: int = 2,
    matmul_size: int = 4096,
    host_crop: bool = False,
):
    """One report dict per mode; see the module docstring for the fields."""
    import jax
    import jax.numpy as jnp

    from vit_jax import config as config_lib
    from vit_jax import parallel

    # Checked as a run is, without fetching pretrained weights: the benchmark times random ones.
    config = config_lib.complete(config)
    config_lib.validate(config)
    batch = int(config.batch)
    compute = "bfloat16" if config.model.dtype == "bfloat16" else "float32"
    timed = any(m != "input" for m in modes) and steps > 0
    # The limit is the best matmul rate seen before and after the steps (the rate drifts).
    mesh = parallel.make_mesh()  # the mesh train.build uses
    n = matmul_size
    rates_before = [matmul_rate(dt, n, mesh=mesh) for dt in (jnp.float32, jnp.bfloat16)] if timed else [0.0, 0.0]
    results = []
    for mode in modes:
        if mode == "input":
            results.append(measure_input(config, batch, steps))
            continue
        r = _measure(config, num_classes, batch, mode, steps, warmup, host_crop)
        r["flops_per_step"] = step_flops(config, num_classes, batch, mode, host_crop)
        results.append(r)
    report = []
    if any(r["mode"] != "input" for r in results):
        rate_f32 = max(rates_before[0], matmul_rate(jnp.float32, n, mesh=mesh))
        rate_bf16 = max(rates_before[1], matmul_rate(jnp.bfloat16, n, mesh=mesh))
    for r in results:
        r = dict(r, config=name, backend=jax.default_backend())
        r.pop("mesh", None)
        flops = r.pop("flops_per_step", None)
        if r["mode"] != "input":
            limit = rate_bf16 if compute == "bfloat16" else rate_f32
            achieved = flops / (r["step_ms"] / 1e3) if flops and r["step_ms"] else None
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
        return (
            f"{r['config']} input: {r['step_ms']:.1f} ms/batch of {r['batch']}, {r['images_per_s']:.0f} img/s "
            f"({r['images_per_s_per_core']:.0f} per core of {r['cores']}; {r['data_workers']} decode workers; "
            f"first batch {r['first_batch_s']:.2f} s)"
        )
    util = f"{100 * r['utilisation']:.0f}%" if r["utilisation"] else "n/a"
    flops = f"{r['gflops_per_image']:.3f} GFLOP/img" if r["gflops_per_image"] else "FLOPs n/a"
    achieved = f"{r['achieved_gflops']:.0f} GFLOP/s" if r["achieved_gflops"] else "n/a"
    timing = "not run (--steps 0)"
    if r["step_ms"]:
        timing = (
            f"{r['step_ms']:.1f} ms/step (min {r['step_ms_min']:.1f}, max {r['step_ms_max']:.1f}), "
            f"{r['images_per_s']:.1f} img/s"
        )
    return (
        f"{r['config']} {r['mode']} batch {r['batch']} (accum {r['accum_steps']}, {r['devices']} devices, "
        f"{r['compute_dtype']}): {timing}, compile {r['compile_s']:.1f} s, {flops}, {achieved} achieved, "
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
    from vit_jax import config as config_lib

    argv = config_lib.recipe_argv(argv)  # a recipe of the package by name (`--config quickstart`)
    try:
        FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if (FLAGS.config is None) == (FLAGS.model is None):
        print("error: give exactly one of --config CONFIG or --model NAME (e.g. --model ViT-B_16)", file=sys.stderr)
        return 2
    model_only = ("attention", "remat", "scan", "dtype", "accum_steps", "image_size", "num_classes")
    misplaced = [f for f in model_only if FLAGS.config is not None and FLAGS[f].present]
    if misplaced:
        print(
            f"error: --{misplaced[0]} goes with --model; with --config set the config field instead "
            f"(e.g. --config.model.remat=full, --config.accum_steps=4)",
            file=sys.stderr,
        )
        return 2
    import jax

    if FLAGS.cpu_devices:
        jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
    from vit_jax import errors

    if FLAGS.model:
        config = model_config(FLAGS.model, FLAGS.image_size, FLAGS.batch or 8)
        for field, value in (("attention_impl", FLAGS.attention), ("remat", FLAGS.remat), ("scan", FLAGS.scan)):
            if value is not None:
                config.model[field] = value
        config.model.dtype = FLAGS.dtype or "float32"
        config.accum_steps = FLAGS.accum_steps or 1
        name, num_classes, host_crop = f"{config.model_name} {FLAGS.image_size}px", FLAGS.num_classes, False
    else:
        config = FLAGS.config
        if FLAGS.batch:
            config.unlock()
            config.batch = FLAGS.batch
        name, (num_classes, host_crop) = FLAGS["config"].config_filename, dataset_facts(FLAGS.config)
    modes = ["infer", "train"] if FLAGS.mode == "both" else [FLAGS.mode]
    try:
        report = run(
            config,
            name=name,
            num_classes=num_classes,
            modes=modes,
            steps=FLAGS.steps,
            warmup=FLAGS.warmup,
            matmul_size=FLAGS.matmul_size,
            host_crop=host_crop,
        )
    except errors.UserError as e:
        return errors.report(e)
    for r in report:
        print(json.dumps(r) if FLAGS.json else format_line(r))
    if FLAGS.profile:
        for mode in (m for m in modes if m != "input"):
            trace_dir = os.path.join(FLAGS.profile, mode)
            for row in profile_step(config, num_classes, mode, FLAGS.steps, trace_dir, host_crop):
                row = dict(row, config=name, mode=mode)
                print(
                    json.dumps(row)
                    if FLAGS.json
                    else f"  {mode} op {row['op']:28s} {row['ms_per_step']:9.2f} ms/step "
                    f"{100 * row['share']:5.1f}%  {row['calls_per_step']:7.1f} calls/step"
                )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
