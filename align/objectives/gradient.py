"""Gradient-based dynamic reward weighting (Lu et al., 2025, arXiv 2509.11452).

Each step, before the policy update: per-objective advantages ``A_k`` from ``r_k`` alone (the run's
own estimator), one backward pass of the full actor loss per objective on the learner ranks (no
optimizer step), gradients over ``param_pattern`` (default: the whole LoRA adapter) summed across
ranks and clipped to ``learner.grad_clip`` as the authors do before reading them; influence
``I_k = <g_k, sum_j g_j>``, averaged over ``accumulation_steps`` steps, then the mirror-descent step
``w <- softmax(log w + eta * I)``. The new weights shape this same step's reward.

The step: the authors write ``eta = lr / regularization`` with their full fine-tuning lr 1e-6 and
regularization 1e-5, an effective step of 0.1; with LoRA's learning rates (1e-4..5e-4) the same
regularization gives 10-50, which collapses the weights onto one objective. So ``step`` (default
0.1) is the parameter, in the authors' effective units; ``regularization``, when set, restores
their formula with the run's lr. ``normalize``: ``none`` (their running code) uses the raw
influence; ``grad_norm`` divides it by the mean gradient norm (their commented-out code);
``grad_norm_sq`` by the mean squared gradient norm, which makes the step independent of the
gradients' scale (ours).
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
        self.clip = self.run.grad_clip
        # the step in the authors' effective units (their lr / mu), or lr / mu when mu is given
        self.step = self.run.lr / section.regularization if section.regularization else section.step
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
        if self.opts.normalize == "grad_norm":  # the authors' commented-out code: the mean norm
            influence = influence / max(float(np.mean(np.sqrt(np.maximum(np.diag(gram), 0.0)))), 1e-12)
        elif self.opts.normalize == "grad_norm_sq":  # scale-free: the mean squared norm
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
            self.w[idx] = exponentiated_gradient_step(self.w[idx], mean_i, self.step)
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
