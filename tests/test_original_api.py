"""The original release's utils, test_utils, checkpoint helpers, inference_time and make_update_fn,
called as code written for that release calls them, checked against numbers worked out by hand or
computed by an independent route."""

import glob
import logging
import math
import os
import subprocess
import sys
import types

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ROOT

from vit_jax import checkpoint, errors, inference_time, models, optimizer, test_utils, train, utils
from vit_jax.configs import inference_time as inference_time_config
from vit_jax.configs import models as model_configs

# ----------------------------------------------------------------------------- utils


@pytest.mark.parametrize(
    "decay_type, warmup, expected",
    [
        # total_steps=100, base=0.1, linear_end=1e-5. During warm-up the decay has not started
        # (lr = base) and is scaled by step / warmup; after it, progress = (step - 10) / 90.
        ("linear", 10, {0: 0.0, 5: 0.05, 10: 0.1, 55: 1e-5 + (0.1 - 1e-5) * 0.5, 100: 1e-5, 250: 1e-5}),
        # cosine: 0.1 * (1 + cos(pi * progress)) / 2; progress 1/3 at step 40 gives 0.075.
        ("cosine", 10, {0: 0.0, 5: 0.05, 10: 0.1, 40: 0.075, 55: 0.05, 100: 0.0, 250: 0.0}),
        # No warm-up: progress = step / 100 from the start.
        ("linear", 0, {0: 0.1, 25: 1e-5 + (0.1 - 1e-5) * 0.75, 100: 1e-5}),
        ("cosine", 0, {0: 0.1, 50: 0.05, 100: 0.0}),
    ],
)
def test_learning_rate_schedule_values(decay_type, warmup, expected):
    lr_fn = utils.create_learning_rate_schedule(100, 0.1, decay_type, warmup)
    jitted = jax.jit(lr_fn)
    for step, want in expected.items():
        got = lr_fn(step)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(float(got), want, rtol=1e-6, atol=1e-9, err_msg=f"step {step}")
        np.testing.assert_allclose(float(jitted(jnp.int32(step))), want, rtol=1e-6, atol=1e-9)


def test_learning_rate_schedule_agrees_with_train_schedule_and_rejects_unknown_decay():
    steps = jnp.arange(0, 130)
    for decay_type, end in (("linear", 1e-5), ("cosine", 0.0)):
        ours = optimizer.make_schedule(types.SimpleNamespace(base=0.03, end=end, decay=decay_type, warmup_steps=7), 100)
        original = utils.create_learning_rate_schedule(100, 0.03, decay_type, 7)
        np.testing.assert_allclose(jax.vmap(original)(steps), jax.vmap(ours)(steps), rtol=0, atol=1e-8)
    # A default linear_end of 1e-5: the linear schedule ends there, not at 0.
    assert float(utils.create_learning_rate_schedule(10, 1.0, "linear", 0)(10)) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="exponential"):
        utils.create_learning_rate_schedule(100, 0.1, "exponential", 0)


def _regression_loss(params, images, labels):
    pred = images.reshape(images.shape[0], -1) @ params["w"] + params["b"]
    return jnp.mean((pred - labels) ** 2)


def test_accumulate_gradient_equals_the_full_batch_gradient():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 2, 2, 3)).astype(np.float32)  # (B, H, W, C) as the original passes them
    labels = rng.normal(size=(8, 2)).astype(np.float32)
    params = {"w": rng.normal(size=(12, 2)).astype(np.float32), "b": rng.normal(size=(2,)).astype(np.float32)}
    # Independent route: the gradient of mean((x w + b - y)^2) by hand, in float64.
    x, w, b = images.reshape(8, -1).astype(np.float64), params["w"].astype(np.float64), params["b"].astype(np.float64)
    r = x @ w + b - labels
    want_loss, want_w, want_b = np.mean(r**2), 2 * x.T @ r / r.size, 2 * r.sum(0) / r.size
    loss_and_grad = jax.value_and_grad(_regression_loss)
    for accum_steps in (None, 0, 1, 2, 4, 8):
        loss, grads = jax.jit(lambda p, x, y, a=accum_steps: utils.accumulate_gradient(loss_and_grad, p, x, y, a))(
            params, images, labels
        )
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
        np.testing.assert_allclose(grads["w"], want_w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grads["b"], want_b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="accum_steps=3 does not divide the batch of 8"):
        utils.accumulate_gradient(loss_and_grad, params, images, labels, 3)


