"""Run metrics: a console line, `metrics.jsonl` and TensorBoard event files.

Only process 0 writes. TensorBoard events are written with the protos bundled in
the `tensorboard` package and its file layer without TensorFlow: when TensorFlow is
installed (TFDS needs it), tensorboard would otherwise import it for its file I/O, which
costs several seconds at every start.
"""

import json
import os
import sys
import time
import types
from typing import Any


def _tensorboard_without_tensorflow() -> None:
    # tensorboard.compat picks its `tf` module lazily: TensorFlow if importable, unless a
    # module named tensorboard.compat.notf exists, in which case its own stub (enough for
    # writing local event files). Nothing to do when TensorFlow is already loaded.
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


class MetricWriter:
    """Appends records to WORKDIR/metrics.jsonl and TensorBoard events (a context manager that
    closes both however the run ends); disabled on every process but 0."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
            _tensorboard_without_tensorflow()
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Appends one record ({'kind', 'step', 'time', **values}) and its scalars."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), "time": time.time(), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        scalars = [
            Summary.Value(tag=f"{kind}/{k}", simple_value=float(v))
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        self._tb.add_event(Event(wall_time=record["time"], step=int(step), summary=Summary(value=scalars)))

    def flush(self) -> None:
        if self.enabled:
            self._jsonl.flush()
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the files; later calls (and writes) do nothing."""
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
            self.enabled = False

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
