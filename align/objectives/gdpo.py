"""GDPO-style multi-reward advantages (group reward-decoupled normalisation): each reward is
normalised within its group *before* the weighted sum, so a reward with a wide spread cannot drown
a reward with a narrow one (with a plain weighted sum the group normalisation sees only the total),
and groups where one reward ties still learn from the others. The sum is then normalised over the
batch (``objective.gdpo.batch_norm``), as GDPO does.

    A_i = BN( sum_k w_k (r_ik - mean_g r_k) / (std_g r_k + eps) )

A sample a reward does not apply to (NaN) takes its group's mean for that reward (advantage 0 from
it); a reward of weight 0 is monitored only. The logged total reward stays the weighted sum.
"""

from __future__ import annotations

import numpy as np

from align.objectives.base import Objective, Shaped, register_objective, weighted_sum


def gdpo_advantages(
    scores: np.ndarray, weights: np.ndarray, group_size: int, batch_norm: bool = True, eps: float = 1e-6
) -> np.ndarray:
    """Advantages ``(N,)`` of ``scores`` ``(N, K)`` (samples laid out group by group): per reward the
    group-normalised value (unbiased std, as GRPO's), weighted and summed, then batch-normalised."""
    n, k = scores.shape
    adv = np.zeros(n)
    for j in range(k):
        if weights[j] == 0:
            continue
        g = scores[:, j].reshape(-1, group_size).astype(np.float64)
        valid = np.isfinite(g)
        count = valid.sum(axis=1, keepdims=True)
        mean = np.where(valid, g, 0.0).sum(axis=1, keepdims=True) / np.maximum(count, 1)
        centered = np.where(valid, g - mean, 0.0)
        std = np.sqrt((centered**2).sum(axis=1, keepdims=True) / np.maximum(count - 1, 1))
        scale = np.broadcast_to(std + eps, centered.shape)
        # a group where the reward ties has no spread: advantage 0 from it
        adv += weights[j] * np.divide(centered, scale, out=np.zeros_like(centered), where=scale > 0).reshape(
            -1
        )
    if batch_norm and n > 1:
        adv = (adv - adv.mean()) / (adv.std(ddof=1) + eps)
    return adv


@register_objective("gdpo")
class GDPO(Objective):
    def __init__(self, names, weights, section, run=None):
        super().__init__(names, weights, section, run)
        self.batch_norm = section.batch_norm

    def shape(self, scores: np.ndarray, ctx: dict) -> Shaped:
        rewards = weighted_sum(scores, self.weight_vector())
        if "group_size" not in ctx or len(scores) == 0:
            return Shaped(rewards=rewards)
        return Shaped(
            rewards=rewards,
            advantages=gdpo_advantages(scores, self.weight_vector(), ctx["group_size"], self.batch_norm),
        )

    def state_metrics(self) -> dict[str, float]:
        return {f"objective/weight/{n}": float(self.weights[n]) for n in self.names}
