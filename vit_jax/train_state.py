"""The run's own state in its workdir: the file layout, Orbax checkpoints and the lock.

A workdir holds everything one run writes (`Workdir` names each file, once). Its
checkpoints (Orbax, asynchronous) hold parameters, optimizer state and step, with a
JSON `meta` of the data position and a checksum of every array. Restore verifies the
checksums and falls back to the newest intact checkpoint, moving a damaged one aside
(nothing is deleted); a checkpoint of another model or optimizer is refused by name.
The analysis tools read a workdir's latest parameters through `latest_params`, with the
same checks. The published `.npz` format is `checkpoint`'s concern, not this module's.
"""

import logging
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import errors, parallel
from vit_jax.checkpoint import CheckpointError, unstack_blocks

log = logging.getLogger(__name__)


class Workdir:
    """The files of a run's workdir, named in one place."""

    CONFIG = "config.json"  # the resolved config, read back by the tools
    METRICS = "metrics.jsonl"  # one JSON record per logged step and evaluation
    TENSORBOARD = "tensorboard"
    SHARDING = "sharding.json"  # the mesh and how each parameter is split
    CHECKPOINTS = "checkpoints"  # Orbax steps
    DAMAGED = "checkpoints_damaged"  # damaged steps, moved aside
    MODEL = "model.npz"  # the final parameters, in the original release's format
    RUN_INFO = "run.json"  # classes, model fields, steps and the final evaluation
    ANALYSIS = "analysis"  # written by `python -m vit_jax.analyze`
    LOCK = ".lock"

    def __init__(self, path: str):
        self.path = os.fspath(path)

    def __truediv__(self, name: str) -> str:
        return os.path.join(self.path, name)

    config = property(lambda self: self / self.CONFIG)
    metrics = property(lambda self: self / self.METRICS)
    tensorboard = property(lambda self: self / self.TENSORBOARD)
    sharding = property(lambda self: self / self.SHARDING)
    checkpoints = property(lambda self: self / self.CHECKPOINTS)
    damaged = property(lambda self: self / self.DAMAGED)
    model = property(lambda self: self / self.MODEL)
    run_info = property(lambda self: self / self.RUN_INFO)
    analysis = property(lambda self: self / self.ANALYSIS)
    lock = property(lambda self: self / self.LOCK)


class WorkdirError(errors.UserError):
    """A workdir that is a file, cannot be created, or is in use by another run."""


class CheckpointWriteError(CheckpointError):
    """A train-state checkpoint could not be written (disk full, permissions); older ones are intact."""


