"""The GRPO family: advantage estimator by name, and DAPO's filters.

``algorithm.name`` maps to an estimator in ``align.config.schema.GRPO_FAMILY``; a new estimator is one
entry in ``ESTIMATORS``.
"""

from __future__ import annotations

import numpy as np
import torch

from align.losses import group_advantages, reinforce_pp_advantages, rloo_advantages

ESTIMATORS = {
    "group_std": lambda r, g: group_advantages(r, g, normalize="std"),
    "group_none": lambda r, g: group_advantages(r, g, normalize="none"),
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "naive": lambda r, g: r.clone(),  # AdaptThink: the shaped reward is the advantage (its baseline is inside)
}


def compute_advantages(estimator: str, rewards: np.ndarray, group_size: int) -> np.ndarray:
    """Advantages ``(N,)`` for rewards laid out group by group."""
    return ESTIMATORS[estimator](torch.as_tensor(rewards, dtype=torch.float64), group_size).numpy()


def informative_groups(rewards: np.ndarray, group_size: int, tol: float = 1e-9) -> np.ndarray:
    """DAPO dynamic sampling: True for groups whose rewards are not all equal, ``(N / G,)``."""
    g = rewards.reshape(-1, group_size)
    return (g.max(axis=1) - g.min(axis=1)) > tol
