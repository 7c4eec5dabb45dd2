"""Stop signals: a scheduler's preemption notice (SIGTERM) and Ctrl-C (SIGINT).

Inside the training loop a signal asks the run to save the step it reached and stop;
the run can be resumed from there by running the same command. Before the loop there is
nothing new to save, so a single-process run stops at once (`StoppedEarly`). With
several processes, every process decides together at the logging and checkpoint
intervals: a notice may reach the hosts at different steps, or only one of them, and
they must all save the same step.
"""

import contextlib
import signal
import threading
from typing import Any

import jax

from vit_jax import parallel


class StoppedEarly(BaseException):
    """A stop signal arrived before the training loop began: there was nothing new to save.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way (a
    restore that would take it for a damaged checkpoint, an image decoder) catches it.
    """

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class StopSignals:
    """Receives SIGTERM and SIGINT for the duration of a run (a context manager).

    Handlers are installed only in the main thread and the previous ones restored on exit.
    A second SIGINT interrupts at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._at_once = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        if self._at_once:
            raise StoppedEarly(self.received)

    @contextlib.contextmanager
    def at_once(self):
        """Inside this block (reading files, which may take long and leaves nothing half-done), a
        signal stops a single-process run immediately instead of at the next check."""
        self._at_once = jax.process_count() == 1
        try:
            yield
        finally:
            self._at_once = False

    def stop_early(self) -> None:
        """Before the loop: a signal already received ends a single-process run here. (With
        several processes the loop's first check stops them all at the same step.)"""
        if self.received is not None and jax.process_count() == 1:
            raise StoppedEarly(self.received)

    def requested(self, step: int, *intervals: int) -> bool:
        """Whether to stop after `step`: at once with one process; with several, all decide
        together (a collective) at steps that are a multiple of one of `intervals`, and a
        process that received nothing itself takes the signal another one received."""
        if jax.process_count() == 1:
            return self.received is not None
        if all(step % every for every in intervals):
            return False
        signum = parallel.process_max(signal.Signals[self.received].value if self.received else 0)
        if signum and self.received is None:
            self.received = signal.Signals(signum).name
        return bool(signum)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
