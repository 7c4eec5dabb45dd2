"""The package as a user installs it: a wheel in a fresh virtual environment, commands from another
directory, recipes by name, CPU devices set before JAX starts, and the accelerator wheels' checks."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
from conftest import ROOT

from vit_jax import config as config_lib
from vit_jax import devices


def test_the_wheel_installs_into_a_fresh_venv_and_trains_from_another_directory(tmp_path):
    source = tmp_path / "source"  # a copy: the build writes build/ and *.egg-info beside the sources
    shutil.copytree(os.path.join(ROOT, "vit_jax"), source / "vit_jax", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    wheels = tmp_path / "wheels"
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheels),
        str(source),
    ]
    subprocess.run(build, check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("vit_jax-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    with open(os.path.join(site, "test_venv_packages.pth"), "w") as f:  # the dependencies: this venv's
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    where = subprocess.run([python, "-c", "import vit_jax; print(vit_jax.__file__)"], cwd=elsewhere, env=env,
                           check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert where.startswith(str(venv))
    run = [python, "-m", "vit_jax.main", "--config", "quickstart", "--config.cpu_devices=2", "--workdir", "run"]
    run += [
        "--config.total_steps=2",
        "--config.eval_every=2",
        "--config.checkpoint_every=2",
        "--config.lr.warmup_steps=0",
    ]
    r = subprocess.run(run, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[0].endswith("1 process, 2 devices: cpu")
    assert (elsewhere / "run" / "model.npz").exists()


def test_recipes_are_named_without_a_path():
    assert {"quickstart", "vit", "fashion_mnist_patchdrop"} <= set(config_lib.recipes())
    by_name = config_lib.load_file("vit:b16,cifar10").to_dict()
    assert by_name == config_lib.load_file(os.path.join(ROOT, "configs", "vit.py:b16,cifar10")).to_dict()
    assert config_lib.load_file("fashion_mnist_patchdrop").cpu_devices == 2
    with pytest.raises(config_lib.ConfigError, match="name a recipe of the package .*quickstart"):
        config_lib.load_file("quickstrat")


def test_cpu_devices_once_jax_has_started_is_one_line():
    import jax

    n = len(jax.devices("cpu"))
    devices.apply_cpu_devices(n)  # what it already is: nothing to do
    with pytest.raises(devices.DeviceError, match=f"--cpu_devices={n + 1}: JAX has already started") as e:
        devices.apply_cpu_devices(n + 1)
    assert "\n" not in str(e.value) and "fresh process" in str(e.value)
    with pytest.raises(devices.DeviceError, match="whole number"):
        devices.apply_cpu_devices(0, "config.cpu_devices")


def test_the_flags_xla_reads_are_set_once(monkeypatch):
    monkeypatch.setattr(devices, "started", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8")
    devices.apply_cpu_devices(2)
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_dump_to=/tmp/x",
        "--xla_force_host_platform_device_count=2",
        "--xla_cpu_multi_thread_eigen=false",
    ]
    assert devices.env_cpu_devices() == 2


def test_an_accelerator_plugin_that_does_not_match_jaxlib_is_one_line(monkeypatch):
    real = importlib.metadata.version

    def version(name):
        return "0.9.2" if name == "jax-cuda12-plugin" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(
        devices.DeviceError, match=r"jax-cuda12-plugin 0.9.2 does not match jaxlib .*jax\[cuda12\]=="
    ) as e:
        devices.check_plugins()
    assert "\n" not in str(e.value)


def test_an_accelerator_wheel_without_its_accelerator_is_one_notice(monkeypatch):
    monkeypatch.setattr(devices, "installed_plugins", lambda: ["jax-cuda12-plugin"])
    (line,) = devices.notices(None)
    assert "jax-cuda12-plugin installed but JAX found no GPU" in line and "running on the CPU" in line
    monkeypatch.setattr(devices, "installed_plugins", lambda: [])
    assert devices.notices(2) == []  # cpu_devices on a CPU host: nothing to say
