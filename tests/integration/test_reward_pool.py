"""Reward actors and their failure policies on real Ray actors and a real ``align serve-reward``
process: local and remote scores agree; a missing token, a killed server, a reward that sleeps past
its timeout, NaN and a raising reward each follow the stated policy."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from align.config import reward_entry
from align.workers.reward import RewardPool
from rewards import RewardError
from rewards.process import RewardServer
from tests.cluster import Tracked, ensure_ray

pytestmark = pytest.mark.integration

PLUGIN = str(Path(__file__).resolve().parent / "plugins" / "fault_rewards.py")
PROMPTS = [f"{a}+{b}=" for a in range(4) for b in range(4)]
COMPLETIONS = [f"</think>{(a + b) if (a * b) % 3 else a}" for a in range(4) for b in range(4)]
COLUMNS = {"answer": [str(a + b) for a in range(4) for b in range(4)]}


def entries(*raw) -> list[dict]:
    return [reward_entry(**e).model_dump() for e in raw]


@pytest.fixture(scope="module")
def ray_cluster():
    """The package's cluster; every reward pool the module makes is killed at its end."""
    ensure_ray()
    with Tracked(RewardPool):
        yield


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    """A sequence-classification model on the tiny base with a fixed (seeded) score head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from align.models.builtin import resolve_model_path

    base = resolve_model_path("builtin:tiny")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    out = tmp_path_factory.mktemp("rm") / "rm"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def server(tmp_path_factory, reward_model):
    config = tmp_path_factory.mktemp("srv") / "serve.yaml"
    config.write_text(
        yaml.safe_dump({"rewards": [{"fn": "correctness"}, {"model": reward_model, "name": "rm"}]})
    )
    srv = RewardServer(str(config), token="t0ken")
    yield srv
    srv.kill()


def test_local_and_remote_give_the_same_scores(ray_cluster, server, reward_model, monkeypatch):
    monkeypatch.setenv("ALIGN_REWARD_TOKEN", "t0ken")
    local = RewardPool(entries({"fn": "correctness"}, {"model": reward_model, "name": "rm"}))
    remote = RewardPool(
        entries({"url": server.url, "name": "remote", "batch_size": 5})
    )  # 4 requests per batch
    a = local.score(PROMPTS, COMPLETIONS, COLUMNS)
    b = remote.score(PROMPTS, COMPLETIONS, COLUMNS)
    assert a.names == b.names == ["correctness", "rm"] and b.owners == ["remote", "remote"]
    np.testing.assert_array_equal(a.column("correctness"), b.column("correctness"))
    np.testing.assert_allclose(a.column("rm"), b.column("rm"), rtol=0, atol=1e-5)
    assert np.ptp(a.column("rm")) > 0 and set(a.column("correctness")) == {0.0, 1.0}
    local.release(), remote.release()


def test_missing_or_wrong_token_stops_before_scoring(ray_cluster, server, monkeypatch):
    monkeypatch.delenv("ALIGN_REWARD_TOKEN", raising=False)
    with pytest.raises(RewardError) as err:
        RewardPool(entries({"url": server.url, "name": "remote"}))
    assert f"{server.url}/info answered HTTP 401" in str(err.value) and "$ALIGN_REWARD_TOKEN" in str(
        err.value
    )
    monkeypatch.setenv("ALIGN_REWARD_TOKEN", "not-it")
    with pytest.raises(RewardError, match="is not the server's"):
        RewardPool(entries({"url": server.url, "name": "remote"}))


def test_server_killed_mid_run(ray_cluster, reward_model, monkeypatch):
    monkeypatch.setenv("ALIGN_REWARD_TOKEN", "k")
    srv = RewardServer("correctness", token="k")
    stop = RewardPool(entries({"url": srv.url, "name": "remote", "retries": 1, "backoff": 0.1}))
    skip = RewardPool(
        entries({"url": srv.url, "name": "remote", "retries": 1, "backoff": 0.1, "on_failure": "skip"})
    )
    assert stop.score(PROMPTS, COMPLETIONS, COLUMNS).column("remote").sum() > 0
    srv.kill()
    with pytest.raises(RewardError) as err:
        stop.score(PROMPTS, COMPLETIONS, COLUMNS)
    assert f"{srv.url}/score failed after 2 tries: ConnectError" in str(
        err.value
    ) and "on_failure: error" in str(err.value)
    out = skip.score(PROMPTS, COMPLETIONS, COLUMNS)
    assert out.dropped.all() and out.skipped_by == {"remote/raised": 16}
    stop.release(), skip.release()


def test_timeout_kills_and_restarts_the_reward(ray_cluster, tmp_path):
    base = {"fn": f"{PLUGIN}:sleepy", "name": "slow", "timeout": 3}
    skip = RewardPool(
        entries({**base, "on_failure": "skip", "kwargs": {"state": str(tmp_path / "a"), "sleep_on": [1]}})
    )
    out = skip.score(PROMPTS, COMPLETIONS, COLUMNS)
    assert out.dropped.all() and out.skipped_by == {"slow/timeout": 16} and np.isnan(out.column("slow")).all()
    again = skip.score(PROMPTS, COMPLETIONS, COLUMNS)  # the restarted actor scores the next batch
    assert not again.dropped.any() and again.column("slow").tolist() == [1.0] * 16
    stop = RewardPool(entries({**base, "kwargs": {"state": str(tmp_path / "b"), "sleep_on": [1]}}))
    with pytest.raises(
        RewardError, match=r"reward 'slow' timed out after 3s at sample 0 of 16 .* 16 sample\(s\) failed"
    ):
        stop.score(PROMPTS, COMPLETIONS, COLUMNS)
    retry = RewardPool(
        entries(
            {
                **base,
                "on_failure": "retry",
                "retries": 1,
                "backoff": 0.0,
                "kwargs": {"state": str(tmp_path / "c"), "sleep_on": [1]},
            }
        )
    )
    out = retry.score(PROMPTS, COMPLETIONS, COLUMNS)
    assert not out.dropped.any() and out.stats == {"reward/retries/slow": 1}
    skip.release(), stop.release(), retry.release()


def test_nan_and_raise_policies(ray_cluster, tmp_path):
    nan = {"fn": f"{PLUGIN}:nan_first", "name": "nan"}
    with pytest.raises(RewardError) as err:
        RewardPool(entries(nan)).score(PROMPTS, COMPLETIONS, COLUMNS)
    assert (
        "reward 'nan' returned nan for objective 'nan' at sample 0 of 16 (prompt '0+0=', completion '</think>0')"
        in str(err.value)
    )
    out = RewardPool(entries({**nan, "on_failure": "skip"})).score(PROMPTS, COMPLETIONS, COLUMNS)
    assert out.dropped.tolist() == [True] + [False] * 15 and out.skipped_by == {"nan/nan": 1}
    assert out.column("nan")[1:].tolist() == [float(len(c)) for c in COMPLETIONS[1:]]
    flaky = {
        "fn": f"{PLUGIN}:flaky_nan",
        "name": "flaky",
        "on_failure": "retry",
        "retries": 2,
        "backoff": 0.05,
    }
    out = RewardPool(entries({**flaky, "kwargs": {"state": str(tmp_path / "f1"), "fail_calls": 2}})).score(
        PROMPTS, COMPLETIONS, COLUMNS
    )
    assert (
        not out.dropped.any()
        and out.stats == {"reward/retries/flaky": 2}
        and out.column("flaky").tolist() == [0.5] * 16
    )
    with pytest.raises(RewardError, match="after 3 tries"):
        RewardPool(entries({**flaky, "kwargs": {"state": str(tmp_path / "f2"), "fail_calls": 5}})).score(
            PROMPTS, COMPLETIONS, COLUMNS
        )
    comps = list(COMPLETIONS)
    comps[5] = "boom"
    out = RewardPool(entries({"fn": f"{PLUGIN}:raises_on", "name": "picky", "on_failure": "skip"})).score(
        PROMPTS, comps, COLUMNS
    )
    assert np.flatnonzero(out.dropped).tolist() == [5] and out.skipped_by == {"picky/raised": 1}
    assert math.isnan(out.column("picky")[5]) and out.column("picky")[0] == 1.0


def test_a_crashed_reward_actor_is_replaced_and_the_batch_rescored(ray_cluster, tmp_path):
    pool = RewardPool(
        entries(
            {
                "fn": f"{PLUGIN}:crashes",
                "name": "crash",
                "on_failure": "error",
                "kwargs": {"state": str(tmp_path / "n"), "crash_on": [1]},
            }
        )
    )
    first = pool.pids[0]
    out = pool.score(PROMPTS, COMPLETIONS, COLUMNS)  # the process dies on call 1; call 2 is the rescoring
    assert not out.dropped.any() and out.column("crash").tolist() == [1.0] * 16 and pool.restarts == 1
    assert pool.pids[0] != first
    pool.release()
    # an actor that dies on every try is, after max_restarts, the reward's failure under on_failure
    pool = RewardPool(
        entries(
            {
                "fn": f"{PLUGIN}:crashes",
                "name": "crash",
                "on_failure": "skip",
                "kwargs": {"state": str(tmp_path / "m"), "crash_on": [1, 2, 3, 4]},
            }
        ),
        max_restarts=2,
    )
    out = pool.score(PROMPTS, COMPLETIONS, COLUMNS)
    assert out.dropped.all() and out.skipped_by == {"crash/died": 16} and pool.restarts == 2
    assert (
        pool.score(PROMPTS, COMPLETIONS, COLUMNS).column("crash").tolist() == [1.0] * 16
    )  # call 4 dies, call 5 scores
    pool.release()
