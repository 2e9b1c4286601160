"""GSPO, CISPO and the train/inference mismatch weights against hand-computed values."""

import math

import pytest
import torch

from align.config import algorithm_section as AlgorithmSection
from align.losses import POLICY_LOSSES, cispo_loss, mismatch_weights, policy_loss, policy_loss_name


def test_gspo_is_the_clipped_sequence_ratio_with_its_narrow_range():
    # sequence 0: log-ratios +0.1, -0.2 -> s = exp(-0.05), below 1 - 3e-4 but A > 0 keeps the unclipped term
    # sequence 1: one token, log-ratio +0.001 -> s = exp(0.001) > 1 + 4e-4: the clipped term is active (no gradient)
    logps = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.1, -1.8], [-0.501, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, 2.0])
    cfg = AlgorithmSection(name="gspo")
    assert (cfg.loss, cfg.clip_low, cfg.clip_high, cfg.loss_agg) == (
        "clip_sequence_mean",
        3e-4,
        4e-4,
        "seq_mean_token_mean",
    )
    loss, stats = POLICY_LOSSES[cfg.loss](
        logps, old, adv, mask, clip_low=cfg.clip_low, clip_high=cfg.clip_high, agg=cfg.loss_agg
    )
    s0 = math.exp((0.1 - 0.2) / 2)
    expected = -(s0 * 1.0 + (1 + 4e-4) * 2.0) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    loss.backward()
    # d/dlogp of -s0 * A / 2 (mean over 2 sequences), s0 = exp(mean of the 2 log-ratios): -s0 / 2 / 2 per token
    assert logps.grad[0].tolist() == pytest.approx([-s0 / 4, -s0 / 4], abs=1e-6)
    assert logps.grad[1].tolist() == [0.0, 0.0]


def test_cispo_keeps_the_gradient_of_a_token_ppo_would_clip():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -2.0]])  # ratios exp(0.5) = 1.6487 and 1
    mask = torch.ones(1, 2)
    adv = torch.tensor([1.0])
    loss, stats = cispo_loss(logps, old, adv, mask, clip_high=0.2)
    # weights sg(min(ratio, 1.2)) = [1.2, 1.0]; terms -w * A * logp = [1.2, 2.0]; token mean 1.6
    assert loss.item() == pytest.approx((1.2 * 1.0 + 1.0 * 2.0) / 2, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    loss.backward()
    assert logps.grad.tolist()[0] == pytest.approx([-1.2 / 2, -1.0 / 2], abs=1e-6)
    # PPO's clip drops the first token's gradient (ratio above 1 + 0.2 with A > 0)
    logps2 = logps.detach().clone().requires_grad_(True)
    policy_loss(logps2, old, adv, mask, clip_low=0.2, clip_high=0.2)[0].backward()
    assert logps2.grad.tolist()[0][0] == 0.0


def test_cispo_config_defaults_and_lower_bound():
    cfg = AlgorithmSection(name="cispo")
    assert (cfg.loss, cfg.clip_low, cfg.clip_high, cfg.loss_agg) == ("cispo", None, 4.0, "token_mean")
    assert (
        policy_loss_name({"loss": "cispo"}) == "cispo"
        and policy_loss_name({"ratio": "sequence_mean"}) == "clip_sequence_mean"
    )
    # a lower bound when asked: ratio exp(-1) = 0.37 raised to 1 - 0.5
    logps = torch.tensor([[-2.0]], requires_grad=True)
    loss, _ = cispo_loss(
        logps, torch.tensor([[-1.0]]), torch.tensor([-1.0]), torch.ones(1, 1), clip_low=0.5, clip_high=4.0
    )
    assert loss.item() == pytest.approx(
        -(0.5 * -1.0 * -2.0), abs=1e-6
    )  # -w * A * logp with w = max(0.37, 0.5)


def test_grpo_with_another_loss_takes_that_loss_defaults():
    assert (
        AlgorithmSection(name="grpo", loss="cispo").clip_high,
        AlgorithmSection(name="dapo").clip_high,
    ) == (4.0, 0.28)
    assert AlgorithmSection(name="grpo", ratio="sequence_mean").loss == "clip_sequence_mean"
    assert AlgorithmSection(name="adaptthink").loss == "clip_sequence_mean"
    with pytest.raises(ValueError, match="contradicts"):
        AlgorithmSection(name="grpo", ratio="token", loss="cispo")


def test_mismatch_weights_token_and_sequence():
    learner = torch.tensor([[-1.0, -2.0, 0.0]])
    rollout = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    r1, r2 = math.exp(0.5), math.exp(-1.0)
    w, stats = mismatch_weights(learner, rollout, mask, "token", "truncate", cap=1.5)
    assert w.tolist()[0] == pytest.approx([1.5, r2, 0.0], abs=1e-6)
    assert stats["outside"] == pytest.approx(0.5) and stats["ratio_mean"] == pytest.approx(
        (r1 + r2) / 2, abs=1e-6
    )
    w, _ = mismatch_weights(learner, rollout, mask, "token", "mask", cap=1.5)
    assert w.tolist()[0] == pytest.approx([0.0, r2, 0.0], abs=1e-6)
    w, stats = mismatch_weights(learner, rollout, mask, "sequence", "truncate", cap=3.0)
    assert w.tolist()[0] == pytest.approx([math.exp(-0.5), math.exp(-0.5), 0.0], abs=1e-6)
    assert stats["outside"] == 0.0
    w, stats = mismatch_weights(learner, rollout, mask, "sequence", "mask", cap=3.0, floor=0.7)
    assert w.tolist()[0] == [0.0, 0.0, 0.0] and stats["outside"] == 1.0


def test_weights_scale_the_policy_terms():
    logps, old, mask = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -2.0]]), torch.ones(1, 2)
    w = torch.tensor([[0.5, 2.0]])
    loss, _ = policy_loss(logps, old, torch.tensor([1.0]), mask, weights=w)
    assert loss.item() == pytest.approx(-(0.5 + 2.0) / 2)
    seq, _ = POLICY_LOSSES["clip_sequence_mean"](logps, old, torch.tensor([1.0]), mask, weights=w)
    assert seq.item() == pytest.approx(-(0.5 + 2.0) / 2)
