"""Constrained RLHF with learned Lagrange multipliers (Moskovitz et al., ICLR 2024).

One task objective is maximised while each constrained reward is held at (``equal``), above
(``at_least``) or below (``at_most``) its threshold theta_i. No critic: each objective gets its own
group advantages from the run's estimator (the Monte-Carlo return of a one-shot response is its
reward), and the policy sees the authors' mixed advantage
``(N - sum_i s(lambda_i)) A_task + sum_i s(lambda_i) A_i`` (squashed) or ``A_task + sum_i lambda_i A_i``.
``at_most`` is ``at_least`` on the negated reward. After the policy update the multipliers take
one momentum-SGD step on ``sum_i s(lambda_i) (v_i - theta_i)``, ``v_i`` the batch mean of reward i.

``task: kl`` is the authors' own setting: maximise the KL reward ``-coef * KL(pi || pi_ref)`` per
response (``algorithm.kl.where: reward``) subject to the reward constraints.

``threshold_search: nelder_mead`` searches the thresholds within the same run (the authors' NM-PPO):
each evaluation of f(theta) = -true_score continues training with thresholds theta for up to
``steps_per_eval`` steps, checking every ``check_every`` steps on the eval split and stopping early
once every constraint is within ``reached_tol`` of its threshold; evaluations are memoised. When
the search ends, the best thresholds found are kept for the rest of the run.
"""

from __future__ import annotations

import warnings

import numpy as np

from align.objectives.base import Objective, Shaped, register_objective
from align.objectives.multipliers import Multipliers, mixed_advantage
from align.objectives.nelder_mead import NelderMead


