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

from align.runner import interrupts

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
    an answer, post :class:`ClusterLost` for the main thread (``align.runner.interrupts``: raised at its next
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


def check_resources(
    c, cluster: dict, gpu_per_actor: int, rollout_workers: int | None = None, learner_ranks: int | None = None
) -> None:
    """Refuse a run whose actors cannot all be placed (Ray would otherwise wait for ever)."""
    workers = c.rollout.num_workers if rollout_workers is None else rollout_workers
    ranks = c.learner.num_ranks if learner_ranks is None else learner_ranks
    need = {
        "CPU": workers * c.rollout.num_cpus + ranks * c.learner.num_cpus,
        "GPU": (workers + ranks) * gpu_per_actor,
    }
    for kind, wanted in need.items():
        have = cluster.get(kind, 0.0)
        if wanted > have + 1e-9:
            raise ValueError(
                f"the run needs {wanted:g} Ray {kind}s (rollout.num_workers x rollout.num_cpus + learner.num_ranks x "
                f"learner.num_cpus{'' if kind == 'CPU' else ', one GPU per actor'}) but the cluster has {have:g}: "
                f"lower learner.num_ranks / rollout.num_workers or their num_cpus, or use a bigger cluster"
            )


def start_ray(
    c, address: str | None = None, rollout_workers: int | None = None, learner_ranks: int | None = None
) -> tuple[int, bool]:
    """Start a local Ray cluster of our own, or join ``address`` (probed first), after checking the
    run's actors fit (``check_resources``); inside a Ray job already (an ``align sweep`` trial) use
    that cluster and the trial's placement group, which Tune sized from the same config. Returns
    (GPUs per actor: 0 or 1, whether this process started Ray and so shuts it down)."""
    import ray
    import torch

    gpu = 1 if c.model.device == "cuda" or (c.model.device == "auto" and torch.cuda.is_available()) else 0
    if ray.is_initialized():
        return gpu, False
    if address:
        check_address(address)
        ray.init(address=address, log_to_driver=False)
        check_resources(c, ray.cluster_resources(), gpu, rollout_workers, learner_ranks)
    else:
        cpus = max(2, os.cpu_count() or 2)
        check_resources(
            c, {"CPU": cpus, "GPU": torch.cuda.device_count()}, gpu, rollout_workers, learner_ranks
        )
        # address="local": always a cluster of our own, even where `ray start` left one running
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return gpu, True
