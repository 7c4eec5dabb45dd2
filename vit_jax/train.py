"""Training and evaluation: optimizer, jitted steps, checkpoints, the loop.

Reads top to bottom: config checks, data, model, optimizer, state and shardings,
the train and eval steps, checkpoint restore, the loop, the final export.

Exact resume: the batch of step s and its RNG are functions of (seed, s), and a
checkpoint holds parameters, optimizer state and step, so a run restarted from any
completed checkpoint retraces the uninterrupted run bit for bit.
"""

import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vit_jax import checkpoint, input_pipeline, metrics, models, models_vit, parallel
from vit_jax.configs import models as model_configs

log = logging.getLogger("vit_jax")

OPTIMIZERS = ("sgd", "adam", "adamw")
DECAYS = ("cosine", "linear", "constant")
TRAINABLE_CLASSIFIERS = ("token", "gap", "map")


class ConfigError(ValueError):
    """An unknown or inconsistent config field; the message names the field and the fix."""


# ----------------------------------------------------------------------------- config


def model_kwargs(config) -> dict[str, Any]:
    """VisionTransformer fields: the registered model, then every set `config.model` field."""
    if config.get("model_name"):
        try:
            base = model_configs.get_config(config.model_name).to_dict()
        except KeyError as e:
            raise ConfigError(f"config.model_name: {e.args[0]}") from None
    else:
        base = {"transformer": {}, "patches": {}}
    overrides = config.model.to_dict()
    for key, value in overrides.items():
        if isinstance(value, dict):
            sub = dict(base.get(key) or {})
            sub.update({k: v for k, v in value.items() if v is not None})
            base[key] = sub
        elif value is not None:
            base[key] = value
    resnet = base.get("resnet")
    if resnet is not None and resnet.get("num_layers") is None:
        del base["resnet"]  # only width_factor or nothing set: a pure ViT
    elif resnet is not None:
        resnet.setdefault("width_factor", 1)
        resnet["num_layers"] = tuple(resnet["num_layers"])
    base["dtype"] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[base.get("dtype", "float32")]
    return base


def total_steps(config, num_train: int) -> int:
    if config.get("epochs"):
        return math.ceil(config.epochs * num_train / config.batch)
    return int(config.total_steps)


