"""Static linear scalarisation: ``r = sum_k w_k r_k``, the baseline every other objective is
measured against. A not-applicable score (None from the reward, NaN here) contributes 0, as in
TRL's ``nansum`` combination."""

from __future__ import annotations

import numpy as np

from align.objectives.base import Objective, Shaped, register_objective


@register_objective("static")
class StaticWeights(Objective):
    def shape(self, scores: np.ndarray, context: dict) -> Shaped:
        w = np.array([self.weights[n] for n in self.names], dtype=np.float64)  # (K,)
        rewards = np.nansum(scores * w[None, :], axis=1)  # (N,)
        return Shaped(rewards=rewards, metrics={f"objective/weight/{n}": float(x) for n, x in zip(self.names, w)})
