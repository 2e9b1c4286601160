"""Lagrange multipliers: mixed-advantage limits and the direction of each update."""

import numpy as np
import pytest

from align.objectives.multipliers import Multipliers, mixed_advantage, squash


def test_mixed_advantage_limits():
    task, cons = np.array([1.0, -2.0]), np.array([[0.5, 3.0], [-1.0, 4.0]])
    np.testing.assert_allclose(mixed_advantage(task, cons, np.zeros(2)), 2 * task)  # s = 0: N * A_task
    np.testing.assert_allclose(
        mixed_advantage(task, cons, np.ones(2)), cons.sum(axis=1)
    )  # all s = 1: sum A_i
    np.testing.assert_allclose(
        mixed_advantage(task, cons, np.array([0.5, 0.0]), squashed=False), task + 0.5 * cons[:, 0]
    )


@pytest.mark.parametrize("kind", ["tanh", "sigmoid", "none"])
def test_constant_violation_moves_weight_the_right_way(kind):
    over, under = Multipliers(1, kind), Multipliers(1, kind)
    s_over, s_under = [over.weights[0]], [under.weights[0]]
    for _ in range(20):
        s_over.append(over.step([0.8], [0.5])[0])  # above the threshold: weight shrinks
        s_under.append(under.step([0.2], [0.5])[0])  # below: weight grows
    assert all(b < a for a, b in zip(s_over, s_over[1:]))
    assert all(b > a for a, b in zip(s_under, s_under[1:]))
    if kind == "sigmoid":
        assert all(0 < s < 1 for s in s_over + s_under)


def test_equality_violation_eventually_turns_tanh_weight_negative():
    m = Multipliers(1, "tanh", init=np.array([0.3]))
    for _ in range(200):
        m.step([0.9], [0.5])
    assert m.weights[0] < 0


def test_momentum_sgd_matches_torch():
    import torch

    raw = torch.tensor([0.2, -0.4], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([raw], lr=0.1, momentum=0.1)
    ours = Multipliers(2, "tanh", init=np.array([0.2, -0.4]))
    for values in ([0.7, 0.1], [0.6, 0.3], [0.4, 0.9]):
        opt.zero_grad()
        (
            torch.tanh(raw) * (torch.tensor(values, dtype=torch.float64) - torch.tensor([0.5, 0.5]))
        ).sum().backward()
        opt.step()
        ours.step(values, [0.5, 0.5])
        np.testing.assert_allclose(ours.raw, raw.detach().numpy(), atol=1e-12)
    state = ours.state_dict()
    fresh = Multipliers(2, "tanh")
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.raw, ours.raw)
    assert squash(np.array([0.0]), "sigmoid")[0] == 0.5
