"""KL estimators by hand, and token log-probs against TRL's selective_log_softmax.

d = log 0.5 - log 0.25 = log 2 = 0.693147:
k1 = 0.693147, k2 = d^2/2 = 0.240227, k3 = exp(-d) - 1 + d = 0.5 - 1 + 0.693147 = 0.193147.
"""

import math

import pytest
import torch

from align.losses import kl_penalty, token_logprobs


@pytest.mark.parametrize("kind,expected", [("k1", 0.693147), ("k2", 0.240227), ("k3", 0.193147)])
def test_estimators_by_hand(kind, expected):
    out = kl_penalty(torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]]), kind)
    assert out.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_zero_when_equal_and_gradcheck(kind):
    x = torch.randn(2, 3, dtype=torch.float64)
    assert torch.count_nonzero(kl_penalty(x, x.clone(), kind)) == 0
    ref = torch.randn(2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: kl_penalty(a, ref, kind), (x.requires_grad_(),))


def test_k3_is_non_negative():
    a, b = torch.randn(1000), torch.randn(1000)
    assert (kl_penalty(a, b, "k3") >= 0).all()


def test_unknown_estimator():
    with pytest.raises(ValueError, match="'k1', 'k2' or 'k3'"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


def test_token_logprobs_match_trl_selective_log_softmax():
    from trl.trainer.utils import selective_log_softmax

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g)
    ids = torch.randint(0, 50, (3, 7), generator=g)
    torch.testing.assert_close(
        token_logprobs(logits, ids), selective_log_softmax(logits, ids), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        token_logprobs(logits, ids), torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0]
    )
