"""Frozen features of a dataset, and the evaluators of `vit_jax.evaluators` run on them.

The features are the pre-logits, the input of the head (`out['pre_logits']` of the model's
`return_intermediates`), as the paper's few-shot evaluation uses. They are computed with the
evaluation preprocessing, in padded batches whose padding is masked out, each process reading
its own part of the split (as evaluation does), and gathered so every process holds all of
them: every example counted once. `evaluate` runs few-shot linear (per shot count and seed),
kNN and, optionally, the linear probe on one dataset's features. `FewshotEvaluator` does it
during training for `config.fewshot` (see `vit_jax/configs/defaults.py`); `vit_jax.evaluate`
on any checkpoint.
"""

import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import evaluators, parallel, preprocess
from vit_jax.data import get_source

log = logging.getLogger("vit_jax")


def make_feature_step(model, pp: dict[str, Any], batch_sharding=None):
    """step(params, batch) -> {'features': pre-logits (B, D) float32, 'label', 'mask'}, jitted."""

    def step(params, batch):
        x = preprocess.preprocess_eval(batch["image"], pp)
        with parallel.split_activations_like(batch_sharding):
            _, out = model.apply({"params": params}, x, train=False, return_intermediates=True)
        return {"features": out["pre_logits"].astype(jnp.float32), "label": batch["label"], "mask": batch["mask"]}

    return jax.jit(step)


def extract(feature_step, params, source, batch: int, sharding) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), labels (N,)) of every example of `source`, in the source's order, on
    every process (a collective: all processes call it)."""
    feats, labels = [], []
    for local in source.eval_batches(
        batch=batch,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        rows=parallel.local_rows(sharding, batch),
    ):
        out = parallel.to_host(feature_step(params, parallel.global_batch(local, sharding)))
        keep = np.asarray(out["mask"]) > 0
        feats.append(np.asarray(out["features"])[keep])
        labels.append(np.asarray(out["label"])[keep])
    return np.concatenate(feats), np.concatenate(labels).astype(np.int64)


def evaluate(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    *,
    shots=(1, 5, 10, 25),
    seeds=(0, 1, 2),
    l2_reg: float = 2.0**10,
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    linear_probe: bool = True,
) -> dict[str, Any]:
    """{'fewshot': {shots: [accuracy per seed]}, 'knn': accuracy[, 'linear_probe': accuracy]}
    of one dataset's (features, labels) pairs: the training pool and the test set."""
    (train_x, train_y), (test_x, test_y) = train, test
    result = {
        "fewshot": evaluators.fewshot_accuracy(train_x, train_y, test_x, test_y, num_classes, shots, seeds, l2_reg),
        "knn": evaluators.knn_accuracy(train_x, train_y, test_x, test_y, num_classes, knn_k, knn_temperature),
    }
    if linear_probe:
        result["linear_probe"] = evaluators.linear_probe_accuracy(train_x, train_y, test_x, test_y, num_classes)
    return result


def flat_scalars(name: str, result: dict[str, Any]) -> dict[str, float]:
    """{'NAME/5shot': seed mean, 'NAME/knn': ..., ...} for the metrics log and TensorBoard."""
    out = {f"{name}/{k}shot": float(np.mean(v)) for k, v in result["fewshot"].items()}
    out.update({f"{name}/{k}": float(v) for k, v in result.items() if k != "fewshot"})
    return out


def dataset_config(config, dataset: str) -> ml_collections.ConfigDict:
    """The run's config reading `dataset` instead (its evaluation preprocessing kept), whole splits
    or the ones `config.fewshot` names."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.dataset = dataset
        c.train_split = config.fewshot.train_split
        c.test_split = config.fewshot.test_split
        c.train_examples = None
    return c


class FewshotEvaluator:
    """config.fewshot during training: at every `fewshot.every` steps, few-shot linear accuracy and
    kNN of the current parameters on each named dataset (the run's own when none is named).

    It reads the parameters only and draws no randomness from the run, so training (and its
    exact resume) is the same with or without it. The sources are opened once.
    """

    def __init__(self, config, model, pp: dict[str, Any], sharding):
        f = config.fewshot
        self.config = config
        self.names = list(f.datasets) or [config.dataset]
        self.sources = {}
        for name in self.names:
            c = dataset_config(config, name)
            self.sources[name] = (get_source(c, "train"), get_source(c, "test"))
        self.step_fn = make_feature_step(model, pp, sharding)
        self.sharding = sharding

    def __call__(self, params) -> dict[str, float]:
        f, values = self.config.fewshot, {}
        batch = self.config.eval_batch or self.config.batch
        t0 = time.perf_counter()
        for name, (train_source, test_source) in self.sources.items():
            train = extract(self.step_fn, params, train_source, batch, self.sharding)
            test = extract(self.step_fn, params, test_source, batch, self.sharding)
            result = evaluate(
                train,
                test,
                train_source.num_classes,
                shots=tuple(f.shots),
                seeds=tuple(f.seeds),
                l2_reg=f.l2_reg,
                linear_probe=False,
            )
            values.update(flat_scalars(short_name(name), result))
        values["seconds"] = time.perf_counter() - t0
        return values


def short_name(dataset: str) -> str:
    """A dataset's name for metric keys: the last part of a path."""
    return dataset.rstrip("/").rsplit("/", 1)[-1] or dataset


def fewshot_of_sampled(
    feature_step,
    params,
    train_source,
    test_source,
    batch: int,
    sharding,
    *,
    shots=(5, 10),
    seeds=(0, 1, 2),
    l2_reg=2.0**10,
) -> dict[int, list[float]]:
    """`evaluators.fewshot_accuracy` computing features of the sampled shots only (not the whole
    training split): the samples depend on the labels alone, so the numbers are the same, at the
    cost of a few hundred images (a source read by index reads only those)."""
    labels = np.asarray(train_source.labels)
    k = train_source.num_classes
    picks = {(n, s): evaluators.sample_shots(labels, k, n, s) for n in shots for s in seeds}
    pool = np.unique(np.concatenate(list(picks.values())))
    sub = train_source.select(pool)
    pool_x, pool_y = extract(feature_step, params, sub, batch, sharding)
    test_x, test_y = extract(feature_step, params, test_source, batch, sharding)
    where = {int(i): j for j, i in enumerate(pool)}
    out = {}
    for n in shots:
        accs = []
        for s in seeds:
            rows = [where[int(i)] for i in picks[(n, s)]]
            accs.append(evaluators.lsr_accuracy(pool_x[rows], pool_y[rows], test_x, test_y, k, l2_reg))
        out[int(n)] = accs
    return out
