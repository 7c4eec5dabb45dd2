"""Training tests: learning, gradient accumulation, evaluation coverage, exact resume
after SIGKILL, pretrained starts, configs, and the command line's error messages."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_jax import checkpoint, input_pipeline, main, models, parallel, train
from vit_jax.configs import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_run_config(**overrides) -> ml_collections.ConfigDict:
    """Digits, a 1-block ViT of width 16: a few seconds per run."""
    c = common.get_config()
    c.dataset = "digits"
    c.pp.crop = 8
    c.pp.area_min = 0.8
    c.pp.flip = False
    c.pp.channels = 1
    c.model.hidden_size = 16
    c.model.patches.size = (2, 2)
    c.model.transformer.mlp_dim = 32
    c.model.transformer.num_heads = 2
    c.model.transformer.num_layers = 1
    c.model.transformer.dropout_rate = 0.1
    c.model.transformer.attention_dropout_rate = 0.0
    c.batch = 32
    c.total_steps = 40
    c.optim.name = "adamw"
    c.lr.base = 1e-2
    c.lr.warmup_steps = 5
    c.progress_every = 10
    c.eval_every = 20
    c.checkpoint_every = 10
    for k, v in overrides.items():
        target = c
        *parents, leaf = k.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = v
    return c


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


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
    model = models.VisionTransformer(num_classes=10, **train.model_kwargs(config))
    tx, schedule = train.make_optimizer(config, 10)
    step = jax.jit(train.make_train_step(model, tx, schedule, config, 10))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    new_state, out = step(state, batch, jax.random.PRNGKey(0))
    return new_state["params"], out


def test_gradient_accumulation_equals_one_big_batch():
    """Dropout and augmentation off: 4 micro-batches of 8 give the update of one batch of 32."""
    base = {"pp.area_min": 1.0, "model.transformer.dropout_rate": 0.0, "optim.name": "sgd", "lr.warmup_steps": 0}
    source = input_pipeline.load_digits("train")
    batch = {"image": jnp.asarray(source.images[:32]), "label": jnp.asarray(source.labels[:32])}
    one = tiny_run_config(**base)
    model = models.VisionTransformer(num_classes=10, **train.model_kwargs(one))
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
    model = models.VisionTransformer(num_classes=10, **train.model_kwargs(cfg))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"]
    new, _ = _one_step(cfg, params, {"image": jnp.asarray(images), "label": jnp.asarray(labels)})
    rng = jax.random.fold_in(jax.random.PRNGKey(0), 0)  # base key of the step, step 0
    pp = input_pipeline.pp_dict(cfg)
    x = input_pipeline.preprocess_eval(jnp.asarray(source.images[:8]), pp)

    @jax.jit
    @jax.grad
    def grad(p, k):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": k})
        return train.cross_entropy(logits, jnp.asarray(source.labels[:8]), 10).mean()

    grads = [grad(params, jax.random.split(jax.random.fold_in(rng, i))[1]) for i in range(4)]
    g0, g1 = jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])
    assert not all(np.allclose(a, b) for a, b in zip(g0, g1, strict=True))  # keys differ per micro-batch
    lr = float(train.make_schedule(cfg, 10)(0))
    expected = jax.tree.map(lambda p, *g: p - lr * sum(g) / 4, params, *grads)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_evaluation_counts_every_example_once():
    config = tiny_run_config(eval_batch=64)  # 359 test examples: 5 full batches + 39
    source = input_pipeline.load_digits("test")
    model = models.VisionTransformer(num_classes=10, **train.model_kwargs(config))
    params = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 8, 8, 1)))["params"]
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(1), a.shape), params)
    mesh = parallel.make_mesh()
    step = jax.jit(train.make_eval_step(model, config, 10))
    result = train.evaluate(step, params, source, config, parallel.batch_sharding(mesh))
    assert result["count"] == 359
    x = input_pipeline.preprocess_eval(jnp.asarray(source.images), input_pipeline.pp_dict(config))
    predictions = np.argmax(model.apply({"params": params}, x), -1)
    assert result["accuracy"] == pytest.approx(np.mean(predictions == source.labels), abs=1e-9)
    masks = [b["mask"] for b in input_pipeline.eval_batches(source, batch=64)]
    assert len(masks) == 6 and sum(m.sum() for m in masks) == 359 and masks[-1].sum() == 39


def test_batches_are_a_function_of_seed_and_step():
    source = input_pipeline.load_digits("train")
    it = input_pipeline.train_batches(source, batch=100, seed=7)
    first = [next(it)["label"] for _ in range(20)]  # crosses epoch boundaries (1438 examples)
    resumed = input_pipeline.train_batches(source, batch=100, seed=7, start_step=13)
    np.testing.assert_array_equal(next(resumed)["label"], first[13])
    # Each epoch is a permutation: the first 1400 examples of the stream are distinct.
    idx = np.concatenate([input_pipeline.global_batch_indices(7, s, 1438, 100) for s in range(14)])
    assert len(set(idx[:1400].tolist())) == 1400
    # Two processes each read their half of every global batch.
    halves = [
        next(input_pipeline.train_batches(source, batch=100, seed=7, process_index=i, process_count=2)) for i in (0, 1)
    ]
    np.testing.assert_array_equal(np.concatenate([h["label"] for h in halves]), first[0])


def _run_main(workdir, *extra, timeout=240):
    args = [
        sys.executable,
        "-m",
        "vit_jax.main",
        "--config",
        os.path.join(ROOT, "configs", "quickstart.py"),
        "--workdir",
        str(workdir),
        "--config.total_steps=60",
        "--config.checkpoint_every=10",
        "--config.eval_every=25",
        "--config.progress_every=10",
        "--config.model.hidden_size=16",
        "--config.model.transformer.num_layers=1",
        "--config.model.transformer.mlp_dim=32",
        "--config.model.transformer.dropout_rate=0.1",
        "--config.batch=32",
        *extra,
    ]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_pretrained_start(tmp_path):
    config = tiny_run_config(total_steps=1, **{"pp.area_min": 1.0, "lr.base": 0.0, "lr.warmup_steps": 0})
    config.model.transformer.dropout_rate = 0.0
    kw = train.model_kwargs(config)
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
        "vit_b16.py",
        "vit.py:b16,cifar10",
        "vit.py:r50+b16,oxford_iiit_pet",
        "pretrain.py:imagenet21k,b16",
        "pretrain.py:imagenet2012,l16",
    ],
)
def test_every_config_is_valid(config_arg):
    from ml_collections import config_flags

    path, _, arg = config_arg.partition(":")
    module = config_flags.config_flags._LoadConfigModule("c", os.path.join(ROOT, "configs", path))
    config = module.get_config(arg) if arg else module.get_config()
    train.validate(config, num_devices=1)
    assert config.batch % config.accum_steps == 0
    assert (module.__doc__ or "").strip(), "every config documents its command and expected result"


def test_config_recipes():
    from ml_collections import config_flags

    load = lambda p: config_flags.config_flags._LoadConfigModule("c", os.path.join(ROOT, "configs", p))  # noqa: E731
    b16 = load("vit_b16.py").get_config()
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
    i21k = load("pretrain.py").get_config("imagenet21k,b16")
    assert (i21k.optim.name, i21k.optim.b1, i21k.optim.b2, i21k.batch, i21k.lr.warmup_steps) == (
        "adamw",
        0.9,
        0.999,
        4096,
        10_000,
    )
    assert (i21k.lr.base, i21k.optim.weight_decay, i21k.epochs, i21k.lr.decay) == (1e-3, 0.03, 90, "linear")
    assert i21k.model.transformer.dropout_rate == 0.1 and i21k.model.representation_size == 768
    i1k = load("pretrain.py").get_config("imagenet2012,b16")
    assert (i1k.lr.base, i1k.optim.weight_decay, i1k.epochs) == (3e-3, 0.3, 300)
    schedule = train.make_schedule(i1k, 100_000)
    assert float(schedule(5_000)) == pytest.approx(1.5e-3) and float(schedule(10_000)) == pytest.approx(3e-3)
    assert float(schedule(55_000)) == pytest.approx(1.5e-3)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"model.transformer.num_heads": 3}, "num_heads=3 does not divide hidden_size=16"),
        ({"pp.crop": 9}, "not divisible by the patch size 2x2"),
        ({"batch": 30, "accum_steps": 4}, "batch=30 is not divisible by the device count"),
        ({"optim.name": "lamb"}, "optim.name='lamb'"),
        ({"lr.decay": "step"}, "lr.decay='step'"),
        ({"model.classifier": "unpooled"}, "cannot be trained for classification"),
        ({"model.dtype": "float16"}, "use 'float32' or 'bfloat16'"),
        # Out of range: each would reach JAX as a shape error, or train silently wrong.
        ({"model.hidden_size": 0}, "config.model.hidden_size=0: use a positive whole number"),
        ({"model.transformer.num_layers": -1}, "config.model.transformer.num_layers=-1: use a positive"),
        ({"model.patches.size": (0, 0)}, "config.model.patches.size=(0, 0): use a pair like (16, 16)"),
        ({"model.patches.size": (4,)}, "config.model.patches.size=(4,): use a pair"),
        ({"model.transformer.dropout_rate": 1.0}, "dropout_rate=1.0: use a rate from 0 up to, not including, 1"),
        ({"model.transformer.attention_dropout_rate": -0.5}, "attention_dropout_rate=-0.5: use a rate"),
        ({"model.droppath_rate": 1.0}, "config.model.droppath_rate=1.0: use a rate"),
        ({"model.attention_impl": "bogus"}, "config.model.attention_impl='bogus': choose one of auto"),
        ({"model.resnet.num_layers": (-1,)}, "config.model.resnet.num_layers=(-1,): use a tuple of positive"),
        ({"pp.crop": 0}, "config.pp.crop=0: use a positive size"),
        ({"pp.resize": -4}, "config.pp.resize=-4: use a positive size"),
        ({"lr.base": -0.1}, "config.lr.base=-0.1: use a positive learning rate"),
        ({"lr.warmup_steps": -10}, "config.lr.warmup_steps=-10: use 0 or more steps"),
        ({"label_smoothing": 2.0}, "config.label_smoothing=2.0: use a rate"),
        ({"grad_clip_norm": -1.0}, "config.grad_clip_norm=-1.0: use a positive norm, or 0 for none"),
        ({"optim.mu_dtype": "float16"}, "config.optim.mu_dtype='float16': use 'float32' or 'bfloat16'"),
        ({"epochs": -1.0}, "config.epochs=-1.0: use a positive number"),
        ({"eval_batch": -1}, "config.eval_batch=-1: use a positive number"),
        ({"seed": -1}, "config.seed=-1: use 0 or more"),
        (
            {"batch": 0},
            "config.batch=0 is not divisible by the device count (1) times config.accum_steps (1); use a positive",
        ),
    ],
)
def test_inconsistent_fields_are_named(overrides, message):
    with pytest.raises(train.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train.validate(tiny_run_config(**overrides), num_devices=1)


def test_missing_pretrained_file_is_named(tmp_path):
    config = tiny_run_config(pretrained_path=str(tmp_path / "ViT-B_16.npz"))
    with pytest.raises(train.ConfigError, match=r"ViT-B_16\.npz not found.*published at"):
        train.check_files(config)


def test_default_workdir():
    assert main.default_workdir("configs/vit_b16.py") == os.path.join("runs", "vit_b16")
    assert main.default_workdir("configs/vit.py:b16,cifar10") == os.path.join("runs", "vit_b16,cifar10")


def run_main(*args):
    """`python -m vit_jax.main ARGS` from the repo root; its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "vit_jax.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "flag,message",
    [
        ("--config.lr.bse=0.1", "Unknown config field 'bse' (did you mean 'base'?)"),
        (
            "--config.batch=abc",
            "--config.batch=abc: invalid literal for int() with base 10: 'abc'. config.batch takes an integer",
        ),
    ],
)
def test_command_line_errors_are_one_line(tmp_path, flag, message):
    proc = run_main("--config", "configs/quickstart.py", "--workdir", str(tmp_path), flag)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "config_arg,source,message",
    [
        ("missing.py", None, "Config file {dir}/missing.py not found; check the path given to --config."),
        ("syntax.py", "def get_config(:\n    pass\n", "{dir}/syntax.py line 1: invalid syntax; fix the config file."),
        ("noget.py", "x = 1\n", "{dir}/noget.py defines no get_config()"),
        ("noarg.py:foo", "def get_config():\n    return None\n", "{dir}/noarg.py takes no argument; drop ':foo'"),
        (
            "refuses.py:b99",
            "def get_config(arg):\n    raise KeyError(f'Unknown model {arg!r}')\n",
            "--config {dir}/refuses.py:b99: get_config fails (KeyError: Unknown model 'b99').",
        ),
    ],
)
def test_config_file_errors_are_one_line(tmp_path, config_arg, source, message):
    if source is not None:
        (tmp_path / config_arg.partition(":")[0]).write_text(source)
    proc = run_main("--config", f"{tmp_path}/{config_arg}", "--workdir", str(tmp_path / "w"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr  # the flags are never parsed: no JAX log
    assert lines[0].startswith(f"error: {message.format(dir=tmp_path)}"), lines[0]


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    proc = run_main("--config", "configs/quickstart.py", "--workdir", str(tmp_path / "afile"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: --workdir {tmp_path / 'afile'} is a file; give a directory (it is created if missing)."]
