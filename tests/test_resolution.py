"""experiments/resolution.py: its quick mode on digits, and what each fine-tune starts from.

The quick runs are real training runs, cut short; what is checked is that the arms are the
experiment they claim to be (the starting weights, the compute match, the test-resolution
curve), not their accuracies, which the committed full results record.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT

from vit_jax import checkpoint, train, train_state
from vit_jax import config as config_lib
from vit_jax.checkpoint import flatten

POSEMB = "Transformer/posembed_input/pos_embedding"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("resolution")
    cmd = [sys.executable, "-m", "experiments.resolution", "--dataset", "digits", "--quick", "--root", str(root)]
    cmd += ["--set", "model.transformer.num_layers=1", "--set", "checkpoint_every=50"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = root / "resolution-quick"
    with open(out / "results.json") as f:
        data = json.load(f)
    return data, (out / "README.md").read_text(), out


def start_params(workdir, scratch):
    """The parameters the run of `workdir` started from: its own config, through the code a run
    uses at step 0, in an empty workdir (so nothing resumes)."""
    config = config_lib.read(os.path.join(workdir, "config.json"))
    prog = train.build(config, 10, steps=config.total_steps)
    train_state.prepare_workdir(str(scratch))
    state = train.restore_or_initialise(config, prog, train_state.Workdir(str(scratch)))
    fresh = prog.init_state(jax.random.PRNGKey(config.seed))["params"]
    return config, flatten(jax.device_get(state["params"])), flatten(jax.device_get(fresh))


def test_quick_mode_arms_and_compute(quick):
    data, readme, out = quick
    arms = {r["arm"]: r for r in data["runs"]}
    assert sorted(arms) == ["a", "b", "c", "d"] and all(r["count"] == 359 for r in arms.values())
    flops = {int(k): v for k, v in data["flops"].items()}
    steps = {a: data["arms"][a]["steps"] for a in "abcd"}
    assert steps["a"] == 150 and steps["b"] == steps["c"] == 50
    # (d): as many 8 px steps as the FLOPs of 150 steps at 6 px and 50 at 8 px buy.
    expected = (150 * flops[6]["train"] + 50 * flops[8]["train"]) / flops[8]["train"]
    assert abs(steps["d"] - expected) <= 0.5 and flops[6]["train"] < flops[8]["train"]
    assert data["arms"]["b"]["flops"] == pytest.approx(data["arms"]["d"]["flops"], rel=0.01)
    # (e) at the training resolution is (a)'s own evaluation: the same weights, the same images.
    assert data["curve"]["6"]["mean"] == arms["a"]["accuracy"]
    assert sorted(int(k) for k in data["curve"]) == [4, 6, 8, 10, 12]
    assert "| (b) |" in readme and "(b) minus (d)" in readme and "| 10 px | 5x5 |" in readme
    assert (out / "resolution.png").stat().st_size > 0


def test_fine_tunes_start_from_the_low_resolution_model(quick, tmp_path):
    data, _, _ = quick
    arms = {r["arm"]: r for r in data["runs"]}
    low = flatten(checkpoint.load(os.path.join(arms["a"]["workdir"], "model.npz")))
    for arm in "bc":
        config, start, fresh = start_params(arms[arm]["workdir"], tmp_path / arm)
        assert config.pretrained_path == os.path.join(arms["a"]["workdir"], "model.npz") and config.pp.crop == 8
        assert start.keys() == low.keys()
        for key in low:  # every parameter, the head included, is (a)'s but the position embedding
            if key != POSEMB:
                np.testing.assert_array_equal(start[key], low[key], err_msg=f"({arm}) {key}")
        old, new = low[POSEMB], start[POSEMB]
        assert old.shape == (1, 1 + 3 * 3, 64) and new.shape == (1, 1 + 4 * 4, 64)
        if arm == "b":  # interpolated: the class row kept, the grid's corners where they were
            old_grid, new_grid = old[0, 1:].reshape(3, 3, -1), new[0, 1:].reshape(4, 4, -1)
            np.testing.assert_array_equal(new[0, 0], old[0, 0])
            for i, j in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
                np.testing.assert_allclose(new_grid[i, j], old_grid[i, j], rtol=1e-5, atol=1e-6)
            assert not np.allclose(new, fresh[POSEMB])
        else:  # re-initialised: the fresh model's, nothing of (a)'s
            np.testing.assert_array_equal(new, fresh[POSEMB])
            assert not np.allclose(new[0, 0], old[0, 0])
