"""Reward workers: one Ray actor per configured reward, all scoring a batch at once, off the
learners' path, with the run's failure policy.

``RewardPool.submit`` sends a batch to every reward actor and returns at once; ``result`` waits
(each reward up to its ``timeout``) and applies each reward's ``on_failure`` policy to what went
wrong, per reward:

- the reward raised (a function is re-run sample by sample to find the samples it raises on; a model
  or a server fails as a batch), or it ran past ``timeout`` (the actor is killed and replaced: a
  stuck call cannot be interrupted otherwise), or it gave NaN/inf for a sample;
- ``error``: stop the run with ``RewardError`` naming the reward, the sample and what it returned;
- ``skip``: drop those samples (out of the loss, neutral in their group's baseline) and count them
  in ``reward/skipped/<reward>/<raised|timeout|nan>``;
- ``retry``: score those samples again, up to ``retries`` times with backoff ``backoff * 2**k``
  seconds, then stop as ``error`` does. (An ``http`` reward also retries connection errors and
  timeouts of single requests by itself, ``rewards.http``.)

A reward that breaks its contract (wrong length, a non-number, not a list) stops the run whatever
the policy (``RewardContractError``): no retry or skip makes its values usable. ``None`` ("not
applicable") is never a failure. An actor that dies (killed, out of memory, its node
lost) is replaced and the batch scored again, up to ``max_restarts`` times per batch
(``trainer.actor_restarts``; metric ``faults/reward_restarts``); an actor that dies on every try (a
reward that crashes its process on some input) is then the reward's failure (``died``) under its
``on_failure`` policy.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import ray

from align.runner import interrupts
from rewards import RewardError, RewardScores, RewardValues, evaluate_reward
from rewards.config import entry_of
from rewards.scoring import RewardContractError, apply_failure_policy, combine

log = logging.getLogger("align.rewards")


def _resolve_builtin(name: str) -> str:
    """A ``builtin:NAME`` reward model's folder (imported only for one: a function reward's actor
    starts without torch)."""
    from align.models.builtin import resolve_model_path

    return resolve_model_path(name)


class RewardActor:
    """One reward (function, model or server client), loaded once in its own process."""

    def __init__(self, entry: dict, base_dir: str | None = None):
        self.entry = entry_of(entry)
        self.reward = self.entry.build(base_dir, _resolve_builtin)

    def ready(self) -> dict:
        """The process id, and what the scorer tells of itself (a server's /info: checks the URL and
        the token before the run starts)."""
        return {"pid": os.getpid(), **(self.reward.fn.info() if self.entry.reports_info else {})}

    def score(self, prompts: list, completions: list, columns: dict) -> RewardValues:
        return evaluate_reward(
            self.reward,
            prompts,
            completions,
            columns,
            per_sample=self.entry.per_sample,
        )


def _cause(exc: Exception) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception):
        return str(cause) if isinstance(cause, RewardError) else f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@dataclass
class Pending:
    """A batch sent to every reward actor."""

    refs: list
    args: tuple
    start: float


class RewardPool:
    """The run's rewards, each in its own actor; see the module docstring for the policies."""

    def __init__(self, entries: list[dict], base_dir: str | None = None, max_restarts: int = 3):
        self.entries = [dict(e, type=e.get("type", "function")) for e in entries]
        self.base_dir = base_dir
        self.max_restarts = max_restarts
        self.restarts = 0  # actors replaced after they died (metric faults/reward_restarts)
        self.actors = [self._start(e) for e in self.entries]
        self.pids = []
        for e, actor in zip(self.entries, self.actors):
            try:
                self.pids.append(ray.get(actor.ready.remote())["pid"])
            except Exception as exc:
                raise RewardError(
                    f"reward {e['name']!r} ({e['type']}) could not start: {_cause(exc)}"
                ) from None
        # objective names before the first scored batch (a reward that fails on its first batch)
        self.names = {e["name"]: (list(e["heads"]) if e.get("heads") else [e["name"]]) for e in self.entries}

    def _start(self, e: dict):
        options = {"num_cpus": 0, "num_gpus": e.get("num_gpus", 0) or 0, "max_restarts": 0}
        env = entry_of(e).actor_env()
        if env:
            options["runtime_env"] = {"env_vars": env}
        return ray.remote(RewardActor).options(**options).remote(e, self.base_dir)

    # ------------------------------------------------------------------ scoring
    def submit(self, prompts: list, completions: list, columns: dict | None = None) -> Pending:
        args = (list(prompts), list(completions), dict(columns or {}))
        shared = [ray.put(a) for a in args]  # one copy in the object store, read by every actor
        return Pending([a.score.remote(*shared) for a in self.actors], args, time.time())

    def score(self, prompts: list, completions: list, columns: dict | None = None) -> RewardScores:
        return self.result(self.submit(prompts, completions, columns))

    def result(self, pending: Pending) -> RewardScores:
        n = len(pending.args[1])
        dropped = np.zeros(n, dtype=bool)
        skipped: dict[str, int] = {}
        stats: dict[str, float] = {}
        results = [
            (e["name"], self._resolve(k, e, ref, pending, dropped, skipped, stats))
            for k, (e, ref) in enumerate(zip(self.entries, pending.refs))
        ]
        return combine(n, results, dropped, skipped, stats)

    def _wait(
        self, k: int, e: dict, ref, deadline: float | None, args: tuple
    ) -> tuple[RewardValues | None, str, str]:
        """The actor's values, or (None, reason, message) when it raised, timed out or kept dying. An
        actor that died is replaced and ``args`` scored again (up to ``max_restarts`` times)."""
        lost = 0
        while True:
            ready: list = []
            # 1 s slices: signal handlers run
            while not ready and (deadline is None or time.time() < deadline):
                ready, _ = ray.wait(
                    [ref], timeout=1.0 if deadline is None else max(0.0, min(1.0, deadline - time.time()))
                )
                interrupts.check()
            if not ready:
                # a stuck call cannot be interrupted: replace the actor (the new one loads the reward again)
                self._replace(k, e)
                return None, "timeout", f"reward {e['name']!r} timed out after {e['timeout']:g}s"
            try:
                return ray.get(ref), "", ""
            # killed, out of memory, node lost: a fresh actor rescores
            except ray.exceptions.RayActorError as exc:
                self._replace(k, e)
                lost += 1
                if lost > self.max_restarts:
                    return (
                        None,
                        "died",
                        (
                            f"reward {e['name']!r}: its actor died on {lost} tries "
                            f"(trainer.actor_restarts={self.max_restarts}; last: {_cause(exc)})"
                        ),
                    )
                log.warning(
                    "reward %r: its actor died (%s); replaced, scoring the batch again",
                    e["name"],
                    _cause(exc),
                )
                self.restarts += 1
                ref = self.actors[k].score.remote(*args)
                if e.get("timeout"):
                    deadline = time.time() + e["timeout"]
            except RewardContractError as exc:  # a bug in the reward: no policy makes its values usable
                raise RewardContractError(
                    f"{_cause(exc)}; this stops the run whatever on_failure says"
                ) from None
            except Exception as exc:
                return None, "raised", f"reward {e['name']!r} failed: {_cause(exc)}"

    def _replace(self, k: int, e: dict) -> None:
        ray.kill(self.actors[k], no_restart=True)
        self.actors[k] = self._start(e)
        self.pids[k] = ray.get(self.actors[k].ready.remote())["pid"]

    def _resolve(
        self, k: int, e: dict, ref, pending: Pending, dropped: np.ndarray, skipped: dict, stats: dict
    ) -> RewardValues:
        """Reward ``k``'s values for the batch under its ``on_failure`` policy (``apply_failure_policy``)."""
        prompts, completions, columns = pending.args
        name, timeout = e["name"], e.get("timeout")
        current = {"ref": ref, "deadline": pending.start + timeout if timeout else None}

        def attempt(i: int, rows: np.ndarray, args: tuple):
            if i > 0:  # a retry of the failing samples: a new call, a new deadline
                current["ref"] = self.actors[k].score.remote(*args)
                current["deadline"] = time.time() + timeout if timeout else None
            return self._wait(k, e, current["ref"], current["deadline"], args)

        values, drop, skip, spent = apply_failure_policy(
            name,
            e.get("on_failure", "error"),
            prompts,
            completions,
            columns,
            attempt,
            e.get("retries", 2),
            e.get("backoff", 0.5),
            self.names.get(name),
            warn=log.warning,
        )
        self.names[name] = values.names  # (when every try failed as a whole: the names known before)
        dropped |= drop
        skipped.update({key: skipped.get(key, 0) + v for key, v in skip.items()})
        if spent:
            stats[f"reward/retries/{name}"] = stats.get(f"reward/retries/{name}", 0) + spent
        return values

    def release(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
