"""Ray actor groups. Data is sliced before it is sent (each actor gets only its share); the
controller is the only place that waits on results."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import ray
import torch

from align.rollout.batch import shard_indices
from align.runner import interrupts

if TYPE_CHECKING:
    from align.workers.learner.spec import LearnerSpec
    from align.workers.rollout import RolloutSpec

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gather(refs: list, slice_s: float = 1.0) -> list:
    """``ray.get(refs)``, but the first failure is raised as soon as it arrives (when one rank of a
    collective dies the others block in their all-reduce: waiting for them would hang), and the
    wait returns to Python every ``slice_s`` seconds, so signal handlers (SIGINT, the stop timeout,
    a lost cluster) run while it waits."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=slice_s)
        interrupts.check()
        for ref in ready:
            ray.get(ref)  # raises the failure, if any
    return ray.get(list(refs))


class RolloutGroup:
    """``num_workers`` vLLM engines sharing the prompts of each call.

    Workers are Ray actors with ``max_restarts``: a killed worker is restarted by Ray (a fresh engine
    serving no adapter). A call that fails because a worker died, or that reaches a restarted worker
    (``StaleAdapter``), waits for the worker, serves it the current adapter version again and repeats
    the call; requests carry their seeds, so the repeat samples what the lost call would have.
    """

    def __init__(
        self,
        spec: "RolloutSpec | dict",
        num_workers: int,
        num_cpus: float,
        num_gpus: float = 0,
        max_restarts: int = 3,
        wait: bool = True,
    ):
        from align.workers.rollout import RolloutEngine, RolloutSpec, cpu_preload_env

        spec = RolloutSpec.of(spec)
        env = cpu_preload_env() if not num_gpus else {}
        actor = ray.remote(RolloutEngine).options(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            max_concurrency=1,
            max_restarts=max_restarts,
            max_task_retries=0,
            **({"runtime_env": {"env_vars": env}} if env else {}),
        )
        self.max_restarts = max_restarts
        self.restarts = 0  # workers lost and restarted (metric faults/rollout_restarts)
        self._adapter: tuple | None = None  # (version, tensors ref, config) served now
        self._recovering = threading.Lock()  # calls of several threads (trials sharing the engines)
        self.workers = [
            actor.remote(dataclasses.replace(spec, seed=spec.seed + i)) for i in range(num_workers)
        ]
        self._starting = [w.info.remote() for w in self.workers]
        self.start_seconds = 0.0  # the slowest engine's own start (vLLM load and warm-up)
        self.lora_mode = spec.lora_mode
        if wait:
            self.ready()

    def ready(self) -> "RolloutGroup":
        """Wait for the engines (``wait=False`` lets the caller start other actors meanwhile)."""
        if self._starting:
            infos = gather(self._starting)
            self._starting = []
            self.pids = [i["pid"] for i in infos]
            self.start_seconds = max(i["start_seconds"] for i in infos)
            self.lora_mode = infos[0]["lora_mode"]
        return self

    def _recover(self, exc: Exception, attempt: int) -> None:
        """After a failed call: wait for every worker (restarted ones come back), serve the adapter again."""
        if attempt >= self.max_restarts:
            raise RuntimeError(
                f"rollout workers failed {attempt + 1} times in one call (trainer.actor_restarts="
                f"{self.max_restarts}): {exc}"
            ) from exc
        log.warning(
            "rollout worker lost (%s); waiting for its restart, then repeating the call",
            str(exc).splitlines()[0][:200],
        )
        with self._recovering:
            before, self.pids = self.pids, [self._wait_alive(w) for w in self.workers]
            # workers that came back as new processes (asynchronous training, or trials sharing the
            # engines, have several calls in flight: one lost worker fails each of them, and each is
            # repeated, but it was lost once)
            self.restarts += sum(a != b for a, b in zip(before, self.pids))
        if self._adapter is not None:
            self._serve(*self._adapter)

    @staticmethod
    def _wait_alive(worker, timeout: float = 900.0) -> int:
        """The worker's pid once it answers; while Ray restarts it, calls fail with ActorUnavailableError."""
        deadline = time.time() + timeout
        while True:
            try:
                return ray.get(worker.info.remote())["pid"]
            except ray.exceptions.ActorUnavailableError:
                if time.time() > deadline:
                    raise
                time.sleep(1.0)
                interrupts.check()

    def _retrying(self, call):
        from align.workers.rollout import StaleAdapter

        attempt = 0
        while True:
            try:
                return call()
            except (ray.exceptions.RayActorError, StaleAdapter) as exc:
                self._recover(exc, attempt)
                attempt += 1

    def load_adapter(self, version: int, tensors_ref, adapter_config: dict) -> float:
        """Every worker serves the new adapter; returns the slowest worker's seconds."""
        self._adapter = (version, tensors_ref, adapter_config)
        return self._retrying(lambda: self._serve(version, tensors_ref, adapter_config))

    def set_adapter(self, version: int, tensors_ref, adapter_config: dict) -> None:
        """The version later calls sample from, without loading it now (asynchronous training: the
        engines may be generating an earlier batch; each call carries its version, and an engine loads
        it when the call starts)."""
        self._adapter = (version, tensors_ref, adapter_config)

    def _serve(self, version: int, tensors_ref, adapter_config: dict) -> float:
        return max(
            gather([w.load_adapter.remote(version, tensors_ref, adapter_config) for w in self.workers])
        )

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        logprobs_for: int | None = None,
        forced: bool = False,
        **sampling,
    ) -> list[list[dict]]:
        """Groups of samples per prompt; sampling log-probs for the first ``logprobs_for`` prompts.
        ``forced``: AdaptThink's forced-mode rollouts (``RolloutEngine.generate_forced``)."""
        return self.submit(prompts, seeds, logprobs_for, forced, **sampling).result()[0]

    def submit(
        self,
        prompts: list[str],
        seeds: list[int],
        logprobs_for: int | None = None,
        forced: bool = False,
        adapter: tuple | None = None,
        **sampling,
    ) -> "PendingRollout":
        """``generate`` without waiting: the workers start now, ``.result()`` collects (and repeats the
        call if a worker was lost). ``adapter`` = (version, tensors ref, config) to sample from
        (default: the version served now); each worker loads it first if it serves another one."""
        shares = shard_indices(len(prompts), len(self.workers))
        k = len(prompts) if logprobs_for is None else logprobs_for
        adapter = adapter if adapter is not None else self._adapter
        serve = {}
        if adapter is not None and sampling.get("use_adapter", True):
            sampling["adapter_version"] = adapter[0]
            serve = {"serve": (adapter[0], adapter[2]), "serve_tensors": adapter[1]}
        method = "generate_forced" if forced else "generate"

        def call() -> list:
            return [
                w.call_timed.remote(
                    method,
                    [prompts[i] for i in idx],
                    seeds=[seeds[i] for i in idx],
                    logprobs_for=sum(i < k for i in idx),
                    **serve,
                    **sampling,
                )
                for w, idx in zip(self.workers, shares)
                if idx
            ]

        return PendingRollout(self, call)


