"""The jitted pieces of training and evaluation: the train step, the eval step, the inputs.

`make_train_step` is pure (state in, state out) and jitted by `train.build` with the state
donated; `micro_inputs` is what one micro-batch feeds the model after the device's
augmentation, shared with `vit_jax.preview`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import augment, optimizer, parallel, preprocess


def soft_targets(labels, num_classes: int, smoothing: float = 0.0):
    """One-hot targets, with optional label smoothing."""
    targets = jax.nn.one_hot(labels, num_classes)
    return optax.smooth_labels(targets, smoothing) if smoothing else targets


def cross_entropy(logits, labels, num_classes: int, smoothing: float = 0.0):
    """Per-example softmax cross-entropy in float32, with optional label smoothing."""
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), soft_targets(labels, num_classes, smoothing))


def eval_params(state):
    """The parameters a run evaluates and exports: the moving average when the run keeps one."""
    return state["ema"] if "ema" in state else state["params"]


def split_micro(a, accum: int):
    """(B, ...) -> (accum, B / accum, ...): micro-batch i takes rows i, i + accum, ... (so each spans
    every device of the batch sharding)."""
    return jnp.swapaxes(a.reshape(a.shape[0] // accum, accum, *a.shape[1:]), 0, 1)


def micro_inputs(images, labels, rng, pp, num_classes: int, label_smoothing: float = 0.0, mixup=None):
    """What the model trains on for one micro-batch: (inputs, soft targets) after the device's
    augmentation (preprocess.preprocess_train with the first half of split(rng)) and, with
    `mixup`, the mixing of images and targets. The train step and `vit_jax.preview` both call it,
    so the preview shows exactly what the step feeds the model."""
    k_aug = jax.random.split(rng)[0]
    x = preprocess.preprocess_train(images, k_aug, pp)
    targets = soft_targets(labels, num_classes, label_smoothing)
    if mixup:
        x, targets = augment.mix_batch(x, targets, jax.random.fold_in(rng, 2), **mixup)
    return x, targets


def step_rng(base_rng, step, micro: int | None = None):
    """The key of the train step at state step `step` (and of its micro-batch `micro`)."""
    rng = jax.random.fold_in(base_rng, step)
    return rng if micro is None else jax.random.fold_in(rng, micro)


def make_train_step(
    model,
    tx,
    schedule,
    *,
    pp: dict[str, Any],
    num_classes: int,
    accum_steps: int = 1,
    label_smoothing: float = 0.0,
    mixup: dict[str, float] | None = None,
    ema: tuple[float, bool] | None = None,
    skip_nonfinite: bool = False,
    batch_sharding=None,
):
    """step(state, batch, base_rng) -> (state, metrics); pure, for jax.jit.

    The batch is split into `accum_steps` micro-batches (interleaved rows, so each
    spans every device), each with its own dropout, augmentation and mixing keys;
    gradients are averaged before one optimizer update. `mixup` (augment.mix_batch's
    keyword arguments) mixes images and targets within each micro-batch. With `ema`
    = (decay, warmup), state['ema'] follows the parameters after every update. With
    `batch_sharding`, the model's activations are kept split like the batch (see
    parallel.split_activations_like). metrics['finite'] is False when the loss or the
    gradient is not finite; with `skip_nonfinite` that step's update is not applied.
    """
    accum = int(accum_steps)

    def micro_grads(params, images, labels, rng):
        x, targets = micro_inputs(images, labels, rng, pp, num_classes, label_smoothing, mixup)
        k_drop = jax.random.split(rng)[1]

        def loss_fn(p):
            with parallel.split_activations_like(batch_sharding):
                logits = model.apply({"params": p}, x, train=True, rngs={"dropout": k_drop})
            return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()

        return jax.value_and_grad(loss_fn)(params)

    def step(state, batch, base_rng):
        params = state["params"]
        rng = step_rng(base_rng, state["step"])
        if accum == 1:
            loss, grads = micro_grads(params, batch["image"], batch["label"], rng)
        else:

            def body(carry, xs):
                images, labels, i = xs
                loss, grads = micro_grads(params, images, labels, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (loss, grads)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
            xs = (split_micro(batch["image"], accum), split_micro(batch["label"], accum), jnp.arange(accum))
            (loss, grads), _ = jax.lax.scan(body, zeros, xs)
            loss, grads = loss / accum, jax.tree.map(lambda g: g / accum, grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        grad_norm = optax.global_norm(grads)
        new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state}
        if ema is not None:
            new_state["ema"] = optimizer.ema_update(state["ema"], new_state["params"], state["step"], *ema)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:  # a non-finite batch leaves parameters and optimizer state as they were
            old = {k: state[k] for k in new_state}
            new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, old)
        new_state["step"] = state["step"] + 1
        out = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]), "finite": finite}
        return new_state, out

    return step


def make_eval_step(model, *, pp: dict[str, Any], num_classes: int, batch_sharding=None, tta=None):
    """step(params, batch) -> sums of correct predictions, loss and examples, over the masked rows.

    With test-time augmentation, `tta=(flip, shift)` (config.tta), the prediction is the mean of
    the softmax probabilities over preprocess.tta_views, the loss its cross-entropy, and
    `correct_1view` counts the plain image's correct predictions alone.
    """

    def logits_of(params, x):
        with parallel.split_activations_like(batch_sharding):
            return model.apply({"params": params}, x, train=False).astype(jnp.float32)

    def step(params, batch):
        x = preprocess.preprocess_eval(batch["image"], pp)
        logits = logits_of(params, x)
        loss = cross_entropy(logits, batch["label"], num_classes)
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        m = batch["mask"]
        return {"correct": jnp.sum(correct * m), "loss": jnp.sum(loss * m), "count": jnp.sum(m)}

    views = preprocess.tta_views(*tta) if tta else [(0, 0, 0)]
    if len(views) == 1:
        return step
    shift = tta[1]

    def tta_step(params, batch):
        label, m = batch["label"], batch["mask"]
        logits = logits_of(params, preprocess.preprocess_eval(batch["image"], pp))

        def add_view(log_total, view):
            x = preprocess.preprocess_eval_view(batch["image"], pp, view, shift)
            return jnp.logaddexp(log_total, jax.nn.log_softmax(logits_of(params, x))), None

        # log of the summed probabilities, accumulated in log space so none underflows to 0
        log_total, _ = jax.lax.scan(add_view, jax.nn.log_softmax(logits), jnp.asarray(views[1:], jnp.int32))
        log_mean = log_total - np.log(len(views))
        correct = (jnp.argmax(log_mean, -1) == label).astype(jnp.float32)
        correct_1view = (jnp.argmax(logits, -1) == label).astype(jnp.float32)
        return {
            "correct": jnp.sum(correct * m),
            "loss": -jnp.sum(jnp.take_along_axis(log_mean, label[:, None], axis=1)[:, 0] * m),
            "count": jnp.sum(m),
            "correct_1view": jnp.sum(correct_1view * m),
        }

    return tta_step
