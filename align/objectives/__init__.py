"""Reward shaping with state: static weights now; dynamic weights, Lagrangian constraints,
AdaptThink and APO plug in as new files behind ``align.objectives.base``."""

from align.objectives.base import OBJECTIVES, Objective, Shaped, build_objective, register_objective

__all__ = ["OBJECTIVES", "Objective", "Shaped", "build_objective", "register_objective"]