class PendingRollout:
    """A generate call in flight (``RolloutGroup.submit``)."""

    def __init__(self, group: RolloutGroup, call):
        self.group, self.call = group, call
        self.futures = call()

    def result(self) -> tuple[list[list[dict]], dict[str, float]]:
        """The groups of samples, and the call's ``start``/``end`` times on the engines (the earliest
        start, the latest end). A call that fails because a worker died, or that reached a restarted
        worker, is repeated once the worker is back (its seeds make the repeat sample the same)."""
        from align.workers.rollout import StaleAdapter

        attempt = 0
        while True:
            try:
                outs = gather(self.futures)
                break
            except (ray.exceptions.RayActorError, StaleAdapter) as exc:
                self.group._recover(exc, attempt)
                attempt += 1
                self.futures = self.call()
        groups = [group for out in outs for group in out["result"]]
        return groups, {"start": min(o["start"] for o in outs), "end": max(o["end"] for o in outs)}


class LearnerLost(RuntimeError):
    """A learner rank died (killed, out of memory, its node lost)."""


class LearnerGroup:
    """``num_ranks`` DeepSpeed ranks training in lockstep (data parallel).

    Every call waits with :func:`gather`: a rank that dies makes the call raise ``LearnerLost`` at
    once instead of leaving the others blocked in a collective. The trainer then calls
    :meth:`restart` and restores the last checkpoint (``Trainer._recover_learners``).
    """

    def __init__(
        self,
        spec: "LearnerSpec | dict",
        num_ranks: int,
        num_cpus: float,
        num_gpus: float = 0,
        seed: int = 0,
        wait: bool = True,
    ):
        from align.workers.learner.spec import LearnerSpec

        spec = LearnerSpec.of(spec)
        self._args = (spec, num_ranks, num_cpus, num_gpus, seed)
        self.micro_batch_size = spec.micro_batch_size
        self._start(wait)

    def _start(self, wait: bool = True) -> None:
        from align.workers.learner.rank import Learner

        spec, num_ranks, num_cpus, num_gpus, seed = self._args
        port = free_port()  # a fresh rendezvous for every start
        actor = ray.remote(Learner).options(num_cpus=num_cpus, num_gpus=num_gpus)
        self.ranks = [actor.remote(spec, r, num_ranks, port, seed) for r in range(num_ranks)]
        self._starting = [r.ping.remote() for r in self.ranks]
        if wait:
            self.ready()

    def ready(self) -> "LearnerGroup":
        """Wait for every rank's engine (``wait=False`` lets the caller start other actors meanwhile)."""
        if self._starting:
            self.pids = self._gather(self._starting)
            self._starting = []
        return self

    def _gather(self, refs: list) -> list:
        try:
            return gather(refs)
        except ray.exceptions.RayActorError as exc:
            raise LearnerLost(f"a learner rank died: {str(exc).splitlines()[0][:300]}") from exc
        except ray.exceptions.RayTaskError as exc:
            # a surviving rank's collective failed first ("connection closed by peer"): was a rank lost?
            dead = self._dead_ranks()
            if dead:
                raise LearnerLost(
                    f"learner rank(s) {dead} died (a surviving rank's collective then failed: "
                    f"{str(getattr(exc, 'cause', exc)).splitlines()[0][:200]})"
                ) from exc
            raise

    def _dead_ranks(self, timeout: float = 30.0) -> list[int]:
        """Ranks whose process is gone (a rank that does not answer within ``timeout`` counts as alive)."""
        dead = []
        for i, rank in enumerate(self.ranks):
            try:
                ray.get(rank.ping.remote(), timeout=timeout)
            except ray.exceptions.RayActorError:
                dead.append(i)
            except ray.exceptions.GetTimeoutError:
                pass
        return dead

    def restart(self) -> None:
        """Kill every rank (survivors may be stuck in a collective) and start the group afresh."""
        for r in self.ranks:
            ray.kill(r, no_restart=True)
        self._start()

    def _shares(self, batch: dict) -> list[tuple[list[int], dict]]:
        n = batch["input_ids"].shape[0]
        return [(idx, {k: v[idx] for k, v in batch.items()}) for idx in shard_indices(n, len(self.ranks))]

    def compute_logprobs(
        self, batch: dict, temperature: float, reference: bool, policy: bool = True, adapter=None
    ) -> dict[str, torch.Tensor]:
        """``Learner.compute_logprobs`` over the ranks; ``adapter``: an earlier version's LoRA tensors
        (or their object ref) for the policy pass."""
        shares = self._shares(batch)
        outs = self._gather(
            [
                r.compute_logprobs.remote(share, temperature, reference, policy, adapter)
                for r, (_, share) in zip(self.ranks, shares)
            ]
        )
        return {key: self._rows(batch, shares, [o[key] for o in outs]) for key in outs[0]}

    def per_token(self, component: str, method: str, batch: dict) -> torch.Tensor:
        """A component's per-token pass ``(b, L - 1)`` over the ranks (``Learner.per_token``)."""
        shares = self._shares(batch)
        refs = [r.per_token.remote(component, method, s) for r, (_, s) in zip(self.ranks, shares)]
        return self._rows(batch, shares, self._gather(refs))

    def compute_values(self, batch: dict) -> torch.Tensor:
        """PPO's critic values ``(b, L - 1)`` (the critic component's ``values``)."""
        return self.per_token("critic", "values", batch)

    @staticmethod
    def _rows(batch: dict, shares: list, parts: list[torch.Tensor]) -> torch.Tensor:
        """Per-token results of the ranks' shares, back in the batch's rows, ``(b, L - 1)``."""
        full = torch.zeros(batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
        for (idx, _), part in zip(shares, parts):
            full[idx, : part.shape[1]] = part
        return full

    def train_step(self, batch: dict, cfg) -> dict[str, float]:
        """One optimizer step over ``batch`` of loss kind ``cfg.kind`` (``align.workers.learner.kinds``:
        policy, pair, reward_model or value; a config or a plain dict): the kind splits the batch over
        the ranks and gives the global normalisers, every rank runs the same number of micro-batches,
        and the kind merges the ranks' statistics into the step's metrics."""
        from align.workers.learner.kinds import KINDS, loss_config

        cfg = loss_config(cfg)
        kind = KINDS[cfg.kind]
        shares, normalizers, num_micro = kind.plan(batch, cfg, len(self.ranks), self.micro_batch_size)
        stats = self._gather(
            [
                r.train_step.remote(share, cfg, normalizers, num_micro)
                for r, (_, share) in zip(self.ranks, shares)
            ]
        )
        return kind.reduce(stats)

    def objective_gradients(
        self,
        batch: dict,
        advantages: np.ndarray,
        cfg,
        param_pattern: str | None = None,
        clip: float | None = None,
    ) -> np.ndarray:
        """Gram matrix ``(K, K)`` of the whole batch's per-objective policy-loss gradients (one
        backward pass per objective on every rank, summed across ranks)."""
        from align.workers.learner.kinds import KINDS, loss_config

        cfg = loss_config(cfg)
        shares, normalizers, num_micro = KINDS["policy"].plan(
            batch, cfg, len(self.ranks), self.micro_batch_size
        )
        adv = torch.as_tensor(np.asarray(advantages), dtype=torch.float32)  # (K, N)
        grams = self._gather(
            [
                r.objective_gradients.remote(
                    share, adv[:, idx], cfg, normalizers, num_micro, param_pattern, clip
                )
                for r, (idx, share) in zip(self.ranks, shares)
            ]
        )
        return grams[0]

    def sequence_logps(self, batch: dict, which: list[str]) -> dict[str, torch.Tensor]:
        """Per-row completion log-prob sums for each of ``which`` (``reference`` or an adapter name)."""
        shares = self._shares(batch)
        outs = self._gather(
            [r.sequence_logps.remote(share, which) for r, (_, share) in zip(self.ranks, shares)]
        )
        return {w: torch.cat([o[w] for o in outs]) for w in which}

    def set_lrs(self, lrs: list[float]) -> None:
        """Every rank's learning rate per LoRA module (``Learner.set_lrs``)."""
        self._gather([r.set_lrs.remote(lrs) for r in self.ranks])

    def reset(self) -> None:
        """Every rank back to its first state (``Learner.reset``)."""
        self._gather([r.reset.remote() for r in self.ranks])

    def use_slot(self, slot: str, seed: int, lr: float) -> None:
        """Every rank makes trial ``slot``'s state the live one (``Learner.use_slot``)."""
        self._gather([r.use_slot.remote(slot, seed, lr) for r in self.ranks])

    def drop_slot(self, slot: str) -> None:
        self._gather([r.drop_slot.remote(slot) for r in self.ranks])

    def adapter(self, name: str = "default") -> tuple[dict[str, np.ndarray], dict]:
        return self._gather(
            [self.ranks[0].adapter_state.remote(name), self.ranks[0].peft_config_dict.remote()]
        )

    def all_adapters(self, name: str = "default") -> list[dict[str, np.ndarray]]:
        return self._gather([r.adapter_state.remote(name) for r in self.ranks])

    def optimizer_states(self) -> list[dict[str, np.ndarray]]:
        return self._gather([r.optimizer_state.remote() for r in self.ranks])

    def load_state(self, adapter: dict, optimizer_states: list[dict] | None, name: str = "default") -> None:
        if optimizer_states is not None and len(optimizer_states) != len(self.ranks):
            raise ValueError(
                f"the checkpoint has optimizer state for {len(optimizer_states)} learner ranks; "
                f"this run has learner.num_ranks={len(self.ranks)}"
            )
        self._gather(
            [
                r.load_state.remote(adapter, optimizer_states[i] if optimizer_states else None, name)
                for i, r in enumerate(self.ranks)
            ]
        )


def timed(fn, *args, **kwargs):
    t0 = time.time()
    out = fn(*args, **kwargs)
    return out, time.time() - t0
