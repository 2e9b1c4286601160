"""Hypervolume by hand: (1,2),(2,1) with reference (0,0) covers 1*2 + 2*1 - 1*1 = 3."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from align.objectives.pareto import hypervolume, hypervolume_contribution, meta_reward


def test_two_points_by_hand_and_dominated_point_adds_nothing():
    assert hypervolume([[1, 2], [2, 1]], [0, 0]) == pytest.approx(3.0)
    assert hypervolume_contribution([[1, 2], [2, 1]], [0.5, 0.5], [0, 0]) == 0.0
    assert hypervolume_contribution([[1, 2], [2, 1]], [1.5, 1.5], [0, 0]) == pytest.approx(
        0.25
    )  # the 0.5 x 0.5 corner


def test_minimised_objective_equals_negated_maximised():
    pts, ref = np.array([[0.8, 30.0], [0.6, 20.0]]), np.array([0.5, 40.0])  # accuracy up, length down
    neg = pts * [1, -1]
    assert hypervolume(pts, ref, maximize=[True, False]) == pytest.approx(hypervolume(neg, ref * [1, -1]))
    assert hypervolume(pts, ref, maximize=[True, False]) == pytest.approx(0.3 * 10 + 0.1 * 10)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 5), st.floats(0, 5), st.floats(0, 5)), min_size=0, max_size=6),
    st.tuples(st.floats(0, 5), st.floats(0, 5), st.floats(0, 5)),
)
def test_adding_a_point_never_shrinks_hypervolume(buffer, point):
    assert hypervolume_contribution([list(p) for p in buffer], list(point), [0, 0, 0]) >= 0.0


def test_meta_reward_range():
    assert meta_reward(0.0) == 0.5
    assert meta_reward(1e6) == pytest.approx(2.0)
    assert meta_reward(0.3) == pytest.approx(0.5 + 1.5 * math.tanh(0.3))
