"""Processes, the device mesh and shardings.

Start-up (`initialize`): JAX's multi-controller runtime, one process per host (or per
GPU), all running the same program. The mesh (`make_mesh`) names its axes from
`config.mesh`; the batch is split over the data-carrying axes (`data`, `fsdp`) and
parameters follow `config.sharding` (replicated, or split over `fsdp`). Global batches
are assembled from each process's own rows (`global_batch`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import glob
import logging
import math
import os
import re
import sys
import threading
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vit_jax import errors

log = logging.getLogger(__name__)

BATCH_AXES = ("data", "fsdp")  # mesh axes that split the batch; `fsdp` also splits parameters
DEFAULT_MESH = (("data", -1),)  # every device on the batch axis: data parallelism
SHARDING_PRESETS = ("replicate", "fsdp")
PEER_TIMEOUT_EXIT = 3


class ParallelError(errors.UserError):
    """A mesh, sharding or start-up setting that cannot work; the message says the fix."""


# ----------------------------------------------------------------------------- start-up


@dataclasses.dataclass(frozen=True)
class Cluster:
    """How this process joins the others: explicit addresses, a detected launcher, or alone."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    detected: str | None = None  # "slurm", "openmpi", "tpu" when found in the environment

    @property
    def multi_process(self) -> bool:
        return self.detected is not None or (self.num_processes or 1) > 1