def prepare_workdir(workdir: str) -> None:
    """The workdir is a directory, or can be made one."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} is a file; give a directory (it is created if missing).")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"Cannot create --workdir {workdir} ({e.strerror}); give a writable directory.") from None


def _ocp():
    import orbax.checkpoint as ocp  # heavy: only the training run and the tools need it

    return ocp


def state_manager(workdir: str, keep: int):
    """Orbax manager of `workdir/checkpoints`, keeping the newest `keep` steps."""
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(
        os.path.abspath(Workdir(workdir).checkpoints),
        options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )


class Checkpoints:
    """The run's checkpoint writer: asynchronous saves with checksums; a context manager, so the
    writes are waited for and the manager closed on every way out of the loop."""

    def __init__(self, workdir: str, keep: int):
        self.directory = Workdir(workdir).checkpoints
        self.manager = state_manager(workdir, keep)

    def save(self, state, meta: dict) -> None:
        save_state(self.manager, state, meta)

    def finish(self) -> None:
        finish_writes(self.manager)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc) -> None:
        """Closes the manager; a write error it repeats was already reported."""
        try:
            self.manager.close()
        except Exception as e:
            log.warning("Closing the checkpoint manager: %s", errors.error_line(e))


def _uint_view(a):
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[a.dtype.itemsize]
    return jax.lax.bitcast_convert_type(a, width).astype(jnp.uint32)


@jax.jit
def _checksum_arrays(tree):
    """Per array: sum over elements of bits x (2 x flat index + 1), modulo 2**32.

    Integer arithmetic, so the value does not depend on how the array is split across
    devices or in which order XLA adds; the odd weights make every single-bit change and
    most moves of values change the sum.
    """

    def one(a):
        u = _uint_view(a)
        index, stride = jnp.zeros(a.shape, jnp.uint32), 1
        for d in reversed(range(a.ndim)):
            index = index + jax.lax.broadcasted_iota(jnp.uint32, a.shape, d) * jnp.uint32(stride % 2**32)
            stride *= a.shape[d]
        return jnp.sum(u * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)

    return jax.tree.map(one, tree)


def state_checksums(state) -> dict[str, int]:
    """{array path: checksum} of a train state (on devices or host); see _checksum_arrays."""
    sums = jax.device_get(_checksum_arrays(state))
    return {parallel.path_name(p): int(v) for p, v in jax.tree_util.tree_flatten_with_path(sums)[0]}


@jax.jit
def _device_copy(tree):
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def save_state(mngr, state, meta: dict) -> None:
    """Starts an asynchronous save of `state` at step meta['step'], with its checksums in the meta.

    The live buffers are donated to the next step, so a snapshot is saved: on the host when
    this process holds the whole state, else a device copy (Orbax writes each process's
    shards). A failure of this or of the previous asynchronous write is a CheckpointWriteError.
    """
    ocp = _ocp()
    step = int(meta["step"])
    sums = state_checksums(state)
    if all(a.is_fully_addressable for a in jax.tree.leaves(state)):
        snapshot = jax.device_get(state)
    else:
        snapshot = _device_copy(state)
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(snapshot), meta=ocp.args.JsonSave({**meta, "checksums": sums})
    )
    try:
        mngr.save(step, args=args)
    except Exception as e:  # the message says what happened; the run stops here
        raise CheckpointWriteError(_write_failure(mngr, step, e)) from None


def finish_writes(mngr) -> None:
    """Waits for the asynchronous writes; a failed one is a CheckpointWriteError."""
    try:
        mngr.wait_until_finished()
    except Exception as e:
        raise CheckpointWriteError(_write_failure(mngr, None, e)) from None


def _write_failure(mngr, step, error: Exception) -> str:
    directory = str(mngr.directory)
    intact = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
    what = f"checkpoint step {step}" if step is not None else "a checkpoint"
    kept = (
        f"the checkpoints already written (steps {', '.join(map(str, intact))}) are intact"
        if intact
        else ("no earlier checkpoint exists")
    )
    return (
        f"Could not write {what} to {directory} ({type(error).__name__}: {error}); {kept}. Free disk space or fix "
        f"the directory's permissions, then run the same command to resume."
    )


def _paths_and_shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {parallel.path_name(p): (tuple(v.shape), str(v.dtype)) for p, v in flat}


def structure_mismatch(saved, target) -> str | None:
    """None when `saved` (checkpoint metadata) has the arrays of `target`, else what differs, by name."""
    have, want = _paths_and_shapes(saved), _paths_and_shapes(target)
    diffs = [
        f"{k} has shape {have[k][0]} there, {want[k][0]} here" for k in want if k in have and have[k][0] != want[k][0]
    ]
    diffs += [f"{k} is missing there" for k in want if k not in have]
    diffs += [f"{k} is there but not in this model" for k in have if k not in want]
    if not diffs:
        return None
    more = f"; and {len(diffs) - 5} more" if len(diffs) > 5 else ""
    return "; ".join(diffs[:5]) + more


def restore_state(workdir: str, target, keep: int) -> tuple[Any, dict] | None:
    """The newest intact checkpoint in `workdir`, restored onto `target`'s shapes and shardings.

    None when the workdir has no checkpoint. A checkpoint that cannot be read or whose
    checksums do not match is damaged: a warning names it, it is moved to
    `workdir/checkpoints_damaged/`, and the next older one is tried. A checkpoint written
    by another model or optimizer is a CheckpointError naming the differing arrays. When
    checkpoints exist but none is intact, that is a CheckpointError too: the run never
    starts from scratch silently.
    """
    ocp = _ocp()
    directory = Workdir(workdir).checkpoints
    # Before any read: a damaged array's siblings may report their late reads while the first
    # failure is still on its way here (seen under load), so the hook must already be in place.
    _quiet_late_read_callbacks()
    # A directory another process may be creating right now must not send the processes down
    # different paths of collective calls: process 0's view decides.
    if not parallel.process_zero_says(os.path.isdir(directory)):
        return None
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), target)
    mngr = state_manager(workdir, keep)
    damaged: list[tuple[int, str]] = []
    try:
        for step in sorted(mngr.all_steps(), reverse=True):
            problem, result = None, None
            try:
                saved = mngr.item_metadata(step)["state"]
            except Exception as e:
                saved, problem = None, f"unreadable metadata ({errors.error_line(e)})"
            if saved is not None:
                mismatch = structure_mismatch(saved, abstract)
                if mismatch is not None:  # every process reads the same metadata
                    raise CheckpointError(
                        f"The checkpoint at step {step} in {directory} was written by a different model or "
                        f"optimizer: {mismatch}. Run with the config that wrote it, or use another --workdir."
                    )
            elif problem is None:
                problem = "no array metadata"
            if problem is None:
                try:
                    restored = mngr.restore(
                        step,
                        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
                    )
                    result = (restored["state"], dict(restored["meta"]))
                    problem = _checksum_problem(result[0], result[1].get("checksums"))
                except Exception as e:
                    problem = errors.error_line(e)
            if parallel.every_process(problem is None):  # all act alike
                return _with_step(result, step)
            damaged.append((step, problem or "damaged on another process"))
            log.warning(
                "Checkpoint step %d in %s is damaged (%s); trying an older one.", step, directory, damaged[-1][1]
            )
    finally:
        mngr.close()
        _move_aside(workdir, [s for s, _ in damaged])
    if damaged:
        raise CheckpointError(
            f"Every checkpoint in {directory} is damaged (steps {', '.join(str(s) for s, _ in damaged)}); they were "
            f"moved to {Workdir(workdir).damaged}. Nothing was restored: run again to start from scratch "
            f"in this workdir, or restore the checkpoints from a copy."
        )
    return None


def latest_params(workdir: str) -> tuple[Any, int]:
    """(parameters, step) of the newest intact checkpoint in `workdir`, as host arrays in the
    per-block layout, for the tools that read a run while it trains or after it stopped: the
    moving average when the run keeps one (what it evaluates and exports).

    The checksums are verified as a resume does; a damaged step is skipped with a warning
    (and left where it is: the run that owns the workdir may still be writing).
    """
    ocp = _ocp()
    directory = Workdir(workdir).checkpoints
    if not os.path.isdir(directory):
        raise CheckpointError(f"No {Workdir.MODEL} and no checkpoints in {workdir}: has the run started?")
    _quiet_late_read_callbacks()  # before any read (see restore_state)
    mngr = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "meta"))
    try:
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
                restored = mngr.restore(step, args=args)
                state = jax.tree.map(np.asarray, restored["state"])
                problem = _checksum_problem(state, dict(restored["meta"]).get("checksums"))
            except Exception as e:
                problem = errors.error_line(e)
            if problem is None:
                return unstack_blocks(state.get("ema", state["params"])), step
            log.warning("Checkpoint step %d in %s is damaged (%s); trying an older one.", step, directory, problem)
    finally:
        mngr.close()
    raise CheckpointError(f"No complete, intact checkpoint in {directory}.")


def _quiet_late_read_callbacks() -> None:
    """Silences the reads of a failed restore that finish after their event loop closed.

    When one array of a damaged checkpoint fails, the restore gives up while TensorStore is
    still reading the others; each of those reads then reports `RuntimeError: Event loop is
    closed` through sys.unraisablehook, a traceback apiece, hundreds for one damaged step.
    The warning above already says what happened, so exactly that error is dropped; every
    other unraisable exception still reaches the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_vit_jax_quiet", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            previous(unraisable)

    hook._vit_jax_quiet = True
    sys.unraisablehook = hook


