"""The run config: reading it, its defaults, its checks, and the model it describes.

A run config is an ml_collections ConfigDict made by a file's `get_config()` on top of
the defaults in `vit_jax/configs/defaults.py` (their one copy). Before a run reads it,
`resolve` fills in any default the config lacks and checks every field once, so the rest
of the package reads `config.x` directly. A mistake ends in one `ConfigError` line that
names the field and the fix. Rules about the model's own fields (sizes, heads, options)
belong to the model (`models_vit.check_fields`, used on its own too); this module adds
what only training needs and names fields as `config.model.*`.
"""

import difflib
import importlib.util
import inspect
import json
import logging
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import checkpoint, config_original, errors, models_vit, parallel
from vit_jax.configs import defaults
from vit_jax.configs import models as model_configs

log = logging.getLogger("vit_jax")

# The values a field may take, written once.
OPTIMIZERS = ("sgd", "adam", "adamw")
DECAYS = ("cosine", "linear", "constant")
WD_CONVENTIONS = ("optax", "augreg")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_USE_A_DTYPE = "use " + " or ".join(map(repr, DTYPES))
TRAINABLE_CLASSIFIERS = ("token", "gap", "map")


class ConfigError(errors.UserError):
    """An unknown or inconsistent config field, or a config file that cannot be loaded."""


# ----------------------------------------------------------------------------- reading


def recipes() -> list[str]:
    """The names of the run recipes that ship with the package (vit_jax/recipes)."""
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def recipe_path(config_arg: str) -> str:
    """`FILE.py[:ARG]` as given when FILE exists; else `NAME[:ARG]` of a recipe of the package
    (`quickstart`, `vit:b16,cifar10`) as the path of its module, with the argument."""
    path, sep, arg = config_arg.partition(":")
    if os.path.isfile(path) or os.sep in path or "/" in path:
        return config_arg
    name = path.removesuffix(".py")
    if name in recipes():
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")
        return os.path.join(folder, name + ".py") + sep + arg
    return config_arg


