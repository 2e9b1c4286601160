"""Batch scoring: shapes, None, NaN policy, and errors that name the reward and the sample."""

import math

import numpy as np
import pytest

from rewards import Reward, RewardError, score_batch

P = ["p0", "p1", "p2"]
C = ["</think>1", "1+1=2</think>2", "</think>5"]
COLS = {"answer": ["1", "2", "3"]}


def _r(name, fn):
    return Reward(name, fn)


def test_matrix_of_several_rewards_and_a_dict_reward():
    out = score_batch(
        [
            Reward("c", __import__("rewards").correctness),
            _r("multi", lambda prompts, completions, **k: {"a": [1, 2, 3], "b": [0.5, None, 0.0]}),
        ],
        P,
        C,
        COLS,
    )
    assert out.names == ["c", "a", "b"]
    np.testing.assert_array_equal(out.scores[:, 0], [1.0, 1.0, 0.0])
    assert out.column("a").tolist() == [1.0, 2.0, 3.0]
    assert out.column("b")[0] == 0.5 and math.isnan(out.column("b")[1])  # None: not applicable
    assert not out.dropped.any()


def test_columns_are_passed_and_strict_signatures_get_only_what_they_take():
    seen = {}

    def strict(prompts, completions, answer):
        seen["answer"] = answer
        return [0.0] * len(completions)

    score_batch([_r("strict", strict)], P, C, {**COLS, "level": [1, 2, 3]})
    assert seen["answer"] == COLS["answer"]


@pytest.mark.parametrize(
    "fn,message",
    [
        (lambda prompts, completions, **k: [1.0, 2.0], r"reward 'bad' returned 2 values for 3 completions"),
        (
            lambda prompts, completions, **k: [1.0, "x", 2.0],
            r"reward 'bad' returned a non-number at sample 1: 'x' \(str\)",
        ),
        (lambda prompts, completions, **k: [1.0, True, 2.0], r"non-number at sample 1: True \(bool\)"),
        (lambda prompts, completions, **k: 1.0, r"reward 'bad' returned float; return a list"),
        (
            lambda prompts, completions, **k: [1.0, math.nan, 2.0],
            r"reward 'bad' returned nan for objective 'bad' at sample 1 of 3",
        ),
        (
            lambda prompts, completions, **k: [math.inf, 0.0, 2.0],
            r"reward 'bad' returned inf for objective 'bad' at sample 0 of 3",
        ),
        (
            lambda prompts, completions, **k: [1 / (c != "</think>5") for c in completions],
            r"reward 'bad' raised at sample 2: ZeroDivisionError",
        ),
    ],
)
def test_bad_returns_name_reward_and_sample(fn, message):
    with pytest.raises(RewardError, match=message):
        score_batch([_r("bad", fn)], P, C, COLS)


def test_nan_skip_policy_drops_and_counts():
    out = score_batch(
        [_r("n", lambda prompts, completions, **k: [1.0, math.nan, math.nan])], P, C, COLS, nan_policy="skip"
    )
    assert out.dropped.tolist() == [False, True, True]
    assert out.skipped_by == {"n/nan": 2}


def test_none_is_not_subject_to_nan_policy():
    out = score_batch([_r("n", lambda prompts, completions, **k: [None, 1.0, None])], P, C, COLS)
    assert not out.dropped.any() and math.isnan(out.scores[0, 0])


def test_duplicate_objective_names_rejected():
    f = lambda prompts, completions, **k: {"x": [0.0] * 3}  # noqa: E731
    with pytest.raises(RewardError, match="objective name 'x' is given by two rewards"):
        score_batch([_r("a", f), _r("b", f)], P, C, COLS)


def test_numpy_scalars_are_numbers():
    out = score_batch(
        [_r("np", lambda prompts, completions, **k: list(np.array([1, 2, 3], dtype=np.float32)))], P, C, COLS
    )
    assert out.scores[:, 0].tolist() == [1.0, 2.0, 3.0]


def test_the_actors_policy_applies_in_process_too():
    """score_batch runs the same on_failure code as the reward actors (apply_failure_policy)."""
    calls = {"n": 0}

    def flaky(prompts, completions, **k):  # raises on sample 1 the first time it sees it
        out = []
        for c in completions:
            if c == C[1] and calls["n"] == 0:
                calls["n"] += 1
                raise RuntimeError("flaky")
            out.append(1.0)
        return out

    out = score_batch([_r("f", flaky)], P, C, COLS, on_failure="retry")
    assert out.scores[:, 0].tolist() == [1.0, 1.0, 1.0] and out.stats == {"reward/retries/f": 1}
    out = score_batch(
        [_r("r", lambda prompts, completions, **k: [1 / (c != C[2]) for c in completions])],
        P,
        C,
        COLS,
        on_failure="skip",
    )
    assert out.dropped.tolist() == [False, False, True] and out.skipped_by == {"r/raised": 1}
    with pytest.raises(RewardError, match=r"after 3 tries at sample 2 of 3"):
        score_batch(
            [_r("r", lambda prompts, completions, **k: [1 / (c != C[2]) for c in completions])],
            P,
            C,
            COLS,
            on_failure="retry",
        )
