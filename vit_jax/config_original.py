"""Configs of the original release, translated into this project's fields in one place.

A config built on the original's `vit_jax/configs/common.py` (its `vit.py` and `augreg.py`,
or a user's own) names fields the original way: `base_lr`, `warmup_steps`, `decay_type`,
`grad_norm_clip`, `optim_dtype`, `batch_eval`, `pp.train` / `pp.test`, the model as a
`config.model` that carries its `model_name`, the pretrained file as
PRETRAINED_DIR/<model_name>.npz or an AugReg `model_or_filename`. `translate` maps each to
the field of ours that means the same, so a run has one code path whatever config it was
given, and returns the list of what it mapped for the run's log. Fields of ours in such a
config (a `seed`, a `label_smoothing`) are kept as they are; fields that are neither the
original's nor ours are left for `config.validate` to refuse.

Where the original meant something this project does differently, the translation keeps
the original's meaning: `accum_steps=0` is no accumulation, an interval of 0 is "only at
the end", a linear decay ends at 1e-5, a directory dataset reads DIR/train and DIR/test
whatever `pp.train` / `pp.test` say (as the original's reader did).
"""

import logging
import os
from typing import Any

import ml_collections

from vit_jax import errors
from vit_jax.configs import models as model_configs

log = logging.getLogger("vit_jax")

# Original name -> ours, for fields that only changed their name.
RENAMED = {
    "base_lr": "lr.base",
    "warmup_steps": "lr.warmup_steps",
    "decay_type": "lr.decay",
    "grad_norm_clip": "grad_clip_norm",
    "optim_dtype": "optim.mu_dtype",
    "batch_eval": "eval_batch",
}
# Original fields with no counterpart here, and why nothing is lost.
NO_COUNTERPART = {
    "shuffle_buffer": "every epoch is shuffled whole, per process",
    "prefetch": "the data sources prefetch batches themselves",
    "model_type": "ViT is the one model family here",
}
# Fields whose presence marks a config as the original's.
ORIGINAL_ONLY = (*RENAMED, *NO_COUNTERPART, "trainer", "model_or_filename")
# What the original's linear decay ends at (`create_learning_rate_schedule`'s linear_end).
LINEAR_END = 1e-5
_INTERVALS = ("eval_every", "progress_every", "checkpoint_every")


class OriginalConfigError(errors.UserError):
    """An original-release config that cannot be run here (Mixer, LiT, an unknown trainer, ...)."""


def is_original(config) -> bool:
    """Whether `config` names fields the original's way (and so needs `translate`)."""
    model, pp = config.get("model"), config.get("pp")
    return (
        any(k in config for k in ORIGINAL_ONLY)
        or (isinstance(model, dict | ml_collections.ConfigDict) and "model_name" in model)
        or (isinstance(pp, dict | ml_collections.ConfigDict) and ("train" in pp or "test" in pp))
    )


def trainer(config) -> str:
    """What the original's main would run for `config`: 'train' or 'inference_time'.

    The original's inference_time config says so in a field named `train`, its others in `trainer`.
    """
    if config.get("trainer", "train") == "inference_time" or config.get("train") == "inference_time":
        return "inference_time"
    if config.get("trainer", "train") != "train":
        raise OriginalConfigError(f"config.trainer={config.trainer!r}: use 'train' or 'inference_time'.")
    return "train"


def translate(config) -> tuple[ml_collections.ConfigDict, list[str]]:
    """(`config` in this project's fields, what was translated: 'base_lr -> lr.base', ...)."""
    values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    out: dict[str, Any] = {}
    notes: list[str] = []

    def put(field: str, value: Any) -> None:
        node = out
        *parents, leaf = field.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    whole = "trainer" in values  # built on the original's common.get_config()
    if whole:
        trainer(values)
        del values["trainer"]
    for old, new in RENAMED.items():
        if old in values:
            put(new, values.pop(old))
            notes.append(f"{old} -> {new}")
    if out.get("lr", {}).get("decay") == "linear":
        put("lr.end", LINEAR_END)
        notes.append(f"decay_type='linear' -> lr.end={LINEAR_END}")
    for old, why in NO_COUNTERPART.items():
        if old in values:
            value = values.pop(old)
            if old == "model_type" and value != "ViT":
                raise OriginalConfigError(
                    f"config.model_type={value!r}: only ViT models are supported here (Mixer and LiT are not)."
                )
            notes.append(f"{old} (no counterpart: {why})")
    for field, what in (("dataset", "a TFDS name or a directory"), ("model", "a config of vit_jax/configs/models.py")):
        if field in values and not values[field]:
            raise OriginalConfigError(f"config.{field} is unset: set it to {what}.")
    if "pp" in values and values["pp"] is None:
        raise OriginalConfigError("config.pp is unset: set its splits and crop (common.with_dataset does).")
    if values.get("accum_steps") in (0, None):
        values["accum_steps"] = 1
        notes.append("accum_steps=0 -> 1 (no accumulation)")
    _translate_intervals(values, notes)
    _translate_model(values, out, notes)
    _translate_pp(values, out, notes)
    _translate_pretrained(values, out, notes)
    if whole:
        out["flax_checkpoint"] = True
        notes.append("also writes WORKDIR/checkpoint_<step> (the original's flax checkpoint)")
    for key, value in values.items():  # fields of ours, or unknown ones for validate to name
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**value, **out[key]}
        else:
            out.setdefault(key, value)
    return ml_collections.ConfigDict(out), notes


