"""APO's DADS and STCR by hand (ALGORITHMS.md section 4)."""

import math

import numpy as np
import pytest
import torch

from align.algorithms.apo import correct_from_raw, dads_weight, dads_weights, stcr_scale
from align.losses import aggregate, kl_penalty


def test_dads_weight_values():
    assert dads_weight(0.5) == pytest.approx(0.7432, abs=1e-4)  # 1 - exp(-e/2)
    assert dads_weight(1 / 8) == pytest.approx(0.288, abs=1e-3)
    assert dads_weight(7 / 8) == pytest.approx(0.907, abs=1e-3)
    assert dads_weight(0.0) == 1.0 and dads_weight(1.0) == 1.0


def test_dads_weight_monotone_in_p():
    w = dads_weight(np.linspace(0.01, 0.99, 99))
    assert np.all(np.diff(w) > 0)


def test_dads_weights_only_positive_advantages_of_mixed_groups():
    # group 0: 2 of 4 correct (p = 0.5); group 1: all correct (p = 1, advantages 0)
    correct = np.array([1, 1, 0, 0, 1, 1, 1, 1], dtype=bool)
    adv = np.array([0.8, 0.8, -0.8, -0.8, 0.0, 0.0, 0.0, 0.0])
    w = dads_weights(adv, correct, 4)
    np.testing.assert_allclose(w, [1 - math.exp(-math.e / 2)] * 2 + [1.0] * 6)
    # the sign of the advantage decides, not correctness: a wrong sample with A > 0 is relaxed too
    w2 = dads_weights(np.array([-0.1, 0.3, 0.2, -0.4]), np.array([1, 0, 0, 0], dtype=bool), 4)
    np.testing.assert_allclose(w2, [1.0, 1 - math.exp(-math.e / 4), 1 - math.exp(-math.e / 4), 1.0])


def test_stcr_cases():
    # group 0: correct lengths 10 and 20 (mean 15); wrong 1015 (dL = 1000) and 12 (shorter)
    # group 1: all wrong -> c = 1 everywhere
    correct = np.array([1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    lengths = np.array([10, 20, 1015, 12, 500, 900, 30, 40], dtype=float)
    c = stcr_scale(correct, lengths, 4)
    assert c[2] == pytest.approx(2 - 1.00001 ** (-1000), abs=1e-9)
    assert c[2] == pytest.approx(1.00995, abs=1e-5)  # tiny: the authors' base at 1000 tokens
    np.testing.assert_array_equal(c[[0, 1, 3, 4, 5, 6, 7]], 1.0)


def test_stcr_configurable_base():
    c = stcr_scale(np.array([1, 0], dtype=bool), np.array([5.0, 25.0]), 2, base=1.05)
    assert c[1] == pytest.approx(2 - 1.05**-20)


def test_correctness_from_raw_reward_is_truncated():
    # raw acc + 0.5 * format: 1.5 and 1.0 correct, 0.5 and 0 wrong; NaN wrong
    np.testing.assert_array_equal(
        correct_from_raw(np.array([1.5, 1.0, 0.5, 0.0, np.nan])), [True, True, False, False, False]
    )


def test_kl_loss_all_weights_one_equals_vanilla_and_weights_scale_per_sample():
    torch.manual_seed(0)
    logps, ref = torch.randn(3, 4), torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    kl = kl_penalty(logps, ref, "k3")
    vanilla = aggregate(kl, mask, "seq_mean_token_mean")
    ones = aggregate(kl * torch.ones(3, 1), mask, "seq_mean_token_mean")
    assert torch.equal(vanilla, ones)
    w = torch.tensor([0.5, 1.0, 0.25])
    per_sample = (kl * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(
        aggregate(kl * w[:, None], mask, "seq_mean_token_mean"), (w * per_sample).mean()
    )
