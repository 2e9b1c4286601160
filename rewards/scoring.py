"""Run reward functions over a batch and check what they return.

Every reward returns one value per completion: a number, or ``None`` ("not applicable to this
sample"). It may instead return ``{objective_name: [values]}`` to give several objectives at once.
The result is a matrix ``scores[N, K]`` (NaN where not applicable) plus the objective names.

Policies:
- a wrong length, a non-number, or an exception is always an error (``RewardError``) naming the
  reward and, where one can be found, the first failing sample index;
- a NaN or infinite value follows ``nan_policy``: ``"error"`` (default) raises, ``"skip"`` drops
  the sample from the batch and counts it.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

NAN_POLICIES = ("error", "skip")


class RewardError(RuntimeError):
    """A reward function misbehaved; the message names the reward and the sample."""


@dataclass
class Reward:
    """A named reward function with the keyword arguments it is called with."""

    name: str
    fn: Callable
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        params = inspect.signature(self.fn).parameters.values()
        self._accepts_any = any(p.kind is p.VAR_KEYWORD for p in params)
        self._accepted = {p.name for p in params}

    def call(self, prompts, completions, columns: dict) -> object:
        """Call the function with TRL's convention; drop columns a strict signature cannot take."""
        extra = {**columns, **self.kwargs}
        if not self._accepts_any:
            extra = {k: v for k, v in extra.items() if k in self._accepted}
        return self.fn(prompts=prompts, completions=completions, **extra)


@dataclass
class RewardScores:
    """Scores of one batch: ``scores[N, K]`` (NaN = not applicable), names, and dropped samples."""

    names: list[str]
    scores: np.ndarray
    dropped: np.ndarray  # bool (N,): samples removed by nan_policy="skip"
    skipped_by: dict[str, int] = field(default_factory=dict)
    owners: list[str] = field(default_factory=list)  # the reward that produced each objective

    def column(self, name: str) -> np.ndarray:
        return self.scores[:, self.names.index(name)]


def _to_float(reward: str, objective: str, value, index: int) -> float:
    if value is None:
        return math.nan  # not applicable: NaN in the matrix, never subject to nan_policy
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
            return float(value.item())
        raise RewardError(
            f"reward {reward!r}{_obj(reward, objective)} returned a non-number at sample {index}: "
            f"{value!r} ({type(value).__name__}); return a float or None"
        )
    return float(value)


def _obj(reward: str, objective: str) -> str:
    return "" if objective == reward else f" (objective {objective!r})"


def _locate_failure(reward: Reward, prompts, completions, columns) -> int | None:
    """Call the reward one sample at a time to find the first sample it raises on."""
    for i in range(len(completions)):
        try:
            reward.call(prompts[i : i + 1], completions[i : i + 1], {k: v[i : i + 1] for k, v in columns.items()})
        except Exception:
            return i
    return None


def score_batch(
    rewards: Sequence[Reward],
    prompts: list,
    completions: list,
    columns: dict[str, list] | None = None,
    nan_policy: str | dict[str, str] = "error",
) -> RewardScores:
    """Score every completion with every reward; see the module docstring for the policies.

    ``nan_policy`` is one policy for all rewards, or ``{reward_name: policy}`` (missing: "error").
    """
    policies = nan_policy if isinstance(nan_policy, dict) else {r.name: nan_policy for r in rewards}
    for policy in policies.values():
        if policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {policy!r}")
    columns = columns or {}
    n = len(completions)
    names: list[str] = []
    owners: list[str] = []  # the reward that produced each objective
    cols: list[np.ndarray] = []
    applicable_cols: list[np.ndarray] = []
    for reward in rewards:
        try:
            out = reward.call(prompts, completions, columns)
        except Exception as exc:
            idx = _locate_failure(reward, prompts, completions, columns)
            where = f" at sample {idx}" if idx is not None else " on the batch (no single sample fails alone)"
            raise RewardError(f"reward {reward.name!r} raised{where}: {type(exc).__name__}: {exc}") from exc
        outputs = out.items() if isinstance(out, dict) else [(reward.name, out)]
        for objective, values in outputs:
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
                raise RewardError(
                    f"reward {reward.name!r}{_obj(reward.name, objective)} returned {type(values).__name__}; "
                    f"return a list with one value per completion"
                )
            if len(values) != n:
                raise RewardError(
                    f"reward {reward.name!r}{_obj(reward.name, objective)} returned {len(values)} values "
                    f"for {n} completions"
                )
            if objective in names:
                raise RewardError(f"reward {reward.name!r}: objective name {objective!r} is given by two rewards")
            names.append(objective)
            owners.append(reward.name)
            cols.append(np.array([_to_float(reward.name, objective, v, i) for i, v in enumerate(values)], dtype=np.float64))
            applicable_cols.append(np.array([v is not None for v in values], dtype=bool))
    scores = np.stack(cols, axis=1) if cols else np.zeros((n, 0))
    applicable = np.stack(applicable_cols, axis=1) if cols else np.zeros((n, 0), dtype=bool)
    bad = applicable & ~np.isfinite(scores)  # a number that is NaN/inf; None is not "bad"
    dropped = np.zeros(n, dtype=bool)
    skipped_by: dict[str, int] = {}
    for k, objective in enumerate(names):
        rows = np.flatnonzero(bad[:, k])
        if not rows.size:
            continue
        if policies.get(owners[k], "error") == "error":
            raise RewardError(
                f"reward {owners[k]!r}{_obj(owners[k], objective)} returned {scores[rows[0], k]} at sample "
                f"{rows[0]} ({rows.size} non-finite value(s) in the batch); fix the reward or set "
                f"nan_policy: skip to drop such samples"
            )
        skipped_by[objective] = int(rows.size)
        dropped[rows] = True
    return RewardScores(names, scores, dropped, skipped_by, owners)
