"""Clipped surrogate and aggregation, worked by hand.

Seq 0: A = +1, ratios [1, 1.5, 0.5], all 3 tokens live.
  clip(0.2): [1, 1.2, 0.8]; per-token -min(rA, clip*A) = [-1, -1.2, -0.5]   (sum -2.7)
Seq 1: A = -1, ratios [1.5, 0.5, 1], mask [1, 1, 0].
  rA = [-1.5, -0.5, -1]; clip*A = [-1.2, -0.8, -1]; -min = [1.5, 0.8, (1 masked)]   (sum 2.3)
token_mean            = (-2.7 + 2.3) / 5            = -0.08
seq_mean_token_mean   = (-2.7/3 + 2.3/2) / 2        = 0.125
seq_mean_token_sum_norm (max_len 4) = (-2.7/4 + 2.3/4) / 2 = -0.05
clip_frac: seq0 token1 (1.2 < 1.5) and seq1 token1 (-0.8 < -0.5) -> 2 / 5 = 0.4
"""

import math

import pytest
import torch

from align.losses import AGG_MODES, aggregate, policy_loss

LN = math.log


def _batch():
    old = torch.zeros(2, 3)
    logps = torch.tensor([[0.0, LN(1.5), LN(0.5)], [LN(1.5), LN(0.5), 0.0]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logps, old, adv, mask


@pytest.mark.parametrize(
    "agg,kwargs,expected",
    [
        ("token_mean", {}, -0.08),
        ("seq_mean_token_mean", {}, 0.125),
        ("seq_mean_token_sum_norm", {"max_len": 4}, -0.05),
    ],
)
def test_hand_computed_losses(agg, kwargs, expected):
    loss, stats = policy_loss(*_batch(), agg=agg, **kwargs)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(0.4)
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert stats["ratio_max"].item() == pytest.approx(1.5)


def test_clip_higher_dapo():
    """clip_high 0.28: seq0 token1 becomes -1.28, so token_mean = (-2.78 + 2.3) / 5 = -0.096."""
    loss, _ = policy_loss(*_batch(), clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(-0.096, abs=1e-6)


def test_ratio_one_gives_minus_advantage_and_its_gradient():
    """With logps == old_logps, loss = -mean(A) and d loss / d logp_t = -A / n_tokens."""
    logps = torch.zeros(2, 2, requires_grad=True)
    loss, stats = policy_loss(logps, torch.zeros(2, 2), torch.tensor([2.0, -1.0]), torch.ones(2, 2))
    loss.backward()
    assert loss.item() == pytest.approx(-0.5)
    torch.testing.assert_close(logps.grad, torch.tensor([[-0.5, -0.5], [0.25, 0.25]]))
    assert stats["clip_frac"].item() == 0


def test_zero_advantage_group_gives_zero_gradient():
    logps = torch.randn(4, 5, requires_grad=True)
    loss, _ = policy_loss(logps, logps.detach() + 0.1, torch.zeros(4), torch.ones(4, 5))
    loss.backward()
    assert torch.count_nonzero(logps.grad) == 0


def test_fully_masked_rows_contribute_nothing():
    logps, old, adv, mask = _batch()
    full_loss, _ = policy_loss(logps, old, adv, mask, agg="token_mean")
    pad = torch.cat([logps, torch.full((1, 3), 5.0)]), torch.cat([old, torch.zeros(1, 3)])
    loss, _ = policy_loss(
        pad[0],
        pad[1],
        torch.cat([adv, torch.tensor([9.0])]),
        torch.cat([mask, torch.zeros(1, 3, dtype=torch.long)]),
    )
    assert loss.item() == pytest.approx(full_loss.item())
    assert aggregate(torch.ones(2, 3), torch.zeros(2, 3)).item() == 0.0


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("splits", [2, 4])
def test_micro_batches_with_global_normalisers_equal_whole_batch(agg, splits):
    """Summing micro-batch (or per-rank) losses normalised by global counts equals the whole batch,
    in value and gradient: no hidden accumulation scaling (STYLE.md point 2)."""
    g = torch.Generator().manual_seed(0)
    logps = torch.randn(8, 6, generator=g, dtype=torch.float64, requires_grad=True)
    old = torch.randn(8, 6, generator=g, dtype=torch.float64) * 0.1 + logps.detach()
    adv = torch.randn(8, generator=g, dtype=torch.float64)
    mask = (torch.rand(8, 6, generator=g) > 0.3).long()
    mask[3] = 0  # one fully masked row
    norm = {"num_tokens": mask.sum().item(), "num_seqs": 8, "max_len": 6}
    whole, _ = policy_loss(logps, old, adv, mask, agg=agg, max_len=6)
    (whole_grad,) = torch.autograd.grad(whole, logps)
    parts = sum(
        policy_loss(logps[i], old[i], adv[i], mask[i], agg=agg, **norm)[0]
        for i in torch.arange(8).chunk(splits)
    )
    (parts_grad,) = torch.autograd.grad(parts, logps)
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(parts_grad, whole_grad)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_gradcheck(agg):
    g = torch.Generator().manual_seed(1)
    logps = (torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.05).requires_grad_()
    old = torch.zeros(3, 4, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    # |logps| << clip range, so no token sits on a clip kink where the gradient jumps.
    assert torch.autograd.gradcheck(lambda x: policy_loss(x, old, adv, mask, agg=agg)[0], (logps,))


def test_unknown_aggregation():
    with pytest.raises(ValueError, match="agg must be one of"):
        aggregate(torch.ones(1, 1), torch.ones(1, 1), "sum")
