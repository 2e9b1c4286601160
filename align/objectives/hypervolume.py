"""Hypervolume-guided dynamic reward weighting (Lu et al., 2025, arXiv 2509.11452).

Two variants (``objective.hypervolume.variant``):

``meta_reward`` (default, the authors' "vanilla" trainer): the preference weights stay fixed. The
initial model's validation point ``p_0`` is the reference; every ``every`` steps the policy is
validated, the hypervolume contribution of the new point against the buffer of earlier improving
points is measured (``HVC = HV(B + p) - HV(B)``, reference ``p_0``), the point joins the buffer when
``HVC > 0``, and the next steps' reward is ``m * sum_k w_k r_k`` with ``m = 0.5 + 1.5 tanh(HVC)``.
A positive scale of all rewards is invisible to std-normalised advantages (grpo, dapo, and
reinforce_pp's batch normalisation): that combination is detected and warned about. Under Adam
a scale that stays constant is largely cancelled as well (measured: with dr_grpo the meta_reward
sweep matched the static one to 4 decimals, the multiplier sitting at 0.5 because no validation
point improved every conflicting objective at once).

``weights`` (ours): the weights themselves move toward the objectives whose improvement grows the
hypervolume most. Each metric is put in relative units, ``z_k = sign_k (p_k - p0_k) / scale_k``
(scale: ``|p0_k|`` unless configured), so accuracy and token counts compare; the reference is one
unit below the start (``z = -1``) so a regression does not zero the volume. The gradient of
``HV(B + z)`` along each coordinate (a finite difference of the exact hypervolume) is normalised
to sum 1 and taken as an exponentiated-gradient step on the simplex:
``w <- softmax(log w + weight_lr * g / sum g)``. An objective that lags behind the others is where
a unit of progress adds the most volume, so the weights keep the front balanced.
"""

from __future__ import annotations

import logging

import numpy as np

from align.objectives.base import Objective, Shaped, register_objective, simplex_weights, weighted_sum
from align.objectives.pareto import hypervolume, hypervolume_contribution, meta_reward
from align.objectives.simplex import exponentiated_gradient_step

log = logging.getLogger(__name__)

SCALE_INVARIANT = {
    "group_std": "grpo/dapo std-normalised group advantages",
    "reinforce_pp": "reinforce_pp's batch-normalised advantages",
    "gae": "ppo's whitened advantages (algorithm.ppo.whiten_advantages)",
}
FD_STEP = 0.05  # finite-difference step of the hypervolume gradient, in relative units


def hypervolume_gradient(
    buffer: np.ndarray, point: np.ndarray, ref: np.ndarray, step: float = FD_STEP
) -> np.ndarray:
    """``d HV(buffer + point) / d point_k`` (all maximised) by forward differences, ``(K,)``."""
    pts = [*buffer] if len(buffer) else []
    base = hypervolume([*pts, point], ref, True)
    grad = np.zeros(len(point))
    for k in range(len(point)):
        moved = point.copy()
        moved[k] += step
        grad[k] = (hypervolume([*pts, moved], ref, True) - base) / step
    return grad