def test_accumulate_gradient_calls_the_function_on_consecutive_slices():
    seen = []

    def loss_and_grad(params, images, labels):
        seen.append(images.shape)
        return jnp.sum(images), {"p": jnp.sum(labels)}

    images, labels = np.arange(6.0), np.arange(6.0) * 10
    loss, grads = utils.accumulate_gradient(loss_and_grad, None, images, labels, 3)
    # Slices [0, 1], [2, 3], [4, 5]: the mean of their sums is 15 / 3, and 150 / 3 for the labels.
    assert float(loss) == 5.0 and float(grads["p"]) == 50.0
    assert seen[0] == (2,)


def test_add_gfile_logger_appends_records_to_workdir(tmp_path):
    workdir = tmp_path / "new" / "workdir"
    logger = logging.getLogger("vit_jax.test_original_api")
    logger.setLevel(logging.DEBUG)
    for i in range(2):  # a second run appends to the same file
        handler = utils.add_gfile_logger(str(workdir))
        try:
            assert handler in logging.getLogger().handlers
            logger.info("run %d started", i)
            logger.debug("not at INFO")
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
    text = (workdir / "train.log").read_text()
    assert "run 0 started" in text and "run 1 started" in text
    assert "not at INFO" not in text
    handler = utils.add_gfile_logger(str(workdir), basename="eval", level=logging.DEBUG)
    try:
        logger.debug("debug now")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert "debug now" in (workdir / "eval.log").read_text()


# ----------------------------------------------------------------------------- test_utils and checkpoint


def _testing_params(num_classes, size):
    """The model and its parameters, initialised as test_utils.create_checkpoint does (jitted)."""
    model = models.VisionTransformer(num_classes=num_classes, **model_configs.get_testing_config())
    init = jax.jit(lambda rng: model.init(rng, jnp.ones((1, size, size, 3), jnp.float32), train=False))
    params = init(jax.random.PRNGKey(0))["params"]
    return model, jax.device_get(params)


