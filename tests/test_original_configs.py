"""The original release's configs, field names and command lines: its config files give its values,
its fields are translated into ours (and take effect), unknown fields are refused wherever they
are set, and its README's command lines train on tiny stand-ins."""

import json
import os

import ml_collections
import numpy as np
import pytest
from conftest import ROOT, error_lines, read_metrics, run_main
from PIL import Image

from vit_jax import config as config_lib
from vit_jax import config_original
from vit_jax.configs import augreg, common, defaults, models


def image_folder(root, classes=("a", "b"), per_class=4, size=(20, 24), ext="jpg", seed=0):
    """root/{train,test}/<class>/<i>.jpg: random images whose class is the brighter half."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(per_class):
                image = rng.integers(0, 80, (*size, 3), dtype=np.uint8)
                image[: size[0] // 2] += np.uint8(150 * (c == 0))
                Image.fromarray(image).save(os.path.join(root, split, name, f"{i}.{ext}"))
    return str(root)


def original_config(dataset, pretrained_dir="", **fields):
    """The original's common config with its testing model, as its own train test builds it."""
    c = common.get_config()
    c.model = models.get_testing_config()
    c.dataset = dataset
    c.pp = ml_collections.ConfigDict({"crop": 32})
    c.pretrained_dir = pretrained_dir
    c.total_steps = 2
    c.batch = 8
    c.batch_eval = 8
    c.accum_steps = 2
    for k, v in fields.items():
        c[k] = v
    return c


# ----------------------------------------------------------------------------- the config files


def test_vit_config_file_has_the_original_values():
    c = config_lib.load_file(os.path.join(ROOT, "vit_jax/configs/vit.py") + ":b16,cifar10")
    assert (c.base_lr, c.total_steps, c.warmup_steps, c.decay_type, c.grad_norm_clip) == (
        0.01,
        10_000,
        500,
        "cosine",
        1,
    )
    assert (c.batch, c.batch_eval, c.accum_steps, c.optim_dtype, c.pretrained_dir) == (512, 512, 8, "bfloat16", ".")
    assert c.pp.to_dict() == {"train": "train[:98%]", "test": "test", "crop": 384}
    assert c.model.model_name == "ViT-B_16" and c.trainer == "train"
    s32 = config_lib.load_file("vit_jax/configs/vit.py:s32,cifar100")
    assert s32.base_lr == 0.03 and s32.model.model_name == "ViT-S_32"
    # Every registered model's function suffix works, hybrids and gap-norep variants included.
    for arg, name in [("r50_b16", "R50+ViT-B_16"), ("r_ti16", "R+ViT-Ti_16"), ("b32_gap_norep", "ViT-B_32-gap-norep")]:
        c = config_lib.load_file(f"vit_jax/configs/vit.py:{arg},imagenet2012")
        assert c.model.model_name == name
        assert (c.pp.train, c.pp.test, c.total_steps) == ("train[:99%]", "validation", 20_000)


def test_augreg_config_file_and_its_names():
    c = augreg.get_config("R_Ti_16")
    assert c.model.model_name == "R+ViT-Ti_16" and c.model.transformer.dropout_rate == 0
    assert (c.pretrained_dir, c.base_lr, c.total_steps, c.warmup_steps) == ("gs://vit_models/augreg", 0.03, 500, 100)
    assert c.pp.to_dict() == {"train": "train", "test": "test", "resize": 448, "crop": 384}
    name = "R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0"
    assert augreg.get_config(name).model.model_name == "R26+ViT-S_32"
    assert models.AUGREG_CONFIGS["L_16"].transformer.dropout_rate == 0.1  # the registry is untouched
    with pytest.raises(ValueError, match="Unknown AugReg model 'H_14'"):
        augreg.get_config("H_14")


def test_dataset_presets_and_with_dataset():
    base = common.get_config()
    c = common.with_dataset(base, "cifar100")
    assert c.dataset == "cifar100" and c.pp.train == "train[:98%]" and c.total_steps == 10_000
    assert base.dataset is None  # a copy
    c.base_lr = 0.5  # unlocked
    assert dict(common.flatten({"a": {"b": 1}, "c": 2})) == {"config.a.b": 1, "config.c": 2}


# ----------------------------------------------------------------------------- translation


