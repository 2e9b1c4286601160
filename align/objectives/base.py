"""The objective seam: turn the reward matrix into what the policy loss needs.

An objective receives ``scores[N, K]`` (NaN = not applicable) with the objective names and a
context, and returns one scalar reward per sample (advantages then come from the algorithm's
estimator) or, for methods that mix per-objective advantages (Lagrangian), the advantages
themselves. A new method is a new file that registers itself here; the trainer looks objectives up
by ``objective.name`` and calls, once per training step, in this order:

1. ``before_update(scores, ctx)``: may move state before the batch is shaped for the loss (the
   gradient method moves its weights here, from per-objective gradients of this very batch);
2. ``shape(scores, ctx)``: pure, it must not change state (DAPO's dynamic sampling calls it on
   extra rollout rounds too);
3. ``update(scores, ctx)``: after the policy update; multipliers and bookkeeping move here;
4. ``wants_eval(step)`` / ``observe_eval(step, result)``: the trainer evaluates on ``data.eval``
   when asked (and once before training, as step 0) and hands the result over.

``state_metrics()`` is logged every step (weights, multipliers, thresholds, hypervolume) and
``state_dict()`` goes into every checkpoint, so a resumed run continues exactly.

The context ``ctx`` holds ``group_size``, ``lengths`` ``(N,)``, ``step``, ``advantages`` (a function:
rewards ``(N,)`` or ``(N, K)`` -> the algorithm's group advantages, NaN treated as the group mean),
``kl_reward`` (``(N,)`` or None) and, in ``before_update`` only, ``gradient_gram`` (a function:
per-objective advantages ``(K, N)`` -> the Gram matrix of the learners' loss gradients).

A reward with weight 0 is monitored only: scored, logged and evaluated, never optimised by the
weighting methods (e.g. a true score that is measured but not trained on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

OBJECTIVES: dict[str, type] = {}


def register_objective(name: str) -> Callable[[type], type]:
    """Class decorator: make an objective selectable as ``objective.name: <name>``."""

    def wrap(cls: type) -> type:
        OBJECTIVES[name] = cls
        return cls

    return wrap


@dataclass
class Shaped:
    """What an objective returns for one batch."""

    rewards: np.ndarray  # (N,) scalar reward per sample (logged as reward/total)
    advantages: np.ndarray | None = None  # (N,) advantages, when the objective mixes them itself
    kl_weight: np.ndarray | None = None  # (N,) per-sample weight of the KL loss term, or None (all 1)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RunInfo:
    """What an objective may know of the run besides its own config section."""

    algorithm: str = "grpo"
    estimator: str | None = "group_std"  # the algorithm's advantage estimator (None outside the GRPO family)
    lr: float = 1e-4  # learner.lr
    grad_clip: float | None = 1.0  # learner.grad_clip (None: off)
    seed: int = 0


class Objective:
    """Base class: subclasses implement ``shape``; stateless ones need nothing else.

    ``names`` are the objective names (columns of ``scores``), ``weights`` their static weights,
    ``section`` the objective's own config section (``objective.<name>``, None for those without
    one) and ``run`` what it may know of the run (:class:`RunInfo`).
    """

    def __init__(self, names: list[str], weights: dict[str, float], section=None, run: RunInfo | None = None):
        self.names, self.weights, self.section, self.run = names, weights, section, run or RunInfo()

    def weight_vector(self) -> np.ndarray:
        return np.array([self.weights[n] for n in self.names], dtype=np.float64)

    def before_update(self, scores: np.ndarray, ctx: dict) -> dict[str, float]:
        return {}

    def shape(self, scores: np.ndarray, ctx: dict) -> Shaped:
        raise NotImplementedError

    def update(self, scores: np.ndarray, ctx: dict) -> dict[str, float]:
        """Move the objective's state from this step's final batch; returns metrics. Default: none."""
        return {}

    def wants_eval(self, step: int) -> bool:
        """True when the objective needs an evaluation after ``step`` finished steps."""
        return False

    def observe_eval(self, step: int, result: dict[str, float]) -> dict[str, float]:
        return {}

    def state_metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")


def weighted_sum(scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_k w_k r_k`` per sample; a not-applicable score (NaN) contributes 0 (TRL's nansum)."""
    return np.nansum(scores * np.asarray(weights, dtype=np.float64)[None, :], axis=1)


def simplex_weights(names: list[str], weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """The optimised objectives (weight > 0) as a mask, and their weights normalised to sum 1.

    Dynamic weighting lives on the simplex (the authors assert sum = 1); negative weights have no
    place there and are refused; weight-0 objectives are monitored only.
    """
    w = np.array([weights[n] for n in names], dtype=np.float64)
    if np.any(w < 0):
        bad = [n for n, x in zip(names, w) if x < 0]
        raise ValueError(
            f"dynamic weighting keeps weights on the simplex: rewards {bad} have negative weights "
            "(use a reward that grows with what you want, e.g. brevity instead of -length)"
        )
    active = w > 0
    if not active.any():
        raise ValueError("every reward has weight 0: nothing to optimise")
    return active, w[active] / w[active].sum()


def build_objective(name: str, names: list[str], weights: dict[str, float], config=None) -> Objective:
    """The registered objective ``name`` (importing the built-in ones first), given its own section of
    ``config`` (the run config; None: the section's defaults) and the run's :class:`RunInfo`."""
    import importlib

    for module in ("gdpo", "gradient", "hypervolume", "lagrangian", "static"):  # each registers itself
        importlib.import_module(f"align.objectives.{module}")

    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(sorted(OBJECTIVES))}")
    if config is None:
        from align.config import ObjectiveSection

        return OBJECTIVES[name](names, weights, getattr(ObjectiveSection(), name, None), RunInfo())
    from align.algorithms.family import GRPO_FAMILY

    family = GRPO_FAMILY.get(config.algorithm.name)
    run = RunInfo(
        config.algorithm.name,
        family.estimator if family else None,
        config.learner.lr,
        config.learner.grad_clip or None,
        config.trainer.seed,
    )
    return OBJECTIVES[name](names, weights, getattr(config.objective, name, None), run)
