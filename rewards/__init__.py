"""The reward API.

A reward is a plain function with TRL's signature ``f(prompts, completions, **columns)`` returning
``list[float | None]`` (or ``dict[name, list[float | None]]`` for several objectives), so an
existing TRL reward function plugs in unchanged. Name it in config as ``"package.module:function"``
or ``"path/to/file.py:function"``; :func:`load` returns the callable. A reward model
(``rewards.model``) or a reward server (``rewards.http``, ``rewards.server``) plugs in the same way:
:func:`build` turns any config entry into a ``Reward``.
"""

from rewards.builtin import (
    BUILTIN_REWARDS,
    brevity,
    completion_text,
    correctness,
    efficiency,
    final_answer,
    last_number,
    length,
    no_thinking,
    number_match,
    shows_work,
    think_format,
)
from rewards.config import build
from rewards.loading import RewardLoadError, load
from rewards.scoring import (
    NAN_POLICIES,
    Reward,
    RewardError,
    RewardScores,
    RewardValues,
    evaluate_reward,
    score_batch,
)

__all__ = [
    "BUILTIN_REWARDS",
    "brevity",
    "last_number",
    "number_match",
    "efficiency",
    "shows_work",
    "NAN_POLICIES",
    "Reward",
    "RewardError",
    "RewardLoadError",
    "RewardScores",
    "completion_text",
    "correctness",
    "final_answer",
    "length",
    "load",
    "no_thinking",
    "score_batch",
    "build",
    "evaluate_reward",
    "RewardValues",
    "think_format",
]