def _random_params(model, size, seed=0):
    """Parameters of the model's shapes drawn in numpy (no compilation), non-zero everywhere."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.ones((1, size, size, 3)), train=False))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.05 * rng.normal(size=s.shape)).astype(s.dtype), shapes["params"])


def test_create_checkpoint_then_load_pretrained_at_another_size(tmp_path):
    model_config = model_configs.get_testing_config()  # a ConfigDict with model_name, as the original's
    path = tmp_path / "sub" / "testing.npz"
    test_utils.create_checkpoint(model_config, str(path))

    _, want = _testing_params(1, 16)
    with np.load(path) as npz:  # Linen names joined by '/', as the original wrote them
        names = set(npz.files)
    assert names == set(checkpoint.flatten(want))
    assert "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel" in names
    loaded = checkpoint.load(str(path))
    jax.tree.map(np.testing.assert_array_equal, loaded, want)
    # The original's loader: recover_tree over the archive, then flax's pre-Linen renaming.
    from flax.training import checkpoints as flax_checkpoints

    with np.load(path) as npz:
        original = flax_checkpoints.convert_pre_linen(checkpoint.recover_tree(*zip(*npz.items(), strict=True)))
    jax.tree.map(np.testing.assert_array_equal, dict(original), loaded)

    # Fine-tune at 32x32 with 2 classes, as the original's checkpoint test does.
    model, init = _testing_params(2, 32)
    params = checkpoint.load_pretrained(pretrained_path=str(path), init_params=init, model_config=model_config)
    posemb = params["Transformer"]["posembed_input"]["pos_embedding"]
    old = loaded["Transformer"]["posembed_input"]["pos_embedding"]  # (1, 1 + 1x1 grid, 10)
    assert posemb.shape == (1, 5, 10)
    np.testing.assert_array_equal(posemb[0, 0], old[0, 0])  # the cls row is kept
    for i in range(1, 5):  # a 1x1 grid resized to 2x2 repeats its one embedding
        np.testing.assert_allclose(posemb[0, i], old[0, 1], rtol=1e-6)
    np.testing.assert_array_equal(params["head"]["kernel"], init["head"]["kernel"])
    np.testing.assert_array_equal(params["embedding"]["kernel"], loaded["embedding"]["kernel"])
    logits = jax.jit(lambda p: model.apply({"params": p}, jnp.ones((1, 32, 32, 3)), train=False))(params)
    assert logits.shape == (1, 2)


def test_inspect_params():
    expected = {"pre_logits": {}, "a": {"b": {}, "c": 1, "d": 2}}
    params = {"a": {"c": 1, "d": 2}}
    out = checkpoint.inspect_params(params=params, expected=expected)
    # Parameter-less layers are put back, in place as the original did; nothing is reported.
    assert out is params and out == {"pre_logits": {}, "a": {"b": {}, "c": 1, "d": 2}}

    with pytest.raises(ValueError, match=r"missing \['a/d'\], extra \[\]"):
        checkpoint.inspect_params(params={"a": {"c": 1}}, expected=expected)
    out = checkpoint.inspect_params(params={"a": {"c": 1}}, expected=expected, fail_if_missing=False)
    assert out == {"pre_logits": {}, "a": {"c": 1, "b": {}}}

    with pytest.raises(ValueError, match=r"missing \[\], extra \['a/e', 'z'\]"):
        checkpoint.inspect_params(params={"a": {"c": 1, "d": 2, "e": 3}, "z": 0}, expected=expected)
    out = checkpoint.inspect_params(
        params={"a": {"c": 1, "d": 2, "e": 3}, "z": 0}, expected=expected, fail_if_extra=False
    )
    assert out["a"]["e"] == 3 and out["pre_logits"] == {}
    # An empty layer in params that the model lacks is an extra name too.
    with pytest.raises(ValueError, match=r"extra \['x'\]"):
        checkpoint.inspect_params(params={"x": {}, "a": {"c": 1, "d": 2}}, expected=expected)


def test_recover_tree():
    tree = checkpoint.recover_tree(["a/b/c", "a/d", "e"], [1, 2, 3])
    assert tree == {"a": {"b": {"c": 1}, "d": 2}, "e": 3}
    params = _random_params(models.VisionTransformer(num_classes=3, **model_configs.get_testing_config()), 16)
    flat = checkpoint.flatten(params)
    rebuilt = checkpoint.recover_tree(list(flat), list(flat.values()))
    assert jax.tree.structure(rebuilt) == jax.tree.structure(jax.tree.map(lambda x: x, dict(params)))


@pytest.mark.parametrize("progress", [True, False])
def test_copy(tmp_path, progress):
    data = np.random.default_rng(0).bytes(2500)
    (tmp_path / "src.bin").write_bytes(data)
    dst = tmp_path / "new" / "dst.bin"
    checkpoint.copy(str(tmp_path / "src.bin"), str(dst), progress=progress, block_size=1000)
    assert dst.read_bytes() == data
    (tmp_path / "empty").write_bytes(b"")
    checkpoint.copy(str(tmp_path / "empty"), str(tmp_path / "empty2"), progress=progress)
    assert (tmp_path / "empty2").read_bytes() == b""


AUGREG_COLUMNS = (
    "name,ds,lr,aug,wd,do,sd,best_val,final_val,final_test,adapt_ds,adapt_lr,adapt_steps,adapt_resolution,"
    "adapt_final_val,adapt_final_test,params,infer_samples_per_sec,filename,adapt_filename"
)
AUGREG_ROWS = [
    "B/16,i21k,0.001,medium1,0.1,0.0,0.0,0.47,0.46,0.46,imagenet2012,0.01,20000,224,0.84,0.84,86567656,138.5,"
    "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0,"
    "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224",
    "B/16,i21k,0.001,light1,0.03,0.1,0.1,0.45,0.44,0.44,imagenet2012,0.03,20000,224,0.83,0.83,86567656,138.5,"
    "B_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.1-sd_0.1,"
    "B_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.03-res_224",
    "B/16,i1k,0.003,medium2,0.1,0.0,0.0,0.78,0.77,0.77,oxford_iiit_pet,0.001,500,384,0.93,0.92,86567656,45.0,"
    "B_16-i1k-300ep-lr_0.003-aug_medium2-wd_0.1-do_0.0-sd_0.0,"
    "B_16-i1k-300ep-lr_0.003-aug_medium2-wd_0.1-do_0.0-sd_0.0--oxford_iiit_pet-steps_0k-lr_0.001-res_384",
    "S/32,i21k,0.003,none,0.1,0.1,0.1,0.40,0.39,0.39,imagenet2012,0.01,20000,224,0.73,0.73,22878952,2154.0,"
    "S_32-i21k-300ep-lr_0.003-aug_none-wd_0.1-do_0.1-sd_0.1,"
    "S_32-i21k-300ep-lr_0.003-aug_none-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224",
]


def test_get_augreg_df(tmp_path):
    (tmp_path / "index.csv").write_text("\n".join([AUGREG_COLUMNS, *AUGREG_ROWS]) + "\n")
    df = checkpoint.get_augreg_df(directory=str(tmp_path))
    assert list(df.columns) == AUGREG_COLUMNS.split(",") and len(df) == 4
    # The original trainer's choice for model_or_filename='B_16': best i21k upstream by final_val.
    sel = df.filename.apply(lambda filename: filename.split("-")[0] == "B_16")
    best = df.loc[sel].query('ds=="i21k"').sort_values("final_val").iloc[-1]
    assert best.filename == "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"
    assert best.final_val == pytest.approx(0.46)
    # The notebook's: the best i21k checkpoint of every model, then its ImageNet fine-tuning.
    best_names = set(df.query('ds=="i21k"').sort_values("final_val").groupby("name").tail(1).filename)
    best_df = df.loc[df.filename.apply(lambda f: f in best_names)]
    assert sorted(best_df.query('adapt_ds=="imagenet2012"').name) == ["B/16", "S/32"]
    assert int(df.query('name=="S/32"').params.iloc[0]) == 22878952
    with pytest.raises(errors.UserError, match="No AugReg index"):
        checkpoint.get_augreg_df(directory=str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- inference_time


def _read_scalars(path):
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    values = {}
    for raw in RawEventFileLoader(path).Load():
        event = Event.FromString(raw)
        for v in event.summary.value:
            values[v.tag] = (event.step, v.simple_value if v.HasField("simple_value") else None)
    return values


def test_inference_time_writes_events_into_workdir(tmp_path, caplog):
    config = inference_time_config.get_config()
    assert (config.model_name, config.steps, config.initial_steps, config.train) == (
        "ViT-B_32",
        30,
        10,
        "inference_time",
    )
    config.num_classes = 10
    config.image_size = 32
    config.batch = 8
    config.model_name = "testing"
    config.steps = 4
    config.initial_steps = 1
    workdir = str(tmp_path / "workdir")
    with caplog.at_level(logging.INFO, logger="vit_jax.inference_time"):
        stats = inference_time.inference_time(config, workdir)
    events = glob.glob(f"{workdir}/events.out.tfevents.*")
    assert len(events) == 1
    (times,) = [r.args[0] for r in caplog.records if r.msg == "times=%s"]
    assert len(times) == 4  # config.steps passes timed (the original timed initial_steps)
    per_core = 8 / jax.local_device_count() / np.asarray(times)
    assert stats["imgs_sec_core_mean"] == pytest.approx(per_core.mean())
    assert stats["imgs_sec_core_min"] <= stats["imgs_sec_core_mean"] <= stats["imgs_sec_core_max"]
    written = _read_scalars(events[0])
    assert set(written) == set(stats)
    for k, v in stats.items():
        assert written[k][0] == 0 and written[k][1] == pytest.approx(v, rel=1e-6)


def test_inference_time_names_every_unset_field(tmp_path):
    config = inference_time_config.get_config()
    config.image_size = 32
    with pytest.raises(errors.UserError, match=r"config\.batch, config\.num_classes"):
        inference_time.inference_time(config, str(tmp_path))
    config.batch, config.num_classes, config.model_name = 2, 3, "ViT-Nope"
    with pytest.raises(errors.UserError, match="Unknown model 'ViT-Nope'"):
        inference_time.inference_time(config, str(tmp_path))


# ----------------------------------------------------------------------------- make_update_fn


def check_update_fn(num_devices: int, accum_steps: int) -> None:
    """Two steps of train.make_update_fn on replicated inputs against an independent computation:
    per-device softmax cross-entropy gradients (dropout keyed by device, and by micro-batch when
    accumulating), averaged, then one optax update. Everything on the reference side is one jitted
    function (on this CPU every eager op is a compilation of its own)."""
    assert jax.local_device_count() == num_devices, jax.devices()
    n, per_device, num_classes = num_devices, 4, 5
    model = models.VisionTransformer(num_classes=num_classes, **model_configs.get_testing_config())
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))

    def ref_loss(p, images, labels, key):
        logits = model.apply({"params": p}, images, train=True, rngs={"dropout": key})
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=1))

    @jax.jit
    def ref_step(params, opt_state, images, labels, rng):
        size = per_device // accum_steps
        losses, grads = [], []
        for d in range(n):
            key = jax.random.fold_in(rng, d)
            for i in range(accum_steps):
                k = jax.random.fold_in(key, i) if accum_steps > 1 else key
                rows = slice(i * size, (i + 1) * size)
                loss, g = jax.value_and_grad(ref_loss)(params, images[d, rows], labels[d, rows], k)
                losses.append(loss)
                grads.append(g)
        mean_grad = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
        updates, opt_state = tx.update(mean_grad, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, sum(losses) / len(losses), jax.random.split(rng)[1]

    params = _random_params(model, 16)  # non-zero heads: every parameter gets a gradient
    opt_state = tx.init(params)
    update_fn = train.make_update_fn(apply_fn=model.apply, accum_steps=accum_steps, tx=tx)
    params_repl, opt_state_repl = flax.jax_utils.replicate((params, opt_state))
    rng_repl = flax.jax_utils.replicate(jax.random.PRNGKey(7))
    ref = (params, opt_state, jax.random.PRNGKey(7))

    data = np.random.default_rng(0)
    for _ in range(2):
        batch = {
            "image": data.uniform(-1, 1, (n, per_device, 16, 16, 3)).astype(np.float32),
            "label": np.eye(num_classes, dtype=np.float32)[data.integers(0, num_classes, (n, per_device))],
        }
        params_repl, opt_state_repl, loss_repl, rng_repl = update_fn(params_repl, opt_state_repl, batch, rng_repl)
        ref_params, ref_opt_state, ref_loss_value, ref_rng = ref_step(*ref[:2], batch["image"], batch["label"], ref[2])
        ref = (ref_params, ref_opt_state, ref_rng)

        got, want = jax.device_get((params_repl, opt_state_repl, loss_repl, rng_repl)), jax.device_get(ref)
        assert got[2].shape == (n,)
        np.testing.assert_allclose(got[2], np.full(n, ref_loss_value), rtol=2e-6)
        np.testing.assert_array_equal(got[3], np.stack([want[2]] * n))
        for g, w in zip(jax.tree.leaves(got[:2]), jax.tree.leaves(want[:2]), strict=True):
            g, w = np.asarray(g), np.asarray(w)
            assert g.shape == (n, *w.shape)
            for d in range(n):
                np.testing.assert_allclose(g[d], w, rtol=2e-5, atol=2e-6)


def test_make_update_fn_on_one_device():
    if jax.local_device_count() != 1:
        pytest.skip("this process has several devices; the two-device case runs in a subprocess")
    check_update_fn(1, accum_steps=1)  # the original's plain path; micro-batches on two devices below


def test_make_update_fn_on_two_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    code = (
        "import sys; sys.path.insert(0, 'tests'); import test_original_api as t; "
        "t.check_update_fn(2, accum_steps=2); print('two devices ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "two devices ok" in out.stdout, out.stderr[-3000:]


def test_make_update_fn_rejects_a_batch_that_accum_steps_does_not_divide():
    model = models.VisionTransformer(num_classes=3, **model_configs.get_testing_config())
    params = _random_params(model, 16)
    tx = optax.sgd(0.1)
    update_fn = train.make_update_fn(apply_fn=model.apply, accum_steps=3, tx=tx)
    n = jax.local_device_count()
    params_repl, opt_repl = flax.jax_utils.replicate((params, tx.init(params)))
    batch = {"image": np.zeros((n, 4, 16, 16, 3), np.float32), "label": np.zeros((n, 4, 3), np.float32)}
    with pytest.raises(ValueError, match="accum_steps=3 does not divide the batch of 4"):
        update_fn(params_repl, opt_repl, batch, flax.jax_utils.replicate(jax.random.PRNGKey(0)))
    assert math.isfinite(float(jax.tree.leaves(params_repl)[0].sum()))  # not donated: the step never ran
