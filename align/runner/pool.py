"""Actors kept between runs of one process: ``with ActorPool().active(): ...`` makes every ``Trainer``
run in the block take the kept actors when they are the ones it would start, instead of starting its
own (a notebook or a script running several configs one after another; the test suite).

A run takes them as a trial of a sweep job takes its job's actors (``align.workers.shared``): a
learner slot of its own (its seed's LoRA initialisation, a fresh optimizer state, its RNG), adapter
versions numbered apart on the rollout engines, the reward actors as they are. So its samples,
losses and updates are those of a run on actors of its own (``tests/integration/test_sweep_jobs.py``
shows it for a job). What must agree is what ``align.runner.jobs.share_key`` says a job's trials
share: the model and LoRA, the learner and rollout engines, the reward definitions; a run whose
method keeps more learner state than one LoRA module (PPO, OFS-DPO, a reward model), or whose seed
the kept learners were not started for, starts its own actors as usual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from typing import ClassVar

log = logging.getLogger("align.runner.pool")


class _Counted:
    """A group as one run sees it: its ``restarts`` counted from when the run took it."""

    def __init__(self, group):
        self._group, self._base = group, getattr(group, "restarts", 0)

    def __getattr__(self, name: str):
        return getattr(self._group, name)

    @property
    def restarts(self) -> int:
        return getattr(self._group, "restarts", 0) - self._base


class _Kept:
    """One kept set of actors."""

    def __init__(self, key: str, actors):
        from align.workers.shared import SharedLearners

        self.key, self.actors = key, actors
        self.learners = SharedLearners(actors.learners)
        self.runs = 0

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            self.actors.release()


class PoolLease:
    """The kept actors one run uses (``Trainer.shared``): views for it, released when it ends."""

    def __init__(self, kept: _Kept, index: int):
        self.kept, self.index = kept, index
        self.slot = f"run-{index}"

    def views(self, trainer):
        from align.workers.shared import RolloutSlot

        cfg, actors = trainer.cfg, self.kept.actors
        learners = self.kept.learners.view(self.slot, cfg.trainer.seed, cfg.learner.lr)
        rollouts = _Counted(RolloutSlot(actors.rollouts, self.index)) if actors.rollouts is not None else None
        rewards = _Counted(actors.rewards) if actors.rewards is not None else None
        return learners, rollouts, rewards

    def release(self, trainer) -> None:
        try:
            self.kept.learners.drop(self.slot)
        except Exception as exc:  # a lost rank: nothing to forget
            log.debug("releasing %s: %s", self.slot, exc)


class ActorPool:
    """Kept actor sets (at most ``capacity``, the least recently used stopped first), each started for
    the seeds in ``seeds``."""

    current: ClassVar["ActorPool | None"] = None

    def __init__(self, seeds: tuple[int, ...] = (0, 1, 2), capacity: int = 1):
        self.seeds, self.capacity = tuple(sorted(set(seeds))), max(1, capacity)
        self._kept: list[_Kept] = []
        self._leases = 0
        self.started = 0  # actor sets started (the rest of the runs took kept ones)

    @contextlib.contextmanager
    def active(self):
        """Trainers run inside take kept actors where they can."""
        before, ActorPool.current = ActorPool.current, self
        try:
            yield self
        finally:
            ActorPool.current = before

    @staticmethod
    def key(trainer) -> str:
        """What the run's actors are: equal keys, interchangeable actors."""
        cfg, alg = trainer.cfg, trainer.algorithm
        learner = {
            k: v for k, v in dataclasses.asdict(trainer.lspec).items() if k not in ("lr", "slot_seeds")
        }
        rollout = None
        if trainer.rspec is not None:
            rollout = {
                k: v for k, v in dataclasses.asdict(trainer.rspec).items() if k not in ("seed", "max_loras")
            }
        rewards = [{k: v for k, v in r.model_dump().items() if k != "weight"} for r in cfg.rewards]
        return json.dumps(
            {
                "learner": learner,
                "ranks": (cfg.learner.num_ranks, cfg.learner.num_cpus),
                "rollout": rollout,
                "workers": (cfg.rollout.num_workers, cfg.rollout.num_cpus),
                "rewards": rewards if alg.uses_rewards else None,
                "actor_restarts": cfg.trainer.actor_restarts,
                "config_dir": trainer.config_dir,  # reward plug-ins are found relative to it
            },
            sort_keys=True,
            default=str,
        )

    def lease(self, trainer) -> PoolLease | None:
        """Kept actors for ``trainer`` (started now if none fit), or None: it starts its own."""
        if not trainer.algorithm.shares_learners() or trainer.cfg.trainer.seed not in self.seeds:
            return None
        key = self.key(trainer)
        kept = next((k for k in self._kept if k.key == key), None)
        if kept is None:
            while len(self._kept) >= self.capacity:
                self._kept.pop(0).close()
            lspec = dataclasses.replace(trainer.lspec, slot_seeds=list(self.seeds))
            actors = trainer._start_actors(lspec, trainer.rspec, rewards=trainer.algorithm.uses_rewards)
            kept = _Kept(key, actors)
            self.started += 1
        else:
            self._kept.remove(kept)
        self._kept.append(kept)  # most recently used last
        kept.runs += 1
        self._leases += 1
        return PoolLease(kept, self._leases)

    def close(self) -> None:
        """Stop every kept actor."""
        while self._kept:
            self._kept.pop().close()
