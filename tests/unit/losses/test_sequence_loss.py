"""The sequence-level clipped surrogate (AdaptThink's loss; GSPO's ratio), by hand."""

import math

import pytest
import torch

from align.losses import sequence_policy_loss

LN = math.log


def test_ratio_is_one_when_pi_equals_pi_old_and_gradient_is_minus_a_grad_mean_logp():
    # pi = pi_old on tokens >= 1 and pi(y_0) = 0.5 = pi_IS(y_0): rho = 1
    logps = torch.tensor([[LN(0.5), -0.3, -1.2, 0.0], [LN(0.5), -0.1, 0.0, 0.0]], requires_grad=True)
    old = logps.detach().clone()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([0.3, -0.7])
    loss, stats = sequence_policy_loss(logps, old, adv, mask)
    assert stats["ratio_mean"].item() == pytest.approx(1.0) and stats["clip_frac"].item() == 0.0
    assert loss.item() == pytest.approx(-(0.3 - 0.7) / 2)
    loss.backward()
    # d/dlogp_t of -A exp(mean_t logp - mean_t old) / n_seq at rho = 1: -A / (n_tok * n_seq)
    want = torch.tensor([[-0.3 / 3, -0.3 / 3, -0.3 / 3, 0.0], [0.7 / 2, 0.7 / 2, 0.0, 0.0]]) / 2
    torch.testing.assert_close(logps.grad, want)


def test_clipped_sequence_has_zero_gradient():
    # A > 0 and rho = exp(mean(log 1.5, log 1.5)) = 1.5 > 1.2: the clipped term is active
    logps = torch.tensor([[LN(1.5), LN(1.5)]], requires_grad=True)
    loss, stats = sequence_policy_loss(logps, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(-1.2) and stats["clip_frac"].item() == 1.0
    loss.backward()
    assert torch.equal(logps.grad, torch.zeros(1, 2))


def test_token_mean_versus_full_sequence_ratio():
    # log-ratios [log 2, 0, 0] over 3 tokens: mean ratio 2^(1/3), full-sequence ratio 2
    logps, old = torch.tensor([[LN(2.0), 0.0, 0.0]]), torch.zeros(1, 3)
    mask, adv = torch.ones(1, 3), torch.tensor([-1.0])  # A < 0: min picks max(rho, clip) * A
    _, mean_stats = sequence_policy_loss(logps, old, adv, mask, ratio="mean")
    loss_sum, sum_stats = sequence_policy_loss(logps, old, adv, mask, ratio="sum")
    assert mean_stats["ratio_mean"].item() == pytest.approx(2 ** (1 / 3))
    assert sum_stats["ratio_mean"].item() == pytest.approx(2.0) and loss_sum.item() == pytest.approx(2.0)


def test_global_num_seqs_and_empty_rows():
    logps = torch.tensor([[LN(1.1)], [0.0]])
    loss, _ = sequence_policy_loss(
        logps, torch.zeros(2, 1), torch.tensor([1.0, 5.0]), torch.tensor([[1.0], [0.0]]), num_seqs=4
    )
    assert loss.item() == pytest.approx(-1.1 / 4)  # the masked row adds nothing; divided by the global count
