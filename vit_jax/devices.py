"""The devices a run gets: CPU devices before JAX starts, and the accelerator wheels' sanity.

`apply_cpu_devices(n)` splits the host CPU into `n` devices whose ops run on one thread each
(`--xla_force_host_platform_device_count=n --xla_cpu_multi_thread_eigen=false`), the layout the
CPU recipes are measured with (experiments/cpu_devices.sh: data-parallel over two
single-threaded devices is the fastest on 2 cores). XLA reads these flags when JAX creates its
backends, so they must be set before the first device is touched; after that it is one error.
`--cpu_devices N` of `vit_jax.main` (and `config.cpu_devices`, which recipes set) go through it.

`check_plugins()` compares the installed JAX accelerator plugins with jaxlib (a mismatched CUDA
plugin otherwise fails deep inside JAX); `notices()` says, in one line each, what a run on this
host should know: an accelerator wheel without the accelerator, `cpu_devices` on a GPU or TPU.
"""

import importlib.metadata
import logging
import os
import re

from vit_jax import errors

log = logging.getLogger("vit_jax")

_COUNT = "--xla_force_host_platform_device_count"
_EIGEN = "--xla_cpu_multi_thread_eigen"
# The accelerator plugins published in lockstep with jaxlib, and the extra that installs each.
PLUGINS = {"jax-cuda12-plugin": "gpu", "jax-cuda12-pjrt": "gpu", "jax-cuda13-plugin": "gpu", "jax-cuda13-pjrt": "gpu"}


class DeviceError(errors.UserError):
    """Devices asked for that this process cannot have; the message says what to do."""


def started() -> bool:
    """Whether JAX has created its backends in this process (its devices are then fixed)."""
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def apply_cpu_devices(n: int, origin: str = "--cpu_devices") -> None:
    """Makes the CPU `n` single-threaded devices for this process (see the module doc)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DeviceError(f"{origin}={n!r}: give a whole number of CPU devices, 1 or more.")
    flags = os.environ.get("XLA_FLAGS", "")
    want = f"{_COUNT}={n} {_EIGEN}=false" if n > 1 else f"{_COUNT}=1"
    if started():
        import jax

        if jax.default_backend() != "cpu" or len(jax.devices("cpu")) == n:
            return  # already so, or an accelerator run (notices() says so)
        raise DeviceError(
            f"{origin}={n}: JAX has already started in this process, so its devices are fixed; pass it to a fresh "
            f"process (python -m vit_jax.main ... --cpu_devices {n}) or set XLA_FLAGS='{want}' before JAX starts."
        )
    kept = re.sub(rf"\s*({_COUNT}|{_EIGEN})=\S+", "", flags).strip()
    os.environ["XLA_FLAGS"] = f"{kept} {want}".strip()


def env_cpu_devices() -> int | None:
    """The CPU device count XLA_FLAGS already asks for, if any (a user's own setting)."""
    m = re.search(rf"{_COUNT}=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(m.group(1)) if m else None


def check_plugins() -> None:
    """One error when an installed JAX accelerator plugin does not match jaxlib's version."""
    try:
        jaxlib = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return
    for plugin, extra in PLUGINS.items():
        try:
            version = importlib.metadata.version(plugin)
        except importlib.metadata.PackageNotFoundError:
            continue
        if version != jaxlib:
            raise DeviceError(
                f"{plugin} {version} does not match jaxlib {jaxlib}: reinstall them together, "
                f"pip install 'jax[{'cuda13' if 'cuda13' in plugin else 'cuda12'}]=={jaxlib}' (or vit_jax[{extra}])."
            )


def installed_plugins() -> list[str]:
    found = []
    for plugin in [*PLUGINS, "libtpu"]:
        try:
            importlib.metadata.version(plugin)
            found.append(plugin)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def notices(cpu_devices: int | None) -> list[str]:
    """One line each: an accelerator wheel with no accelerator found, cpu_devices on an accelerator."""
    import jax

    backend = jax.default_backend()
    out = []
    plugins = installed_plugins()
    if backend == "cpu" and plugins:
        want = "TPU" if plugins == ["libtpu"] else "GPU"
        out.append(
            f"{', '.join(plugins)} installed but JAX found no {want} (check the driver and CUDA_VISIBLE_DEVICES, "
            f"or pip uninstall {plugins[0]} on a CPU machine); running on the CPU."
        )
    if cpu_devices and backend != "cpu":
        out.append(f"cpu_devices={cpu_devices} has no effect here: the run uses the {backend} devices.")
    return out


def first_line() -> str:
    """'1 process, 2 devices: cpu' (the log's first line)."""
    import jax

    n, d = jax.process_count(), jax.device_count()
    return f"{n} process{'es' if n > 1 else ''}, {d} device{'s' if d > 1 else ''}: {jax.default_backend()}"
