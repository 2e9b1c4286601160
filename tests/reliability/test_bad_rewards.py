"""Rewards that misbehave at run time, in real reward actors (Ray): each gets the stated policy.

- raises, NaN/inf, hangs past ``timeout``: ``on_failure: error`` stops the run with one line naming
  the reward, the sample and the value; ``skip`` drops the samples and counts them
  (``reward/skipped/<reward>/<raised|nan|timeout>``); ``retry`` scores them again;
- wrong length, wrong type (a broken contract, not a flaky sample): the run stops whatever
  ``on_failure`` says, naming the reward and what it returned.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import ray

from align.config import reward_entry
from align.workers.reward import RewardPool
from rewards import RewardError
from tests.reliability.report import record

pytestmark = pytest.mark.integration
PROMPTS = [f"{a}+{b}=" for a in range(4) for b in range(4)]
COMPLETIONS = [f"</think>{a + b}" for a in range(4) for b in range(4)]
PLUGIN = """
import math, time

def raises(prompts, completions, **kw):
    return [1.0 / 0 if c.endswith("6") else 1.0 for c in completions]

def nan(prompts, completions, **kw):
    return [math.nan if c.endswith("3") else 1.0 for c in completions]

def hangs(prompts, completions, **kw):
    time.sleep(120)
    return [1.0] * len(completions)

def short(prompts, completions, **kw):
    return [1.0] * (len(completions) - 1)

def strings(prompts, completions, **kw):
    return ["good"] * len(completions)

def scalar(prompts, completions, **kw):
    return 1.0
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "bad_rewards.py"
    path.write_text(PLUGIN)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield str(path)
    ray.shutdown()


def _pool(plugin: str, fn: str, **options) -> RewardPool:
    return RewardPool(
        [reward_entry(fn=f"{plugin}:{fn}", name=fn, **options).model_dump()], str(Path(plugin).parent)
    )


ERROR_CASES = [
    ("raises", {}, ["'raises'", "ZeroDivisionError", "sample", "on_failure: error"]),
    ("nan", {}, ["'nan'", "nan", "sample 3", "on_failure: error"]),
    ("hangs", {"timeout": 2.0}, ["'hangs'", "timed out after 2s"]),
    ("short", {"on_failure": "skip"}, ["'short'", "15 values for 16 completions"]),
    ("strings", {"on_failure": "skip"}, ["'strings'", "non-number", "'good'"]),
    ("scalar", {"on_failure": "skip"}, ["'scalar'", "returned float", "one value per completion"]),
]


@pytest.mark.parametrize("fn,options,expect", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_a_failing_reward_stops_the_run_with_one_line(plugin, fn, options, expect):
    pool = _pool(plugin, fn, **options)
    t0 = time.time()
    with pytest.raises(RewardError) as err:
        pool.score(PROMPTS, COMPLETIONS, {})
    message = str(err.value)
    ok = "\n" not in message and all(e in message for e in expect)
    policy = options.get("on_failure", "error")
    record(
        "bad_input",
        f"reward {fn} (on_failure: {policy})",
        ok,
        f"stopped after {time.time() - t0:.1f}s: {message[:200]}",
    )
    pool.release()
    assert ok, message


SKIP_CASES = [
    ("raises", {}, {"raises/raised": 1}),
    ("nan", {}, {"nan/nan": 4}),
    ("hangs", {"timeout": 2.0}, {"hangs/timeout": 16}),
]


@pytest.mark.parametrize("fn,options,skipped", SKIP_CASES, ids=[c[0] for c in SKIP_CASES])
def test_skip_drops_and_counts_the_failing_samples(plugin, fn, options, skipped):
    pool = _pool(plugin, fn, on_failure="skip", **options)
    t0 = time.time()
    out = pool.score(PROMPTS, COMPLETIONS, {})
    seconds = time.time() - t0
    column = out.column(fn)
    kept = [v for v, d in zip(column, out.dropped) if not d]
    ok = (
        out.skipped_by == skipped
        and int(out.dropped.sum()) == sum(skipped.values())
        and all(v == 1.0 for v in kept)
    )
    ok = (
        ok
        and all(math.isnan(v) for v, d in zip(column, out.dropped) if d)
        and seconds < options.get("timeout", 60) + 30
    )
    record("bad_input", f"reward {fn} (on_failure: skip)", ok, f"skipped {out.skipped_by} in {seconds:.1f}s")
    pool.release()
    assert ok, (out.skipped_by, column, seconds)
