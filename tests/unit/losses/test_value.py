"""PPO's token rewards, GAE and clipped value loss against numbers worked by hand.

A 3-token completion (columns 2..4 of a 6-column row: two prompt columns before, padding after),
sequence reward R = 1, per-token KL [0.1, 0.2, 0.3] with kl_coef 0.5, values V = [0.5, 0.4, 0.6],
gamma = 0.9, lam = 0.8:
  rewards  r = [-0.05, -0.10, -0.15 + 1] = [-0.05, -0.10, 0.85]
  deltas   d2 = 0.85 + 0 - 0.6 = 0.25;  d1 = -0.10 + 0.9 * 0.6 - 0.4 = 0.04;  d0 = -0.05 + 0.9 * 0.4 - 0.5 = -0.19
  GAE      A2 = 0.25;  A1 = 0.04 + 0.72 * 0.25 = 0.22;  A0 = -0.19 + 0.72 * 0.22 = -0.0316
  returns  A + V = [0.4684, 0.62, 0.85]
Value loss with clip 0.2 and new values [0.2, 0.62, 1.0] (old [0.5, 0.4, 0.6]):
  tok0: (0.2 - 0.4684)^2 = 0.07203856; clipped 0.3: 0.02835856 -> 0.5 * 0.07203856 = 0.03601928
  tok1: (0.62 - 0.62)^2 = 0; clipped 0.6: 0.0004 (the clipped term is larger) -> 0.0002
  tok2: (1.0 - 0.85)^2 = 0.0225; clipped 0.8: 0.0025 -> 0.01125
  token mean 0.04746928 / 3 = 0.0158230933, clip fraction 1/3.
"""

import pytest
import torch

from align.losses import explained_variance, gae, last_token_mask, masked_whiten, token_rewards, value_loss

MASK = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.float32)
KL = torch.tensor([[9, 9, 0.1, 0.2, 0.3, 9], [9, 0.0, 0.0, 9, 9, 9]])  # 9s sit off the mask
VALUES = torch.tensor([[7, 7, 0.5, 0.4, 0.6, 7], [7, 0.3, 0.5, 7, 7, 7]])


def test_token_rewards_put_the_reward_at_the_last_token_and_kl_on_every_token():
    assert last_token_mask(MASK).tolist() == [[0, 0, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0]]
    r = token_rewards(torch.tensor([1.0, 2.0]), MASK, KL, kl_coef=0.5)
    torch.testing.assert_close(r[0], torch.tensor([0, 0, -0.05, -0.10, 0.85, 0]))
    torch.testing.assert_close(r[1], torch.tensor([0, 0, 2.0, 0, 0, 0]))
    assert token_rewards(torch.tensor([1.0, 0.0]), torch.zeros(2, 3)).abs().sum() == 0  # no tokens: no reward


def test_gae_by_hand_with_gamma_and_lambda_below_one():
    r = token_rewards(torch.tensor([1.0, 2.0]), MASK, KL, kl_coef=0.5)
    adv, ret = gae(r, VALUES, MASK, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv[0], torch.tensor([0, 0, -0.0316, 0.22, 0.25, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(ret[0], torch.tensor([0, 0, 0.4684, 0.62, 0.85, 0]), atol=1e-6, rtol=0)
    # row 2, two tokens, reward 2 at the last: d1 = 2 - 0.5 = 1.5; d0 = 0 + 0.9 * 0.5 - 0.3 = 0.15;
    # A0 = 0.15 + 0.72 * 1.5 = 1.23 (the values off the mask, 7, never enter)
    torch.testing.assert_close(adv[1], torch.tensor([0, 1.23, 1.5, 0, 0, 0]), atol=1e-6, rtol=0)
    # gamma = lam = 1 with V = 0: every token's advantage is the return to go (Monte Carlo)
    adv1, _ = gae(r, torch.zeros_like(VALUES), MASK, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv1[0], torch.tensor([0, 0, 0.70, 0.75, 0.85, 0]), atol=1e-6, rtol=0)
    # lam = 0: one-step TD errors
    adv0, _ = gae(r, VALUES, MASK, gamma=0.9, lam=0.0)
    torch.testing.assert_close(adv0[0], torch.tensor([0, 0, -0.19, 0.04, 0.25, 0]), atol=1e-6, rtol=0)


def test_value_loss_by_hand_with_clipping():
    mask = torch.ones(1, 3)
    old = torch.tensor([[0.5, 0.4, 0.6]], dtype=torch.float64)
    ret = torch.tensor([[0.4684, 0.62, 0.85]], dtype=torch.float64)
    new = torch.tensor([[0.2, 0.62, 1.0]], dtype=torch.float64, requires_grad=True)
    loss, stats = value_loss(new, old, ret, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.04746928 / 3, abs=1e-12)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    loss.backward()
    # the clipped token passes no gradient; the others (V - R) / 3
    torch.testing.assert_close(
        new.grad, torch.tensor([[(0.2 - 0.4684) / 3, 0.0, 0.15 / 3]], dtype=torch.float64)
    )
    plain, _ = value_loss(new.detach(), old, ret, mask, clip=None)
    assert plain.item() == pytest.approx((0.07203856 + 0.0 + 0.0225) / 6, abs=1e-12)
    # global normalisation: two halves with the whole batch's token count sum to the whole
    halves = sum(
        value_loss(new.detach()[:, s], old[:, s], ret[:, s], mask[:, s], 0.2, num_tokens=3.0)[0]
        for s in (slice(0, 1), slice(1, 3))
    )
    assert halves.item() == pytest.approx(loss.item(), abs=1e-12)


def test_whitening_and_explained_variance():
    x = torch.tensor([[9.0, 1.0, 2.0, 3.0], [9.0, 4.0, 9.0, 9.0]])
    m = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.float32)
    w = masked_whiten(x, m)
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (vals - 2.5) / vals.std()
    torch.testing.assert_close(w[m > 0], expected, atol=1e-6, rtol=0)
    assert (w[m == 0] == 0).all()
    ret = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    full = torch.ones(1, 4)
    assert explained_variance(ret, ret, full) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 4), ret, full) == pytest.approx(0.0)
    assert explained_variance(ret.flip(1), ret, full) == pytest.approx(1 - 4.0)  # Var(R - V) = 4 Var(R)