def test_original_fields_translate_to_ours(tmp_path):
    c = config_lib.load_file("vit_jax/configs/vit.py:b16,cifar10")
    assert config_original.is_original(c)
    ours = config_lib.resolve(c, num_devices=1)
    assert (ours.lr.base, ours.lr.warmup_steps, ours.lr.decay, ours.lr.end) == (0.01, 500, "cosine", 0.0)
    assert (ours.grad_clip_norm, ours.optim.mu_dtype, ours.optim.name, ours.optim.momentum) == (
        1,
        "bfloat16",
        "sgd",
        0.9,
    )
    assert (ours.batch, ours.eval_batch, ours.accum_steps, ours.total_steps) == (512, 512, 8, 10_000)
    assert (ours.train_split, ours.test_split, ours.pp.crop) == ("train[:98%]", "test", 384)
    assert (ours.model_name, ours.pretrained_path, ours.pretrained_dir) == ("ViT-B_16", "./ViT-B_16.npz", None)
    assert (ours.eval_every, ours.progress_every, ours.checkpoint_every) == (100, 10, 1000)
    assert ours.flax_checkpoint and not config_original.is_original(ours)
    # accum_steps=0 is the original's "none"; a linear decay ends where the original's does.
    c.accum_steps, c.decay_type, c.checkpoint_every = 0, "linear", 0
    ours = config_lib.resolve(c, num_devices=1)
    assert (ours.accum_steps, ours.lr.decay, ours.lr.end, ours.checkpoint_every) == (1, "linear", 1e-5, 10_000)


def test_translation_says_what_it_did_and_refuses_other_families(caplog):
    c = config_lib.load_file("vit_jax/configs/vit.py:b16,cifar10")
    with caplog.at_level("INFO", logger="vit_jax"):
        config_lib.resolve(c, num_devices=1)
    text = caplog.text
    assert "base_lr -> lr.base" in text and "pp.train -> train_split" in text and "shuffle_buffer" in text
    mixer = ml_collections.ConfigDict(c.to_dict())
    mixer.model = ml_collections.ConfigDict({"model_name": "Mixer-B_16", "hidden_dim": 768})
    with pytest.raises(config_original.OriginalConfigError, match="Mixer and LiT are not"):
        config_lib.resolve(mixer)
    unset = common.get_config()
    unset.model = models.get_testing_config()
    unset.dataset = "cifar10"
    unset.pp = ml_collections.ConfigDict({"crop": 32})
    with pytest.raises(config_original.OriginalConfigError, match="config.total_steps is unset"):
        config_lib.resolve(unset)


def test_directory_dataset_reads_train_and_test_folders_whatever_pp_says(tmp_path):
    folder = image_folder(tmp_path / "flowers")
    c = original_config(folder)
    c.pp = ml_collections.ConfigDict({"train": "train[:90%]", "test": "train[90%:]", "crop": 32})
    ours = config_lib.resolve(c, num_devices=1)
    assert (ours.train_split, ours.test_split) == ("train", "test")


def test_augreg_model_name_picks_the_best_i21k_checkpoint(tmp_path):
    rows = [
        ("R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0", "i21k", 0.41),
        ("R_Ti_16-i21k-300ep-lr_0.001-aug_light0-wd_0.1-do_0.0-sd_0.0", "i21k", 0.43),
        ("R_Ti_16-i1k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0", "i1k", 0.75),
        ("S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0", "i21k", 0.50),
    ]
    with open(tmp_path / "index.csv", "w") as f:
        f.write("name,ds,final_val,filename,adapt_filename\n")
        for name, ds, val in rows:
            f.write(f"x,{ds},{val},{name},{name}--cifar100-steps_2k-lr_0.01-res_224\n")
    c = augreg.get_config("R_Ti_16")
    c.pretrained_dir = str(tmp_path)
    c.dataset = "cifar100"
    assert config_lib.resolve(c, num_devices=1).pretrained_path == str(tmp_path / f"{rows[1][0]}.npz")
    c = augreg.get_config(rows[0][0])
    c.pretrained_dir, c.dataset = str(tmp_path), "cifar100"
    assert config_lib.resolve(c, num_devices=1).pretrained_path == str(tmp_path / f"{rows[0][0]}.npz")
    c = augreg.get_config("B_16")
    c.pretrained_dir, c.dataset = str(tmp_path), "cifar100"
    with pytest.raises(config_original.OriginalConfigError, match="lists no i21k checkpoint"):
        config_lib.resolve(c)


# ----------------------------------------------------------------------------- unknown fields


@pytest.mark.parametrize(
    "field, expected",
    [
        ("lr.bse", "config.lr.bse is not a field of the run config (did you mean config.lr.base?)"),
        ("bacth", "did you mean config.batch?"),
        ("model.transformer.num_head", "did you mean config.model.transformer.num_heads?"),
        ("xyzzy", "config.xyzzy is not a field of the run config"),
    ],
)
def test_a_field_set_in_python_that_the_run_does_not_know_is_refused(field, expected):
    c = defaults.get_config()
    c.model_name = "testing"
    node = c
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = 1
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.resolve(c, num_devices=1)
    assert expected in str(e.value)


