"""Training and evaluation: the program and the loop (the steps are `steps.py`, the optimizer
`optimizer.py`).

`run` reads top to bottom in named phases: load the data, build the program (model,
optimizer, shardings, jitted steps), restore the latest checkpoint or initialise (from
scratch or from pretrained weights), train, evaluate, export. The config it gets is
resolved and checked (`vit_jax.config.resolve`); `train_and_evaluate` does both for
library callers.

Exact resume: the batch of step s and its RNG (augmentation included) are functions of
(seed, s), and a checkpoint holds parameters, optimizer state, the parameter average
(with config.ema_decay) and step, so a run restarted from any
completed checkpoint retraces the uninterrupted run bit for bit.
"""

import contextlib
import dataclasses
import json
import logging
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vit_jax import (
    checkpoint,
    config_original,
    features,
    metrics,
    models,
    optimizer,
    parallel,
    preemption,
    preprocess,
    train_state,
)
from vit_jax import config as config_lib
from vit_jax import data as data_lib
from vit_jax.steps import cross_entropy, eval_params, make_eval_step, make_train_step, soft_targets  # noqa: F401

log = logging.getLogger("vit_jax")


def make_update_fn(*, apply_fn, accum_steps, tx):
    """The original release's data-parallel update step, without pmap.

    Returns update_fn(params, opt_state, batch, rng) -> (params, opt_state, loss, rng), where
    every argument and result has a leading axis of jax.local_device_count(), as the original
    (pmapped) one had: params, opt_state and rng replicated (e.g. by flax.jax_utils.replicate),
    batch['image'] (devices, per_device, H, W, C) and batch['label'] one-hot (devices,
    per_device, num_classes). Each device's softmax cross-entropy and gradient (averaged over
    `accum_steps` micro-batches, utils.accumulate_gradient) are averaged over the devices
    before one `tx` update; dropout on device d uses fold_in(rng, d); the returned rng is the
    second half of split(rng). Parameters are donated.

    It is jit of a shard_map over a one-axis mesh ('batch') of this process's devices, so it
    averages over this process's devices only. Unlike the original, which reused one dropout
    key for every micro-batch, micro-batch i (when accum_steps > 1) draws dropout from
    fold_in(device key, i); and `tx.update` is given the parameters, so optimizers with
    weight decay work too.
    """
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from vit_jax import utils

    mesh = Mesh(np.array(jax.local_devices()), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    accum = int(accum_steps or 1)

    def on_device(params, opt_state, batch, rng):
        # Each device sees its own (1, ...) slice of every argument.
        params, opt_state, batch, rng = jax.tree.map(lambda x: x[0], (params, opt_state, batch, rng))
        new_rng = jax.random.split(rng)[1]
        dropout_rng = jax.random.fold_in(rng, jax.lax.axis_index("batch"))
        images, labels = batch["image"], batch["label"]
        rows = images.shape[0]
        micro = jnp.arange(rows) * accum // rows  # the micro-batch of each row: slices are consecutive rows

        def loss_fn(p, x, y):
            y, m = y
            key = jax.random.fold_in(dropout_rng, m[0]) if accum > 1 else dropout_rng
            logits = apply_fn({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy(logits.astype(jnp.float32), y).mean()

        loss, grads = utils.accumulate_gradient(jax.value_and_grad(loss_fn), params, images, (labels, micro), accum)
        loss, grads = jax.lax.pmean((loss, grads), "batch")
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return jax.tree.map(lambda x: x[None], (params, opt_state, loss, new_rng))

    split = jax.sharding.NamedSharding(mesh, P("batch"))
    step = jax.jit(jax.shard_map(on_device, mesh=mesh, in_specs=P("batch"), out_specs=P("batch")), donate_argnums=(0,))

    def update_fn(params, opt_state, batch, rng):
        # Placed on the step's own sharding first: arrays from flax.jax_utils.replicate (another
        # mesh), from the previous step and from numpy then all hit one compiled program.
        return step(*jax.device_put((params, opt_state, batch, rng), split))

    return update_fn


@dataclasses.dataclass
class Program:
    """Everything compiled for one config: model, optimizer, shardings, jitted steps.

    Shared by the training loop and the benchmark, so the benchmark times the very
    step that training runs.
    """

    model: Any
    model_kw: dict[str, Any]
    tx: Any
    schedule: Any
    mesh: Any
    data_sharding: Any
    replicated: Any
    state_shardings: Any  # the train state's NamedShardings (config.sharding over config.mesh)
    input_shape: tuple[int, ...]  # one model input (H, W, C), after preprocessing
    init_state: Any  # rng -> state (replicated)
    train_step: Any  # (state, batch, base_rng) -> (state, metrics); state donated
    eval_step: Any  # (params, batch) -> sums of correct, loss, count
    # The final evaluation's step with test-time augmentation (config.tta; None when off).
    eval_step_tta: Any = None
    # The same step on every patch token, for the last config.full_token_steps steps of a run
    # with patch dropout (None without them).
    train_step_full: Any = None


def build(config, num_classes: int, steps: int, mesh=None, host_crop: bool = False) -> Program:
    """Model, optimizer, shardings and the jitted steps of a resolved config, over `mesh`
    (default: config.mesh over every device). `host_crop`: the source crops and flips on the
    host (a streaming source), so the device leaves both out."""
    mesh = mesh or parallel.make_mesh(config.mesh)
    data_sharding, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    kw = config_lib.model_kwargs(config)
    if jax.default_backend() == "cpu" and kw.get("remat", "none") != "none" and not kw.get("scan"):
        # Measured (BENCHMARKS.md): XLA's CPU compiler schedules the recomputation early, so
        # the saved activations stay live; inside a scanned loop the recomputation stays put.
        log.warning("remat without scan saves no memory on CPU; set config.model.scan=True as well.")
    model = models.VisionTransformer(num_classes=num_classes, **kw)
    pp = preprocess.pp_dict(config, host_crop=host_crop)
    crop_hw = pp["crop"]
    dummy = jnp.zeros((1, *crop_hw, config.pp.channels), jnp.float32)
    tx, schedule = optimizer.make_optimizer(config, steps, num_layers=kw["transformer"]["num_layers"])
    ema = (float(config.ema_decay), bool(config.ema_warmup)) if config.ema_decay else None

    def init_state(rng):
        params = model.init(rng, dummy, train=False)["params"]
        state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
        if ema is not None:  # the average starts at the initial parameters
            state["ema"] = jax.tree.map(jnp.copy, params)
        return state

    abstract = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    rules = parallel.sharding_rules(config)
    state_sh = parallel.tree_shardings(abstract, mesh, rules, int(config.fsdp_min_size))
    step_kw = dict(
        pp=pp,
        num_classes=num_classes,
        accum_steps=config.accum_steps,
        label_smoothing=config.label_smoothing,
        mixup=preprocess.mixup_dict(config),
        ema=ema,
        skip_nonfinite=config.skip_nonfinite_steps,
        batch_sharding=data_sharding,
    )
    train_step = make_train_step(model, tx, schedule, **step_kw)
    jit_step = lambda f: jax.jit(  # noqa: E731
        f, in_shardings=(state_sh, data_sharding, repl), out_shardings=(state_sh, repl), donate_argnums=(0,)
    )
    train_step_full = None
    if kw.get("patch_drop_rate") and config.full_token_steps:
        every_token = models.VisionTransformer(num_classes=num_classes, **dict(kw, patch_drop_rate=0.0))
        full_kw = dict(step_kw, accum_steps=config.full_token_accum_steps or config.accum_steps)
        train_step_full = jit_step(make_train_step(every_token, tx, schedule, **full_kw))
    eval_step = make_eval_step(model, pp=pp, num_classes=num_classes, batch_sharding=data_sharding)
    eval_step_tta = None
    if config.tta.flip or config.tta.shift:
        tta = (bool(config.tta.flip), int(config.tta.shift))
        eval_step_tta = make_eval_step(model, pp=pp, num_classes=num_classes, batch_sharding=data_sharding, tta=tta)
        eval_step_tta = jax.jit(eval_step_tta, in_shardings=(state_sh["params"], data_sharding))

    return Program(
        model=model,
        model_kw=kw,
        tx=tx,
        schedule=schedule,
        mesh=mesh,
        data_sharding=data_sharding,
        replicated=repl,
        state_shardings=state_sh,
        input_shape=(*crop_hw, config.pp.channels),
        init_state=jax.jit(init_state, out_shardings=state_sh),
        train_step=jit_step(train_step),
        eval_step=jax.jit(eval_step, in_shardings=(state_sh["params"], data_sharding)),
        train_step_full=train_step_full,
        eval_step_tta=eval_step_tta,
    )


def evaluate(eval_step, params, source, batch_size: int, sharding) -> dict[str, float]:
    """Accuracy and loss over every example of `source` once (padded, masked batches)."""
    totals = None
    wait = parallel.one_program_at_a_time(sharding.mesh)
    for local in source.eval_batches(
        batch=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        rows=parallel.local_rows(sharding, batch_size),
    ):
        out = eval_step(params, parallel.global_batch(local, sharding))
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        if wait:
            jax.block_until_ready(totals)
    totals = jax.device_get(totals)
    count = int(totals["count"])
    result = {"accuracy": float(totals["correct"]) / count, "loss": float(totals["loss"]) / count, "count": count}
    if "correct_1view" in totals:
        result["accuracy_1view"] = float(totals["correct_1view"]) / count
    return result


def format_eval(result: dict[str, float]) -> str:
    """'accuracy A | loss L | N examples', and the plain image's accuracy under test-time augmentation."""
    line = f"accuracy {result['accuracy']:.4f} | loss {result['loss']:.4f} | {result['count']} examples"
    if "accuracy_1view" in result:
        line += f" | 1-view accuracy {result['accuracy_1view']:.4f}"
    return line


# ----------------------------------------------------------------------------- the loop's helpers


class NumericalError(RuntimeError):
    """A non-finite loss or gradient; the message names the step and the last good checkpoint."""


def itstime(step: int, every: int, total: int, *, last: bool = True) -> bool:
    """Whether periodic work runs after `step`: every `every` steps, and at the last step
    unless `last=False`."""
    return step % every == 0 if step != total else last


class PendingMetrics:
    """Step metrics left on the device until a logging interval fetches them (the loop's only
    host sync), then the window since the last log line.

    Fetching checks that each step was finite: a non-finite step stops the run with a
    NumericalError, or, with `skip_nonfinite`, is counted (its update was not applied).
    """

    def __init__(self, ckpts: train_state.Checkpoints, skip_nonfinite: bool):
        self.ckpts = ckpts
        self.skip_nonfinite = skip_nonfinite
        self.pending: list[tuple[int, Any]] = []  # (step, metrics on the device)
        self.window: list[dict] = []  # fetched, not yet logged
        self.skipped: list[int] = []

    def add(self, step: int, out) -> None:
        self.pending.append((step, out))

    def fetch(self) -> None:
        for (step, _), f in zip(self.pending, jax.device_get([out for _, out in self.pending]), strict=True):
            if not bool(f["finite"]):
                if not self.skip_nonfinite:
                    raise NumericalError(self._nonfinite_message(step, f))
                self.skipped.append(step)
            self.window.append(f)
        self.pending.clear()

    def summary(self, **extra: float) -> dict[str, float]:
        """The fetched window's mean loss, last learning rate and gradient norm, then `extra`;
        clears the window."""
        values = {
            "loss": float(np.mean([f["loss"] for f in self.window])),
            "lr": float(self.window[-1]["lr"]),
            "grad_norm": float(self.window[-1]["grad_norm"]),
            **extra,
        }
        self.window.clear()
        if self.skipped:
            values["skipped_steps"] = len(self.skipped)
            log.warning(
                "Skipped %d step(s) with a non-finite loss or gradient so far (last: step %d); "
                "config.skip_nonfinite_steps is on.",
                len(self.skipped),
                self.skipped[-1],
            )
        return values

    def _nonfinite_message(self, step: int, f: dict) -> str:
        good = self.ckpts.latest_step()
        where = (
            f"the last good checkpoint is step {good} in {self.ckpts.directory}"
            if good is not None
            else "no checkpoint was saved"
        )
        return (
            f"Non-finite training at step {step} (loss {float(f['loss'])}, gradient norm {float(f['grad_norm'])}); "
            f"stopped, {where}, and nothing after step {step - 1} was saved. Lower config.lr.base or raise "
            f"config.lr.warmup_steps, check the data, or set config.skip_nonfinite_steps=True to skip such steps."
        )


# ----------------------------------------------------------------------------- the run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """Resolves and checks `config`, then runs (or resumes) it in `workdir` (see `run`).

    Returns the final evaluation; for a config of the original release (built on its
    `vit_jax/configs/common.py`), the final parameters instead, as the original's did.
    """
    original = config_original.is_original(config) and "trainer" in config
    config = config_lib.resolve(config)
    config_lib.check_files(config)
    result = run(config, workdir)
    if not original or "stopped" in result:
        return result
    return checkpoint.load(train_state.Workdir(os.path.abspath(workdir)).model)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) a resolved config in `workdir`; returns the final evaluation.

    Stopped by SIGTERM or SIGINT, it saves a checkpoint at the step it reached and
    returns {'stopped': signal name, 'step': step} instead.
    """
    if "://" not in workdir:  # Orbax wants absolute paths; a relative workdir is the current dir's
        workdir = os.path.abspath(workdir)
    train_state.prepare_workdir(workdir)
    wd = train_state.Workdir(workdir)
    is_main = jax.process_index() == 0
    with contextlib.ExitStack() as stack:
        if is_main:
            stack.enter_context(train_state.WorkdirLock(workdir))
        stop = stack.enter_context(preemption.StopSignals())
        if is_main:  # the resolved config, read back by the tools
            with open(wd.config, "w") as f:
                f.write(config.to_json_best_effort(indent=1) + "\n")
        writer = stack.enter_context(metrics.MetricWriter(workdir, enabled=is_main))
        with stop.at_once():  # reading files (or a TFDS download) may take long
            train_source, test_source = load_data(config, cache_dir=wd / "data")
        stop.stop_early()
        steps = config_lib.total_steps(config, len(train_source))
        prog = build(config, train_source.num_classes, steps, host_crop=train_source.host_crop)
        state = restore_or_initialise(config, prog, wd)
        ckpts = stack.enter_context(train_state.Checkpoints(workdir, config.keep_checkpoints))
        evaluate_test = lambda state, step_fn=prog.eval_step: evaluate(  # noqa: E731
            step_fn, eval_params(state), test_source, config_lib.eval_batch(config), prog.data_sharding
        )
        fewshot = None
        if config.fewshot.every:
            with stop.at_once():
                fewshot = features.FewshotEvaluator(config, prog.model, preprocess.pp_dict(config), prog.data_sharding)
        start = int(jax.device_get(state["step"]))
        batches = stack.enter_context(contextlib.closing(open_batches(config, prog, train_source, start)))
        state, stopped = train_loop(config, prog, state, batches, steps, stop, ckpts, writer, evaluate_test, fewshot)
        if stopped:
            return stopped
        result = evaluate_test(state, prog.eval_step_tta or prog.eval_step)
        log.info("final eval step %d | %s", steps, format_eval(result))
        writer.write("eval", steps, result)
        export(wd, state, prog, train_source, steps, result, is_main)
        if config.flax_checkpoint:
            write_flax_checkpoint(wd, state, steps, is_main)
    return result


def load_data(config, cache_dir: str | None = None) -> tuple[Any, Any]:
    """The training and test sources, and the log line that describes them."""
    train_source = data_lib.get_source(config, "train", cache_dir)
    test_source = data_lib.get_source(config, "test", cache_dir)
    log.info(
        "Data: %s, %d train / %d test examples, %d classes. %d processes, %d devices.",
        train_source.name,
        len(train_source),
        len(test_source),
        train_source.num_classes,
        jax.process_count(),
        jax.device_count(),
    )
    return train_source, test_source


def restore_or_initialise(config, prog: "Program", wd: train_state.Workdir):
    """The state to start from: the newest intact checkpoint, else pretrained weights when the
    config names them, else a fresh initialisation. Writes the workdir's sharding.json."""
    state = prog.init_state(jax.random.PRNGKey(config.seed))
    summary = parallel.sharding_summary(state["params"], prog.state_shardings["params"])
    log.info(
        "Mesh %s; parameters %.1f MB, %.1f MB per device (config.sharding=%s).",
        dict(prog.mesh.shape),
        summary["bytes"] / 1e6,
        summary["bytes_per_device"] / 1e6,
        config.sharding,
    )
    if jax.process_index() == 0:  # what is split how: one line per parameter
        with open(wd.sharding, "w") as f:
            json.dump({"mesh": dict(prog.mesh.shape), **summary}, f, indent=1)
    restored = train_state.restore_state(wd.path, state, config.keep_checkpoints)
    if restored is not None:
        state, meta = restored
        log.info("Resumed from %s at step %d.", wd.checkpoints, int(meta["step"]))
        return state
    path = config_lib.pretrained_file(config)
    if path is None:
        return state
    params = checkpoint.load_pretrained(
        pretrained_path=path,
        init_params=parallel.to_host(state["params"]),
        model_config=prog.model_kw,
        new_grid_shape=models.grid_shape(prog.model_kw, prog.input_shape[:2]),
        fresh=tuple(config.get("pretrained_fresh") or ()),
        keep_head=bool(config.get("pretrained_keep_head")),
    )
    sh = prog.state_shardings
    params = jax.device_put(params, sh["params"])
    log.info("Initialised from pretrained %s.", path)
    state = dict(state, params=params, opt_state=jax.jit(prog.tx.init, out_shardings=sh["opt_state"])(params))
    if "ema" in state:
        state["ema"] = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=sh["ema"])(params)
    return state


def open_batches(config, prog, source, start: int):
    """This process's rows of the training batches from step `start` on (close it when done)."""
    return source.train_batches(
        batch=config.batch,
        seed=config.seed,
        start_step=start,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        rows=parallel.local_rows(prog.data_sharding, config.batch),
    )


def data_counts(batches) -> dict[str, int]:
    """What a streaming source reports with each progress record: examples it replaced since the
    last one because their files could not be read (vit_jax.data.streaming)."""
    take = getattr(batches, "take_replaced", None)
    return {"bad_examples": take()} if take else {}


def train_loop(config, prog, state, batches, steps: int, stop, ckpts, writer, evaluate_test, fewshot=None):
    """Trains from the state's step to `steps` on `batches` (open_batches): logs at
    config.progress_every, saves at config.checkpoint_every, evaluates at config.eval_every (and
    few-shot at config.fewshot.every with `fewshot`, a features.FewshotEvaluator), and on a stop
    signal saves the step reached. Returns (state, None), or (state, {'stopped', 'step'})."""
    start = int(jax.device_get(state["step"]))
    base_rng = jax.device_put(jax.random.PRNGKey(config.seed + 1), prog.replicated)
    pending = PendingMetrics(ckpts, config.skip_nonfinite_steps)
    t_start = t_last = time.perf_counter()
    step_last = saved = start
    next_batch = parallel.global_batch(next(batches), prog.data_sharding) if start < steps else None
    wait = parallel.one_program_at_a_time(prog.mesh)
    stop.stop_early()
    full_from = steps - config.full_token_steps if prog.train_step_full is not None else steps + 1
    for step in range(start + 1, steps + 1):
        train_step = prog.train_step_full if step > full_from else prog.train_step
        state, out = train_step(state, next_batch, base_rng)
        pending.add(step, out)
        if step < steps:  # prepare the next batch while the device computes
            next_batch = parallel.global_batch(next(batches), prog.data_sharding)
        if wait:
            jax.block_until_ready(state)
        if itstime(step, config.progress_every, steps):
            pending.fetch()
            now = time.perf_counter()
            values = pending.summary(
                images_per_s=(step - step_last) * config.batch / (now - t_last), **data_counts(batches)
            )
            log_progress(step, steps, values, eta=(steps - step) * (now - t_start) / max(step - start, 1))
            writer.write("train", step, values)
            t_last, step_last = now, step
        if itstime(step, config.checkpoint_every, steps):
            save_checkpoint(ckpts, pending, state, step, config)
            saved = step
        if stop.requested(step, config.progress_every, config.checkpoint_every):
            if saved != step:
                save_checkpoint(ckpts, pending, state, step, config)
            ckpts.finish()
            log.warning(
                "Stopped by %s at step %d of %d: checkpoint saved in %s. Run the same command to resume.",
                stop.received,
                step,
                steps,
                ckpts.directory,
            )
            return state, {"stopped": stop.received, "step": step}
        if itstime(step, config.eval_every, steps, last=False):
            result = evaluate_test(state)
            log.info("eval step %d | %s", step, format_eval(result))
            writer.write("eval", step, result)
        if fewshot is not None and itstime(step, config.fewshot.every, steps):
            values = fewshot(eval_params(state))
            log.info("fewshot step %d | %s", step, " | ".join(f"{k} {v:.4f}" for k, v in values.items()))
            writer.write("fewshot", step, values)
    ckpts.finish()
    return state, None


def save_checkpoint(ckpts, pending: PendingMetrics, state, step: int, config) -> None:
    """Starts an asynchronous save of `state` at `step`, after checking every step up to it."""
    pending.fetch()  # never save a state that a non-finite step produced
    ckpts.save(state, {"step": step, "examples_seen": step * config.batch, "seed": config.seed})


def log_progress(step: int, steps: int, values: dict[str, float], eta: float) -> None:
    log.info(
        "step %d/%d | loss %.4f | lr %.2e | %.0f img/s | ETA %s",
        step,
        steps,
        values["loss"],
        values["lr"],
        values["images_per_s"],
        metrics.format_duration(eta),
    )


def export(wd: train_state.Workdir, state, prog: "Program", source, steps: int, result: dict, is_main: bool) -> None:
    """The final parameters in the original release's .npz format, and run.json beside them."""
    final_params = parallel.to_host(eval_params(state))  # a collective: every process takes part
    if not is_main:
        return
    checkpoint.save(final_params, wd.model)
    info = {
        "num_classes": source.num_classes,
        "class_names": list(source.class_names),
        "model": {k: v for k, v in prog.model_kw.items() if k != "dtype"},
        "steps": steps,
        "final_eval": result,
    }
    with open(wd.run_info, "w") as f:
        json.dump(info, f, indent=1, default=str)


def write_flax_checkpoint(wd: train_state.Workdir, state, step: int, is_main: bool) -> str:
    """WORKDIR/checkpoint_<step>: (parameters, optimizer state, step) as the original release's
    train_and_evaluate saved them (flax msgpack), so its `flax.training.checkpoints.restore_checkpoint`
    reads them back. The run itself resumes from its Orbax checkpoints, not from this file."""
    import flax.serialization

    params, opt_state = parallel.to_host((state["params"], state["opt_state"]))  # a collective
    path = wd / f"checkpoint_{step}"
    if is_main:
        with open(path + ".tmp", "wb") as f:
            f.write(flax.serialization.to_bytes((params, opt_state, step)))
        os.replace(path + ".tmp", path)
        for name in os.listdir(wd.path):  # the original kept only the newest
            if re.fullmatch(r"checkpoint_\d+", name) and name != os.path.basename(path):
                os.remove(wd / name)
    return path