def validate(config, num_devices: int | None = None) -> None:
    """Checks every field a run depends on before anything is loaded or compiled."""
    num_devices = num_devices or jax.device_count()
    if config.model.get("dtype") not in ("float32", "bfloat16"):
        raise ConfigError(f"config.model.dtype={config.model.dtype!r}: use 'float32' or 'bfloat16'.")
    kw = model_kwargs(config)
    missing = [] if kw.get("hidden_size") is not None else ["hidden_size"]
    missing += [] if kw["patches"].get("size") is not None else ["patches.size"]
    t = kw["transformer"]
    missing += [f"transformer.{f}" for f in ("mlp_dim", "num_heads", "num_layers") if t.get(f) is None]
    if missing:
        raise ConfigError(
            f"The model is not fully defined: set config.model_name (e.g. ViT-B_16) or config.model.{missing[0]}."
        )
    _check_ranges(config, kw)
    if kw["hidden_size"] % kw["transformer"]["num_heads"]:
        raise ConfigError(
            f"config.model.transformer.num_heads={kw['transformer']['num_heads']} does not divide "
            f"hidden_size={kw['hidden_size']}: choose a head count that divides it."
        )
    classifier = kw.get("classifier", "token")
    if classifier not in TRAINABLE_CLASSIFIERS:
        raise ConfigError(
            f"config.model.classifier={classifier!r} cannot be trained for classification here; "
            f"use one of {', '.join(TRAINABLE_CLASSIFIERS)}."
        )
    for field, allowed in (("posemb", models.POSEMBS), ("remat", ("none", "full", "dots"))):
        if kw.get(field) is not None and kw[field] not in allowed:
            raise ConfigError(f"config.model.{field}={kw[field]!r}: choose one of {', '.join(allowed)}.")
    crop = config.pp.crop
    crop_hw = models_vit.to_pair(crop)
    if kw.get("resnet") is None:
        ph, pw = models_vit.to_pair(kw["patches"]["size"])
        if crop_hw[0] % ph or crop_hw[1] % pw:
            raise ConfigError(
                f"config.pp.crop={crop} is not divisible by the patch size {ph}x{pw}: "
                f"use an image size that is a multiple of the patch size."
            )
    if config.pp.channels not in (1, 3):
        raise ConfigError(f"config.pp.channels={config.pp.channels}: use 1 or 3.")
    if not 0.0 < config.pp.area_min <= 1.0:
        raise ConfigError(f"config.pp.area_min={config.pp.area_min}: use a fraction in (0, 1].")
    if config.optim.name not in OPTIMIZERS:
        raise ConfigError(f"config.optim.name={config.optim.name!r}: choose one of {', '.join(OPTIMIZERS)}.")
    if config.lr.decay not in DECAYS:
        raise ConfigError(f"config.lr.decay={config.lr.decay!r}: choose one of {', '.join(DECAYS)}.")
    if config.accum_steps < 1:
        raise ConfigError(f"config.accum_steps={config.accum_steps}: use 1 or more.")
    try:
        names, sizes = parallel.mesh_shape(config.get("mesh", parallel.DEFAULT_MESH), num_devices)
        parallel.sharding_rules(config)
    except parallel.ParallelError as e:
        raise ConfigError(str(e)) from None
    split = math.prod(n for a, n in zip(names, sizes, strict=True) if a in parallel.BATCH_AXES)
    what = "device count" if split == num_devices else f"devices the batch is split over ({', '.join(names)})"
    if config.batch <= 0 or config.batch % (split * config.accum_steps):
        raise ConfigError(
            f"config.batch={config.batch} is not divisible by the {what} ({split}) times "
            f"config.accum_steps ({config.accum_steps}); use a positive multiple of {split * config.accum_steps}."
        )
    eval_batch = config.get("eval_batch") or config.batch
    if eval_batch % split:
        raise ConfigError(f"config.eval_batch={eval_batch} is not divisible by the {what} ({split}).")
    for field in ("progress_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        if config[field] <= 0:
            raise ConfigError(f"config.{field}={config[field]}: use a positive number.")
    if config.total_steps <= 0 and not config.get("epochs"):
        raise ConfigError(f"config.total_steps={config.total_steps}: use a positive number or set config.epochs.")
    if config.get("pretrained_dir") and not config.get("model_name") and not config.get("pretrained_path"):
        raise ConfigError("config.pretrained_dir needs config.model_name to name the file (DIR/<model_name>.npz).")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_size(v) -> bool:
    """A positive int, or a pair of them."""
    if _is_int(v):
        return v > 0
    return isinstance(v, tuple | list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v)


def _positive_int(v) -> bool:
    return _is_int(v) and v > 0


def _non_negative(v) -> bool:
    return _is_number(v) and v >= 0


def _rate(v) -> bool:
    return _is_number(v) and 0 <= v < 1


def _unset_or(ok):
    return lambda v: v is None or ok(v)


def _check_ranges(config, kw: dict) -> None:
    """Every number a run reads is in its range, so no bad value reaches JAX or trains silently."""
    t = kw["transformer"]
    resnet = kw.get("resnet") or {}
    positive_int = "use a positive whole number"
    rate = "use a rate from 0 up to, not including, 1"
    checks = [  # (field, value, test, what to do instead)
        ("model.hidden_size", kw["hidden_size"], _positive_int, positive_int),
        ("model.patches.size", kw["patches"]["size"], _is_size, "use a pair like (16, 16)"),
        *[
            (f"model.transformer.{f}", t[f], _positive_int, positive_int)
            for f in ("mlp_dim", "num_heads", "num_layers")
        ],
        *[(f"model.transformer.{f}", t.get(f, 0.0), _rate, rate) for f in ("dropout_rate", "attention_dropout_rate")],
        ("model.droppath_rate", kw.get("droppath_rate", 0.0), _rate, rate),
        (
            "model.representation_size",
            kw.get("representation_size"),
            _unset_or(_positive_int),
            "use a positive whole number, or None for no pre-logits layer",
        ),
        (
            "model.attention_impl",
            kw.get("attention_impl", "auto"),
            lambda v: v in models_vit.ATTENTION_IMPLS,
            f"choose one of {', '.join(models_vit.ATTENTION_IMPLS)}",
        ),
        (
            "model.resnet.num_layers",
            resnet.get("num_layers", ()),
            lambda v: all(_positive_int(n) for n in v),
            "use a tuple of positive block counts per stage, like (3, 4, 9), or () for the root alone",
        ),
        (
            "model.resnet.width_factor",
            resnet.get("width_factor", 1),
            lambda v: _is_number(v) and v > 0,
            "use a positive number",
        ),
        ("pp.crop", config.pp.crop, _is_size, "use a positive size or a pair of them"),
        (
            "pp.resize",
            config.pp.get("resize"),
            _unset_or(_is_size),
            "use a positive size, or leave it unset to decode at the crop size",
        ),
        ("lr.base", config.lr.base, _non_negative, "use a positive learning rate"),
        ("lr.end", config.lr.end, _non_negative, "use 0 or a positive learning rate"),
        ("lr.warmup_steps", config.lr.warmup_steps, _non_negative, "use 0 or more steps"),
        ("label_smoothing", config.label_smoothing, _rate, rate),
        ("grad_clip_norm", config.grad_clip_norm, _unset_or(_non_negative), "use a positive norm, or 0 for none"),
        ("optim.weight_decay", config.optim.weight_decay, _non_negative, "use 0 or more"),
        (
            "optim.mu_dtype",
            config.optim.get("mu_dtype", "float32"),
            lambda v: v in ("float32", "bfloat16"),
            "use 'float32' or 'bfloat16'",
        ),
        (
            "epochs",
            config.get("epochs"),
            _unset_or(lambda v: _is_number(v) and v > 0),
            "use a positive number, or leave it unset to run config.total_steps",
        ),
        (
            "eval_batch",
            config.get("eval_batch"),
            _unset_or(_positive_int),
            "use a positive number, or leave it unset to evaluate in batches of config.batch",
        ),
        *[
            (f, config.get(f, 0), lambda v: _is_int(v) and v >= 0, "use 0 or more")
            for f in ("seed", "train_subset_seed")
        ],
    ]
    for field, value, ok, fix in checks:
        if not ok(value):
            raise ConfigError(f"config.{field}={value!r}: {fix}.")
    if config.lr.base == 0:
        log.warning("config.lr.base=0: the parameters will not change (an evaluation run?).")
    if config.lr.warmup_steps and config.total_steps > 0 and config.lr.warmup_steps > config.total_steps:
        log.warning(
            "config.lr.warmup_steps=%d is more than config.total_steps=%d: the learning rate never reaches "
            "config.lr.base.",
            config.lr.warmup_steps,
            config.total_steps,
        )


def check_workdir(workdir: str) -> None:
    """The workdir is a directory, or can be made one."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file; give a directory (it is created if missing).")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Cannot create --workdir {workdir} ({e.strerror}); give a writable directory.") from None


def check_files(config) -> None:
    """Files the run needs exist (checked before anything is compiled)."""
    path = pretrained_file(config)
    if path and "://" not in path and not os.path.isfile(path):
        raise ConfigError(
            f"Pretrained checkpoint {path} not found (config.pretrained_path / pretrained_dir). The original "
            f"release's files are published at {checkpoint.PUBLISHED_URL} (imagenet21k/, augreg/)."
        )


# ----------------------------------------------------------------------------- optimizer


def make_schedule(config, steps: int):
    lr = config.lr
    warmup = min(int(lr.warmup_steps), steps)
    rest = max(steps - warmup, 1)
    if lr.decay == "cosine":
        decay = optax.cosine_decay_schedule(lr.base, rest, alpha=lr.end / lr.base if lr.base else 0.0)
    elif lr.decay == "linear":
        decay = optax.linear_schedule(lr.base, lr.end, rest)
    else:
        decay = optax.constant_schedule(lr.base)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr.base, warmup), decay], [warmup])


def make_optimizer(config, steps: int):
    """(optax transformation, schedule): clipping, then the optimizer with the schedule."""
    o = config.optim
    schedule = make_schedule(config, steps)
    mu_dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[o.mu_dtype]
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    if o.name == "sgd":
        opt = optax.sgd(schedule, momentum=o.momentum or None, accumulator_dtype=mu_dtype)
        if o.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(o.weight_decay, decay_mask), opt)
    else:
        opt = optax.adamw(
            schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mu_dtype=mu_dtype, mask=decay_mask
        )
    parts = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
    return optax.chain(*parts, opt), schedule


# ----------------------------------------------------------------------------- steps


def cross_entropy(logits, labels, num_classes: int, smoothing: float = 0.0):
    targets = jax.nn.one_hot(labels, num_classes)
    if smoothing:
        targets = optax.smooth_labels(targets, smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def make_train_step(model, tx, schedule, config, num_classes: int, batch_sharding=None):
    """step(state, batch, base_rng) -> (state, metrics); pure, for jax.jit.

    The batch is split into `accum_steps` micro-batches (interleaved rows, so each
    spans every device), each with its own dropout and augmentation keys; gradients
    are averaged before one optimizer update. With `batch_sharding`, the model's
    activations are kept split like the batch (see parallel.split_activations_like).
    metrics['finite'] is False when the loss or the gradient is not finite; with
    config.skip_nonfinite_steps that step's update is not applied.
    """
    pp = input_pipeline.pp_dict(config)
    accum = int(config.accum_steps)
    smoothing = float(config.label_smoothing)
    skip_nonfinite = bool(config.get("skip_nonfinite_steps", False))

    def micro_grads(params, images, labels, rng):
        k_aug, k_drop = jax.random.split(rng)
        x = input_pipeline.preprocess_train(images, k_aug, pp)

        def loss_fn(p):
            with parallel.split_activations_like(batch_sharding):
                logits = model.apply({"params": p}, x, train=True, rngs={"dropout": k_drop})
            return cross_entropy(logits, labels, num_classes, smoothing).mean()

        return jax.value_and_grad(loss_fn)(params)

    def step(state, batch, base_rng):
        params = state["params"]
        rng = jax.random.fold_in(base_rng, state["step"])
        if accum == 1:
            loss, grads = micro_grads(params, batch["image"], batch["label"], rng)
        else:

            def split(a):  # (B, ...) -> (accum, B / accum, ...), micro-batch i = rows i, i + accum, ...
                return jnp.swapaxes(a.reshape(a.shape[0] // accum, accum, *a.shape[1:]), 0, 1)

            def body(carry, xs):
                images, labels, i = xs
                loss, grads = micro_grads(params, images, labels, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (loss, grads)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
            xs = (split(batch["image"]), split(batch["label"]), jnp.arange(accum))
            (loss, grads), _ = jax.lax.scan(body, zeros, xs)
            loss, grads = loss / accum, jax.tree.map(lambda g: g / accum, grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        grad_norm = optax.global_norm(grads)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:  # a non-finite batch leaves parameters and optimizer state as they were
            new_params, opt_state = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old), (new_params, opt_state), (params, state["opt_state"])
            )
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}
        out = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]), "finite": finite}
        return new_state, out

    return step


def make_eval_step(model, config, num_classes: int, batch_sharding=None):
    pp = input_pipeline.pp_dict(config)

    def step(params, batch):
        x = input_pipeline.preprocess_eval(batch["image"], pp)
        with parallel.split_activations_like(batch_sharding):
            logits = model.apply({"params": params}, x, train=False)
        loss = cross_entropy(logits, batch["label"], num_classes)
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        m = batch["mask"]
        return {"correct": jnp.sum(correct * m), "loss": jnp.sum(loss * m), "count": jnp.sum(m)}

    return step


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


def build(config, num_classes: int, steps: int, mesh=None) -> Program:
    mesh = mesh or parallel.make_mesh(config.get("mesh", parallel.DEFAULT_MESH))
    data_sharding, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    kw = model_kwargs(config)
    if jax.default_backend() == "cpu" and kw.get("remat", "none") != "none" and not kw.get("scan"):
        # Measured (BENCHMARKS.md): XLA's CPU compiler schedules the recomputation early, so
        # the saved activations stay live; inside a scanned loop the recomputation stays put.
        log.warning("remat without scan saves no memory on CPU; set config.model.scan=True as well.")
    model = models.VisionTransformer(num_classes=num_classes, **kw)
    crop_hw = input_pipeline.pp_dict(config)["crop"]
    dummy = jnp.zeros((1, *crop_hw, config.pp.channels), jnp.float32)
    tx, schedule = make_optimizer(config, steps)

    def init_state(rng):
        params = model.init(rng, dummy, train=False)["params"]
        return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

    abstract = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    rules = parallel.sharding_rules(config)
    state_sh = parallel.tree_shardings(abstract, mesh, rules, int(config.get("fsdp_min_size", 2**14)))

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
        train_step=jax.jit(
            make_train_step(model, tx, schedule, config, num_classes, data_sharding),
            in_shardings=(state_sh, data_sharding, repl),
            out_shardings=(state_sh, repl),
            donate_argnums=(0,),
        ),
        eval_step=jax.jit(
            make_eval_step(model, config, num_classes, data_sharding), in_shardings=(state_sh["params"], data_sharding)
        ),
    )


def evaluate(eval_step, params, source, config, sharding) -> dict[str, float]:
    """Accuracy and loss over every test example once (padded, masked batches)."""
    totals = None
    batch_size = config.get("eval_batch") or config.batch
    for local in input_pipeline.eval_batches(
        source,
        batch=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        rows=parallel.local_rows(sharding, batch_size),
    ):
        out = eval_step(params, parallel.global_batch(local, sharding))
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    count = int(totals["count"])
    return {"accuracy": float(totals["correct"]) / count, "loss": float(totals["loss"]) / count, "count": count}


# ----------------------------------------------------------------------------- the run


def pretrained_file(config) -> str | None:
    if config.get("pretrained_path"):
        return config.pretrained_path
    if config.get("pretrained_dir"):
        return os.path.join(config.pretrained_dir, f"{config.model_name}.npz")
    return None


class NumericalError(RuntimeError):
    """A non-finite loss or gradient; the message names the step and the last good checkpoint."""


class StoppedEarly(BaseException):
    """A stop signal arrived before the training loop began: there was nothing new to save.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way (a
    restore that would take it for a damaged checkpoint, an image decoder) catches it.
    """

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class StopSignals:
    """SIGTERM (a scheduler's preemption) and SIGINT ask the loop to save and stop.

    Handlers are installed only in the main thread and restored on exit. Before the loop
    there is no new step to save: a single-process run stops with StoppedEarly, at once
    while it reads data (`immediate`, when nothing runs that an exception could leave
    half-done), else as soon as the step is compiled and the state restored. A second
    SIGINT interrupts at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self.immediate = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        if self.immediate:
            raise StoppedEarly(self.received)

    def stop_early(self) -> None:
        """Before the loop: a signal already received ends a single-process run here. (With
        several processes the loop's first check stops them all at the same step.)"""
        if self.received is not None and jax.process_count() == 1:
            raise StoppedEarly(self.received)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) training in `workdir`; returns the final evaluation.

    Stopped by SIGTERM or SIGINT, it saves a checkpoint at the step it reached and
    returns {'stopped': signal name, 'step': step} instead.
    """
    validate(config)
    check_files(config)
    check_workdir(workdir)
    is_main = jax.process_index() == 0
    lock = checkpoint.WorkdirLock(workdir).acquire() if is_main else None
    try:
        with StopSignals() as stop:
            return _run(config, workdir, is_main, stop)
    finally:
        if lock is not None:
            lock.release()


def _run(config, workdir: str, is_main: bool, stop: StopSignals) -> dict[str, Any]:
    if is_main:  # the resolved config, read back by the analysis tools
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=1) + "\n")
    writer = metrics.MetricWriter(workdir, enabled=is_main)

    stop.immediate = jax.process_count() == 1  # reading files (or a TFDS download) may take long
    train_source = input_pipeline.get_source(config, "train")
    test_source = input_pipeline.get_source(config, "test")
    stop.immediate = False
    stop.stop_early()
    num_classes = train_source.num_classes
    steps = total_steps(config, len(train_source))
    log.info(
        "Data: %s, %d train / %d test examples, %d classes. %d processes, %d devices.",
        train_source.name,
        len(train_source),
        len(test_source),
        num_classes,
        jax.process_count(),
        jax.device_count(),
    )

    prog = build(config, num_classes, steps)
    kw, repl, data_sharding, tx = prog.model_kw, prog.replicated, prog.data_sharding, prog.tx
    train_step, eval_step = prog.train_step, prog.eval_step
    state = prog.init_state(jax.random.PRNGKey(config.seed))
    summary = parallel.sharding_summary(state["params"], prog.state_shardings["params"])
    log.info(
        "Mesh %s; parameters %.1f MB, %.1f MB per device (config.sharding=%s).",
        dict(prog.mesh.shape),
        summary["bytes"] / 1e6,
        summary["bytes_per_device"] / 1e6,
        config.get("sharding", "replicate"),
    )
    if is_main:  # what is split how: one line per parameter
        with open(os.path.join(workdir, "sharding.json"), "w") as f:
            json.dump({"mesh": dict(prog.mesh.shape), **summary}, f, indent=1)
    ckpt_dir = os.path.join(workdir, checkpoint.STATE_DIR)
    restored = checkpoint.restore_state(workdir, state, config.keep_checkpoints)
    if restored is not None:
        state, meta = restored
        log.info("Resumed from %s at step %d.", ckpt_dir, int(meta["step"]))
    elif pretrained_file(config):
        path = pretrained_file(config)
        grid = models.grid_shape(kw, prog.input_shape[:2])
        params = checkpoint.load_pretrained(
            pretrained_path=path,
            init_params=parallel.to_host(state["params"]),
            model_config=kw,
            new_grid_shape=grid,
        )
        sh = prog.state_shardings
        params = jax.device_put(params, sh["params"])
        state = dict(state, params=params, opt_state=jax.jit(tx.init, out_shardings=sh["opt_state"])(params))
        log.info("Initialised from pretrained %s.", path)

    mngr = checkpoint.state_manager(workdir, config.keep_checkpoints)
    try:
        base_rng = jax.device_put(jax.random.PRNGKey(config.seed + 1), repl)
        start = int(jax.device_get(state["step"]))
        batches = input_pipeline.train_batches(
            train_source,
            batch=config.batch,
            seed=config.seed,
            start_step=start,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            rows=parallel.local_rows(data_sharding, config.batch),
        )
        skip_nonfinite = bool(config.get("skip_nonfinite_steps", False))
        pending: list[tuple[int, Any]] = []  # (step, metrics on the device) not yet fetched
        window: list[tuple[int, dict]] = []  # fetched, not yet logged
        skipped: list[int] = []

        def drain() -> None:
            """Fetches the pending metrics (a host sync) and stops at a non-finite step."""
            fetched = jax.device_get([out for _, out in pending])
            for (s, _), f in zip(pending, fetched, strict=True):
                if not bool(f["finite"]):
                    if not skip_nonfinite:
                        raise NumericalError(_nonfinite_message(s, f, mngr, ckpt_dir))
                    skipped.append(s)
                window.append((s, f))
            pending.clear()

        def save(step: int) -> None:
            drain()  # never save a state that a non-finite step produced
            meta = {"step": step, "examples_seen": step * config.batch, "seed": config.seed}
            checkpoint.save_state(mngr, state, meta)

        t_last, step_last, saved = time.perf_counter(), start, start
        t_start = t_last
        next_batch = parallel.global_batch(next(batches), data_sharding) if start < steps else None
        stop.stop_early()
        for step in range(start + 1, steps + 1):
            batch = next_batch
            state, out = train_step(state, batch, base_rng)
            pending.append((step, out))
            if step < steps:  # prepare the next batch while the device computes
                next_batch = parallel.global_batch(next(batches), data_sharding)
            if step % config.progress_every == 0 or step == steps:
                drain()  # the only host sync of the loop
                now = time.perf_counter()
                rate = (step - step_last) * config.batch / (now - t_last)
                loss = float(np.mean([f["loss"] for _, f in window]))
                values = {
                    "loss": loss,
                    "lr": float(window[-1][1]["lr"]),
                    "grad_norm": float(window[-1][1]["grad_norm"]),
                    "images_per_s": rate,
                }
                if skipped:
                    values["skipped_steps"] = len(skipped)
                    log.warning(
                        "Skipped %d step(s) with a non-finite loss or gradient so far (last: step %d); "
                        "config.skip_nonfinite_steps is on.",
                        len(skipped),
                        skipped[-1],
                    )
                window.clear()
                eta = (steps - step) * (now - t_start) / max(step - start, 1)
                log.info(
                    "step %d/%d | loss %.4f | lr %.2e | %.0f img/s | ETA %s",
                    step,
                    steps,
                    loss,
                    values["lr"],
                    rate,
                    metrics.format_duration(eta),
                )
                writer.write("train", step, values)
                t_last, step_last = now, step
            if step % config.checkpoint_every == 0 or step == steps:
                save(step)
                saved = step
            if _stop_requested(stop, step, config):
                if saved != step:
                    save(step)
                checkpoint.finish_writes(mngr)
                writer.close()
                log.warning(
                    "Stopped by %s at step %d of %d: checkpoint saved in %s. Run the same command to resume.",
                    stop.received,
                    step,
                    steps,
                    ckpt_dir,
                )
                return {"stopped": stop.received, "step": step}
            if step % config.eval_every == 0 and step != steps:
                result = evaluate(eval_step, state["params"], test_source, config, data_sharding)
                log.info("eval step %d | accuracy %.4f | loss %.4f | %d examples", step, *result.values())
                writer.write("eval", step, result)
        checkpoint.finish_writes(mngr)

        result = evaluate(eval_step, state["params"], test_source, config, data_sharding)
        log.info("final eval step %d | accuracy %.4f | loss %.4f | %d examples", steps, *result.values())
        writer.write("eval", steps, result)
        writer.close()
        final_params = parallel.to_host(state["params"])  # a collective: every process takes part
        if is_main:
            checkpoint.save(final_params, os.path.join(workdir, "model.npz"))
            info = {
                "num_classes": num_classes,
                "class_names": list(train_source.class_names),
                "model": {k: v for k, v in kw.items() if k != "dtype"},
                "steps": steps,
                "final_eval": result,
            }
            with open(os.path.join(workdir, "run.json"), "w") as f:
                json.dump(info, f, indent=1, default=str)
    finally:
        writer.close()
        _close_quietly(mngr)
    return result


def _stop_requested(stop: StopSignals, step: int, config) -> bool:
    """Whether to stop after `step`: at once with one process; with several, every process
    decides together at the logging and checkpoint intervals (a signal reaches them at
    different steps, and they must save the same one)."""
    if jax.process_count() == 1:
        return stop.received is not None
    if step % config.progress_every and step % config.checkpoint_every:
        return False
    return parallel.any_process(stop.received is not None)


def _nonfinite_message(step: int, f: dict, mngr, ckpt_dir: str) -> str:
    good = mngr.latest_step()
    where = f"the last good checkpoint is step {good} in {ckpt_dir}" if good is not None else "no checkpoint was saved"
    return (
        f"Non-finite training at step {step} (loss {float(f['loss'])}, gradient norm {float(f['grad_norm'])}); "
        f"stopped, {where}, and nothing after step {step - 1} was saved. Lower config.lr.base or raise "
        f"config.lr.warmup_steps, check the data, or set config.skip_nonfinite_steps=True to skip such steps."
    )


def _close_quietly(mngr) -> None:
    """Closes the checkpoint manager; a write error it repeats was already reported."""
    try:
        mngr.close()
    except Exception as e:
        log.warning("Closing the checkpoint manager: %s", parallel.error_line(e))
