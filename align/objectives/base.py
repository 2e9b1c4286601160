"""The objective seam: turn the reward matrix into one scalar reward per sample.

An objective receives ``scores[N, K]`` (NaN = not applicable) with the objective names and a
context (group size, completion lengths, raw correctness, step...), and returns the scalar rewards
plus optional per-sample weights for the learner loss (``kl_weight``) and metrics. ``shape`` must
not change the objective's state (it may be called on extra rollout rounds, e.g. by DAPO's dynamic
sampling); ``update`` is called exactly once per training step, after the batch is final, and is
where weights, multipliers or thresholds move. The state lives in ``state_dict()``, which
checkpoints save. A new method
is a new file that registers itself here; the trainer looks objectives up by ``objective.name``.
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

    rewards: np.ndarray  # (N,) scalar reward per sample
    kl_weight: np.ndarray | None = None  # (N,) per-sample weight of the KL loss term, or None (all 1)
    metrics: dict[str, float] = field(default_factory=dict)


class Objective:
    """Base class: subclasses implement ``shape``; stateless ones need nothing else."""

    def __init__(self, names: list[str], weights: dict[str, float], **options):
        self.names, self.weights, self.options = names, weights, options

    def shape(self, scores: np.ndarray, context: dict) -> Shaped:
        raise NotImplementedError

    def update(self, scores: np.ndarray, context: dict) -> dict[str, float]:
        """Move the objective's state from this step's final batch; returns metrics. Default: none."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")


def build_objective(name: str, names: list[str], weights: dict[str, float], **options) -> Objective:
    """The registered objective ``name`` (importing the built-in ones first)."""
    import align.objectives.static  # noqa: F401  (registers "static")

    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name](names, weights, **options)
