"""A run stopped by SIGINT/SIGTERM: the first signal finishes the step, writes a checkpoint and stops;
a second one, or ``trainer.stop_timeout`` passing first, stops at once (the last checkpoint stays good)."""

from __future__ import annotations

import logging
import math
import signal
import threading
from typing import Callable

from align.runner import interrupts
from align.runner.interrupts import StopRequested

log = logging.getLogger("align.train")


class StopSignals:
    """The signal that asked the run to stop (``signum``, None until one did). ``install`` takes
    SIGINT, SIGTERM and SIGALRM in the main thread (a sweep trial runs in a thread: its job's
    process takes them); ``uninstall`` gives them back."""

    def __init__(self, stop_timeout: float, state_line: Callable[[], str]):
        self.stop_timeout, self.state_line = stop_timeout, state_line
        self.signum: int | None = None
        self._old: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self._old[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)

    def uninstall(self) -> None:
        if self._old:
            signal.alarm(0)
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def _on_signal(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: stop now
            interrupts.post(KeyboardInterrupt())
            return
        self.signum = signum
        signal.alarm(max(1, math.ceil(self.stop_timeout)))  # past stop_timeout: _on_alarm stops at once
        log.warning(
            "received %s: finishing this step, writing a checkpoint, then stopping (within %gs)",
            self.name,
            self.stop_timeout,
        )

    def _on_alarm(self, signum, frame) -> None:
        interrupts.post(
            StopRequested(
                f"stopped by {self.name}: the step did not finish within "
                f"trainer.stop_timeout={self.stop_timeout:g}s, so no checkpoint was written; {self.state_line()}"
            )
        )
