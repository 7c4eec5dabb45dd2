"""The evaluation protocol end to end: features of every example once, few-shot and kNN during
training without disturbing the run (or its exact resume), and `vit_jax.evaluate` on a run."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import read_metrics, resume_without_newest, tiny_run_config

from vit_jax import checkpoint, evaluate, evaluators, features, input_pipeline, preprocess, runs, train


@pytest.fixture(scope="module")
def fewshot_run(tmp_path_factory):
    """A tiny digits run with few-shot every 10 steps, checkpoints every 10."""
    workdir = str(tmp_path_factory.mktemp("fewshot") / "run")
    config = tiny_run_config(total_steps=20, **{"fewshot.every": 10, "fewshot.shots": (1, 5), "fewshot.seeds": (0, 1)})
    train.train_and_evaluate(config, workdir)
    return config, workdir


def direct_features(loaded, config, split):
    """Pre-logits of a split by a plain loop over the examples (no padding, no masks, no sharding)."""
    source = input_pipeline.get_source(config, split)
    pp = preprocess.pp_dict(config)
    apply = jax.jit(lambda p, x: loaded.model.apply({"params": p}, x, train=False, return_intermediates=True)[1])
    out = [
        np.asarray(apply(loaded.params, preprocess.preprocess_eval(source.images[i : i + 100], pp))["pre_logits"])
        for i in range(0, len(source), 100)
    ]
    return np.concatenate(out), source.labels


def test_features_count_every_example_once(fewshot_run):
    config, workdir = fewshot_run
    loaded = runs.from_workdir(workdir)
    step = features.make_feature_step(loaded.model, preprocess.pp_dict(config))
    source = input_pipeline.get_source(config, "test")
    x, y = features.extract(step, loaded.params, source, 64, sharding_of(config))
    want_x, want_y = direct_features(loaded, config, "test")
    assert x.shape == (len(source), 16) and len(source) % 64  # the last batch is padded
    np.testing.assert_allclose(x, want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, want_y)


def sharding_of(config):
    from vit_jax import parallel

    return parallel.batch_sharding(parallel.make_mesh(config.mesh))


def test_training_logs_fewshot_and_knn(fewshot_run):
    _, workdir = fewshot_run
    records = [m for m in read_metrics(workdir) if m["kind"] == "fewshot"]
    assert [m["step"] for m in records] == [10, 20]
    for m in records:
        assert {"digits/1shot", "digits/5shot", "digits/knn"} <= set(m)
        assert all(0 <= m[k] <= 1 for k in ("digits/1shot", "digits/5shot", "digits/knn"))
    assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_fewshot_leaves_training_and_its_resume_bitwise(fewshot_run, tmp_path):
    config, workdir = fewshot_run
    with_fewshot = checkpoint.load(os.path.join(workdir, "model.npz"))
    # The same run without the evaluator ends with the same parameters ...
    plain = tiny_run_config(total_steps=20)
    train.train_and_evaluate(plain, str(tmp_path / "plain"))
    jax.tree.map(np.testing.assert_array_equal, checkpoint.load(str(tmp_path / "plain" / "model.npz")), with_fewshot)
    # ... and so does a resume of the few-shot run from its step-10 checkpoint.
    resumed = tmp_path / "resumed"
    jax.tree.map(np.testing.assert_array_equal, resume_without_newest(config, workdir, resumed, 20), with_fewshot)
    assert [m["step"] for m in read_metrics(resumed) if m["kind"] == "fewshot"][-1] == 20


def test_evaluate_command_on_a_run_matches_an_independent_computation(fewshot_run, capsys):
    config, workdir = fewshot_run
    assert evaluate.main(["--workdir", workdir, "--shots", "1,5", "--seeds", "0,1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"digits"} and set(out["digits"]) == {"fewshot", "knn", "linear_probe"}
    loaded = runs.from_workdir(workdir)
    train_x, train_y = direct_features(loaded, config, "train")
    test_x, test_y = direct_features(loaded, config, "test")
    fewshot = evaluators.fewshot_accuracy(train_x, train_y, test_x, test_y, 10, (1, 5), (0, 1))
    assert out["digits"]["fewshot"] == pytest.approx({str(k): np.mean(v) for k, v in fewshot.items()}, abs=1e-3)
    knn = evaluators.knn_accuracy(train_x, train_y, test_x, test_y, 10)
    assert out["digits"]["knn"] == pytest.approx(knn, abs=1e-3)
    probe = evaluators.linear_probe_accuracy(train_x, train_y, test_x, test_y, 10)
    assert out["digits"]["linear_probe"] == pytest.approx(probe, abs=1e-2)
    # The table form names every measure.
    assert evaluate.main(["--workdir", workdir, "--shots", "5", "--seeds", "0"]) == 0
    table = capsys.readouterr().out
    assert "5-shot linear" in table and "kNN" in table and "linear probe" in table


def test_evaluate_command_errors_are_one_line(tmp_path, capsys):
    assert evaluate.main(["--workdir", str(tmp_path)]) == 2
    assert "is not a training workdir" in capsys.readouterr().err


def test_fewshot_of_the_sampled_shots_equals_the_whole_pool(fewshot_run):
    """Features of the sampled examples only give the numbers of features of the whole split."""
    config, workdir = fewshot_run
    loaded = runs.from_workdir(workdir)
    step = features.make_feature_step(loaded.model, preprocess.pp_dict(config))
    train_source, test_source = (input_pipeline.get_source(config, s) for s in ("train", "test"))
    sampled = features.fewshot_of_sampled(
        step, loaded.params, train_source, test_source, 64, sharding_of(config), shots=(1, 5), seeds=(0, 1)
    )
    train_x, train_y = direct_features(loaded, config, "train")
    test_x, test_y = direct_features(loaded, config, "test")
    whole = evaluators.fewshot_accuracy(train_x, train_y, test_x, test_y, 10, (1, 5), (0, 1))
    for k in (1, 5):  # features batched differently may differ in the last bits: one example at most
        np.testing.assert_allclose(sampled[k], whole[k], atol=1 / len(test_y) + 1e-9)
