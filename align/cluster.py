"""Joining a Ray cluster by ``--address`` and noticing when it goes away.

``ray.init(address=...)`` retries for a long while when nothing listens, and a driver whose cluster
dies is killed by Ray with a log line, not an error (at once when its raylet goes, a minute later
when only the GCS does). So align probes the address before joining (:func:`check_address`); while
a run uses a joined cluster a watcher thread probes its GCS port and, when it stops answering for
``grace`` seconds, stops the run with :class:`ClusterLost` (a clear error naming the address and
the last checkpoint); and ``align train --address`` runs the driver under a supervisor
(``launch.cli``) that says the same when Ray ends the driver itself.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

from align import interrupts

log = logging.getLogger(__name__)


class ClusterLost(RuntimeError):
    """The Ray cluster joined with ``--address`` stopped answering."""


def _host_port(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return None  # auto, ray://...: left to Ray
    return host or "127.0.0.1", int(port)


def _answers(host: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True, ""
    except OSError as exc:
        return False, exc.strerror or str(exc)


def check_address(address: str, timeout: float = 5.0) -> None:
    """``--address HOST:PORT``: something must listen there, else a clear error now."""
    target = _host_port(address)
    if target is None:
        return
    ok, why = _answers(*target, timeout)
    if not ok:
        raise ValueError(
            f"--address {address}: no Ray cluster answers there ({why}); start one with "
            f"`ray start --head --port {target[1]}` or leave out --address"
        )


class ClusterWatch:
    """Probe ``address`` every ``every`` seconds from a daemon thread; after ``grace`` seconds without
    an answer, post :class:`ClusterLost` for the main thread (``align.interrupts``: raised at its next
    wait slice). A main thread blocked inside Ray's C++ (creating an actor on the dead cluster)
    never gets there: ``exit_after`` seconds later the watcher prints the error line and ends the
    process itself (exit code 1)."""

    def __init__(
        self, address: str, describe_state, grace: float = 15.0, every: float = 2.0, exit_after: float = 10.0
    ):
        self.address, self.describe_state, self.grace, self.every = address, describe_state, grace, every
        self.exit_after = exit_after
        self.target = _host_port(address)
        self.lost: str | None = None
        self._stop = threading.Event()

    def __enter__(self) -> "ClusterWatch":
        if self.target is None:
            return self
        threading.Thread(target=self._watch, name="align-cluster-watch", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def _watch(self) -> None:
        silent_since = None
        while not self._stop.wait(self.every):
            ok, why = _answers(*self.target, timeout=self.every)
            if ok:
                silent_since = None
                continue
            silent_since = silent_since or time.time()
            if time.time() - silent_since >= self.grace:
                self.lost = (
                    f"the Ray cluster at {self.address} stopped answering ({why}) for {self.grace:g}s; "
                    f"{self.describe_state()}; restart the cluster and continue with --resume"
                )
                log.error("%s", self.lost)
                interrupts.post(ClusterLost(self.lost))  # raised at the main thread's next wait slice
                if not self._stop.wait(self.exit_after):  # the main thread is stuck inside Ray: leave now
                    print(f"error: {self.lost}", file=sys.stderr, flush=True)
                    os._exit(1)
                return
