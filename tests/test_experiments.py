"""The ablation driver (experiments/sweep.py) and every experiment's quick mode on digits.

The quick runs are real training runs (`python -m vit_jax.main` subprocesses) cut to a
few steps: what is checked is the plumbing (grid, skip on re-run, summaries, files),
not the accuracies, which the committed full results record.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from experiments import sweep as sw
from vit_jax import config as config_lib
from vit_jax import input_pipeline
from vit_jax.configs import defaults

# ----------------------------------------------------------------------------- pieces


def test_balanced_subset_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
    for n in range(1, len(labels) + 1):
        idx = input_pipeline.balanced_subset(labels, n, seed=3)
        assert len(idx) == n and len(set(idx)) == n and list(idx) == sorted(idx)
        counts = np.bincount(labels[idx], minlength=3)
        # Round-robin over classes: the counts stay within one of each other until class 1
        # (two examples) runs out, after which the other two share the rest.
        expected = {3: [1, 1, 1], 6: [2, 2, 2], 8: [3, 2, 3], 12: [4, 2, 6]}
        if n in expected:
            assert counts.tolist() == expected[n]
    small = set(input_pipeline.balanced_subset(labels, 5, seed=3))
    assert small <= set(input_pipeline.balanced_subset(labels, 9, seed=3))  # nested
    assert set(input_pipeline.balanced_subset(labels, 12, seed=3)) == set(range(12))


def test_train_examples_cuts_only_the_training_split():
    c = defaults.get_config()
    c.dataset = "digits"
    c.train_examples = 100
    train_src = input_pipeline.get_source(c, "train")
    assert len(train_src) == 100
    assert np.bincount(train_src.labels, minlength=10).tolist() == [10] * 10
    assert len(input_pipeline.get_source(c, "test")) == 359
    c.train_examples = 5000
    with pytest.raises(input_pipeline.DataError, match="has 1438 examples"):
        input_pipeline.get_source(c, "train")


def test_hybrid_fields_in_the_config():
    c = defaults.get_config()
    defaults.small_vit(c, hidden=32, mlp=64, heads=4, layers=2, patch=2)
    assert "resnet" not in config_lib.model_kwargs(c)  # unset: a pure ViT, as before
    c.model.resnet.num_layers = ()
    c.model.patches.size = (1, 1)
    assert config_lib.model_kwargs(c)["resnet"] == {"num_layers": (), "width_factor": 1}


def test_values_keys_and_statistics():
    assert sw.format_value((1, 1)) == "(1,1,)" and sw.format_value(()) == "()" and sw.format_value(3e-4) == "0.0003"
    assert sw.format_value(("Transformer/posembed_input",)) == "('Transformer/posembed_input',)"
    assert sw.cell_key({"model.classifier": "gap", "lr.base": 0.001}) == "model.classifier=gap,lr.base=0.001"
    mean, std = sw.mean_std([0.80, 0.90, 0.85])
    assert mean == pytest.approx(0.85) and std == pytest.approx(0.05)  # sqrt((0.0025 + 0.0025 + 0) / 2)
    assert math.isnan(sw.mean_std([0.7])[1])
    assert sw.pct({"mean": 0.85, "std": 0.05, "n": 3}) == "85.00 ± 5.00 (3)"
    argv = ["--dataset", "d", "--jobs", "2", "--max_runs=3", "--report_only", "--set", "a=1"]
    assert sw.command_line("experiments.x", argv) == "python -m experiments.x --dataset d --set a=1"


def test_sweep_layout_and_records(tmp_path):
    cfg, cells = "configs/ablation.py:digits", [{"lr.base": 0.1}, {"lr.base": 0.2}]
    a = sw.Sweep("x", cfg, cells, [0, 1], {"dataset": "digits"}, str(tmp_path))
    b = sw.Sweep("x", cfg, cells, [0, 1], {"dataset": "digits", "total_steps": 9}, str(tmp_path))
    assert a.directory != b.directory  # another setting never resumes this one's checkpoints
    runs = a.runs()
    assert [(r.cell, r.seed) for r in runs] == [
        ("lr.base=0.1", 0),
        ("lr.base=0.2", 0),
        ("lr.base=0.1", 1),
        ("lr.base=0.2", 1),
    ]
    assert runs[0].args(a.config, list(a.common.items()))[-3:] == [
        "--config.dataset=digits",
        "--config.lr.base=0.1",
        "--config.seed=0",
    ]
    assert sw.read_record(runs[0], a) is None
    os.makedirs(runs[0].workdir)
    with open(os.path.join(runs[0].workdir, sw.RECORD), "w") as f:
        json.dump({"setting": a.setting, "overrides": {"lr.base": "0.2"}, "seed": 0}, f)
    with pytest.raises(sw.SweepError, match="records a different run"):
        sw.read_record(runs[0], a)
    with open(os.path.join(runs[0].workdir, sw.RECORD), "w") as f:
        f.write('{"setting": ')  # cut short by a kill: run again
    assert sw.read_record(runs[0], a) is None


def test_augreg_arms_table_and_gains(tmp_path):
    from experiments import augreg

    # Every arm sets the same fields, each one the config has, with a value of the config's type.
    recipe = config_lib.load_file(os.path.join(ROOT, augreg.DEFAULTS["config"]))
    for arm in augreg.ARMS.values():
        assert set(arm) == set(augreg.ARMS["none"])
        for field, value in arm.items():
            node = recipe
            for part in field.split("."):
                node = node[part]
            assert type(node) is type(value), field
    on = {
        name: (a["pp.randaug.num_layers"] > 0, a["mixup.alpha"] > 0, a["ema_decay"] > 0)
        for name, a in augreg.ARMS.items()
    }
    assert on == {
        "none": (False, False, False),
        "+RandAugment": (True, False, False),
        "+Mixup": (False, True, False),
        "+both": (True, True, False),
        "+EMA": (True, True, True),
    }
    # Records as the sweep reads them back (override values as strings), two seeds per arm.
    acc = {"none": (0.40, 0.42), "+RandAugment": (0.45, 0.44), "+Mixup": (0.41, 0.45), "+both": (0.47, 0.48)}
    acc["+EMA"] = (0.50, 0.47)
    records = [
        {
            "cell": sw.cell_key(augreg.ARMS[name]),
            "overrides": {k: str(v) for k, v in augreg.ARMS[name].items()},
            "seed": seed,
            "accuracy": a,
        }
        for name, pair in acc.items()
        for seed, a in enumerate(pair)
    ]
    table = augreg.report(records, str(tmp_path)).table
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "| 2, 10 | — | — | 44.50 ± 0.71 (2) | +3.50 over none |" in rows["+RandAugment"]  # (5 + 2) / 2
    assert "+2.00 over none" in rows["+Mixup"]  # (1 + 3) / 2
    assert "+1.00 over +both" in rows["+EMA"]  # (3 - 1) / 2
    assert rows["none"].endswith("| 41.00 ± 1.41 (2) | — |")
    assert (tmp_path / "augreg.png").exists()
    with pytest.raises(ValueError, match="none of the arms"):
        augreg.arm_of({"pp.randaug.num_layers": "0", "mixup.alpha": "0", "ema_decay": "0.9", "ema_warmup": "True"})


# ----------------------------------------------------------------------------- quick mode


def experiment(name, tmp_path, *args, layers=1):
    """The experiment's quick mode on digits, its runs cut to 20 steps of a `layers`-block model
    (the quick grid's 4 blocks compile for longer and test nothing more in the sweep)."""
    cmd = [sys.executable, "-m", f"experiments.{name}", "--dataset", "digits", "--quick", "--root", str(tmp_path)]
    cmd += ["--set", "total_steps=20", "--set", "checkpoint_every=10"]
    cmd += ["--set", f"model.transformer.num_layers={layers}", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def results(tmp_path, name):
    out = tmp_path / f"{name}-quick"
    with open(out / "results.json") as f:
        data = json.load(f)
    readme = (out / "README.md").read_text()
    return data, readme, out


def test_cls_vs_gap_quick_resumes_over_sittings_then_attention_distance(tmp_path):
    first = experiment("cls_vs_gap", tmp_path, "--max_runs", "2", layers=2)  # a first sitting: 2 of the 4 runs
    assert first.returncode == 0, first.stdout + first.stderr
    data, readme, _ = results(tmp_path, "cls_vs_gap")
    assert len(data["runs"]) == 2 and "Runs finished: 2 of 4" in readme

    second = experiment("cls_vs_gap", tmp_path, "--fewshot", layers=2)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 of 4 runs already finished, skipped" in second.stdout
    data, readme, out = results(tmp_path, "cls_vs_gap")
    assert len(data["runs"]) == 4 and "Runs finished: 4 of 4" in readme
    assert {(r["overrides"]["model.classifier"], r["overrides"]["lr.base"]) for r in data["runs"]} == {
        ("token", "0.001"),
        ("token", "0.003"),
        ("gap", "0.001"),
        ("gap", "0.003"),
    }
    for r in data["runs"]:
        assert r["count"] == 359 and 0.0 <= r["accuracy"] <= 1.0  # every test digit, once
        assert os.path.exists(os.path.join(r["workdir"], "model.npz"))
        with open(os.path.join(r["workdir"], "config.json")) as f:
            resolved = json.load(f)
        assert resolved["total_steps"] == 20 and resolved["model"]["classifier"] == r["overrides"]["model.classifier"]
    assert "| token |" in readme and "| gap |" in readme and (out / "accuracy_vs_lr.png").stat().st_size > 0
    # --fewshot: the paper's measure for the same runs, per head, measure and learning rate.
    assert "| head | measure | lr 0.001 | lr 0.003 |" in readme
    assert "| token | 5-shot linear |" in readme and "| gap | 10-shot linear |" in readme
    assert all(set(r["fewshot"]) == {"own/5", "own/10"} for r in data["runs"])

    third = experiment("cls_vs_gap", tmp_path, layers=2)
    assert "4 of 4 runs already finished" in third.stdout and third.returncode == 0

    attn = experiment("attention_distance", tmp_path, "--num_images", "32", layers=2)
    assert attn.returncode == 0, attn.stdout + attn.stderr
    data, readme, out = results(tmp_path, "attention_distance")
    for head in ("token", "gap"):
        d = np.asarray(data["models"][head]["distances"])
        assert d.shape == (1, 2, 4)  # seeds, blocks, heads
        # Between the nearest possible (0, only itself) and the farthest pair on the 4x4 grid
        # of 2-pixel tokens (corner to corner: 2 * sqrt(18) px).
        assert (d > 0).all() and (d < 2 * math.sqrt(18)).all()
        assert data["models"][head]["uniform"] == pytest.approx(4.0166, abs=1e-3)
    assert (out / "attention_distance.png").stat().st_size > 0


def test_attention_distance_needs_the_cls_vs_gap_runs(tmp_path):
    proc = experiment("attention_distance", tmp_path)
    assert proc.returncode == 2
    assert "No finished cls_vs_gap run" in proc.stderr and "python -m experiments.cls_vs_gap" in proc.stderr


def test_posemb_quick(tmp_path):
    proc = experiment("posemb", tmp_path, "--fewshot", "--transfer", "digits")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data, readme, out = results(tmp_path, "posemb")
    assert sorted(r["overrides"]["model.posemb"] for r in data["runs"]) == ["learn", "none", "relative"]
    assert "| none | `none` |" in readme and "61.4" in readme and (out / "posemb.png").stat().st_size > 0
    # The paper's measure beside the fine-tuned accuracy: 5- and 10-shot linear, own and transfer.
    assert "| fine-tuned | 5-shot linear | 10-shot linear | 5-shot linear, transfer |" in readme
    for r in data["runs"]:
        assert set(r["fewshot"]) == {"own/5", "own/10", "transfer/5", "transfer/10"}
        assert r["fewshot"]["own/5"] == r["fewshot"]["transfer/5"]  # the same dataset twice
        assert 0.1 < r["fewshot"]["own/10"] <= 1
        with open(os.path.join(r["workdir"], "fewshot.json")) as f:  # cached for the next report
            assert json.load(f)["values"] == r["fewshot"]


def test_data_size_quick_and_a_failing_run(tmp_path):
    proc = experiment("data_size", tmp_path, "--sizes", "100,5000")  # digits has 1,438: 5000 fails
    assert proc.returncode == 1
    assert "2 runs failed" in proc.stderr and "train_examples=5000" in proc.stderr
    assert "has 1438 examples" in proc.stdout  # the run's own message, from its log
    data, readme, out = results(tmp_path, "data_size")
    assert sorted((sw_model(r), r["overrides"]["train_examples"]) for r in data["runs"]) == [
        ("ViT", "100"),
        ("hybrid", "100"),
    ]
    assert "Runs finished: 2 of 4" in readme and (out / "accuracy_vs_data.png").stat().st_size > 0
    hybrid = [r for r in data["runs"] if sw_model(r) == "hybrid"][0]
    with open(os.path.join(hybrid["workdir"], "run.json")) as f:
        assert json.load(f)["model"]["resnet"] == {"num_layers": [], "width_factor": 0.5}


def sw_model(record):
    return "hybrid" if "model.resnet.num_layers" in record["overrides"] else "ViT"


def test_memory_fit_and_largest_batch_by_hand():
    from experiments import memory

    fixed, per_image = memory.fit([(32, 100 * 2**20), (64, 164 * 2**20)])
    assert (fixed, per_image) == (36 * 2**20, 2 * 2**20)  # 100 = 36 + 2 x 32, 164 = 36 + 2 x 64
    assert memory.largest_batch(fixed, per_image, 1) == (1024 - 36) // 2
    assert memory.largest_batch(2 * memory.GIB, per_image, 1) == 0  # the state alone does not fit
    rows = [
        dict(model="m", params=2**20, layout="replicate", fixed=1.5 * memory.GIB, per_image=2**28, compile_s=1.0),
        dict(model="m", params=2**20, layout="fsdp", fixed=0.5 * memory.GIB, per_image=2**28, compile_s=1.0),
    ]
    text = memory.report(rows, 8, "python -m experiments.memory")
    # 16 GiB devices, replicated: (16 - 1.5) GiB / 0.25 GiB = 58 images; fsdp: (16 - 0.5) / 0.25 = 62.
    assert "| TPU v3-8 or v5e-8 host: 8 x 16 GiB | 58 / 62 |" in text
    # 4 devices instead of 8: the split state (16 bytes x 2**20 parameters) doubles per device.
    fixed4 = 0.5 * memory.GIB + 16 * 2**20 / 4 - 16 * 2**20 / 8
    assert f"| TPU v4 host: 4 chips x 32 GiB | 122 / {int((32 * memory.GIB - fixed4) // 2**28)} |" in text


def test_recipe_seeds_table_and_verdict():
    from experiments import recipe_seeds

    assert recipe_seeds.recipe_name("configs/fashion_mnist_patchdrop.py") == "fashion_mnist_patchdrop"
    assert recipe_seeds.recipe_name("configs/vit.py:b16,cifar10") == "vit"
    runs = [{"seed": 1, "accuracy": 0.9246, "seconds": 1083.0}, {"seed": 0, "accuracy": 0.9262, "seconds": 1072.4}]
    runs.append({"seed": 2, "accuracy": 0.9235, "seconds": 1038.0})
    table = recipe_seeds.report(runs, target=0.925, minutes=20).table
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[1:4] == ["| 0 | 92.62% | 17 min 52 s |", "| 1 | 92.46% | 18 min 3 s |", "| 2 | 92.35% | 17 min 18 s |"]
    # Mean 92.477; sample standard deviation sqrt(((.143)^2 + (.017)^2 + (.127)^2) / 2) = 0.136.
    assert "| **mean** | **92.48% ± 0.14** (3) | slowest 18 min 3 s |" in table
    assert "Target: mean misses 92.50%; every run within 20 min." in table
    slow = recipe_seeds.report(runs[:1], target=0.92, minutes=18).table
    assert "**92.46%** (1)" in slow and "mean meets 92.00%; a run over 18 min" in slow
