"""Static linear scalarisation: ``r = sum_k w_k r_k``, the baseline every other objective is
measured against. A not-applicable score (None from the reward, NaN here) contributes 0, as in
TRL's ``nansum`` combination."""

from __future__ import annotations

import numpy as np

from align.objectives.base import Objective, Shaped, register_objective, weighted_sum


@register_objective("static")
class StaticWeights(Objective):
    def shape(self, scores: np.ndarray, ctx: dict) -> Shaped:
        return Shaped(rewards=weighted_sum(scores, self.weight_vector()))

    def state_metrics(self) -> dict[str, float]:
        return {f"objective/weight/{n}": float(self.weights[n]) for n in self.names}