def _translate_intervals(values: dict, notes: list[str]) -> None:
    if values.get("total_steps") is None and not values.get("epochs"):
        raise OriginalConfigError(
            "config.total_steps is unset: set it (the dataset presets of vit_jax/configs/common.py do)."
        )
    for field in _INTERVALS:
        if values.get(field) == 0 and values.get("total_steps"):
            values[field] = values["total_steps"]
            notes.append(f"{field}=0 -> {values['total_steps']} (only at the end)")


def _translate_model(values: dict, out: dict, notes: list[str]) -> None:
    model = values.get("model")
    if not isinstance(model, dict) or "model_name" not in model:
        return
    model = dict(values.pop("model"))
    name = model.pop("model_name")
    if name.startswith(("Mixer-", "LiT-")) or "hidden_dim" in model or "text" in model:
        raise OriginalConfigError(
            f"config.model is {name!r}: only ViT models are supported here (Mixer and LiT are not)."
        )
    if name in model_configs.MODEL_CONFIGS:
        out["model_name"] = name
        notes.append(f"model.model_name -> model_name={name!r}")
    out["model"] = model
    out["_original_model_name"] = name


def _translate_pp(values: dict, out: dict, notes: list[str]) -> None:
    pp = values.get("pp")
    if not isinstance(pp, dict):
        return
    pp = dict(values.pop("pp"))
    directory = isinstance(values.get("dataset"), str) and os.path.isdir(values["dataset"])
    for mode in ("train", "test"):
        if mode not in pp:
            continue
        split = pp.pop(mode)
        if directory:
            notes.append(f"pp.{mode}={split!r} (not used: a directory dataset reads DIR/{mode})")
        else:
            out[f"{mode}_split"] = split
            notes.append(f"pp.{mode} -> {mode}_split")
    if "resize" in pp:  # the original's pipeline never read it: it resized the crop straight to pp.crop
        notes.append(f"pp.resize={pp.pop('resize')} (not used: the crop is resized straight to pp.crop)")
    out["pp"] = pp


def _translate_pretrained(values: dict, out: dict, notes: list[str]) -> None:
    """The original always starts from PRETRAINED_DIR/<file>.npz: made an explicit pretrained_path."""
    name = out.pop("_original_model_name", None)
    directory = values.pop("pretrained_dir", None)
    choice = values.pop("model_or_filename", None)
    if values.get("pretrained_path") or not directory:
        if directory:
            out["pretrained_dir"] = directory
        return
    if choice:
        filename = choice if "-" in choice else best_augreg_filename(directory, choice)
        notes.append(f"model_or_filename={choice!r} -> pretrained_path")
    elif name:
        filename = name
        notes.append("pretrained_dir -> pretrained_path (PRETRAINED_DIR/<model.model_name>.npz)")
    else:
        out["pretrained_dir"] = directory
        return
    out["pretrained_path"] = _join(directory, f"{filename}.npz")


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}" if "://" in directory else os.path.join(directory, name)


def best_augreg_filename(directory: str, model: str) -> str:
    """The ImageNet-21k AugReg checkpoint of `model` with the best final upstream validation accuracy,
    from DIRECTORY/index.csv (as the original's train_and_evaluate chose it)."""
    from vit_jax import checkpoint

    try:
        df = checkpoint.get_augreg_df(directory=directory)
    except Exception as e:
        raise OriginalConfigError(
            f"config.model_or_filename={model!r} needs the AugReg index {_join(directory, 'index.csv')} "
            f"({errors.error_line(e)}); set config.pretrained_dir to the folder that holds index.csv and "
            "the checkpoints, or give the checkpoint's full file name."
        ) from None
    rows = df.loc[df.filename.apply(lambda f: f.split("-")[0] == model)].query('ds=="i21k"')
    if rows.empty:
        raise OriginalConfigError(
            f"config.model_or_filename={model!r}: {_join(directory, 'index.csv')} lists no i21k checkpoint of it."
        )
    best = rows.sort_values("final_val").iloc[-1]
    log.info("AugReg checkpoint for %s: %s (final_val %.3f).", model, best.filename, best.final_val)
    return best.filename
