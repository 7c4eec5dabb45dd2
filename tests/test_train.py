"""Training tests: learning, gradient accumulation, evaluation coverage, exact resume
after SIGKILL, pretrained starts, configs, and the command line's error messages."""

import ast
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, error_lines, read_metrics, run_main, tiny_run_config

from vit_jax import checkpoint, input_pipeline, main, models, optimizer, parallel, preprocess, train
from vit_jax import config as config_lib


def test_tensorboard_events_are_written_without_importing_tensorflow(tmp_path):
    code = (
        "import sys; from vit_jax import metrics; w = metrics.MetricWriter(sys.argv[1]); "
        "w.write('eval', 7, {'accuracy': 0.5}); w.close(); print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy")] == [(7, 0.5)]


def test_training_reduces_the_loss_and_writes_its_outputs(tmp_path):
    result = train.train_and_evaluate(tiny_run_config(total_steps=100), str(tmp_path))
    records = read_metrics(tmp_path)
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses[-1] < 0.8 * losses[0]
    assert result["count"] == 359 and result["accuracy"] > 0.3  # chance is 0.1
    assert {"loss", "lr", "images_per_s", "grad_norm"} <= records[0].keys()
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [20, 40, 60, 80, 100] and all(r["count"] == 359 for r in evals)
    assert os.listdir(tmp_path / "tensorboard")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["100", "80", "90"]  # keep_checkpoints=3
    params = checkpoint.load(str(tmp_path / "model.npz"))
    assert params["embedding"]["kernel"].shape == (2, 2, 1, 16)
    assert json.load(open(tmp_path / "run.json"))["class_names"][:3] == ["0", "1", "2"]


def test_bfloat16_training_keeps_float32_parameters(tmp_path):
    config = tiny_run_config(total_steps=20, **{"model.dtype": "bfloat16", "optim.mu_dtype": "bfloat16"})
    result = train.train_and_evaluate(config, str(tmp_path))
    losses = [r["loss"] for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert result["count"] == 359
    params = np.load(tmp_path / "model.npz")
    assert all(params[k].dtype == np.float32 for k in params.files)


def _one_step(config, params, batch):
    model = models.VisionTransformer(num_classes=10, **config_lib.model_kwargs(config))
    tx, schedule = optimizer.make_optimizer(config, 10)
    step = train.make_train_step(
        model,
        tx,
        schedule,
        pp=preprocess.pp_dict(config),
        num_classes=10,
        accum_steps=config.accum_steps,
        label_smoothing=config.label_smoothing,
    )
    step = jax.jit(step)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    new_state, out = step(state, batch, jax.random.PRNGKey(0))
    return new_state["params"], out


def test_gradient_accumulation_equals_one_big_batch():
    """Dropout and augmentation off: 4 micro-batches of 8 give the update of one batch of 32."""
    base = {"pp.area_min": 1.0, "model.transformer.dropout_rate": 0.0, "optim.name": "sgd", "lr.warmup_steps": 0}
    source = input_pipeline.load_digits("train")
    batch = {"image": jnp.asarray(source.images[:32]), "label": jnp.asarray(source.labels[:32])}
    one = tiny_run_config(**base)
    model = models.VisionTransformer(num_classes=10, **config_lib.model_kwargs(one))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"]
    p1, o1 = _one_step(one, params, batch)
    p4, o4 = _one_step(tiny_run_config(accum_steps=4, **base), params, batch)
    assert float(o4["loss"]) == pytest.approx(float(o1["loss"]), rel=1e-5)
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(params), strict=True)]
    assert max(moved) > 1e-3  # the step really updates the parameters
    for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_each_micro_batch_draws_its_own_dropout_key():
    """4 identical micro-batches with dropout: the update is the mean of 4 different gradients."""
    cfg = tiny_run_config(
        accum_steps=4,
        **{"pp.area_min": 1.0, "model.transformer.dropout_rate": 0.5, "optim.name": "sgd", "lr.warmup_steps": 0},
    )
    cfg.optim.momentum = 0.0
    cfg.grad_clip_norm = 0.0
    source = input_pipeline.load_digits("train")
    images, labels = np.repeat(source.images[:8], 4, axis=0), np.repeat(source.labels[:8], 4)  # rows i, i+4, ...
    model = models.VisionTransformer(num_classes=10, **config_lib.model_kwargs(cfg))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"]
    new, _ = _one_step(cfg, params, {"image": jnp.asarray(images), "label": jnp.asarray(labels)})
    rng = jax.random.fold_in(jax.random.PRNGKey(0), 0)  # base key of the step, step 0
    pp = preprocess.pp_dict(cfg)
    x = preprocess.preprocess_eval(jnp.asarray(source.images[:8]), pp)

    @jax.jit
    @jax.grad
    def grad(p, k):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": k})
        return train.cross_entropy(logits, jnp.asarray(source.labels[:8]), 10).mean()

    grads = [grad(params, jax.random.split(jax.random.fold_in(rng, i))[1]) for i in range(4)]
    g0, g1 = jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])
    assert not all(np.allclose(a, b) for a, b in zip(g0, g1, strict=True))  # keys differ per micro-batch
    lr = float(optimizer.make_schedule(cfg.lr, 10)(0))
    expected = jax.tree.map(lambda p, *g: p - lr * sum(g) / 4, params, *grads)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_evaluation_counts_every_example_once():
    config = tiny_run_config(eval_batch=64)  # 359 test examples: 5 full batches + 39
    source = input_pipeline.load_digits("test")
    model = models.VisionTransformer(num_classes=10, **config_lib.model_kwargs(config))
    params = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 8, 8, 1)))["params"]
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(1), a.shape), params)
    mesh = parallel.make_mesh()
    step = jax.jit(train.make_eval_step(model, pp=preprocess.pp_dict(config), num_classes=10))
    result = train.evaluate(step, params, source, config.eval_batch, parallel.batch_sharding(mesh))
    assert result["count"] == 359
    x = preprocess.preprocess_eval(jnp.asarray(source.images), preprocess.pp_dict(config))
    predictions = np.argmax(model.apply({"params": params}, x), -1)
    assert result["accuracy"] == pytest.approx(np.mean(predictions == source.labels), abs=1e-9)
    masks = [b["mask"] for b in source.eval_batches(batch=64)]
    assert len(masks) == 6 and sum(m.sum() for m in masks) == 359 and masks[-1].sum() == 39


