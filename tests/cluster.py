"""A Ray cluster shared by many tests (the integration package's, ``tests/integration/conftest.py``;
the fault tests' module), the actors they keep between runs, and freeing what a test started in it."""

from __future__ import annotations

import contextlib

# Logical CPUs of the shared cluster: actor sets kept between tests (``align.runner.pool``) hold their
# reservations while idle, and a test that starts actors of its own must still be placed; the cores
# are the machine's either way.
LOGICAL_CPUS = 64
POOL_CAPACITY = 2  # engine sets kept at once (the tiny model's: about 3 GiB each, 12% of a core idle)


def ensure_ray() -> None:
    """The package's cluster (started here when a test runs alone)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=LOGICAL_CPUS, include_dashboard=False, log_to_driver=False)


def kill(*things) -> None:
    """Kill actors, or the actors of groups (learner ranks, rollout workers, reward actors), a test
    started: their processes, and the memory they hold, go now."""
    import ray

    for t in things:
        if t is None:
            continue
        actors = [*getattr(t, "ranks", []), *getattr(t, "workers", []), *getattr(t, "actors", [])]
        for a in actors or [t]:
            if a is not None:
                ray.kill(a)


class Tracked:
    """``with Tracked(RewardPool) as made: ...``: every instance of ``cls`` made inside is killed at
    the end (tests that make many without keeping them)."""

    def __init__(self, cls):
        self.cls, self.made = cls, []

    def __enter__(self) -> list:
        original, made = self.cls.__init__, self.made

        def init(obj, *args, **kwargs):
            made.append(obj)
            original(obj, *args, **kwargs)

        self._original, self.cls.__init__ = original, init
        return made

    def __exit__(self, *exc) -> None:
        self.cls.__init__ = self._original
        kill(*self.made)


# The integration modules' order (``tests/conftest.py`` sorts by it): runs that take the same kept
# actors one after another, the modules that start their own last.
ORDER = (
    "test_builtin_model",
    "test_cli",
    "test_algorithms",
    "test_train_grpo",
    "test_async",
    "test_multi_objective",
    "test_ppo",
    "test_preference",
    "test_custom_rewards",
    "test_adaptthink",
    "test_merged_rollout",
    "test_learner_invariance",
    "test_reward_pool",
    "test_vllm_serves_builtin",
    "test_sweep_jobs",
    "test_smollm2",
)

_OPEN: dict = {}  # kept-actor sessions not yet stopped, by owner


@contextlib.contextmanager
def kept_actors(owner: str):
    """The shared cluster, and an ``ActorPool`` active inside: in-process runs take kept actors where
    they fit (a learner slot, or the learners reset between runs); stopped at the end (or by
    ``stop_kept_actors``, whichever comes first)."""
    from align.runner.pool import ActorPool

    ensure_ray()
    pool = ActorPool(seeds=(0, 1, 2), capacity=POOL_CAPACITY)
    _OPEN[owner] = pool
    try:
        with pool.active():
            yield pool
    finally:
        stop_kept_actors(owner)


def stop_kept_actors(owner: str) -> None:
    """Stop ``owner``'s kept-actor session, if open, and the shared cluster (a test that must find no
    Ray, such as the bad-input tests, runs after this)."""
    import ray

    pool = _OPEN.pop(owner, None)
    if pool is None:
        return
    pool.close()
    if ray.is_initialized():
        ray.shutdown()