@register_objective("lagrangian")
class LagrangianConstraints(Objective):
    def __init__(self, names, weights, section, run=None):
        super().__init__(names, weights, section, run)
        opts = section
        self.opts = opts
        self.task = opts.task
        self.cons = [c.name for c in opts.constraints]
        for n in self.cons + ([] if self.task == "kl" else [self.task]):
            if n not in names:
                raise ValueError(f"objective.lagrangian: {n!r} is not an objective (have {names})")
        self.sign = np.array([-1.0 if c.kind == "at_most" else 1.0 for c in opts.constraints])
        kinds = {c.kind == "equal" for c in opts.constraints}
        squash = opts.squash
        if squash == "auto":
            if len(kinds) > 1:
                raise ValueError(
                    "objective.lagrangian.squash: auto picks tanh for equality and sigmoid for inequality "
                    "constraints; with both kinds, set squash explicitly"
                )
            squash = "tanh" if kinds == {True} else "sigmoid"
        self.squash = squash
        rng = np.random.default_rng(self.run.seed)
        init = (
            rng.normal(0.0, opts.init_std, len(self.cons))
            if squash != "none"
            else np.full(len(self.cons), 0.5)
        )
        self.init_raw = init.copy()
        self.multipliers = Multipliers(
            len(self.cons),
            squash,
            opts.lr,
            opts.momentum,
            opts.max_grad_norm,
            init,
            clamp_nonnegative=squash == "none",
        )
        self.thresholds = np.array([c.threshold for c in opts.constraints], dtype=np.float64)
        self.search = opts.threshold_search
        self.nm: NelderMead | None = None
        self.segment_steps = 0  # training steps spent on the current f evaluation
        if self.search:
            low = np.array([c.search_low for c in opts.constraints])
            high = np.array([c.search_high for c in opts.constraints])
            simplex = low + (high - low) * np.random.default_rng([self.run.seed, 1]).random(
                (len(self.cons) + 1, len(self.cons))
            )
            # bounds: every point Nelder-Mead hands out (and so every threshold) is in [search_low, search_high]
            self.nm = NelderMead(
                simplex,
                tol=self.search.tol,
                max_evals=self.search.max_evals,
                cache_tol=self.search.cache_tol,
                bounds=(low, high),
            )
            self.thresholds = self.nm.ask()

    def _new_segment(self) -> None:
        """New thresholds start a new constrained problem: with ``reset_multipliers`` the multipliers
        and their momentum go back to their initial values, so one evaluation's wound-up multiplier
        (lambda accumulated against the previous thresholds) does not drive the next one."""
        self.segment_steps = 0
        if self.search.reset_multipliers:
            self.multipliers.raw = self.init_raw.copy()
            self.multipliers.buffer = np.zeros_like(self.init_raw)

    # -- shaping
    def _columns(self, scores: np.ndarray, ctx: dict) -> tuple[np.ndarray, np.ndarray]:
        if self.task == "kl":
            task = ctx.get("kl_reward")
            if task is None:
                raise RuntimeError(
                    "objective.lagrangian.task: kl needs the KL reward (algorithm.kl.where: reward)"
                )
        else:
            task = scores[:, self.names.index(self.task)]
            if ctx.get("kl_reward") is not None:
                task = task + ctx["kl_reward"]
        cons = np.stack([scores[:, self.names.index(n)] for n in self.cons], axis=1) * self.sign[None, :]
        return task, cons

    def shape(self, scores: np.ndarray, ctx: dict) -> Shaped:
        task, cons = self._columns(scores, ctx)
        s = self.multipliers.weights
        squashed = self.squash != "none"
        rewards = mixed_advantage(
            task, np.nan_to_num(cons), s, squashed
        )  # the same mix of raw rewards, for logging
        if "advantages" not in ctx:  # e.g. DAPO's informative-group filter: the mixed reward is enough
            return Shaped(rewards=rewards)
        adv_task = ctx["advantages"](task)
        adv_cons = ctx["advantages"](cons)
        if self.opts.normalize_advantages:  # each reward's advantages standardised over the batch
            adv_task, adv_cons = _standardised(adv_task), _standardised(adv_cons)
        return Shaped(rewards=rewards, advantages=mixed_advantage(adv_task, adv_cons, s, squashed))

    def update(self, scores: np.ndarray, ctx: dict) -> dict[str, float]:
        _, cons = self._columns(scores, ctx)
        values = np.nanmean(cons, axis=0)
        # updates_per_step SGD steps, each on one slice of the samples (the authors step per minibatch)
        for part in np.array_split(np.arange(len(cons)), self.opts.updates_per_step):
            if len(part):
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a slice where a reward never applies
                    v = np.nanmean(cons[part], axis=0)
                self.multipliers.step(np.where(np.isfinite(v), v, values), self.thresholds * self.sign)
        self.segment_steps += 1
        return {
            f"objective/violation/{n}": float(self.sign[i] * (values[i] - self.thresholds[i] * self.sign[i]))
            for i, n in enumerate(self.cons)
        }

    # -- threshold search
    def wants_eval(self, step: int) -> bool:
        if self.nm is None or self.nm.done:
            return False
        return (
            self.segment_steps % self.search.check_every == 0
            or self.segment_steps >= self.search.steps_per_eval
        )

    def reached(self, result: dict[str, float]) -> bool:
        tol = self.search.reached_tol
        return all(abs(result[n] - t) <= tol * abs(t) for n, t in zip(self.cons, self.thresholds))

    def observe_eval(self, step: int, result: dict[str, float]) -> dict[str, float]:
        if self.nm is None or self.nm.done or step == 0:
            return {}
        if self.search.true_score not in result:
            raise KeyError(
                f"objective.lagrangian.threshold_search.true_score {self.search.true_score!r} is not an eval metric "
                f"(have: {', '.join(sorted(result))})"
            )
        if not (self.reached(result) or self.segment_steps >= self.search.steps_per_eval):
            return {}
        value = -float(result[self.search.true_score])
        self.nm.tell(value)
        out = {
            "objective/nm/f": value,
            "objective/nm/evals": float(len(self.nm.history)),
            "objective/nm/cache_hits": float(self.nm.cache_hits),
            "objective/nm/segment_steps": float(self.segment_steps),
        }
        self._new_segment()
        nxt = self.nm.ask()
        if nxt is None:  # finished: keep the best thresholds found
            self.thresholds = self.nm.best()[0]
            out["objective/nm/done"] = 1.0
        else:
            self.thresholds = nxt
        return out

    # -- state
    def state_metrics(self) -> dict[str, float]:
        out = {}
        for i, n in enumerate(self.cons):
            out[f"objective/multiplier/{n}"] = float(self.multipliers.weights[i])
            out[f"objective/threshold/{n}"] = float(self.thresholds[i])
        out["objective/task_weight"] = (
            float(len(self.cons) - self.multipliers.weights.sum()) if self.squash != "none" else 1.0
        )
        return out

    def state_dict(self) -> dict:
        return {
            "multipliers": self.multipliers.state_dict(),
            "thresholds": self.thresholds.tolist(),
            "segment_steps": self.segment_steps,
            "nm": self.nm.state_dict() if self.nm else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.multipliers.load_state_dict(state["multipliers"])
        self.thresholds = np.asarray(state["thresholds"], dtype=np.float64)
        self.segment_steps = int(state["segment_steps"])
        if self.nm is not None and state.get("nm") is not None:
            self.nm.load_state_dict(state["nm"])


def _standardised(a: np.ndarray) -> np.ndarray:
    """Each column of ``a`` (or ``a`` itself, 1-D) shifted to mean 0 and scaled to std 1 over the batch."""
    a = np.asarray(a, dtype=np.float64)
    return (a - a.mean(axis=0)) / (a.std(axis=0) + 1e-8)