def test_test_time_views_by_hand():
    assert preprocess.tta_views(False, 0) == [(0, 0, 0)]
    assert preprocess.tta_views(True, 0) == [(0, 0, 0), (1, 0, 0)]
    views = preprocess.tta_views(True, 1)
    assert len(views) == 18 == len(set(views)) and views[0] == (0, 0, 0)
    assert set(views) == {(f, dy, dx) for f in (0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    image = np.arange(1, 10, dtype=np.uint8).reshape(1, 3, 3, 1)  # rows 1 2 3 / 4 5 6 / 7 8 9
    pp = {"crop": (3, 3), "channels": 1}

    def pixels(view):
        x = preprocess.preprocess_eval_view(jnp.asarray(image), pp, jnp.asarray(view), 1)
        return np.rint((np.asarray(x)[0, :, :, 0] + 1) * 127.5).astype(int)

    np.testing.assert_array_equal(pixels((0, 1, 0)), [[0, 0, 0], [1, 2, 3], [4, 5, 6]])  # down by 1
    np.testing.assert_array_equal(pixels((0, 0, -1)), [[2, 3, 0], [5, 6, 0], [8, 9, 0]])  # left by 1
    np.testing.assert_array_equal(pixels((1, -1, 1)), [[0, 6, 5], [0, 9, 8], [0, 0, 0]])  # mirrored, up, right
    np.testing.assert_array_equal(pixels((0, 0, 0)), image[0, :, :, 0])


def test_test_time_augmentation_averages_the_views_probabilities():
    """config.tta: accuracy and loss of the mean softmax over 18 views, against each view computed apart."""
    config = tiny_run_config(eval_batch=64, **{"tta.flip": True, "tta.shift": 1})
    source = input_pipeline.load_digits("test")
    model = models.VisionTransformer(num_classes=10, **config_lib.model_kwargs(config))
    params = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 8, 8, 1)))["params"]
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(1), a.shape), params)
    head = params["head"]  # spread the predictions over the classes
    kernel = 3.0 * jax.random.normal(jax.random.PRNGKey(2), head["kernel"].shape)
    params["head"] = {"kernel": kernel, "bias": 0 * head["bias"]}
    pp = preprocess.pp_dict(config)
    step = jax.jit(train.make_eval_step(model, pp=pp, num_classes=10, tta=(True, 1)))
    result = train.evaluate(step, params, source, 64, parallel.batch_sharding(parallel.make_mesh()))
    padded = np.pad(source.images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    apply = jax.jit(lambda v: model.apply({"params": params}, preprocess.preprocess_eval(v, pp)))
    probs, plain = [], None
    for flip in (False, True):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                view = padded[:, 1 - dy : 9 - dy, 1 - dx : 9 - dx]  # content moved down dy, right dx
                view = view[:, :, ::-1] if flip else view
                logits = np.asarray(apply(jnp.asarray(view)))
                probs.append(np.asarray(jax.nn.softmax(logits.astype(np.float64))))
                if not flip and dy == dx == 0:
                    plain = np.argmax(logits, -1)
    mean = np.mean(probs, axis=0)
    labels = source.labels
    assert result["count"] == 359
    assert result["accuracy"] == pytest.approx(np.mean(np.argmax(mean, -1) == labels), abs=1e-9)
    assert result["loss"] == pytest.approx(-np.mean(np.log(mean[np.arange(359), labels])), rel=1e-5)
    assert result["accuracy_1view"] == pytest.approx(np.mean(plain == labels), abs=1e-9)
    assert (np.argmax(mean, -1) != plain).sum() > 10  # the views changed predictions: a real check
    line = train.format_eval(result)
    assert line.endswith(f"| 1-view accuracy {result['accuracy_1view']:.4f}")
    plain_line = train.format_eval({"accuracy": 0.5, "loss": 1.25, "count": 359})
    assert plain_line == "accuracy 0.5000 | loss 1.2500 | 359 examples"  # the log line without tta


def test_batches_are_a_function_of_seed_and_step():
    source = input_pipeline.load_digits("train")
    it = source.train_batches(batch=100, seed=7)
    first = [next(it)["label"] for _ in range(20)]  # crosses epoch boundaries (1438 examples)
    resumed = source.train_batches(batch=100, seed=7, start_step=13)
    np.testing.assert_array_equal(next(resumed)["label"], first[13])
    # Each epoch is a permutation: the first 1400 examples of the stream are distinct.
    idx = np.concatenate([input_pipeline.global_batch_indices(7, s, 1438, 100) for s in range(14)])
    assert len(set(idx[:1400].tolist())) == 1400
    # Two processes each read their half of every global batch.
    halves = [next(source.train_batches(batch=100, seed=7, process_index=i, process_count=2)) for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["label"] for h in halves]), first[0])


