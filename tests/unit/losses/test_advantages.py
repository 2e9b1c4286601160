"""Advantage estimators against numbers worked by hand.

rewards = [1, 0, 0, 1 | 2, 2, 2, 2], G = 4.
Group 1: mean 0.5, unbiased std sqrt(1/3) = 0.57735  -> GRPO +-0.5 / 0.57735 = +-0.866025.
Group 2: all equal -> every estimator gives 0.
RLOO group 1: 1 - (0+0+1)/3 = 0.666667, 0 - (1+0+1)/3 = -0.666667.
REINFORCE++: centred [.5,-.5,-.5,.5,0,0,0,0], batch std sqrt(1/7) = 0.377964 -> +-1.322876.
"""

import pytest
import torch

from align.losses import group_advantages, reinforce_pp_advantages, rloo_advantages

R = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])


def test_grpo_std_normalized():
    expected = torch.tensor([0.866025, -0.866025, -0.866025, 0.866025, 0, 0, 0, 0])
    torch.testing.assert_close(group_advantages(R, 4), expected, atol=1e-5, rtol=0)


def test_dr_grpo_unnormalized():
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    torch.testing.assert_close(group_advantages(R, 4, normalize="none"), expected)


def test_rloo_leave_one_out():
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])
    torch.testing.assert_close(rloo_advantages(R, 4), expected)


def test_reinforce_pp_batch_normalized():
    a = 0.5 / 0.377964
    expected = torch.tensor([a, -a, -a, a, 0, 0, 0, 0])
    torch.testing.assert_close(reinforce_pp_advantages(R, 4), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "fn",
    [
        group_advantages,
        rloo_advantages,
        reinforce_pp_advantages,
        lambda r, g: group_advantages(r, g, normalize="none"),
    ],
)
def test_identical_rewards_give_zero_advantage(fn):
    assert torch.count_nonzero(fn(torch.full((12,), 0.7), 4)) == 0


def test_grpo_is_invariant_to_reward_scale():
    """Scaling rewards by m > 0 leaves std-normalised advantages unchanged (ALGORITHMS.md 1a gotcha)."""
    r = torch.rand(16)
    torch.testing.assert_close(group_advantages(r * 1.7, 4), group_advantages(r, 4), atol=1e-5, rtol=0)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        group_advantages(torch.zeros(8), 3)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 4), 4)
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="normalize"):
        group_advantages(torch.zeros(4), 2, normalize="mad")