def recipe_argv(argv: list[str]) -> list[str]:
    """argv with a `--config NAME[:ARG]` that names a recipe of the package given as its path (the
    flag library reads files)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--config="):
            out[i] = "--config=" + recipe_path(a[len("--config=") :])
        elif a == "--config" and i + 1 < len(out):
            out[i + 1] = recipe_path(out[i + 1])
    return out


def load_file(config_arg: str) -> ml_collections.ConfigDict:
    """The ConfigDict of `FILE.py[:ARG]` (its `get_config(ARG)`), or of a recipe named `NAME[:ARG]`.

    A missing file, a syntax error, a file without get_config() or an argument it refuses
    is one ConfigError line naming the file (the flag library would print a traceback).
    """
    config_arg = recipe_path(config_arg)
    path, sep, arg = config_arg.partition(":")
    if not os.path.isfile(path):
        if os.sep in path or "/" in path:
            raise ConfigError(f"Config file {path} not found; check the path given to --config.")
        raise ConfigError(
            f"Config file {path} not found; check the path given to --config, or name a recipe of the package "
            f"({', '.join(recipes())})."
        )
    try:
        spec = importlib.util.spec_from_file_location("_vit_jax_config_file", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{path} line {e.lineno}: {e.msg}; fix the config file.") from None
    except Exception as e:
        raise ConfigError(f"{path} fails to load ({type(e).__name__}: {e}); fix the config file.") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"{path} defines no get_config(); a config file returns its ConfigDict from get_config().")
    if sep and not inspect.signature(get_config).parameters:
        raise ConfigError(f"{path} takes no argument; drop ':{arg}' from --config.")
    try:
        return get_config(arg) if sep else get_config()
    except Exception as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        doc = f" The arguments it takes are in the file's docstring: {path}." if sep else ""
        raise ConfigError(f"--config {config_arg}: get_config fails ({type(e).__name__}: {message}).{doc}") from None


def complete(config) -> ml_collections.ConfigDict:
    """`config` with every default it lacks filled in from `configs/defaults.py`.

    Fields the config sets (and fields the defaults do not know) are kept as they are, in
    their order. A config that lacks nothing is returned as it is; otherwise a copy.
    """
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)

    def missing(values, defaults, prefix=()) -> list[tuple[tuple[str, ...], Any]]:
        out = []
        for key, default in defaults.items():
            if key not in values:
                out.append(((*prefix, key), default))
            elif isinstance(default, ml_collections.ConfigDict) and isinstance(values[key], ml_collections.ConfigDict):
                out += missing(values[key], default, (*prefix, key))
        return out

    lacking = missing(config, defaults.get_config())
    if not lacking:
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for (*parents, key), default in lacking:
            node = config
            for p in parents:
                node = node[p]
            node[key] = default
    return config


def read(path: str) -> ml_collections.ConfigDict:
    """A resolved config written as JSON (a run's `config.json`), with its defaults completed."""
    with open(path) as f:
        return complete(json.load(f))


def resolve(config, num_devices: int | None = None) -> ml_collections.ConfigDict:
    """What a run reads: an original-release config translated into our fields, completed with
    its defaults and, when it starts from timm's or transformers' weights, with the model fields
    it leaves unset taken from them; then checked (once)."""
    config = with_pretrained_model(complete(from_original(config)))
    validate(config, num_devices)
    return config


def from_original(config):
    """`config` in our fields: a config of the original release is translated (and the run's log
    says which of its fields became which of ours); any other is returned as it is."""
    if not config_original.is_original(config):
        return config
    config, notes = config_original.translate(config)
    log.info("Config of the original release; translated: %s.", "; ".join(notes))
    return config


# Model fields a timm or transformers checkpoint brings, replacing the config's: its architecture,
# numerics and the later families' fields. The pre-logits layer is not carried over (fine-tuning
# drops it, as the original's recipe does) unless the config sets it; dropout and the other
# training-time fields stay the config's.
_NUMERICS_FIELDS = ("layernorm_epsilon", "gelu_approximate", "fc_norm")
_ARCH_FIELDS = ("hidden_size", "patches.size", "transformer.mlp_dim", "transformer.num_heads")
_ARCH_FIELDS += ("transformer.num_layers", "classifier", "posemb")
_FAMILY_FIELDS = ("activation", "class_token", "reg_tokens", "distilled", "posemb_prefix", "pre_norm", "patch_bias")
_FAMILY_FIELDS += ("layerscale_init", "mlp_type", "qk_norm", "key_bias", "rope", "rope_ref_grid", "patch_floor")
_RESNET_FIELDS = ("resnet.num_layers", "resnet.width_factor", "resnet.ws_epsilon", "resnet.ws_epsilon_in_sqrt")
_RESNET_FIELDS += ("resnet.gn_epsilon",)


def with_pretrained_model(config) -> ml_collections.ConfigDict:
    """`config` with the model a timm or transformers pretrained source describes: its architecture
    fields replace the config's (one log line per field replaced; the registered `model_name` goes,
    unless it names a bare .safetensors file's architecture), the training-time fields (dropout,
    stochastic depth, dtype, remat, scan) stay the config's, the crop becomes a multiple of its
    patch, and its input normalisation fills `pp.mean`/`pp.std` unless the config sets them."""
    from vit_jax import pretrained

    path = pretrained_file(config)
    if not path or not pretrained.is_layout_source(path):
        return config
    bare = path.endswith(".safetensors")
    source = pretrained.load_cached(path, config.model_name if bare else None)
    flat = {k.replace("/", "."): v for k, v in checkpoint.flatten(source.model_config).items()}
    before = _effective_fields(config)
    config = config.copy_and_resolve_references()
    with config.unlocked():
        if config.model_name and before.get("resnet.num_layers") is not None and flat.get("resnet.num_layers") is None:
            log.info("Pretrained %s: a pure ViT; model_name=%s (a hybrid) dropped.", path, config.model_name)
            config.model_name = None
            config.model.resnet.num_layers = None
        for field in _ARCH_FIELDS + _NUMERICS_FIELDS + _FAMILY_FIELDS + _RESNET_FIELDS:
            _take_field(config, field, flat.get(field), before.get(field), path)
        _fit_input(config, source, path)
    return config


def _effective_fields(config) -> dict[str, Any]:
    """The model fields the config gives now (its registered model's, then its own), flattened."""
    try:
        kwargs = model_kwargs(config)
    except ConfigError:
        return {}
    return {k.replace("/", "."): v for k, v in checkpoint.flatten(kwargs).items()}


def _take_field(config, field: str, value, old, path: str) -> None:
    *parents, leaf = field.split(".")
    node = config.model
    for name in parents:
        node = node[name]
    if isinstance(value, list):
        value = tuple(value)
    if value is None:
        return
    old = node.get(leaf) if node.get(leaf) is not None else old
    if isinstance(old, list):
        old = tuple(old)
    if old is not None and old != value:
        log.info("Pretrained %s: model.%s=%r replaced by the checkpoint's %r.", path, field, old, value)
    node[leaf] = value


def _fit_input(config, source, path: str) -> None:
    """The crop a multiple of the checkpoint's patch, its channels, its mean and std."""
    ph, pw = source.model_config["patches"]["size"]
    crop = config.pp.crop if isinstance(config.pp.crop, int) else config.pp.crop[0]
    if crop % ph or crop % pw:
        new = -(-crop // ph) * ph
        log.info(
            "Pretrained %s: pp.crop=%s is not a multiple of its %dx%d patch: %d.", path, config.pp.crop, ph, pw, new
        )
        config.pp.crop = new
    chans = int(np.shape(source.params["embedding"]["kernel"])[2]) if "embedding" in source.params else 3
    if "conv_root" not in source.params and config.pp.channels != chans:
        log.info("Pretrained %s: pp.channels=%s -> %d (its patch embedding's).", path, config.pp.channels, chans)
        config.pp.channels = chans
    from vit_jax import pretrained

    norm = pretrained.normalisation(source)
    if config.pp.get("mean") is None and norm is not None:
        config.pp.mean, config.pp.std = norm
        log.info("Pretrained %s: inputs normalised with its mean %s and std %s.", path, config.pp.mean, config.pp.std)


# ----------------------------------------------------------------------------- what it describes


def model_kwargs(config) -> dict[str, Any]:
    """VisionTransformer fields: the registered model, then every set `config.model` field."""
    if config.model_name:
        try:
            base = model_configs.get_config(config.model_name).to_dict()
        except KeyError as e:
            raise ConfigError(f"config.model_name: {e.args[0]}") from None
    else:
        base = {"transformer": {}, "patches": {}}
    for key, value in config.model.to_dict().items():
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
    base["dtype"] = DTYPES[base["dtype"]]
    return base


def total_steps(config, num_train: int) -> int:
    """Optimizer steps of the run: `epochs` over `num_train` examples when set, else `total_steps`."""
    if config.epochs:
        return math.ceil(config.epochs * num_train / config.batch)
    return int(config.total_steps)


def eval_batch(config) -> int:
    """The evaluation batch: `eval_batch`, else the training batch."""
    return config.eval_batch or config.batch


def pretrained_file(config) -> str | None:
    """The checkpoint a run starts from: `pretrained_path`, or DIR/<model_name>.npz of `pretrained_dir`."""
    if config.pretrained_path:
        return config.pretrained_path
    if config.pretrained_dir:
        return os.path.join(config.pretrained_dir, f"{config.model_name}.npz")
    return None


# ----------------------------------------------------------------------------- checks


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _non_negative(v) -> bool:
    return _is_number(v) and v >= 0


def _unset_or(ok):
    return lambda v: v is None or ok(v)


_POSITIVE = "use a positive number"
_USE_A_PROBABILITY = "use a probability from 0 to 1"


def _is_probability(v) -> bool:
    return _is_number(v) and 0 <= v <= 1


def _range_checks(config) -> list[tuple[str, Any, Any, str]]:
    """(field, value, test, what to do instead) for every number the run (not the model) reads."""
    is_size = models_vit.is_size
    return [
        ("pp.crop", config.pp.crop, is_size, "use a positive size or a pair of them"),
        (
            "pp.resize",
            config.pp.resize,
            _unset_or(is_size),
            "use a positive size, or leave it unset to decode at the crop size",
        ),
        ("pp.eval_crop_pct", config.pp.eval_crop_pct, lambda v: _is_number(v) and 0 <= v <= 1, "use 0 or a fraction"),
        ("data_workers", config.data_workers, _unset_or(lambda v: _is_int(v) and v >= 0), "use 0 or more processes"),
        ("pp.channels", config.pp.channels, lambda v: v in (1, 3), "use 1 or 3"),
        ("pp.area_min", config.pp.area_min, lambda v: _is_number(v) and 0 < v <= 1, "use a fraction in (0, 1]"),
        ("pp.pad", config.pp.pad, lambda v: _is_int(v) and v >= 0, "use 0 or more pixels"),
        ("pp.randaug.num_layers", config.pp.randaug.num_layers, lambda v: _is_int(v) and v >= 0, "use 0 (off) or more"),
        ("pp.randaug.magnitude", config.pp.randaug.magnitude, _non_negative, "use 0 or more, e.g. 10, 15 or 20"),
        ("pp.erase_prob", config.pp.erase_prob, _is_probability, _USE_A_PROBABILITY),
        ("tta.shift", config.tta.shift, lambda v: _is_int(v) and v >= 0, "use 0 (no translations) or more pixels"),
        *[
            (f"mixup.{f}", config.mixup[f], _non_negative, "use 0 (off) or a positive alpha, e.g. 0.2")
            for f in ("alpha", "cutmix_alpha")
        ],
        *[(f"mixup.{f}", config.mixup[f], _is_probability, _USE_A_PROBABILITY) for f in ("switch_prob", "prob")],
        ("ema_decay", config.ema_decay, lambda v: _is_number(v) and 0 <= v < 1, "use 0 (off) or a rate below 1"),
        ("lr.base", config.lr.base, _non_negative, "use a positive learning rate"),
        ("lr.end", config.lr.end, _non_negative, "use 0 or a positive learning rate"),
        ("lr.warmup_steps", config.lr.warmup_steps, _non_negative, "use 0 or more steps"),
        ("lr.decay", config.lr.decay, lambda v: v in DECAYS, f"choose one of {', '.join(DECAYS)}"),
        ("optim.name", config.optim.name, lambda v: v in OPTIMIZERS, f"choose one of {', '.join(OPTIMIZERS)}"),
        ("optim.weight_decay", config.optim.weight_decay, _non_negative, "use 0 or more"),
        ("optim.mu_dtype", config.optim.mu_dtype, lambda v: v in DTYPES, _USE_A_DTYPE),
        (
            "optim.wd_convention",
            config.optim.wd_convention,
            lambda v: v in WD_CONVENTIONS,
            f"choose one of {', '.join(WD_CONVENTIONS)}",
        ),
        ("optim.layer_decay", config.optim.layer_decay, lambda v: _is_number(v) and 0 < v <= 1, "use a rate in (0, 1]"),
        (
            "label_smoothing",
            config.label_smoothing,
            lambda v: _is_number(v) and 0 <= v < 1,
            "use a rate from 0 up to, not including, 1",
        ),
        ("grad_clip_norm", config.grad_clip_norm, _unset_or(_non_negative), "use a positive norm, or 0 for none"),
        ("accum_steps", config.accum_steps, lambda v: _is_int(v) and v >= 1, "use 1 or more"),
        (
            "full_token_steps",
            config.full_token_steps,
            lambda v: _is_int(v) and v >= 0 and (v == 0 or bool(config.model.patch_drop_rate)),
            "use 0, or set config.model.patch_drop_rate as well (these steps end its patch dropout)",
        ),
        (
            "full_token_lr",
            config.full_token_lr,
            lambda v: _is_number(v) and v >= 0 and (v == 0 or bool(config.full_token_steps)),
            "use 0 (the run's schedule), or a positive rate with config.full_token_steps",
        ),
        (
            "full_token_accum_steps",
            config.full_token_accum_steps,
            lambda v: _is_int(v) and v >= 0 and (v == 0 or bool(config.full_token_steps)),
            "use 0 (config.accum_steps), or 1 or more with config.full_token_steps",
        ),
        (
            "epochs",
            config.epochs,
            _unset_or(lambda v: _is_number(v) and v > 0),
            "use a positive number, or leave it unset to run config.total_steps",
        ),
        (
            "total_steps",
            config.total_steps,
            lambda v: v > 0 or config.epochs,
            "use a positive number or set config.epochs",
        ),
        (
            "eval_batch",
            config.eval_batch,
            _unset_or(lambda v: _is_int(v) and v > 0),
            "use a positive number, or leave it unset to evaluate in batches of config.batch",
        ),
        *[
            (f, config[f], lambda v: _is_number(v) and v > 0, _POSITIVE)
            for f in ("progress_every", "eval_every", "checkpoint_every", "keep_checkpoints")
        ],
        *[(f, config[f], lambda v: _is_int(v) and v >= 0, "use 0 or more") for f in ("seed", "train_subset_seed")],
        ("fewshot.every", config.fewshot.every, _unset_or(lambda v: _is_int(v) and v > 0), "use a positive number"),
        (
            "fewshot.shots",
            config.fewshot.shots,
            lambda v: len(v) > 0 and all(_is_int(k) and k > 0 for k in v),
            "use a tuple of positive counts, e.g. (1, 5, 10, 25)",
        ),
        ("fewshot.seeds", config.fewshot.seeds, lambda v: all(_is_int(k) and k >= 0 for k in v), "use seeds >= 0"),
        ("fewshot.l2_reg", config.fewshot.l2_reg, lambda v: _is_number(v) and v > 0, _POSITIVE),
    ]


def validate(config, num_devices: int | None = None) -> None:
    """Checks every field a run depends on, before anything is loaded or compiled.

    `config` must be complete (`complete` or `resolve`). The first problem found is a
    ConfigError naming the field and what to use instead.
    """
    num_devices = num_devices or jax.device_count()
    check_known_fields(config)
    if config.model.dtype not in DTYPES:
        raise ConfigError(f"config.model.dtype={config.model.dtype!r}: {_USE_A_DTYPE}.")
    kw = model_kwargs(config)
    missing = [] if kw.get("hidden_size") is not None else ["hidden_size"]
    missing += [] if kw["patches"].get("size") is not None else ["patches.size"]
    t = kw["transformer"]
    missing += [f"transformer.{f}" for f in ("mlp_dim", "num_heads", "num_layers") if t.get(f) is None]
    if missing:
        raise ConfigError(
            f"The model is not fully defined: set config.model_name (e.g. ViT-B_16) or config.model.{missing[0]}."
        )
    try:
        models_vit.check_fields(kw)
    except ValueError as e:
        raise ConfigError(f"config.model.{e}") from None
    classifier = kw.get("classifier", "token")
    if classifier not in TRAINABLE_CLASSIFIERS:
        raise ConfigError(
            f"config.model.classifier={classifier!r} cannot be trained for classification here; "
            f"use one of {', '.join(TRAINABLE_CLASSIFIERS)}."
        )
    for field, value, ok, fix in _range_checks(config):
        if not ok(value):
            raise ConfigError(f"config.{field}={value!r}: {fix}.")
    if kw.get("resnet") is None:
        crop_hw, (ph, pw) = models_vit.to_pair(config.pp.crop), models_vit.to_pair(kw["patches"]["size"])
        if crop_hw[0] % ph or crop_hw[1] % pw:
            raise ConfigError(
                f"config.pp.crop={config.pp.crop} is not divisible by the patch size {ph}x{pw}: "
                f"use an image size that is a multiple of the patch size."
            )
    _check_batches(config, num_devices)
    if config.pretrained_dir and not config.model_name and not config.pretrained_path:
        raise ConfigError("config.pretrained_dir needs config.model_name to name the file (DIR/<model_name>.npz).")
    if config.lr.base == 0:
        log.warning("config.lr.base=0: the parameters will not change (an evaluation run?).")
    if config.lr.warmup_steps and config.total_steps > 0 and config.lr.warmup_steps > config.total_steps:
        log.warning(
            "config.lr.warmup_steps=%d is more than config.total_steps=%d: the learning rate never reaches "
            "config.lr.base.",
            config.lr.warmup_steps,
            config.total_steps,
        )


def known_fields() -> list[str]:
    """Every field of the run config, dotted ('lr.base', 'model.transformer.num_heads')."""
    return list(flat_fields(defaults.get_config().to_dict()))


def flat_fields(tree) -> dict[str, Any]:
    """{'a.b.c': leaf} of a nested dict (an empty dict is a leaf)."""
    return checkpoint.flatten(tree, sep=".", keep_empty=True)


def unknown_field_message(field: str) -> str:
    """'config.FIELD is not a field of the run config' with the nearest known name."""
    known = known_fields()
    original = {k: v for k, v in config_original.RENAMED.items()}
    original.update({"pp.train": "train_split", "pp.test": "test_split"})
    if field in original:
        hint = f"the original release's name for {original[field]}; use config.{original[field]}"
    else:
        close = difflib.get_close_matches(field, known + list(original), n=1, cutoff=0.6)
        if not close:  # a misspelt last part: compare within the same parent
            parent, _, leaf = field.rpartition(".")
            siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
            close = [f"{parent}.{c}" if parent else c for c in difflib.get_close_matches(leaf, siblings, n=1)]
        name = close[0] if close else None
        if name in original:
            name = original[name]
        hint = f"did you mean config.{name}?" if name else "see vit_jax/configs/defaults.py for the fields"
    return f"config.{field} is not a field of the run config ({hint})."


def check_known_fields(config) -> None:
    """Every field set in `config` is one the run reads, wherever it was set (file, flag or Python)."""
    known = set(known_fields())
    prefixes = {k.rpartition(".")[0] for k in known}
    for field in flat_fields(config.to_dict()):
        if field not in known and field not in prefixes:
            raise ConfigError(unknown_field_message(field))


def _check_batches(config, num_devices: int) -> None:
    """The mesh fits the devices, and the batches split evenly over the devices that share them."""
    try:
        names, sizes = parallel.mesh_shape(config.mesh, num_devices)
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
    full_accum = config.full_token_accum_steps
    if full_accum and config.batch % (split * full_accum):
        raise ConfigError(
            f"config.batch={config.batch} is not divisible by the {what} ({split}) times "
            f"config.full_token_accum_steps ({full_accum}); use a count that divides {config.batch // split}."
        )
    if eval_batch(config) % split:
        raise ConfigError(f"config.eval_batch={eval_batch(config)} is not divisible by the {what} ({split}).")


def check_files(config) -> None:
    """Files the run needs exist (checked before anything is compiled)."""
    from vit_jax import pretrained

    path = pretrained_file(config)
    if path and "://" not in path and not path.startswith(pretrained.HUB_PREFIX) and not os.path.exists(path):
        raise ConfigError(
            f"Pretrained checkpoint {path} not found (config.pretrained_path / pretrained_dir). The original "
            f"ViTs are published on the Hugging Face Hub: set --config.pretrained_path=hf-hub:{pretrained.HUB_EXAMPLE} "
            "(or another repository in the README's table), or a local file or directory."
        )
