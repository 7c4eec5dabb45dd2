"""The optimizer of a run: schedule, clipping, optimizer, layer-wise decay, weight decay, EMA.

Each option adds a piece to the optax chain only when it is set, so a config that leaves
them at their defaults keeps the optimizer state (and checkpoints) it always had.

Layer-wise learning-rate decay (BEiT, MAE fine-tuning) multiplies each parameter's update
by layer_decay ** (L + 1 - depth): depth 0 for the embeddings (patch embedding, cls token,
position embedding, hybrid stem), i + 1 for encoder block i, L + 1 for everything after the
encoder (final norm, pre-logits, head). AugReg's weight-decay convention (big_vision's)
decays kernels only, decoupled from the optimizer: after the optimizer and layer decay,
each kernel moves by -weight_decay * lr(t) * kernel.
"""

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import config as config_lib
from vit_jax import parallel

_EMBEDDING = re.compile(r"^(embedding|cls|conv_root|gn_root|block\d+|Transformer/posembed_input)(/|$)")
_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/")
_SCANNED_BLOCKS = re.compile(r"^Transformer/encoderblock/")  # scan=True: blocks stacked on axis 0


def make_schedule(lr, steps: int):
    """config.lr's schedule over `steps`: linear warm-up from 0, then cosine, linear or constant.

    As the original's: a warm-up longer than the run is not shortened (the rate never reaches
    lr.base), and the decay spans the steps after the warm-up.
    """
    warmup = int(lr.warmup_steps)
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


def layer_scale(name: str, shape: tuple[int, ...], layer_decay: float, num_layers: int) -> np.ndarray:
    """The multiplier of one parameter's update under layer-wise decay (see the module doc).

    For blocks stacked by scan (leading axis = block), an array that broadcasts over the rest.
    """
    top = num_layers + 1
    if _EMBEDDING.match(name):
        return np.float32(layer_decay**top)
    if m := _BLOCK.match(name):
        return np.float32(layer_decay ** (top - int(m[1]) - 1))
    if _SCANNED_BLOCKS.match(name):
        rates = layer_decay ** (top - 1 - np.arange(shape[0], dtype=np.float64))
        return rates.astype(np.float32).reshape(-1, *[1] * (len(shape) - 1))
    return np.float32(1.0)


def layer_scales(params, layer_decay: float, num_layers: int):
    """The tree of layer_scale for every parameter of `params` (arrays or shapes)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: layer_scale(parallel.path_name(path), tuple(p.shape), layer_decay, num_layers), params
    )


def scale_by_layer(layer_decay: float, num_layers: int) -> optax.GradientTransformation:
    """Multiplies every update by its parameter's layer_scale; no state (the scales follow
    from the parameter names, fixed at trace time)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        scales = layer_scales(updates, layer_decay, num_layers)
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(init_fn, update_fn)


class DecoupledDecayState(NamedTuple):
    count: jax.Array


def decoupled_weight_decay(rate: float, schedule, mask) -> optax.GradientTransformation:
    """Adds -rate * schedule(t) * p to the update of every parameter `mask` selects (t counts
    this transformation's updates from 0): big_vision's decoupled weight decay, the update
    already being the optimizer's negative step."""

    def init_fn(params):
        del params
        return DecoupledDecayState(count=jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params):
        factor = rate * schedule(state.count)
        decayed = jax.tree.map(
            lambda u, p, m: u - (factor * p).astype(u.dtype) if m else u, updates, params, mask(params)
        )
        return decayed, DecoupledDecayState(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def kernels_only(params):
    """big_vision's default weight-decay mask: parameters named `kernel`."""
    return jax.tree_util.tree_map_with_path(lambda path, p: parallel.path_name(path).endswith("/kernel"), params)


def matrices(params):
    """Every parameter with more than one dimension (kernels, position embedding, cls)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config, steps: int, num_layers: int | None = None):
    """(optax transformation, schedule): clipping, the optimizer with the schedule, then layer
    decay and AugReg's decoupled weight decay when set. `num_layers` (the encoder's depth) is
    needed only with optim.layer_decay < 1."""
    o = config.optim
    # With full_token_lr, the last full_token_steps steps on a schedule of their own: config.lr's
    # schedule ends where they begin, then a warm restart at full_token_lr, cosine to 0.
    tail = min(int(config.full_token_steps), steps) if config.full_token_lr else 0
    schedule = make_schedule(config.lr, steps - tail)
    if tail:
        tail_lr = optax.cosine_decay_schedule(float(config.full_token_lr), tail)
        schedule = optax.join_schedules([schedule, tail_lr], [steps - tail])
    mu_dtype = config_lib.DTYPES[o.mu_dtype]
    augreg = o.wd_convention == "augreg"
    wd = 0.0 if augreg else o.weight_decay
    if o.name == "sgd":
        opt = optax.sgd(schedule, momentum=o.momentum or None, accumulator_dtype=mu_dtype)
        if wd:
            opt = optax.chain(optax.add_decayed_weights(wd, matrices), opt)
    else:
        opt = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=wd, mu_dtype=mu_dtype, mask=matrices)
    parts = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
    parts.append(opt)
    if o.layer_decay != 1.0:
        if num_layers is None:
            raise ValueError("optim.layer_decay needs the encoder's num_layers")
        parts.append(scale_by_layer(float(o.layer_decay), int(num_layers)))
    if augreg and o.weight_decay:
        parts.append(decoupled_weight_decay(float(o.weight_decay), schedule, kernels_only))
    return optax.chain(*parts), schedule


# ----------------------------------------------------------------------------- EMA


def ema_decay_at(step, decay: float, warmup: bool):
    """The averaging rate of the update after step `step` (0 for the first)."""
    if not warmup:
        return jnp.float32(decay)
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def ema_update(ema: Any, params: Any, step, decay: float, warmup: bool = False) -> Any:
    """ema * d + params * (1 - d), with d = ema_decay_at(step, ...), leaf by leaf in float32."""
    d = ema_decay_at(step, decay, warmup)
    return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema, params)