def _with_step(result, step):
    state, meta = result
    meta.setdefault("step", step)
    return state, meta


def _checksum_problem(state, expected: dict[str, int] | None) -> str | None:
    if not expected:  # written before checksums were recorded
        return None
    got = state_checksums(state)
    bad = [k for k, v in expected.items() if got.get(k) != v]
    if not bad:
        return None
    return f"checksum mismatch in {len(bad)} array(s), first {bad[0]}"


def _move_aside(workdir: str, steps: list[int]) -> None:
    """Moves damaged step directories to workdir/checkpoints_damaged/ (process 0; every process waits)."""
    if not steps:
        return
    if jax.process_index() == 0:
        target_dir = Workdir(workdir).damaged
        os.makedirs(target_dir, exist_ok=True)
        for step in steps:
            src = os.path.join(Workdir(workdir).checkpoints, str(step))
            dst = os.path.join(target_dir, str(step))
            n = 1
            while os.path.exists(dst):
                dst, n = os.path.join(target_dir, f"{step}.{n}"), n + 1
            if os.path.exists(src):
                os.replace(src, dst)
                log.warning("Moved damaged checkpoint %s to %s.", src, dst)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vit_jax checkpoints moved aside")


class WorkdirLock:
    """An exclusive lock on a workdir while a run uses it (`workdir/.lock`, flock).

    The operating system releases it when the holding process ends, however it ends, so a
    killed run's lock is taken over by the next one. The file records who holds it, for
    the message a second run gets.
    """

    def __init__(self, workdir: str):
        self.path = Workdir(workdir).lock
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        import fcntl
        import socket
        import time

        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WorkdirError(
                f"Workdir {os.path.dirname(self.path)} is in use by another run ({holder}). Wait for it to end, "
                f"or use another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
