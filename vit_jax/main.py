"""Entry point: flags -> config -> run.

    python -m vit_jax.main --config configs/vit_b16.py [--workdir DIR] [--config.FIELD=VALUE ...]

Several processes (hosts, or one per GPU) run the same command; each gets
--coordinator_address HOST:PORT --num_processes N --process_id I, or the same from
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. Under SLURM, Open MPI
or on a Cloud TPU VM they are found from the environment, as jax.distributed does.

`--config file.py:ARG` passes ARG to the file's get_config (config families).
Without --workdir the run goes to runs/<config name>[_<arg>]. Running the same
command again resumes from the latest checkpoint in the workdir. `--cpu_devices N` (or the
config's `cpu_devices`) splits a CPU host into N single-threaded devices before JAX starts.
"""

import difflib
import json
import logging
import os
import re
import sys

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config: a file defining get_config().", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and exports go (default: runs/<config name>).")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for a multi-process run.")
flags.DEFINE_integer("num_processes", None, "How many processes the run has.")
flags.DEFINE_integer("process_id", None, "This process's index, 0 to num_processes - 1.")
flags.DEFINE_integer("initialization_timeout", 300, "Seconds to wait for every process to arrive.")
flags.DEFINE_integer(
    "cpu_devices", None, "On a CPU host: this many single-threaded CPU devices (default: the config's cpu_devices)."
)

log = logging.getLogger("vit_jax")


def default_workdir(config_arg: str) -> str:
    path, _, arg = config_arg.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    if arg:
        name += "_" + re.sub(r"[^A-Za-z0-9_.,+=-]", "-", arg)
    return os.path.join("runs", name)


def _config_arg(argv: list[str]) -> str | None:
    """The --config value, read by absl on its own (the overrides are left for the full parse)."""
    pre = flags.FlagValues()
    flags.DEFINE_string("config", None, "", flag_values=pre)
    try:
        pre(argv, known_only=True)
    except flags.Error:
        return None  # the full parse reports it
    return pre.config


def _unknown_override(error: Exception, argv: list[str], loaded) -> str:
    """One line for a --config.FIELD the config lacks, with the full field and the nearest name."""
    from vit_jax import config as config_lib
    from vit_jax import config_original

    text = str(error.args[0] if error.args else error)
    key = re.search(r"'([A-Za-z0-9_]+)", text)
    key = key.group(1) if key else text
    overrides = [a[len("--config.") :].partition("=")[0] for a in argv if a.startswith("--config.")]
    field = next((o for o in overrides if key in o.split(".")), key)
    if loaded is None or not config_original.is_original(loaded):
        return "--" + config_lib.unknown_field_message(field).removesuffix(".") + "; fix the flag."
    fields = list(config_lib.flat_fields(loaded.to_dict()))  # the original's names, as its file has them
    close = difflib.get_close_matches(field, fields, n=1)
    hint = f"did you mean config.{close[0]}?" if close else "its fields are in vit_jax/configs/common.py"
    return f"--config.{field} is not a field of {config_arg_name(argv)} ({hint}); fix the flag."


def config_arg_name(argv: list[str]) -> str:
    return (_config_arg(argv) or "the config").partition(":")[0]


def parse(argv: list[str]):
    """(config, config argument, workdir) from the command line; a ConfigError for any mistake."""
    from vit_jax import config as config_lib  # the flags' own modules, no JAX yet

    argv = config_lib.recipe_argv(argv)  # `--config quickstart`: the package's recipe
    config_arg = _config_arg(argv)
    loaded = None
    if config_arg:
        loaded = config_lib.load_file(config_arg)  # a broken file is one line naming it, not absl's traceback
    try:
        FLAGS(argv)
    except flags.Error as e:  # absl's message names the flag and the value
        raise config_lib.ConfigError(" ".join(str(e).split())) from None
    except (AttributeError, KeyError) as e:  # --config.unknown_field=...: ml_collections names only the key
        raise config_lib.ConfigError(_unknown_override(e, argv, loaded)) from None
    except (TypeError, ValueError) as e:
        raise config_lib.ConfigError(f"Bad config value: {e}") from None
    if FLAGS.config is None:
        raise config_lib.ConfigError("--config is required, e.g. --config configs/quickstart.py")
    config_arg = FLAGS["config"].config_filename
    return FLAGS.config, config_arg, FLAGS.workdir or default_workdir(config_arg)


def _cpu_devices(config, devices) -> int | None:
    """Applies --cpu_devices, else the config's cpu_devices unless XLA_FLAGS already sets a count."""
    if FLAGS.cpu_devices is not None:
        devices.apply_cpu_devices(FLAGS.cpu_devices, "--cpu_devices")
        return FLAGS.cpu_devices
    n = config.get("cpu_devices")
    if n is None:
        return None
    if devices.env_cpu_devices() is not None and not devices.started():
        log.info("XLA_FLAGS sets the CPU device count; config.cpu_devices=%s left aside.", n)
        return None
    devices.apply_cpu_devices(n, "config.cpu_devices")
    return n


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    for noisy in ("absl", "jax", "orbax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A damaged checkpoint's failed reads surface as "never retrieved" task errors; the
    # restore reports them itself, in one line.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    from vit_jax import errors

    try:
        return _main(argv)
    except errors.UserError as e:
        return errors.report(e)


def _main(argv: list[str]) -> int:
    config, config_arg, workdir = parse(argv)
    # Heavy imports after the flags are checked.
    from vit_jax import config as config_lib
    from vit_jax import config_original, devices, parallel, preemption, train

    devices.check_plugins()
    cpu_devices = _cpu_devices(config, devices)
    cluster = parallel.cluster_from(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    parallel.initialize(cluster, FLAGS.initialization_timeout)
    import jax

    if jax.process_index() != 0:  # one log for the run: process 0's (the others still report problems)
        logging.getLogger("vit_jax").setLevel(logging.WARNING)
    log.info("%s%s", devices.first_line(), f" ({parallel.describe()})" if jax.process_count() > 1 else "")
    for notice in devices.notices(cpu_devices):
        log.info("Note: %s", notice)
    log.info("Config %s, workdir %s", config_arg, workdir)
    if config_original.trainer(config) == "inference_time":  # the original's other trainer
        from vit_jax import inference_time

        inference_time.inference_time(config, workdir)
        return 0
    config = config_lib.resolve(config)
    config_lib.check_files(config)
    try:
        result = train.run(config, workdir)
    except train.NumericalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except preemption.StoppedEarly as e:
        log.info(
            "Stopped by %s before training began; the workdir's checkpoints are as they were. Run the same "
            "command to start again.",
            e.signal_name,
        )
        print(json.dumps({"workdir": workdir, "stopped": e.signal_name, "step": None}))
        return 0
    print(json.dumps({"workdir": workdir, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
