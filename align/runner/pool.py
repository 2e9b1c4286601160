"""Actors kept between runs of one process: ``with ActorPool().active(): ...`` makes every ``Trainer``
run in the block take the kept actors when they are the ones it would start, instead of starting its
own (a notebook or a script running several configs one after another; the test suite).

A run takes them in one of two ways, so that its samples, losses and updates are those of a run on
actors of its own:

- as a trial of a sweep job takes its job's actors (``align.workers.shared``): a learner slot of its
  own (its seed's LoRA initialisation, a fresh optimizer state, its RNG), for a method whose learner
  state is one LoRA module and a seed among the pool's ``seeds``;
- one run after another (any method: PPO's critic, OFS-DPO's two modules, a reward model): the
  learners are put back to their first state before the run (``Learner.reset``), for a run of the
  seed and learning rate they were started with.

Either way the run gets adapter versions numbered apart on the rollout engines and the reward actors
as they are. What must agree is what ``align.runner.jobs.share_key`` says a job's trials share: the
model and LoRA, the learner and rollout engines, the reward definitions; a run that fits no kept set
starts one (the least recently used set is stopped first).
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
    """One kept set of learner ranks and rollout workers (shared by slots, or reset between runs)."""

    def __init__(self, key: str, actors, slots: bool):
        from align.workers.shared import SharedLearners

        self.key, self.actors, self.slots = key, actors, slots
        self.learners = SharedLearners(actors.learners) if slots else None
        self.runs = 0
        self.busy = False  # a run without slots uses it (the next one resets it first)

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            self.actors.release()


class _KeptRewards:
    """One kept reward pool. Reward actors are kept apart from the engines: runs that differ only in
    their rewards share the engines, and reward actors start in seconds."""

    def __init__(self, key: str, pool):
        self.key, self.pool = key, pool

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            self.pool.release()


class PoolLease:
    """The kept actors one run uses (``Trainer.shared``): views for it, released when it ends."""

    def __init__(self, kept: _Kept, rewards, index: int):
        self.kept, self.rewards, self.index = kept, rewards, index
        self.slot = f"run-{index}"

    def views(self, trainer):
        from align.workers.shared import RolloutSlot

        cfg, actors = trainer.cfg, self.kept.actors
        if self.kept.slots:
            learners = self.kept.learners.view(self.slot, cfg.trainer.seed, cfg.learner.lr)
        else:
            learners = actors.learners
        rollouts = _Counted(RolloutSlot(actors.rollouts, self.index)) if actors.rollouts is not None else None
        rewards = _Counted(self.rewards) if self.rewards is not None else None
        return learners, rollouts, rewards

    def release(self, trainer) -> None:
        self.kept.busy = False
        if not self.kept.slots:
            return
        try:
            self.kept.learners.drop(self.slot)
        except Exception as exc:  # a lost rank: nothing to forget
            log.debug("releasing %s: %s", self.slot, exc)


class ActorPool:
    """Kept engine sets (at most ``capacity``) and reward pools (at most ``reward_capacity``), the
    least recently used stopped first; learners shared by slots are started for the seeds in ``seeds``."""

    current: ClassVar["ActorPool | None"] = None

    def __init__(self, seeds: tuple[int, ...] = (0, 1, 2), capacity: int = 1, reward_capacity: int = 3):
        self.seeds, self.capacity = tuple(sorted(set(seeds))), max(1, capacity)
        self.reward_capacity = max(1, reward_capacity)
        self._kept: list[_Kept] = []
        self._rewards: list[_KeptRewards] = []
        self._leases = 0
        self.started = 0  # engine sets started (the other runs took kept ones)
        self.closed = False  # after close: runs start their own actors

    @contextlib.contextmanager
    def active(self):
        """Trainers run inside take kept actors where they can."""
        before, ActorPool.current = ActorPool.current, self
        try:
            yield self
        finally:
            ActorPool.current = before

    def slots_fit(self, trainer) -> bool:
        """Whether the run can take a learner slot (else it takes the learners one run after another)."""
        return trainer.algorithm.shares_learners() and trainer.cfg.trainer.seed in self.seeds

    def key(self, trainer) -> str:
        """What the run's learner ranks and rollout workers are: equal keys, interchangeable actors."""
        cfg, slots = trainer.cfg, self.slots_fit(trainer)
        # a slot has its own learning rate and seed; a reset rank has the ones it was started with
        own = ("lr", "slot_seeds") if slots else ("slot_seeds",)
        learner = {k: v for k, v in dataclasses.asdict(trainer.lspec).items() if k not in own}
        rollout = None
        if trainer.rspec is not None:
            rollout = {
                k: v for k, v in dataclasses.asdict(trainer.rspec).items() if k not in ("seed", "max_loras")
            }
        return json.dumps(
            {
                "learner": learner,
                "ranks": (cfg.learner.num_ranks, cfg.learner.num_cpus),
                "rollout": rollout,
                "workers": (cfg.rollout.num_workers, cfg.rollout.num_cpus),
                "actor_restarts": cfg.trainer.actor_restarts,
                "slots": slots,
                "seed": None if slots else cfg.trainer.seed,
            },
            sort_keys=True,
            default=str,
        )

    @staticmethod
    def reward_key(cfg, config_dir: str | None) -> str:
        """What a run's reward actors are (weights aside: the objective applies them on the driver;
        plug-ins are found relative to the config's folder)."""
        rewards = [{k: v for k, v in r.model_dump().items() if k != "weight"} for r in cfg.rewards]
        return json.dumps([rewards, config_dir, cfg.trainer.actor_restarts], default=str)

    def eval_views(self, cfg, rspec, config_dir: str | None):
        """Rollout workers and rewards for an evaluation (``align.eval.checkpoints.run_eval``) from a
        kept set whose engines are the ones it would start (one worker of ``rspec``), with adapter
        versions numbered apart; None when no kept set fits."""
        from align.workers.shared import RolloutSlot

        want = {k: v for k, v in dataclasses.asdict(rspec).items() if k not in ("seed", "max_loras")}
        want = json.loads(json.dumps(want, default=str))
        for kept in reversed(self._kept):
            rollouts = kept.actors.rollouts
            if rollouts is None or kept.busy or len(rollouts.workers) != 1:
                continue
            if json.loads(kept.key)["rollout"] == want:
                key = self.reward_key(cfg, config_dir)
                rewards = self._take(
                    self._rewards,
                    key,
                    self.reward_capacity,
                    lambda k: _KeptRewards(k, self._new_rewards(cfg, config_dir)),
                )
                self._leases += 1
                return RolloutSlot(rollouts, self._leases), rewards.pool
        return None

    @staticmethod
    def _new_rewards(cfg, config_dir: str | None):
        from align.workers.reward import RewardPool

        return RewardPool([r.model_dump() for r in cfg.rewards], config_dir, cfg.trainer.actor_restarts)

    def lease(self, trainer) -> PoolLease | None:
        """Kept actors for ``trainer`` (started now if none fit), or None while another run holds the
        ones it would take (it starts its own)."""
        key = self.key(trainer)
        if self.closed or any(k.key == key and k.busy for k in self._kept):
            return None
        kept = self._take(self._kept, key, self.capacity, lambda k: self._start(k, trainer))
        if not kept.slots:
            if kept.runs:
                kept.actors.learners.reset()
            kept.busy = True
        kept.runs += 1
        rewards = None
        if trainer.algorithm.uses_rewards:
            key = self.reward_key(trainer.cfg, trainer.config_dir)
            rewards = self._take(
                self._rewards, key, self.reward_capacity, lambda k: self._reward_pool(k, trainer)
            )
        self._leases += 1
        return PoolLease(kept, rewards.pool if rewards is not None else None, self._leases)

    @staticmethod
    def _take(kept: list, key: str, capacity: int, start):
        """The kept entry of ``key`` (started with ``start(key)`` when there is none, the least recently
        used stopped first), now the most recently used."""
        entry = next((k for k in kept if k.key == key), None)
        if entry is None:
            while len(kept) >= capacity:
                kept.pop(0).close()
            entry = start(key)
        else:
            kept.remove(entry)
        kept.append(entry)
        return entry

    def _start(self, key: str, trainer) -> _Kept:
        slots = self.slots_fit(trainer)
        if slots:
            lspec = dataclasses.replace(trainer.lspec, slot_seeds=list(self.seeds))
        else:
            lspec = dataclasses.replace(trainer.lspec, keep_fresh=True)
        self.started += 1
        return _Kept(key, trainer._start_actors(lspec, trainer.rspec, rewards=False), slots)

    def _reward_pool(self, key: str, trainer) -> _KeptRewards:
        with trainer.clock.phase("reward actors", f"{len(trainer.cfg.rewards)}"):
            return _KeptRewards(key, self._new_rewards(trainer.cfg, trainer.config_dir))

    def release(self) -> None:
        """Stop every kept actor (their memory goes); later runs start and keep new ones."""
        for kept in (self._kept, self._rewards):
            while kept:
                kept.pop().close()

    def close(self) -> None:
        """Stop every kept actor; later runs start their own."""
        self.closed = True
        self.release()
