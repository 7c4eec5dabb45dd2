"""AugReg's ingredients in a run: the padded crop against numpy, the config checks, and exact
resume with every augmentation and regularisation option on at once."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import error_lines, resume_without_newest, run_main, tiny_run_config

from vit_jax import checkpoint, preprocess, train, train_state
from vit_jax import config as config_lib

EVERYTHING = {
    "pp.pad": 1,
    "pp.randaug.num_layers": 2,
    "pp.randaug.magnitude": 9.0,
    "pp.erase_prob": 0.5,
    "mixup.alpha": 0.4,
    "mixup.cutmix_alpha": 1.0,
    "label_smoothing": 0.1,
    "accum_steps": 2,
    "ema_decay": 0.9,
    "ema_warmup": True,
    "optim.layer_decay": 0.8,
    "optim.wd_convention": "augreg",
    "optim.weight_decay": 0.1,
    "model.patch_drop_rate": 0.25,
    "full_token_steps": 5,
    "full_token_lr": 5e-3,
    "full_token_accum_steps": 1,
    "tta.flip": True,
    "tta.shift": 1,
    "total_steps": 20,
}


def test_pad_then_crop_is_a_window_of_the_zero_padded_image():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (16, 6, 5, 1)).astype(np.uint8)
    pp = {"crop": (6, 5), "area_min": 1.0, "flip": False, "channels": 1, "pad": 2}
    out = np.asarray(jax.jit(lambda x, k: preprocess.preprocess_train(x, k, pp))(images, jax.random.PRNGKey(3)))
    padded = np.pad(images.astype(np.float32), ((0, 0), (2, 2), (2, 2), (0, 0))) / 127.5 - 1
    offsets = set()
    for i in range(16):
        found = [
            (top, left)
            for top in range(5)
            for left in range(5)
            if np.allclose(out[i], padded[i, top : top + 6, left : left + 5], rtol=0, atol=1e-6)
        ]
        assert len(found) == 1, i  # every image is exactly one window (its pixels are nonzero)
        offsets.add(found[0])
    assert len(offsets) > 3  # the windows are drawn, not fixed


def _program(**overrides):
    config = config_lib.resolve(tiny_run_config(**{"lr.warmup_steps": 0, **overrides}))
    return config, train.build(config, 10, 10)


def _trace(prog):
    """The train step's jaxpr, as text, on the tiny config's shapes (traced, not compiled)."""
    state = jax.eval_shape(prog.init_state, jax.random.PRNGKey(0))
    batch = {"image": jax.ShapeDtypeStruct((32, 8, 8, 1), jnp.uint8), "label": jax.ShapeDtypeStruct((32,), jnp.int32)}
    return str(jax.make_jaxpr(prog.train_step)(state, batch, jax.random.PRNGKey(1)))


def test_options_off_trace_the_program_of_a_config_without_them():
    off = {"pp.pad": 0, "pp.randaug.num_layers": 0, "pp.erase_prob": 0.0, "mixup.alpha": 0.0, "ema_decay": 0.0}
    off.update({"optim.layer_decay": 1.0, "optim.wd_convention": "optax"})
    plain = _trace(_program()[1])
    assert _trace(_program(**off)[1]) == plain
    # Mixup and CutMix reach the step: its Beta draw (a gamma sampler) appears only with them.
    assert "random_gamma" not in plain
    assert "random_gamma" in _trace(_program(**{"mixup.alpha": 0.4})[1])
    assert "random_gamma" in _trace(_program(**{"mixup.cutmix_alpha": 1.0})[1])


def test_each_option_reaches_what_it_changes():
    """Each augmentation changes the preprocessed batch of the config's own pp fields; layer
    decay and AugReg's weight decay change the optimizer's update of the same gradients."""
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1)).astype(np.uint8)
    key = jax.random.PRNGKey(5)

    def preprocessed(**overrides):
        pp = preprocess.pp_dict(config_lib.resolve(tiny_run_config(**overrides)))
        return np.asarray(jax.jit(lambda x, k: preprocess.preprocess_train(x, k, pp))(images, key))

    plain = preprocessed()
    for field, value in [("pp.pad", 1), ("pp.randaug.num_layers", 1), ("pp.erase_prob", 1.0)]:
        assert not np.array_equal(preprocessed(**{field: value}), plain), field

    _, prog = _program(**{"optim.weight_decay": 0.1})
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), jax.eval_shape(prog.init_state, key)["params"])
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)

    def update(tx):
        return checkpoint.flatten(jax.device_get(tx.update(grads, tx.init(params), params)[0]))

    base = update(prog.tx)
    layered = update(_program(**{"optim.weight_decay": 0.1, "optim.layer_decay": 0.5})[1].tx)
    np.testing.assert_allclose(layered["cls"], 0.25 * base["cls"], rtol=1e-6)  # 1 block: embeddings 0.5**2
    np.testing.assert_array_equal(layered["head/kernel"], base["head/kernel"])
    augreg = update(_program(**{"optim.weight_decay": 0.1, "optim.wd_convention": "augreg"})[1].tx)
    assert not np.array_equal(augreg["cls"], base["cls"])  # cls is decayed by "optax" only
    np.testing.assert_allclose(augreg["head/kernel"], base["head/kernel"], rtol=1e-5)


def test_every_option_on_resumes_bitwise_and_exports_the_average(tmp_path):
    config = tiny_run_config(**EVERYTHING)
    full = str(tmp_path / "full")
    result = train.train_and_evaluate(config, full)
    assert np.isfinite(result["loss"])
    exported = checkpoint.load(os.path.join(full, "model.npz"))
    # model.npz is the moving average, which the checkpoints hold beside the parameters.
    average, step = train_state.latest_params(full)
    assert step == 20
    jax.tree.map(np.testing.assert_array_equal, exported, average)
    resumed = resume_without_newest(config, full, tmp_path / "resumed", 20)
    jax.tree.map(np.testing.assert_array_equal, resumed, exported)


def test_full_token_steps_train_on_every_patch(tmp_path):
    """Patch dropout ended for all 6 steps, with the full-token steps' own rate and micro-batches,
    is the run without patch dropout at that rate (no warm-up, cosine to 0) and with those
    micro-batches, bit for bit. Ended for the last 3 steps (on the run's schedule) it is neither
    the plain run nor the run that drops patches throughout."""
    drop = {"model.patch_drop_rate": 0.5}
    runs = {}
    for name, overrides in {
        "plain": {},
        "tail_full": {**drop, "full_token_steps": 3},
        "dropping": drop,
        "plain_own": {"lr.base": 3e-3, "lr.warmup_steps": 0, "accum_steps": 2},
        "all_full_own": {**drop, "full_token_steps": 6, "full_token_lr": 3e-3, "full_token_accum_steps": 2},
    }.items():
        config = tiny_run_config(total_steps=6, eval_every=6, checkpoint_every=6, progress_every=6, **overrides)
        train.train_and_evaluate(config, str(tmp_path / name))
        runs[name] = checkpoint.load(str(tmp_path / name / "model.npz"))
    jax.tree.map(np.testing.assert_array_equal, runs["all_full_own"], runs["plain_own"])
    for other in ("plain", "dropping"):
        assert not np.array_equal(runs["tail_full"]["head"]["kernel"], runs[other]["head"]["kernel"])
    assert not np.array_equal(runs["plain_own"]["head"]["kernel"], runs["plain"]["head"]["kernel"])


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("mixup.alpha", -1.0, "config.mixup.alpha=-1.0: use 0 (off) or a positive alpha"),
        ("mixup.prob", 2.0, "config.mixup.prob=2.0: use a probability"),
        ("optim.layer_decay", 0.0, "config.optim.layer_decay=0.0: use a rate in (0, 1]"),
        ("optim.wd_convention", "timm", "config.optim.wd_convention='timm': choose one of optax, augreg"),
        ("ema_decay", 1.0, "config.ema_decay=1.0: use 0 (off) or a rate below 1"),
        ("pp.randaug.num_layers", -1, "config.pp.randaug.num_layers=-1: use 0 (off) or more"),
        ("pp.pad", -2, "config.pp.pad=-2: use 0 or more pixels"),
        ("tta.shift", -1, "config.tta.shift=-1: use 0 (no translations) or more pixels"),
        ("model.patch_drop_rate", 1.0, "config.model.patch_drop_rate=1.0: use a rate from 0 up to"),
        ("full_token_steps", 100, "config.full_token_steps=100: use 0, or set config.model.patch_drop_rate"),
        ("full_token_lr", 1e-3, "config.full_token_lr=0.001: use 0 (the run's schedule), or a positive rate with"),
        ("full_token_accum_steps", 2, "config.full_token_accum_steps=2: use 0 (config.accum_steps), or 1 or more"),
    ],
)
def test_bad_values_name_the_field_and_the_fix(field, value, expected):
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.resolve(tiny_run_config(**{field: value}))
    assert str(e.value).startswith(expected)


def test_full_token_micro_batches_must_divide_the_batch():
    c = tiny_run_config(**{"model.patch_drop_rate": 0.5, "full_token_steps": 2, "full_token_accum_steps": 3})
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.resolve(c, num_devices=2)
    assert str(e.value) == (
        "config.batch=32 is not divisible by the device count (2) times config.full_token_accum_steps (3); "
        "use a count that divides 16."
    )
    c.full_token_accum_steps = 4
    config_lib.resolve(c, num_devices=2)


def test_a_bad_value_on_the_command_line_is_one_line_and_starts_nothing(tmp_path):
    out = run_main("--config", "configs/quickstart.py", "--config.pp.erase_prob=1.5", "--workdir", str(tmp_path / "w"))
    assert out.returncode != 0
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and "config.pp.erase_prob=1.5: use a probability from 0 to 1" in lines[0], out.stderr
    assert not os.path.exists(tmp_path / "w" / "checkpoints")