@register_objective("hypervolume")
class HypervolumeWeighting(Objective):
    def __init__(self, names, weights, section, run=None):
        super().__init__(names, weights, section, run)
        self.opts = section
        self.metrics_dir = self.opts.metrics or {n: "max" for n in names if weights[n] != 0}
        self.metric_names = list(self.metrics_dir)
        self.maximize = [self.metrics_dir[m] == "max" for m in self.metric_names]
        if self.opts.variant == "weights":
            self.active, w = simplex_weights(names, weights)
            self.w = np.zeros(len(names))
            self.w[self.active] = w
            self.optimised = [n for n, a in zip(names, self.active) if a]
            missing = [m for m in self.metric_names if m not in self.optimised]
            if missing:
                raise ValueError(
                    f"objective.hypervolume.metrics {missing}: the weights variant moves the weights of "
                    f"optimised rewards ({self.optimised}); each metric must be one of them"
                )
        else:
            self.w = self.weight_vector()
            estimator = self.run.estimator
            if estimator in SCALE_INVARIANT:
                log.warning(
                    "objective hypervolume, variant meta_reward: the meta reward scales every reward by one positive "
                    "number, which %s cancel exactly, so it changes nothing with algorithm %s. Use "
                    "variant: weights, or dr_grpo / rloo, whose advantages keep the scale.",
                    SCALE_INVARIANT[estimator],
                    self.run.algorithm,
                )
            else:
                log.info(
                    "objective hypervolume, variant meta_reward: Adam normalises the gradient scale too, so a meta "
                    "reward that stays constant for many steps acts mostly through its changes between steps"
                )
        self.p0: np.ndarray | None = None
        self.buffer: list[list[float]] = []
        self.meta, self.last_hvc = 1.0, 0.0

    # -- the point, oriented and (weights variant) normalised
    def _point(self, result: dict[str, float]) -> np.ndarray:
        missing = [m for m in self.metric_names if m not in result]
        if missing:
            raise KeyError(
                f"objective.hypervolume.metrics {missing} are not eval metrics (have: {', '.join(sorted(result))})"
            )
        return np.array([result[m] for m in self.metric_names], dtype=np.float64)

    def _relative(self, p: np.ndarray) -> np.ndarray:
        scale = np.array(
            [(self.opts.scale or {}).get(m, max(abs(v), 1e-3)) for m, v in zip(self.metric_names, self.p0)]
        )
        sign = np.where(self.maximize, 1.0, -1.0)
        return sign * (p - self.p0) / scale

    def hypervolume(self) -> float:
        if self.p0 is None or not self.buffer:
            return 0.0
        return hypervolume(self.buffer, self.p0, self.maximize)

    # -- the hooks
    def wants_eval(self, step: int) -> bool:
        return step % self.opts.every == 0

    def observe_eval(self, step: int, result: dict[str, float]) -> dict[str, float]:
        p = self._point(result)
        if self.p0 is None:  # the initial model's validation: the reference point
            self.p0 = p
            return {}
        hvc = hypervolume_contribution(self.buffer, p, self.p0, self.maximize)
        self.last_hvc = hvc
        out = {"objective/hvc": hvc}
        if self.opts.variant == "meta_reward":
            self.meta = meta_reward(hvc, self.opts.meta_base, self.opts.meta_scale)
        else:
            rel_buffer = (
                np.array([self._relative(np.array(b)) for b in self.buffer])
                if self.buffer
                else np.zeros((0, len(p)))
            )
            grad = hypervolume_gradient(rel_buffer, self._relative(p), -np.ones(len(p)))
            if grad.sum() > 0:
                g = np.zeros(len(self.names))
                for m, gk in zip(self.metric_names, grad):
                    g[self.names.index(m)] = gk / grad.sum()
                self.w[self.active] = exponentiated_gradient_step(
                    self.w[self.active], g[self.active], self.opts.weight_lr
                )
            out.update({f"objective/hv_gradient/{m}": float(gk) for m, gk in zip(self.metric_names, grad)})
        if hvc > 0:
            self.buffer.append(p.tolist())
        return out

    def shape(self, scores: np.ndarray, ctx: dict) -> Shaped:
        return Shaped(rewards=self.meta * weighted_sum(scores, self.w))

    def state_metrics(self) -> dict[str, float]:
        out = {f"objective/weight/{n}": float(x) for n, x in zip(self.names, self.w)}
        out.update(
            {
                "objective/meta_reward": float(self.meta),
                "objective/hypervolume": self.hypervolume(),
                "objective/buffer_size": float(len(self.buffer)),
            }
        )
        return out

    def state_dict(self) -> dict:
        return {
            "p0": None if self.p0 is None else self.p0.tolist(),
            "buffer": self.buffer,
            "w": self.w.tolist(),
            "meta": float(self.meta),
            "last_hvc": float(self.last_hvc),
        }

    def load_state_dict(self, state: dict) -> None:
        self.p0 = None if state.get("p0") is None else np.asarray(state["p0"], dtype=np.float64)
        self.buffer = [list(map(float, b)) for b in state["buffer"]]
        self.w = np.asarray(state["w"], dtype=np.float64)
        self.meta, self.last_hvc = float(state["meta"]), float(state["last_hvc"])
