"""Starting a run's actors: Ray (started, joined, or the one this process is already in), then the
learner ranks, rollout workers and reward actors, each start-up phase timed; and freeing them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from align.runner.cluster import start_ray


@dataclass
class Actors:
    """A run's actor groups (``rollouts`` / ``rewards`` None when the method needs none) and whether
    this process started the Ray cluster they run in (then it shuts it down at the end)."""

    learners: Any
    rollouts: Any
    rewards: Any
    owns_ray: bool

    def release(self) -> None:
        """Kill the groups' actors (a run in a cluster it did not start frees what it used)."""
        import ray

        actors = [
            *getattr(self.rewards, "actors", []),
            *getattr(self.learners, "ranks", []),
            *getattr(self.rollouts, "workers", []),
        ]
        for actor in actors:
            if actor is not None:
                ray.kill(actor)


def check_plugins(cfg, config_dir: str | None) -> None:
    """What can be checked without Ray, before it starts: function rewards import (as the reward actor
    will import them), reward-model folders exist."""
    from align.models.builtin import resolve_model_path

    for entry in cfg.rewards:
        entry.precheck(config_dir, resolve_model_path)


def start_actors(
    cfg, lspec, rspec, rewards: bool, clock, config_dir: str | None, address: str | None = None
) -> Actors:
    """Ray, then the learner ranks, rollout workers (``rspec`` None: none) and reward actors
    (``rewards``), each phase recorded on ``clock``; learners and rollout engines load at the same
    time (each waits on its own model load). Ray started here is shut down again if an actor fails
    to start."""
    clock.record("config and data", time.time() - clock.t0)
    with clock.phase("ray"):
        check_plugins(cfg, config_dir)
        gpu, owns_ray = start_ray(cfg, address, cfg.rollout.num_workers if rspec is not None else 0)
    try:
        return _start_groups(cfg, lspec, rspec, rewards, clock, config_dir, gpu, owns_ray)
    except BaseException:
        if owns_ray:  # a cluster this call started, and nothing of the run left in it
            import ray

            ray.shutdown()
        raise


def _start_groups(cfg, lspec, rspec, rewards: bool, clock, config_dir, gpu: int, owns_ray: bool) -> Actors:
    from align.workers.groups import LearnerGroup, RolloutGroup
    from align.workers.reward import RewardPool

    t0 = time.time()
    learners = LearnerGroup(
        lspec, cfg.learner.num_ranks, cfg.learner.num_cpus, gpu, cfg.trainer.seed, wait=False
    )
    rollouts = None
    if rspec is not None:
        rollouts = RolloutGroup(
            rspec, cfg.rollout.num_workers, cfg.rollout.num_cpus, gpu, cfg.trainer.actor_restarts, wait=False
        )
    pool = None
    if rewards:
        with clock.phase("reward actors", f"{len(cfg.rewards)}"):
            pool = RewardPool([r.model_dump() for r in cfg.rewards], config_dir, cfg.trainer.actor_restarts)
    learners.ready()
    clock.record("learners", time.time() - t0, f"{cfg.learner.num_ranks} DeepSpeed rank(s)")
    if rollouts is not None:
        rollouts.ready()
        clock.record(
            "rollout workers",
            time.time() - t0,
            f"{cfg.rollout.num_workers} vLLM engine(s), lora_mode={rollouts.lora_mode}, started with the "
            f"learners; the engine's own load {rollouts.start_seconds:.1f}s",
        )
    return Actors(learners, rollouts, pool, owns_ray)
