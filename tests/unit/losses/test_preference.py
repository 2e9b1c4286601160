"""DPO family and SimPO by hand.

c=-1, r=-3, rc=rr=-2, beta=0.1 -> chosen ratio 1, rejected ratio -1, h = 0.1 * 2 = 0.2
sigmoid: -logsigmoid(0.2) = log(1 + e^-0.2) = 0.598139
  label smoothing 0.1: 0.9 * 0.598139 + 0.1 * log(1 + e^0.2) (= 0.798139) = 0.618139
ipo: (h/beta - 1/(2 beta))^2 = (2 - 5)^2 = 9
hinge: relu(1 - 0.2) = 0.8
implicit rewards: 0.1 * 1 = 0.1 and 0.1 * -1 = -0.1
SimPO: c_avg=-0.5, r_avg=-1, beta=2, gamma=0.5 -> -logsigmoid(2 * 0.5 - 0.5) = log(1 + e^-0.5) = 0.474077
"""

import pytest
import torch

from align.losses import dpo_loss, simpo_loss

T = torch.tensor
ARGS = (T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]))


@pytest.mark.parametrize(
    "kind,ls,expected",
    [("sigmoid", 0.0, 0.598139), ("sigmoid", 0.1, 0.618139), ("ipo", 0.0, 9.0), ("hinge", 0.0, 0.8)],
)
def test_dpo_by_hand(kind, ls, expected):
    losses, chosen_r, rejected_r = dpo_loss(*ARGS, beta=0.1, kind=kind, label_smoothing=ls)
    assert losses.item() == pytest.approx(expected, abs=1e-5)
    assert chosen_r.item() == pytest.approx(0.1) and rejected_r.item() == pytest.approx(-0.1)


def test_dpo_at_reference_is_log2():
    x = torch.randn(5)
    losses, _, _ = dpo_loss(x, x - 1, x, x - 1)
    torch.testing.assert_close(losses, torch.full((5,), 0.693147), atol=1e-6, rtol=0)


def test_simpo_by_hand():
    losses, c, r = simpo_loss(T([-0.5]), T([-1.0]), beta=2.0, gamma=0.5)
    assert losses.item() == pytest.approx(0.474077, abs=1e-6)
    assert (c.item(), r.item()) == (-1.0, -2.0)


@pytest.mark.parametrize("kind", ["sigmoid", "ipo", "hinge"])
def test_dpo_gradcheck(kind):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, generator=g, dtype=torch.float64).requires_grad_() for _ in range(4)]
    # hinge has a kink at h = 1; random inputs with beta 0.1 keep h well below it.
    assert torch.autograd.gradcheck(lambda *a: dpo_loss(*a, beta=0.1, kind=kind)[0], xs)


def test_simpo_gradcheck_and_direction():
    c = torch.randn(4, dtype=torch.float64, requires_grad=True)
    r = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: simpo_loss(a, b)[0], (c, r))
    simpo_loss(c, r)[0].sum().backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()  # raise chosen, lower rejected


def test_dpo_bad_arguments():
    with pytest.raises(ValueError, match="kind must be one of"):
        dpo_loss(*ARGS, kind="kto")
    with pytest.raises(ValueError, match="label_smoothing applies to kind='sigmoid'"):
        dpo_loss(*ARGS, kind="ipo", label_smoothing=0.1)


def test_bradley_terry_against_hand_computed_values():
    from align.losses.preference import bradley_terry

    c, r = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    # -log sigmoid(d) = log(1 + exp(-d)): d = 1, -1, 0
    torch.testing.assert_close(bradley_terry(c, r), torch.tensor([0.3132617, 1.3132617, 0.6931472]))
    # TRL's margin column shifts the difference; its center_rewards_coefficient adds coef * (r_c + r_r)^2
    torch.testing.assert_close(
        bradley_terry(c, r, torch.tensor([0.5, 0.0, 0.0])), torch.tensor([0.4740770, 1.3132617, 0.6931472])
    )
    torch.testing.assert_close(
        bradley_terry(c, r, center_coef=0.1), torch.tensor([0.4132617, 1.4132617, 2.2931472])
    )
