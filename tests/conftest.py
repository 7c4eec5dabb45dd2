"""Shared test helpers: tiny model and run configs, random parameters, the command line, the
real datasets in shared/data. Test modules import from here, never from each other."""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One XLA compilation cache for the session, shared by this process, the training runs the
# tests start as subprocesses and, under xdist, both workers (the controller loads this file
# first and the workers inherit its environment): the many runs of the same tiny models
# compile once. A cached program is the same executable, so results are bitwise those of a
# fresh compile.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="vit_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("VIT_JAX_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


# Seconds each test file takes, summed over its tests (`python -m pytest -q --durations=0`,
# 2026-12-03). Under `--dist loadfile --no-loadscope-reorder` the workers take files in
# collection order, so the longest go first and the short ones fill in at the end
# (longest-processing-time-first scheduling); a file not listed goes last.
FILE_SECONDS = {
    "test_multiprocess.py": 204,
    "test_models.py": 159,
    "test_experiments.py": 158,
    "test_faults.py": 94,
    "test_models_layers.py": 94,
    "test_train.py": 80,
    "test_benchmark.py": 77,
    "test_checkpoint.py": 74,
    "test_original_notebooks.py": 67,
    "test_original_api.py": 42,
    "test_augreg.py": 40,
    "test_pretrained.py": 26,
    "test_original_configs.py": 25,
    "test_augment.py": 25,
    "test_analysis.py": 22,
    "test_original_data.py": 19,
    "test_optimizer.py": 15,
    "test_fewshot.py": 12,
    "test_evaluators.py": 10,
    "test_data.py": 9,
    "test_tfds.py": 8,
    "test_streaming.py": 18,
    "test_preview.py": 12,
    "test_families.py": 20,
    "test_weights_families.py": 75,
    "test_install.py": 18,
}


def pytest_collection_modifyitems(items):
    # A stable sort: the tests of each file keep their order.
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))


def tiny_config(**overrides):
    """A 2-block ViT small enough to run in milliseconds (4x4 patches)."""
    config = dict(
        model_name="tiny",
        patches={"size": (4, 4)},
        hidden_size=32,
        transformer=dict(mlp_dim=48, num_heads=4, num_layers=2, dropout_rate=0.0, attention_dropout_rate=0.0),
        classifier="token",
        representation_size=None,
    )
    config.update(overrides)
    return config


def hybrid_config(**overrides):
    """A tiny hybrid: ResNet root + 2 stages (stride 8), 1x1 patches."""
    return tiny_config(patches={"size": (1, 1)}, resnet=dict(num_layers=(1, 1), width_factor=0.5), **overrides)


def perturb(params, seed=0, scale=0.05):
    """Adds noise to every parameter (zero-initialised heads would hide mistakes)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: np.asarray(a) + rng.normal(0, scale, a.shape).astype(np.asarray(a).dtype), params)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture
def images():
    return np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)


def tiny_run_config(**overrides) -> ml_collections.ConfigDict:
    """Digits, a 1-block ViT of width 16: a few seconds per run. Overrides are dotted field names."""
    from vit_jax.configs import defaults

    c = defaults.get_config()
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
    """The records of a run's metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def resume_without_newest(config, workdir, dest, newest_step: int):
    """Copies a finished run to `dest` less its newest checkpoint and its model.npz, runs `config`
    there (a resume from the checkpoint before), and returns the parameters it exports."""
    from vit_jax import checkpoint, train

    dest = str(dest)
    shutil.copytree(workdir, dest)
    shutil.rmtree(os.path.join(dest, "checkpoints", str(newest_step)))
    os.remove(os.path.join(dest, "model.npz"))
    train.train_and_evaluate(config, dest)
    return checkpoint.load(os.path.join(dest, "model.npz"))


def run_main(*args, timeout=120, module="vit_jax.main"):
    """`python -m vit_jax.main ARGS` (or another command module) from the repo root, to its end;
    its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def error_lines(stderr: str) -> list[str]:
    """The `error:` lines a command printed."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def shared(name):
    """A real dataset from shared/data, or a skip that says where it was looked for."""
    path = os.path.join(SHARED_DATA, name)
    if not os.path.isdir(path):
        pytest.skip(f"real dataset {name} not found at {path} (set VIT_JAX_SHARED_DATA to its parent folder)")
    return path
