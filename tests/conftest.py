"""Shared test helpers: tiny model configs and random parameters."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One XLA compilation cache for the session, shared by this process and the training runs
# the tests start as subprocesses: the many runs of the same tiny models compile once.
# A cached program is the same executable, so results are bitwise those of a fresh compile.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="vit_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


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
