"""Exponentiated-gradient weights: invariants and the exact ratio change."""

import math

import numpy as np
import pytest

from align.objectives.simplex import exponentiated_gradient_step, gradient_influence


def test_stays_on_simplex_and_equal_influence_changes_nothing():
    w = np.array([0.5, 0.3, 0.2])
    new = exponentiated_gradient_step(w, np.array([3.0, -1.0, 0.5]), step=0.7)
    assert new.sum() == pytest.approx(1.0) and (new > 0).all()
    np.testing.assert_allclose(exponentiated_gradient_step(w, np.full(3, 4.2), step=0.7), w)


def test_ratio_moves_by_exactly_exp_step_times_influence_gap():
    w = np.array([0.25, 0.25, 0.5])
    influence, step = np.array([2.0, -1.0, 0.0]), 0.1
    new = exponentiated_gradient_step(w, influence, step)
    assert (new[0] / new[1]) / (w[0] / w[1]) == pytest.approx(math.exp(step * (2.0 - -1.0)))


def test_identical_gradients_have_influence_k_times_norm_squared():
    g = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(gradient_influence(np.stack([g, g, g])), 3 * (g @ g) * np.ones(3))
    np.testing.assert_allclose(
        gradient_influence(-np.stack([g, 2 * g])), gradient_influence(np.stack([g, 2 * g]))
    )


def test_rejects_weights_off_the_simplex():
    with pytest.raises(ValueError, match="sum to 1"):
        exponentiated_gradient_step(np.array([0.5, 0.6]), np.zeros(2), 1.0)
