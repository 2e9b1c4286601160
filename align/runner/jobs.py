"""Several trials as one job on one set of actors (``align sweep`` with ``trials_per_job``).

Each trial is a ``Trainer`` of its own (objective state, seed, data order, metrics, checkpoints,
``--resume``), run in a thread of the job's driver; the job starts one learner group (holding every
trial's LoRA adapter and optimizer state over one base model), one group of rollout engines (serving
every trial's current adapter) and one reward pool, and hands each trainer views of them
(``align.workers.shared``). The actors take one call at a time, so the trials interleave: while one
trial's batch is generated, another's trains and a third's is scored. A trial that fails ends
alone; the others go on.

Trials can share a job when the actors they would start are the same: ``share_key`` says what must
agree (model, LoRA, learner engine, rollout engine, reward definitions, the method family) and what
each trial keeps for itself (seed, learning rate, reward weights, objective, loss settings, data).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass

from align.config import Config

log = logging.getLogger("align.runner.jobs")

# per-trial settings: a trial's own, never an actor's
TRIAL_OWN_ROLLOUT = ("temperature", "top_p", "logprob_check_prompts")


def share_key(cfg: Config) -> str:
    """Trials with equal keys can run in one job (``align.sweep`` groups them by it)."""
    from align.algorithms.base import algorithm_class

    d = cfg.model_dump(mode="json")
    alg = algorithm_class(cfg.algorithm.name)(cfg)
    key = {
        "model": d["model"],
        "algorithm": cfg.algorithm.name,
        "learner": {k: v for k, v in d["learner"].items() if k != "lr"},
        "rollout": {k: v for k, v in d["rollout"].items() if k not in TRIAL_OWN_ROLLOUT},
        "max_prompt_tokens": d["data"]["max_prompt_tokens"],
        "rewards": [{k: v for k, v in r.items() if k != "weight"} for r in d["rewards"]],
        "actor_restarts": cfg.trainer.actor_restarts,
        # a method with more learner state than one LoRA module runs alone
        "alone": None if alg.shares_learners() else cfg.trainer.output_dir,
    }
    return json.dumps(key, sort_keys=True)


def _spec_diff(a, b, ignore: tuple[str, ...]) -> list[str]:
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return [k for k in da if k not in ignore and da[k] != db.get(k)]


class SharedActors:
    """The job's actors, started once from the first trial's specs; every trial's specs must agree
    with them (but for its seed and learning rate)."""

    def __init__(self, trainers: list):
        from align.workers.shared import SharedLearners

        first = trainers[0]
        for t in trainers[1:]:
            if not t.algorithm.shares_learners():
                raise ValueError(f"{t.run_dir.name}: {t.cfg.algorithm.name} cannot share learners")
            diff = _spec_diff(t.lspec, first.lspec, ("lr", "slot_seeds"))
            if (t.rspec is None) != (first.rspec is None):
                diff.append("rollout workers")
            elif t.rspec is not None:
                diff += [f"rollout {k}" for k in _spec_diff(t.rspec, first.rspec, ("seed", "max_loras"))]
            if diff or t.algorithm.uses_rewards != first.algorithm.uses_rewards:
                raise ValueError(
                    f"trials {first.run_dir.name} and {t.run_dir.name} cannot share actors: they differ in "
                    f"{', '.join(diff) or 'reward actors'}"
                )
        self.index = {id(t): i for i, t in enumerate(trainers)}
        seeds = sorted({t.cfg.trainer.seed for t in trainers})
        lspec = dataclasses.replace(first.lspec, slot_seeds=seeds)
        rspec = dataclasses.replace(first.rspec, max_loras=len(trainers)) if first.rspec is not None else None
        # started by the first trainer, as it starts its own (Ray, the start-up clock, plug-ins checked)
        actors = first._start_actors(lspec, rspec, rewards=first.algorithm.uses_rewards)
        self.rollouts, self.rewards, self.owns_ray = actors.rollouts, actors.rewards, actors.owns_ray
        self.learners = SharedLearners(actors.learners)

    def views(self, trainer):
        """(learners, rollouts, rewards) as ``trainer`` sees them."""
        from align.workers.shared import RolloutSlot

        i, cfg = self.index[id(trainer)], trainer.cfg
        learners = self.learners.view(trainer.run_dir.name, cfg.trainer.seed, cfg.learner.lr)
        rollouts = RolloutSlot(self.rollouts, i) if self.rollouts is not None else None
        return learners, rollouts, self.rewards

    def release(self, trainer) -> None:
        """``trainer`` ended (finished or failed): the learners forget its state."""
        try:
            self.learners.drop(trainer.run_dir.name)
        except Exception as exc:  # a lost rank: nothing to forget
            log.debug("releasing %s: %s", trainer.run_dir.name, exc)

    def close(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        if self.owns_ray:
            ray.shutdown()
            return
        actors = [
            *getattr(self.rewards, "actors", []),
            *self.learners.group.ranks,
            *getattr(self.rollouts, "workers", []),
        ]
        for actor in actors:
            ray.kill(actor)


class Turns:
    """At most ``width`` trials hold a turn at once, served first come, first served: a trial that
    ends its step asks again at the back of the queue, so the trials advance together. One turn
    (the default) gives each step every core; more let one trial's batch generate while another's
    trains, which pays where the engine and the learners do not compete for the same cores (split
    with ``rollout.threads`` / ``learner.threads``, or on GPUs)."""

    def __init__(self, width: int = 1):
        self.width = max(1, width)
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self._holding = 0

    def __enter__(self) -> "Turns":
        me = object()
        with self._cond:
            self._queue.append(me)
            self._cond.wait_for(lambda: self._queue[0] is me and self._holding < self.width)
            self._queue.popleft()
            self._holding += 1
            self._cond.notify_all()
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._holding -= 1
            self._cond.notify_all()


@dataclass
class TrialRun:
    """One trial of a job: its name, validated config, config folder and whether it resumes."""

    name: str
    config: Config
    config_dir: str | None = None
    resume: bool = False


def run_trials(
    runs: list[TrialRun], address: str | None = None, concurrency: int = 1
) -> dict[str, dict | BaseException]:
    """Run ``runs`` as one job; returns each trial's summary (``Trainer.run``'s) or the exception
    it ended with. Each trial is prepared (its data and checkpoint read) before the actors start;
    one that cannot be prepared fails alone. ``concurrency``: trials stepping at once (``Turns``)."""
    from align.runner.trainer import Trainer

    results: dict[str, dict | BaseException] = {}
    trainers: dict[str, Trainer] = {}
    for r in runs:
        t = Trainer(r.config, r.config_dir, address=address, resume=r.resume)
        try:
            t.prepare()
        except Exception as exc:
            log.error("trial %s failed before it started: %s", r.name, exc)
            results[r.name] = exc
            continue
        t.tag = f"[{r.name}] "
        trainers[r.name] = t
    if not trainers:
        return results
    t0 = time.time()
    shared = SharedActors(list(trainers.values()))
    log.info(
        "job: %d trial(s) on one set of actors (started in %.1fs): %s",
        len(trainers),
        time.time() - t0,
        ", ".join(trainers),
    )

    def run(name: str, trainer: Trainer) -> None:
        try:
            results[name] = trainer.run()
        except BaseException as exc:  # one trial's failure is its own
            log.error("trial %s failed: %s: %s", name, type(exc).__name__, exc)
            results[name] = exc

    turns = Turns(concurrency)
    try:
        threads = []
        for name, t in trainers.items():
            t.shared, t.turn = shared, turns
            th = threading.Thread(target=run, args=(name, t), name=f"trial-{name}", daemon=True)
            th.start()
            threads.append(th)
        for th in threads:
            while th.is_alive():
                th.join(timeout=1.0)
    finally:
        shared.close()
    return results
