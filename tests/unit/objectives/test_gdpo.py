"""GDPO-style advantages: each reward normalised in its group before the weighted sum."""

import numpy as np
import pytest

from align.algorithms.grpo import compute_advantages
from align.objectives import build_objective
from align.objectives.gdpo import gdpo_advantages


def test_each_reward_is_normalised_in_its_group_before_the_sum():
    # one group of 4: a rare success on reward 1 (spread 1) and a wide-spread reward 2 (spread 30)
    scores = np.array([[1.0, 10.0], [0.0, 20.0], [0.0, 30.0], [0.0, 40.0]])
    a1 = np.array([1.5, -0.5, -0.5, -0.5])  # (r - 0.25) / 0.5, unbiased std
    a2 = (np.array([10.0, 20.0, 30.0, 40.0]) - 25.0) / np.sqrt(500.0 / 3)
    got = gdpo_advantages(scores, np.array([1.0, 1.0]), 4, batch_norm=False, eps=0.0)
    np.testing.assert_allclose(got, a1 + a2, atol=1e-12)
    # the plain weighted sum, then GRPO's group normalisation: reward 2 drowns the success
    plain = compute_advantages("group_std", scores.sum(axis=1), 4)
    assert plain[0] < 0 < got[0]
    bn = gdpo_advantages(scores, np.array([1.0, 1.0]), 4)
    raw = gdpo_advantages(scores, np.array([1.0, 1.0]), 4, batch_norm=False)
    np.testing.assert_allclose(bn, (raw - raw.mean()) / (raw.std(ddof=1) + 1e-6), atol=1e-12)


def test_weights_nan_and_ties():
    scores = np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])  # group 2: reward 1 ties
    got = gdpo_advantages(scores, np.array([2.0, 0.0]), 2, batch_norm=False, eps=0.0)
    np.testing.assert_allclose(got, [2 * 0.5 / np.sqrt(0.5), -2 * 0.5 / np.sqrt(0.5), 0.0, 0.0], atol=1e-12)
    obj = build_objective("gdpo", ["a", "b"], {"a": 2.0, "b": 0.0})
    shaped = obj.shape(scores, {"group_size": 2})
    np.testing.assert_allclose(shaped.rewards, [2.0, 0.0, 2.0, 2.0])
    assert shaped.advantages.shape == (4,) and np.isfinite(shaped.advantages).all()
    assert obj.shape(scores, {}).advantages is None  # outside a group step (e.g. eval): rewards only
    with pytest.raises(ValueError):
        build_objective("gdpo_typo", ["a"], {"a": 1.0})