def test_pretrained_start(tmp_path):
    config = tiny_run_config(total_steps=1, **{"pp.area_min": 1.0, "lr.base": 0.0, "lr.warmup_steps": 0})
    config.model.transformer.dropout_rate = 0.0
    kw = config_lib.model_kwargs(config)
    model = models.VisionTransformer(num_classes=4, **kw)
    pre = model.init(jax.random.PRNGKey(9), jnp.zeros((1, 4, 4, 1)))["params"]  # pretrained at 4x4 px
    pre = jax.tree.map(lambda a: a + 0.1, pre)
    checkpoint.save(pre, tmp_path / "pre.npz")
    config.pretrained_path = str(tmp_path / "pre.npz")
    train.train_and_evaluate(config, str(tmp_path / "run"))
    got = checkpoint.load(str(tmp_path / "run" / "model.npz"))  # lr 0: still the loaded weights
    np.testing.assert_array_equal(got["Transformer"]["encoderblock_0"]["LayerNorm_0"]["scale"], np.float32(1.1))
    assert got["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 17, 16)  # resized 2x2 -> 4x4
    assert got["head"]["kernel"].shape == (16, 10) and not got["head"]["kernel"].any()


@pytest.mark.parametrize(
    "config_arg",
    [
        "quickstart.py",
        "fashion_mnist.py",
        "mnist.py",
        "mnist_augreg.py",
        "fashion_mnist_augreg.py",
        "fashion_mnist_hybrid.py",
        "fashion_mnist_patchdrop.py",
        "mnist_patchdrop.py",
        "cifar10_subset.py",
        "vit_b16.py",
        "vit.py:b16,cifar10",
        "vit.py:r50+b16,oxford_iiit_pet",
        "pretrain.py:imagenet21k,b16",
        "pretrain.py:imagenet2012,l16",
    ],
)
def test_every_config_is_valid(config_arg):
    config = config_lib.load_file(os.path.join(ROOT, "configs", config_arg))
    config_lib.validate(config, num_devices=1)
    assert config.batch % config.accum_steps == 0
    with open(os.path.join(ROOT, "configs", config_arg.partition(":")[0])) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    assert (doc or "").strip(), "every config documents its command and expected result"


def test_config_recipes():
    load = lambda p: config_lib.load_file(os.path.join(ROOT, "configs", p))  # noqa: E731
    b16 = load("vit_b16.py")
    assert (b16.model_name, b16.dataset, b16.pp.crop, b16.batch, b16.total_steps) == (
        "ViT-B_16",
        "cifar10",
        384,
        512,
        10_000,
    )
    assert (b16.optim.name, b16.optim.momentum, b16.grad_clip_norm, b16.lr.warmup_steps, b16.lr.decay) == (
        "sgd",
        0.9,
        1.0,
        500,
        "cosine",
    )
    assert b16.accum_steps > 1
    i21k = load("pretrain.py:imagenet21k,b16")
    assert (i21k.optim.name, i21k.optim.b1, i21k.optim.b2, i21k.batch, i21k.lr.warmup_steps) == (
        "adamw",
        0.9,
        0.999,
        4096,
        10_000,
    )
    assert (i21k.lr.base, i21k.optim.weight_decay, i21k.epochs, i21k.lr.decay) == (1e-3, 0.03, 90, "linear")
    assert i21k.model.transformer.dropout_rate == 0.1 and i21k.model.representation_size == 768
    i1k = load("pretrain.py:imagenet2012,b16")
    assert (i1k.lr.base, i1k.optim.weight_decay, i1k.epochs) == (3e-3, 0.3, 300)
    schedule = optimizer.make_schedule(i1k.lr, 100_000)
    assert float(schedule(5_000)) == pytest.approx(1.5e-3) and float(schedule(10_000)) == pytest.approx(3e-3)
    assert float(schedule(55_000)) == pytest.approx(1.5e-3)


AUGREG_OVERRIDES = {  # configs/fashion_mnist.py -> the measured 20-minute run of 2026-12-02
    "cpu_devices": 2,  # measured with the same two devices set by XLA_FLAGS before the recipe said so
    "accum_steps": 4,
    "total_steps": 14_000,
    "ema_decay": 0.999,
    "ema_warmup": True,
    "pp.pad": 2,
    "model.hidden_size": 64,
    "model.transformer.mlp_dim": 256,
}
PATCHDROP_OVERRIDES = {  # configs/fashion_mnist_augreg.py -> the measured patch-dropout runs
    "model.patch_drop_rate": 0.6,
    "full_token_steps": 1500,
    "full_token_lr": 2e-4,
    "full_token_accum_steps": 4,
    "accum_steps": 2,
    "tta.flip": True,
    "tta.shift": 1,
    "ema_decay": 0.0,
    "ema_warmup": False,
    "total_steps": 17_500,
    "eval_every": 8750,
    "checkpoint_every": 8750,
}


MNIST_PATCHDROP_OVERRIDES = {  # configs/mnist_augreg.py -> the measured patch-dropout runs
    "model.patch_drop_rate": 0.5,
    "full_token_steps": 600,
    "full_token_lr": 2e-4,
    "full_token_accum_steps": 4,
    "accum_steps": 2,
    "tta.shift": 1,
    "ema_decay": 0.0,
    "ema_warmup": False,
    "total_steps": 6000,
    "progress_every": 500,
    "eval_every": 3000,
    "checkpoint_every": 3000,
}


@pytest.mark.parametrize(
    "config_file, base_file, overrides",
    [
        ("fashion_mnist_augreg.py", "fashion_mnist.py", AUGREG_OVERRIDES),
        ("fashion_mnist_patchdrop.py", "fashion_mnist_augreg.py", PATCHDROP_OVERRIDES),
        ("mnist_patchdrop.py", "mnist_augreg.py", MNIST_PATCHDROP_OVERRIDES),
    ],
)
def test_recipes_are_the_measured_overrides(config_file, base_file, overrides):
    # Each docstring's result was measured as the base file with these overrides on the command
    # line (experiments/results/recipes.md): the file must resolve to that same config.
    load = lambda p: config_lib.load_file(os.path.join(ROOT, "configs", p))  # noqa: E731
    measured = load(base_file)
    for field, value in overrides.items():
        *parents, name = field.split(".")
        node = measured
        for parent in parents:
            node = node[parent]
        node[name] = value
    assert load(config_file).to_dict() == measured.to_dict()


@pytest.mark.parametrize(
    "overrides,field,fix",
    [
        ({"model.transformer.num_heads": 3}, "config.model.transformer.num_heads=3", "divides"),
        ({"pp.crop": 9}, "config.pp.crop=9", "multiple of the patch size"),
        ({"batch": 30, "accum_steps": 4}, "config.batch=30", "multiple of 4"),
        ({"optim.name": "lamb"}, "config.optim.name='lamb'", "sgd, adam, adamw"),
        ({"lr.decay": "step"}, "config.lr.decay='step'", "cosine, linear, constant"),
        ({"model.classifier": "unpooled"}, "config.model.classifier='unpooled'", "token, gap, map"),
        ({"model.dtype": "float16"}, "config.model.dtype='float16'", "'float32' or 'bfloat16'"),
        # Out of range: each would reach JAX as a shape error, or train silently wrong.
        ({"model.hidden_size": 0}, "config.model.hidden_size=0", "positive whole number"),
        ({"model.transformer.num_layers": -1}, "config.model.transformer.num_layers=-1", "positive"),
        ({"model.patches.size": (0, 0)}, "config.model.patches.size=(0, 0)", "(16, 16)"),
        ({"model.patches.size": (4,)}, "config.model.patches.size=(4,)", "a pair"),
        ({"model.transformer.dropout_rate": 1.0}, "config.model.transformer.dropout_rate=1.0", "not including, 1"),
        (
            {"model.transformer.attention_dropout_rate": -0.5},
            "config.model.transformer.attention_dropout_rate=-0.5",
            "a rate",
        ),
        ({"model.droppath_rate": 1.0}, "config.model.droppath_rate=1.0", "a rate"),
        ({"model.attention_impl": "bogus"}, "config.model.attention_impl='bogus'", "auto, fused"),
        ({"model.posemb": "2d"}, "config.model.posemb='2d'", "learn, none"),
        ({"model.remat": "some"}, "config.model.remat='some'", "none, full, dots"),
        ({"model.resnet.num_layers": (-1,)}, "config.model.resnet.num_layers=(-1,)", "positive block counts"),
        ({"pp.crop": 0}, "config.pp.crop=0", "positive size"),
        ({"pp.resize": -4}, "config.pp.resize=-4", "positive size"),
        ({"pp.channels": 2}, "config.pp.channels=2", "1 or 3"),
        ({"lr.base": -0.1}, "config.lr.base=-0.1", "positive learning rate"),
        ({"lr.warmup_steps": -10}, "config.lr.warmup_steps=-10", "0 or more"),
        ({"label_smoothing": 2.0}, "config.label_smoothing=2.0", "a rate"),
        ({"grad_clip_norm": -1.0}, "config.grad_clip_norm=-1.0", "0 for none"),
        ({"optim.mu_dtype": "float16"}, "config.optim.mu_dtype='float16'", "'float32' or 'bfloat16'"),
        ({"epochs": -1.0}, "config.epochs=-1.0", "positive number"),
        ({"eval_batch": -1}, "config.eval_batch=-1", "positive number"),
        ({"seed": -1}, "config.seed=-1", "0 or more"),
        ({"accum_steps": 0}, "config.accum_steps=0", "1 or more"),
        ({"checkpoint_every": 0}, "config.checkpoint_every=0", "positive number"),
        ({"batch": 0}, "config.batch=0", "positive multiple of 1"),
    ],
)
def test_inconsistent_fields_are_named_with_the_fix(overrides, field, fix):
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(tiny_run_config(**overrides), num_devices=1)
    message = str(e.value)
    assert message.startswith(field) or f" {field}" in message, message
    assert fix in message and "\n" not in message, message


def test_a_config_error_reads_as_one_sentence_with_the_fix():
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(tiny_run_config(batch=30, accum_steps=4), num_devices=1)
    assert str(e.value) == (
        "config.batch=30 is not divisible by the device count (1) times config.accum_steps (4); "
        "use a positive multiple of 4."
    )


def test_checks_run_once_and_defaults_are_filled_in(monkeypatch):
    """A config missing fields gets the defaults (one copy, configs/defaults.py); resolve checks it once."""
    partial = tiny_run_config().to_dict()
    del partial["pp"]["flip"], partial["keep_checkpoints"], partial["optim"]
    calls = []
    real = config_lib.validate
    monkeypatch.setattr(config_lib, "validate", lambda c, n=None: calls.append(1) or real(c, n))
    resolved = config_lib.resolve(partial, num_devices=1)
    assert calls == [1]
    assert (resolved.pp.flip, resolved.keep_checkpoints, resolved.optim.name) == (True, 3, "sgd")
    assert resolved.pp.crop == 8  # what the config sets is kept
    full = tiny_run_config()
    assert config_lib.complete(full) is full  # nothing missing: the same object, its field order kept


def test_missing_pretrained_file_is_named(tmp_path):
    config = tiny_run_config(pretrained_path=str(tmp_path / "ViT-B_16.npz"))
    hub = r"Hugging Face Hub.*hf-hub:timm/vit_base_patch16_224"
    with pytest.raises(config_lib.ConfigError, match=r"ViT-B_16\.npz not found.*" + hub):
        config_lib.check_files(config)


def test_default_workdir():
    assert main.default_workdir("configs/vit_b16.py") == os.path.join("runs", "vit_b16")
    assert main.default_workdir("configs/vit.py:b16,cifar10") == os.path.join("runs", "vit_b16,cifar10")


@pytest.mark.parametrize(
    "flag,words",
    [
        ("--config.lr.bse=0.1", ["--config.lr.bse is not a field", "did you mean config.lr.base?", "fix the flag"]),
        ("--config.batch=abc", ["--config.batch=abc", "invalid literal for int()"]),
    ],
)
def test_command_line_errors_are_one_line(tmp_path, flag, words):
    proc = run_main("--config", "configs/quickstart.py", "--workdir", str(tmp_path), flag)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "config_arg,source,words",
    [
        ("missing.py", None, ["{dir}/missing.py not found", "check the path given to --config"]),
        ("syntax.py", "def get_config(:\n    pass\n", ["{dir}/syntax.py line 1", "fix the config file"]),
        ("noget.py", "x = 1\n", ["{dir}/noget.py defines no get_config()"]),
        ("noarg.py:foo", "def get_config():\n    return None\n", ["{dir}/noarg.py takes no argument", "drop ':foo'"]),
        (
            "refuses.py:b99",
            "def get_config(arg):\n    raise KeyError(f'Unknown model {arg!r}')\n",
            ["--config {dir}/refuses.py:b99", "Unknown model 'b99'", "docstring"],
        ),
    ],
)
def test_config_file_errors_are_one_line(tmp_path, config_arg, source, words):
    if source is not None:
        (tmp_path / config_arg.partition(":")[0]).write_text(source)
    proc = run_main("--config", f"{tmp_path}/{config_arg}", "--workdir", str(tmp_path / "w"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(w.format(dir=tmp_path) in lines[0] for w in words), lines[0]


def test_a_config_file_error_reads_as_one_sentence(tmp_path):
    proc = run_main("--config", f"{tmp_path}/missing.py")
    assert proc.stderr == f"error: Config file {tmp_path}/missing.py not found; check the path given to --config.\n"


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    proc = run_main("--config", "configs/quickstart.py", "--workdir", str(tmp_path / "afile"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [
        f"error: --workdir {tmp_path / 'afile'} is a file; give a directory (it is created if missing)."
    ]
