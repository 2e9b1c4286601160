"""The integration tests share one Ray cluster, and the in-process runs that do not test start-up
share their actors: while the package runs, an ``align.runner.pool.ActorPool`` keeps the actor sets
runs start, and a later run whose actors would be the same takes them (a learner slot of its own, as
a sweep job's trial does: its samples, losses and updates are those of a run on its own actors).

A test marked ``own_actors`` starts everything itself, as a user's run does; so do the runs of the
command line (subprocesses), the sweep job's solo runs, the real model's runs and every reliability
test (faults, kills, signals).
"""

from __future__ import annotations

import pytest

from tests.cluster import kept_actors


@pytest.fixture(scope="session", autouse=True)
def actor_pool():
    with kept_actors("integration") as pool:
        yield pool


@pytest.fixture(autouse=True)
def _own_actors(request, actor_pool):
    """``@pytest.mark.own_actors``: the test's runs start their own actors (the kept ones are stopped
    first: their memory goes to the test's own)."""
    from align.runner.pool import ActorPool

    if request.node.get_closest_marker("own_actors") is None:
        yield
        return
    actor_pool.release()
    before, ActorPool.current = ActorPool.current, None
    try:
        yield
    finally:
        ActorPool.current = before
