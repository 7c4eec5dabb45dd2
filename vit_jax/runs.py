"""Loading a trained model for the tools (analyze, predict): from a run's workdir or
from an original-format checkpoint with a registered model name."""

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import checkpoint, errors, models, preprocess
from vit_jax.data import decode
from vit_jax.data.common import IMAGE_EXTENSIONS
from vit_jax.data.sources import host_spec
from vit_jax.utils import to_pair


class RunError(errors.UserError):
    """A workdir or checkpoint the tools cannot use; the message says why."""


@dataclasses.dataclass
class LoadedModel:
    model: Any
    params: Any
    class_names: list[str]
    pp: dict[str, Any]  # evaluation preprocessing: crop, channels, and 'host' (a data.decode.HostSpec)
    config: ml_collections.ConfigDict | None = None
    source: str = ""


def from_workdir(workdir: str) -> LoadedModel:
    """The run's final export (model.npz) or, mid-run, its latest intact checkpoint."""
    from vit_jax import config as config_lib
    from vit_jax import train_state

    wd = train_state.Workdir(workdir)
    if not os.path.isfile(wd.config):
        raise RunError(f"{workdir} is not a training workdir (no {wd.CONFIG}).")
    config = config_lib.read(wd.config)
    kw = config_lib.model_kwargs(config)
    if os.path.isfile(wd.model):
        params, source = checkpoint.load(wd.model), wd.model
    else:
        params, source = train_state.latest_params(workdir)[0], "latest checkpoint"
    num_classes = np.asarray(params["head"]["kernel"]).shape[-1]
    if os.path.isfile(wd.run_info):
        with open(wd.run_info) as f:
            class_names = json.load(f)["class_names"]
    else:
        class_names = [str(i) for i in range(num_classes)]
    if kw.get("scan"):
        params = checkpoint.stack_blocks(params)
    model = models.VisionTransformer(num_classes=num_classes, **kw)
    pp = preprocess.pp_dict(config)
    pp["host"] = host_spec(config)
    return LoadedModel(model, params, class_names, pp, config, source)


def from_checkpoint(
    path: str, model_name: str | None, image_size: int | None, labels: str | None = None, need_head: bool = True
) -> LoadedModel:
    """Published weights (vit_jax.pretrained: an original .npz, a timm or transformers directory,
    hf-hub:ORG/NAME), with their classification head unless not `need_head` (analyses of a
    backbone such as DINOv2). An .npz needs its registered model name unless its file name is
    one; `image_size` defaults to the size the weights were trained at, and another size
    resamples the position embedding as the source's library does."""
    from vit_jax import pretrained

    p = pretrained.load(path, model_name)
    if need_head and not p.num_classes:
        raise RunError(f"{path} has no classification head ('head/kernel'); it gives features, not classes.")
    trained = tuple(p.image_size) if p.image_size else None
    if image_size:
        size = (image_size, image_size)
        if trained and size != trained:
            p = pretrained.for_image_size(p, image_size)
    elif trained:
        size = trained
    else:
        raise RunError(f"{path}: the image size cannot be read from its position embedding; pass --image_size.")
    if labels:
        with open(labels) as f:
            class_names = [line.strip() for line in f if line.strip()]
    else:
        class_names = p.class_names or [str(i) for i in range(p.num_classes)]
    pp = {"crop": size, "channels": 3, "host": decode.HostSpec(size=to_pair(size))}
    norm = pretrained.normalisation(p)
    if norm is not None:
        pp["mean"], pp["std"] = norm
    return LoadedModel(p.model(), p.params, class_names, pp, None, p.source)


def load_images(paths: list[str], loaded: LoadedModel) -> tuple[np.ndarray, list[str], list[str]]:
    """Decodes and preprocesses image files as the run's evaluation does.

    Returns (images in [-1, 1], paths read, one error message per unreadable file).
    """
    arrays, ok, failures = [], [], []
    spec = loaded.pp["host"]
    for p in paths:
        image = np.empty((*spec.size, 3), np.uint8)
        try:
            with open(p, "rb") as f:
                decode.eval_image(f.read(), spec, image)
        except (OSError, decode.DecodeError) as e:
            failures.append(f"Cannot read image {p} ({e}); replace or remove the file.")
            continue
        arrays.append(image)
        ok.append(p)
    if not arrays:
        return np.zeros((0,)), ok, failures
    batch = jnp.asarray(np.stack(arrays))
    return np.asarray(preprocess.preprocess_eval(batch, loaded.pp)), ok, failures


def image_files(directory: str) -> list[str]:
    """Every image file under `directory` (recursively), sorted."""
    if not os.path.isdir(directory):
        raise RunError(f"Image directory {directory} does not exist.")
    found = []
    for root, _, files in os.walk(directory):
        found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise RunError(f"No image files (.jpg, .png, ...) under {directory}.")
    return sorted(found)