def test_an_original_name_set_on_our_config_takes_effect():
    c = defaults.get_config()
    c.model_name, c.pp.crop = "testing", 32
    c.base_lr = 0.5
    ours = config_lib.resolve(c, num_devices=1)
    assert ours.lr.base == 0.5 and not ours.flax_checkpoint


def test_unknown_overrides_on_the_command_line_name_the_field():
    r = run_main("--config", "configs/quickstart.py", "--config.base_lr=0.1")
    assert r.returncode == 2
    assert error_lines(r.stderr) == [
        "error: --config.base_lr is not a field of the run config (the original release's name for lr.base; "
        "use config.lr.base); fix the flag."
    ]
    r = run_main("--config", "vit_jax/configs/vit.py:b16,cifar10", "--config.base_lrr=0.1")
    assert r.returncode == 2
    assert error_lines(r.stderr) == [
        "error: --config.base_lrr is not a field of vit_jax/configs/vit.py (did you mean config.base_lr?); "
        "fix the flag."
    ]


# ----------------------------------------------------------------------------- runs


def write_testing_checkpoint(directory, name="testing"):
    from vit_jax import test_utils

    path = os.path.join(directory, f"{name}.npz")
    test_utils.create_checkpoint(models.get_testing_config(), path)
    return path


def test_original_readme_command_trains_with_its_overrides(tmp_path):
    """`python -m vit_jax.main --workdir=DIR --config=$(pwd)/vit_jax/configs/vit.py:MODEL,DATASET
    --config.pretrained_dir=...` with the original's override names, on an image folder."""
    folder = image_folder(tmp_path / "data")
    write_testing_checkpoint(tmp_path)
    workdir = tmp_path / "wd"
    args = [f"--workdir={workdir}", f"--config={ROOT}/vit_jax/configs/vit.py:testing,cifar10"]
    args += [f"--config.pretrained_dir={tmp_path}", f"--config.dataset={folder}", "--config.pp.crop=32"]
    args += ["--config.total_steps=4", "--config.warmup_steps=2", "--config.base_lr=0.2", "--config.decay_type=linear"]
    args += ["--config.batch=8", "--config.batch_eval=8", "--config.accum_steps=0", "--config.progress_every=1"]
    r = run_main(*args, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "translated: base_lr -> lr.base" in r.stdout
    # The original's schedule with base_lr=0.2: warm-up 2 steps, then linear to 1e-5 over the
    # remaining 2; the update of step s uses the rate at s - 1.
    expected = {1: 0.0, 2: 0.1, 3: 0.2, 4: 1e-5 + (0.2 - 1e-5) * 0.5}
    lrs = {m["step"]: m["lr"] for m in read_metrics(workdir) if m["kind"] == "train"}
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert os.path.exists(workdir / "checkpoint_4") and os.path.exists(workdir / "model.npz")
    saved = json.load(open(workdir / "config.json"))
    assert (saved["lr"]["base"], saved["pretrained_path"]) == (0.2, f"{tmp_path}/testing.npz")


def test_train_and_evaluate_with_an_original_config_leaves_its_checkpoint(tmp_path, monkeypatch):
    """The original's own train test: its common config and testing model, a pretrained file in
    pretrained_dir, a directory dataset; `checkpoint_1` in the workdir; a relative workdir."""
    import flax.training.checkpoints as flax_checkpoints
    import optax

    from vit_jax import checkpoint, train

    folder = image_folder(tmp_path / "dataset")
    write_testing_checkpoint(tmp_path)
    c = original_config(folder, str(tmp_path), total_steps=1)
    monkeypatch.chdir(tmp_path)
    params = train.train_and_evaluate(c, "./workdirs/run")
    workdir = tmp_path / "workdirs" / "run"
    assert os.path.exists(workdir / "checkpoint_1")
    assert set(params) >= {"embedding", "Transformer", "head", "cls"} and params["head"]["kernel"].shape == (10, 2)
    # The file is what the original's restore reads, into the original's (params, opt_state, step).
    lr_fn = lambda step: 0.1  # noqa: E731  (a schedule, as the original's)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(lr_fn, momentum=0.9, accumulator_dtype="bfloat16"))
    target = (params, tx.init(params), 0)
    restored, opt_state, step = flax_checkpoints.restore_checkpoint(str(workdir), target)
    assert step == 1
    np.testing.assert_array_equal(restored["head"]["kernel"], params["head"]["kernel"])
    assert opt_state[1][0].trace["head"]["kernel"].dtype == np.dtype("bfloat16")
    np.testing.assert_array_equal(checkpoint.load(str(workdir / "model.npz"))["head"]["bias"], params["head"]["bias"])
