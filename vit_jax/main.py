"""Entry point: flags -> config -> run.

    python -m vit_jax.main --config configs/vit_b16.py [--workdir DIR] [--config.FIELD=VALUE ...]

Several processes (hosts, or one per GPU) run the same command; each gets
--coordinator_address HOST:PORT --num_processes N --process_id I, or the same from
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. Under SLURM, Open MPI
or on a Cloud TPU VM they are found from the environment, as jax.distributed does.

`--config file.py:ARG` passes ARG to the file's get_config (config families).
Without --workdir the run goes to runs/<config name>[_<arg>]. Running the same
command again resumes from the latest checkpoint in the workdir.
"""

import importlib.util
import inspect
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

log = logging.getLogger("vit_jax")


class UsageError(Exception):
    """A command-line or config mistake: printed as one line, exit status 2."""


def default_workdir(config_arg: str) -> str:
    path, _, arg = config_arg.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    if arg:
        name += "_" + re.sub(r"[^A-Za-z0-9_.,+=-]", "-", arg)
    return os.path.join("runs", name)


def _config_arg(argv: list[str]) -> str | None:
    """The value of --config in argv (either `--config X` or `--config=X`)."""
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _check_config_file(config_arg: str) -> None:
    """Loads the config file once, so a missing file, a syntax error, a file without
    get_config() or an argument it refuses is one line naming the file, not a traceback."""
    path, sep, arg = config_arg.partition(":")
    if not os.path.isfile(path):
        raise UsageError(f"Config file {path} not found; check the path given to --config.")
    try:
        spec = importlib.util.spec_from_file_location("_vit_jax_config_check", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UsageError(f"{path} line {e.lineno}: {e.msg}; fix the config file.") from None
    except Exception as e:
        raise UsageError(f"{path} fails to load ({type(e).__name__}: {e}); fix the config file.") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise UsageError(f"{path} defines no get_config(); a config file returns its ConfigDict from get_config().")
    takes_arg = bool(inspect.signature(get_config).parameters)
    if sep and not takes_arg:
        raise UsageError(f"{path} takes no argument; drop ':{arg}' from --config.")
    try:
        get_config(arg) if sep else get_config()
    except Exception as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        doc = f" The arguments it takes are in the file's docstring: {path}." if sep else ""
        raise UsageError(f"--config {config_arg}: get_config fails ({type(e).__name__}: {message}).{doc}") from None


def _parse(argv: list[str]):
    config_arg = _config_arg(argv)
    if config_arg:
        _check_config_file(config_arg)
    try:
        FLAGS(argv)
    except flags.Error as e:
        raise UsageError(_flag_message(e)) from None
    except (AttributeError, KeyError) as e:  # --config.unknown_field=...
        text = str(e.args[0] if e.args else e)
        field = re.search(r"'([A-Za-z0-9_]+)", text)
        hint = re.search(r'Did you mean "([^"]+)"', text)
        raise UsageError(
            f"Unknown config field {field.group(1) if field else text!r}"
            + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
            + ": check the spelling; --config.FIELD must exist in the config file."
        ) from None
    except (TypeError, ValueError) as e:
        raise UsageError(f"Bad config value: {e}") from None
    if FLAGS.config is None:
        raise UsageError("--config is required, e.g. --config configs/quickstart.py")
    config_arg = FLAGS["config"].config_filename
    return FLAGS.config, config_arg, FLAGS.workdir or default_workdir(config_arg)


def _flag_message(e: Exception) -> str:
    text = " ".join(str(e).split())
    m = re.match(r"flag --config\.([\w.]+)=", text)
    if not m:
        return text
    value = FLAGS["config"].value  # the config file's values, before the overrides
    try:
        for part in m.group(1).split("."):
            value = value[part]
    except (KeyError, TypeError):
        return text
    kinds = {bool: "True or False", int: "an integer", float: "a number", str: "a string", tuple: "a tuple"}
    kind = kinds.get(type(value), f"a {type(value).__name__}")
    return f"{text}. config.{m.group(1)} takes {kind}, like the config file's {value!r}."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    for noisy in ("absl", "jax", "orbax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A damaged checkpoint's failed reads surface as "never retrieved" task errors; the
    # restore reports them itself, in one line.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        config, config_arg, workdir = _parse(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from vit_jax import checkpoint, input_pipeline, parallel, train  # heavy imports after the flags are checked

    user_errors = (train.ConfigError, input_pipeline.DataError, checkpoint.CheckpointError, parallel.ParallelError)
    try:
        cluster = parallel.cluster_from(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        parallel.initialize(cluster, FLAGS.initialization_timeout)
    except parallel.ParallelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import jax

    if jax.process_index() != 0:  # one log for the run: process 0's (the others still report problems)
        logging.getLogger("vit_jax").setLevel(logging.WARNING)
    log.info("Devices: %s.", parallel.describe())
    try:
        train.validate(config)
        train.check_files(config)
        log.info("Config %s, workdir %s", config_arg, workdir)
        result = train.train_and_evaluate(config, workdir)
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except train.NumericalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except train.StoppedEarly as e:
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
