"""One reward over a batch (``rewards.evaluate_reward``): values, the samples it raises on, NaN."""

import math

import numpy as np
import pytest

from rewards import Reward, RewardError, evaluate_reward

P, C = ["a", "b", "c"], ["x", "boom", "z"]


def picky(prompts, completions, **k):
    if "boom" in completions:
        raise ValueError("cannot score boom")
    return [float(len(c)) for c in completions]


def test_values_and_bad_rows():
    out = evaluate_reward(Reward("r", lambda prompts, completions, **k: [1.0, math.nan, None]), P, C)
    assert out.names == ["r"] and out.applicable[:, 0].tolist() == [True, True, False]
    assert out.bad().tolist() == [False, True, False]  # NaN is bad, None is not


def test_a_raise_is_a_batch_error_unless_per_sample():
    with pytest.raises(RewardError, match=r"'picky' raised on a batch of 3: ValueError: cannot score boom"):
        evaluate_reward(Reward("picky", picky), P, C)
    out = evaluate_reward(Reward("picky", picky), P, C, per_sample=True)
    assert out.failed.tolist() == [False, True, False]
    assert out.values[[0, 2], 0].tolist() == [1.0, 1.0] and math.isnan(out.values[1, 0])
    assert out.error == "reward 'picky' raised at sample 1: ValueError: cannot score boom"


def test_a_batch_that_fails_only_as_a_whole_marks_every_sample():
    def batch_only(prompts, completions, **k):
        if len(completions) > 1:
            raise RuntimeError("batch too big")
        return [0.5]

    out = evaluate_reward(Reward("b", batch_only), P, C, per_sample=True)
    assert out.failed.all() and "no single sample fails alone" in out.error
    np.testing.assert_array_equal(out.values[:, 0], [0.5, 0.5, 0.5])


def test_wrong_shapes_are_errors_even_per_sample():
    with pytest.raises(RewardError, match="returned 2 values for 3 completions"):
        evaluate_reward(Reward("short", lambda prompts, completions, **k: [1.0, 2.0]), P, C, per_sample=True)
