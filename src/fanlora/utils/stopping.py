"""A stop asked for by a signal, honoured where the work resumes from what it saved.

``with stop_on_signals() as stop:`` replaces the SIGTERM and SIGINT handlers (in the main
thread; elsewhere it changes nothing) by one that records the first signal: the long loop
reads ``stop.requested`` at its next safe point, saves what resumes it and raises
:class:`Stopped`. A second signal interrupts at once, as Python's default SIGINT does. The
previous handlers are restored on exit. Several processes agree on the step through
accelerate's ``set_trigger``/``check_trigger`` (the trainer's ``stop_asked``); the handler is
written by hand, as neither accelerate nor transformers installs one for a loop of one's own.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(KeyboardInterrupt):
    """The work stopped on a signal after saving what resumes it (exit code 130, as for
    an interrupt: it did not finish)."""


@dataclass
class StopRequest:
    """The first signal received inside :func:`stop_on_signals`, if any."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = SIGNALS) -> Iterator[StopRequest]:
    """Record the first of ``signals``; raise KeyboardInterrupt on the second."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # Python delivers signals to the main thread only
        return

    def handler(signum, frame):
        if request.requested:
            raise KeyboardInterrupt
        request.signum = signum

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield request
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
