"""Gradient-based dynamic reward weighting (Lu et al., 2025, arXiv 2509.11452; ALGORITHMS.md 1b).

Each step, before the policy update: per-objective advantages ``A_k`` from ``r_k`` alone (the run's
own estimator), one backward pass of the full actor loss per objective on the learner ranks (no
optimizer step), gradients over ``param_pattern`` (default: the whole LoRA adapter) summed across
ranks and clipped to ``learner.grad_clip`` as the authors do before reading them; influence
``I_k = <g_k, sum_j g_j>``, averaged over ``accumulation_steps`` steps, then the mirror-descent step
``w <- softmax(log w + (lr / regularization) * I)`` (``lr``: the learner's). The new weights shape
this same step's reward. ``normalize: grad_norm`` divides I by the mean squared gradient norm,
which keeps the step size independent of the gradients' scale (the authors' commented-out
option); the default is their raw influence.
"""

from __future__ import annotations

import numpy as np

from align.objectives.base import Objective, Shaped, register_objective, simplex_weights, weighted_sum
from align.objectives.simplex import exponentiated_gradient_step


@register_objective("gradient")
class GradientWeighting(Objective):
    def __init__(self, names, weights, section, run=None):
        super().__init__(names, weights, section, run)
        self.opts = section
        self.lr, self.clip = self.run.lr, self.run.grad_clip
        self.active, w = simplex_weights(names, weights)
        self.w = np.zeros(len(names))
        self.w[self.active] = w
        self.accumulated: list[list[float]] = []
        self.last: dict[str, float] = {}

    def before_update(self, scores: np.ndarray, ctx: dict) -> dict[str, float]:
        idx = np.flatnonzero(self.active)
        adv = np.stack([ctx["advantages"](scores[:, k]) for k in idx])  # (K, N)
        gram = ctx["gradient_gram"](adv, self.opts.param_pattern, self.clip)  # (K, K)
        influence = gram.sum(axis=1)
        if self.opts.normalize == "grad_norm":
            influence = influence / max(float(np.mean(np.diag(gram))), 1e-12)
        self.accumulated.append(influence.tolist())
        out = {f"objective/influence/{self.names[k]}": float(i) for k, i in zip(idx, influence)}
        out.update(
            {
                f"objective/grad_norm/{self.names[k]}": float(np.sqrt(max(g, 0.0)))
                for k, g in zip(idx, np.diag(gram))
            }
        )
        # |sum_k w_k g_k|: the norm of the combined gradient the update is about to follow
        wa = self.w[idx]
        out["objective/combined_grad_norm"] = float(np.sqrt(max(wa @ gram @ wa, 0.0)))
        if len(self.accumulated) >= self.opts.accumulation_steps:
            mean_i = np.mean(np.array(self.accumulated), axis=0)
            self.w[idx] = exponentiated_gradient_step(self.w[idx], mean_i, self.lr / self.opts.regularization)
            self.accumulated = []
        return out

    def shape(self, scores: np.ndarray, ctx: dict) -> Shaped:
        return Shaped(rewards=weighted_sum(scores, self.w))

    def state_metrics(self) -> dict[str, float]:
        return {f"objective/weight/{n}": float(x) for n, x in zip(self.names, self.w)}

    def state_dict(self) -> dict:
        return {"w": self.w.tolist(), "accumulated": self.accumulated}

    def load_state_dict(self, state: dict) -> None:
        self.w = np.asarray(state["w"], dtype=np.float64)
        self.accumulated = [list(map(float, a)) for a in state["accumulated"]]
