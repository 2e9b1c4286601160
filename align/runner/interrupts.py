"""Stopping the main thread from a signal handler or a watcher thread, safely.

An exception raised by a Python signal handler while the main thread waits inside Ray (Cython)
comes out as ``SystemError: ... returned a result with an exception set``, losing what happened.
So handlers and watchers only *post* an exception here; every wait of the trainer returns to
Python in one-second slices and calls :func:`check`, which raises it (``align.workers.groups.gather``,
the reward pool, the rollout workers' restarts, the training loop).
"""

from __future__ import annotations

_posted: BaseException | None = None


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived; the run stopped (after writing a checkpoint, unless it says otherwise)."""


def post(exc: BaseException) -> None:
    """Ask the main thread to raise ``exc`` at its next check (the first one posted wins)."""
    global _posted
    if _posted is None:
        _posted = exc


def check() -> None:
    """Raise the posted exception, if any (once)."""
    global _posted
    if _posted is not None:
        exc, _posted = _posted, None
        raise exc


def clear() -> None:
    global _posted
    _posted = None