def cluster_from(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: dict[str, str] | None = None,
) -> Cluster:
    """Flags first, then JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, then
    the launchers JAX itself detects (SLURM, Open MPI, Cloud TPU); otherwise one process."""
    env = os.environ if environ is None else environ
    address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    count = num_processes if num_processes is not None else _int_env(env, "JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else _int_env(env, "JAX_PROCESS_ID")
    if address or count is not None or pid is not None:
        given = (("coordinator_address", address), ("num_processes", count), ("process_id", pid))
        missing = [n for n, v in given if v is None]
        if missing and (count or 1) > 1:
            raise ParallelError(
                f"A multi-process run needs --coordinator_address, --num_processes and --process_id; missing "
                f"--{missing[0]} (or its environment variable JAX_{missing[0].upper()})."
            )
        if count is not None and count < 1:
            raise ParallelError(f"--num_processes={count}: use 1 or more.")
        if count is not None and pid is not None and not 0 <= pid < count:
            raise ParallelError(f"--process_id={pid} is outside 0..{count - 1} (--num_processes={count}).")
        return Cluster(address, count, pid)
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return Cluster(detected="slurm")
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return Cluster(detected="openmpi")
    if _on_cloud_tpu(env):
        return Cluster(detected="tpu")
    return Cluster()


def _int_env(env, name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ParallelError(f"{name}={value!r} is not an integer.") from None


def _on_cloud_tpu(env) -> bool:
    # A TPU VM has accelerator device files; jax.distributed.initialize() then finds the
    # workers from the TPU metadata (one worker is a one-process run, as it should be).
    if env.get("TPU_WORKER_HOSTNAMES") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    return bool(glob.glob("/dev/accel*")) or bool(glob.glob("/dev/vfio/[0-9]*"))


def initialize(cluster: Cluster, timeout_s: int = 300) -> None:
    """Joins the other processes, or does nothing for a one-process run.

    A peer that has not arrived after `timeout_s` seconds ends the process with one
    message (exit status 3) instead of JAX's abort; the runtime itself is given a little
    longer, so the message comes first.
    """
    if not cluster.multi_process:
        return
    if cluster.detected:
        log.info("Joining a %s job (detected from the environment); waiting up to %d s.", cluster.detected, timeout_s)
        kw = {}
    else:
        if cluster.num_processes == 1 and not cluster.coordinator_address:
            return
        log.info(
            "Process %d of %d joining %s; waiting up to %d s for the others.",
            cluster.process_id,
            cluster.num_processes,
            cluster.coordinator_address,
            timeout_s,
        )
        kw = dict(
            coordinator_address=cluster.coordinator_address,
            num_processes=cluster.num_processes,
            process_id=cluster.process_id,
        )
    where = cluster.coordinator_address or f"the {cluster.detected} job's coordinator"
    watchdog = threading.Timer(timeout_s, _peer_timeout, args=(where, cluster, timeout_s))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s + 30, **kw)
    finally:
        watchdog.cancel()


def _peer_timeout(where: str, cluster: Cluster, timeout_s: int) -> None:
    expected = f"{cluster.num_processes} processes" if cluster.num_processes else "all processes"
    print(
        f"error: not every process arrived at {where} within {timeout_s} s (expected {expected}). Start the "
        f"same command on every host with its own --process_id, check that {where} is reachable from each, "
        "or raise --initialization_timeout.",
        file=sys.stderr,
        flush=True,
    )
    os._exit(PEER_TIMEOUT_EXIT)


def describe() -> str:
    """'2 processes, 4 devices (2 here): cpu' for the log."""
    n = jax.process_count()
    return (
        f"process {jax.process_index()} of {n}, {jax.device_count()} devices "
        f"({jax.local_device_count()} here, {jax.default_backend()})"
    )


# ----------------------------------------------------------------------------- mesh


def mesh_shape(spec: Sequence[Sequence[Any]], num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Axis names and sizes from config.mesh, e.g. (('data', 2), ('fsdp', -1)); one -1 takes the rest."""
    if not spec:
        raise ParallelError("config.mesh is empty: use e.g. (('data', -1),).")
    names, sizes = [], []
    for item in spec:
        if len(item) != 2 or not isinstance(item[0], str):
            raise ParallelError(f"config.mesh entry {item!r}: use (axis_name, size), e.g. ('data', -1).")
        names.append(item[0])
        sizes.append(int(item[1]))
    if len(set(names)) != len(names):
        raise ParallelError(f"config.mesh {spec!r} names an axis twice.")
    if not any(n in BATCH_AXES for n in names):
        raise ParallelError(f"config.mesh {spec!r} has no axis to split the batch on: include 'data' or 'fsdp'.")
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ParallelError(f"config.mesh {spec!r}: sizes are positive, with at most one -1 (the rest).")
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % fixed:
            raise ParallelError(f"config.mesh {spec!r}: {num_devices} devices do not split into axes of {fixed}.")
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ParallelError(
            f"config.mesh {spec!r} has {math.prod(sizes)} devices but there are {num_devices}; "
            "make the sizes multiply to the device count, or let one be -1."
        )
    return tuple(names), tuple(sizes)


def make_mesh(spec: Sequence[Sequence[Any]] = DEFAULT_MESH) -> jax.sharding.Mesh:
    """The mesh over every device of every process (Auto axis types, as Linen code needs)."""
    names, sizes = mesh_shape(spec, jax.device_count())
    return jax.make_mesh(sizes, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def batch_axes(mesh) -> tuple[str, ...]:
    return tuple(n for n in mesh.axis_names if n in BATCH_AXES)


def batch_size_divisor(mesh) -> int:
    """The global batch must be a multiple of this (the devices the batch is split over)."""
    return math.prod(mesh.shape[n] for n in batch_axes(mesh))


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def one_program_at_a_time(mesh) -> bool:
    """True when this process drives several CPU devices of `mesh` (XLA_FLAGS
    --xla_force_host_platform_device_count): the loops then wait for each step to finish before
    starting the next. XLA's CPU runtime (JAX 0.10.2) can stop for good in an all-reduce when a
    program with all-reduces is started while the previous one still runs (13 of 20 runs of
    experiments/cpu_collective_hang.py aborted; none of 20 with the wait). Accelerators, and one
    device per process, keep asynchronous dispatch."""
    here = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return len(here) > 1 and all(d.platform == "cpu" for d in here)


# ----------------------------------------------------------------------------- activations

_ACTIVATIONS: contextvars.ContextVar[NamedSharding | None] = contextvars.ContextVar("activations", default=None)


@contextlib.contextmanager
def split_activations_like(sharding: NamedSharding | None):
    """While a step is traced inside this, `constrain_batch` keeps activations split like `sharding`.

    With parameters split over `fsdp`, XLA's partitioner may otherwise choose to split a
    layer's output by the weight's split dimension and gather the batch instead: every
    device then holds activations of the whole global batch (measured: 2.7 times the
    memory per image of data parallelism for ViT-L/16). Pinning the activations to the
    batch split makes it gather each weight for its layer, as FSDP intends.
    """
    token = _ACTIVATIONS.set(sharding)
    try:
        yield
    finally:
        _ACTIVATIONS.reset(token)


def constrain_batch(x):
    """`x` (batch first) constrained to the batch split of the enclosing step; unchanged outside one."""
    sharding = _ACTIVATIONS.get()
    if sharding is None or sharding.mesh.size == 1:
        return x
    spec = P(sharding.spec[0], *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(sharding.mesh, spec))


# ----------------------------------------------------------------------------- parameter sharding


def path_name(path) -> str:
    """A key path as 'params/Transformer/encoder_norm/scale' (dict keys, attributes and indices alike)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def fsdp_spec(shape: Sequence[int], axis_size: int, min_size: int) -> P:
    """Split the largest dimension the `fsdp` axis divides; small arrays stay replicated."""
    if axis_size <= 1 or math.prod(shape) < min_size:
        return P()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in order:
        if shape[i] % axis_size == 0:
            spec = [None] * len(shape)
            spec[i] = "fsdp"
            return P(*spec)
    return P()


def sharding_rules(config) -> list[tuple[str, Any]]:
    """config.sharding_rules, then the preset's catch-all rule."""
    preset = config.sharding
    if preset not in SHARDING_PRESETS:
        raise ParallelError(f"config.sharding={preset!r}: choose one of {', '.join(SHARDING_PRESETS)}.")
    rules = [tuple(r) for r in config.sharding_rules or ()]
    for r in rules:
        if len(r) != 2:
            raise ParallelError(
                f"config.sharding_rules entry {r!r}: use (regex, spec), e.g. ('head/kernel', 'replicate')."
            )
        try:
            re.compile(r[0])
        except re.error as e:
            raise ParallelError(f"config.sharding_rules regex {r[0]!r}: {e}.") from None
    return [*rules, (".*", preset)]


def tree_shardings(tree, mesh, rules: Sequence[tuple[str, Any]], min_size: int = 2**14):
    """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs), by the first rule
    whose regex matches the leaf's path ('Transformer/encoderblock_0/.../kernel'; optimizer
    states carry the same names after their own prefix, so they follow their parameter).

    A rule's spec is 'replicate', 'fsdp' (the largest dimension the fsdp axis divides,
    for arrays of at least `min_size` elements), or a tuple of mesh axis names / None
    per dimension.
    """
    fsdp_size = mesh.shape.get("fsdp", 1)

    def one(path, leaf):
        name = path_name(path)
        shape = tuple(getattr(leaf, "shape", ()))
        pattern, spec = next((p, s) for p, s in rules if re.search(p, name))  # the preset's '.*' always matches
        if spec == "replicate" or not shape:
            return NamedSharding(mesh, P())
        if spec == "fsdp":
            return NamedSharding(mesh, fsdp_spec(shape, fsdp_size, min_size))
        spec = tuple(spec)
        if len(spec) != len(shape):
            raise ParallelError(
                f"Sharding rule {pattern!r} gives {spec} for {name} of shape {shape}: one entry per dimension."
            )
        for dim, axis in zip(shape, spec, strict=True):
            if axis is not None and (axis not in mesh.shape or dim % mesh.shape[axis]):
                raise ParallelError(
                    f"Sharding rule {pattern!r} splits {name} {shape} over {axis!r}, which is not a mesh axis "
                    f"dividing {dim}; mesh: {dict(mesh.shape)}."
                )
        return NamedSharding(mesh, P(*spec))

    return jax.tree_util.tree_map_with_path(one, tree)


def sharding_summary(params, shardings) -> dict[str, Any]:
    """Per parameter: shape and spec; totals of bytes held per device against replicated."""
    rows, total, per_device = {}, 0, 0.0
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    flat_s = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sh in zip(flat, flat_s, strict=True):
        shape = tuple(leaf.shape)
        nbytes = math.prod(shape) * np.dtype(leaf.dtype).itemsize
        axes = [a for d in sh.spec if d is not None for a in (d if isinstance(d, tuple) else (d,))]
        split = math.prod(sh.mesh.shape[a] for a in axes)
        rows[path_name(path)] = {"shape": list(shape), "spec": [_spec_entry(d) for d in sh.spec], "split": split}
        total += nbytes
        per_device += nbytes / split
    return {"params": rows, "bytes": total, "bytes_per_device": int(per_device)}


def _spec_entry(d):
    return list(d) if isinstance(d, tuple) else d


# ----------------------------------------------------------------------------- batches


def local_rows(sharding: NamedSharding, global_rows: int) -> tuple[int, int]:
    """[start, stop) of the global batch this process's devices hold under `sharding`."""
    idx = sharding.addressable_devices_indices_map((global_rows,))
    starts = sorted({(s[0].start or 0, s[0].stop if s[0].stop is not None else global_rows) for s in idx.values()})
    start, stop = starts[0][0], starts[-1][1]
    covered = sum(b - a for a, b in starts)
    if covered != stop - start:
        raise ParallelError(
            "This process's devices hold rows of the batch that are not contiguous; use a mesh whose "
            "data axes follow the process order."
        )
    return start, stop


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Each process's local rows -> one global array per field, split on the batch axes."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def process_max(value: int) -> int:
    """The largest of every process's `value` (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.array(int(value), np.int32))))


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process (a collective: every process must call it)."""
    return bool(process_max(int(bool(flag))))


def every_process(flag: bool) -> bool:
    """Whether `flag` is true on every process (a collective: every process must call it)."""
    return not any_process(not flag)


def process_zero_says(flag: bool) -> bool:
    """Process 0's `flag`, on every process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.array(bool(flag), np.int32)))


def to_host(tree):
    """Full numpy arrays on every process (gathers arrays split across processes)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
