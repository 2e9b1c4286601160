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


class RewardContractError(RewardError):
    """A reward broke its contract (wrong length, a non-number, not a list): a bug in the reward, not
    a flaky sample, so the run stops whatever ``on_failure`` says."""


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
    stats: dict = field(default_factory=dict)  # e.g. reward/retries/<name>, from align.workers.reward

    def column(self, name: str) -> np.ndarray:
        return self.scores[:, self.names.index(name)]


def _to_float(reward: str, objective: str, value, index: int) -> float:
    if value is None:
        return math.nan  # not applicable: NaN in the matrix, never subject to nan_policy
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
            return float(value.item())
        raise RewardContractError(
            f"reward {reward!r}{_obj(reward, objective)} returned a non-number at sample {index}: "
            f"{value!r} ({type(value).__name__}); return a float or None"
        )
    return float(value)


def _obj(reward: str, objective: str) -> str:
    return "" if objective == reward else f" (objective {objective!r})"


@dataclass
class RewardValues:
    """What one reward gave for a batch: ``values[N, k]`` per objective (NaN where not applicable or
    where it raised), ``applicable[N, k]`` (False for None), and ``failed[N]``: samples it raised on
    (only when the batch was re-scored sample by sample; ``error`` holds the first message)."""

    names: list[str]
    values: np.ndarray
    applicable: np.ndarray
    failed: np.ndarray
    error: str | None = None

    def bad(self) -> np.ndarray:
        """Samples that failed: raised, or a NaN/inf where a number was given."""
        return self.failed | (self.applicable & ~np.isfinite(self.values)).any(axis=1)


def _columns_of(reward: Reward, out, n: int) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    outputs = out.items() if isinstance(out, dict) else [(reward.name, out)]
    names, cols, applicable = [], [], []
    for objective, values in outputs:
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise RewardContractError(f"reward {reward.name!r}{_obj(reward.name, objective)} returned {type(values).__name__}; "
                              f"return a list with one value per completion")
        if len(values) != n:
            raise RewardContractError(f"reward {reward.name!r}{_obj(reward.name, objective)} returned {len(values)} values "
                              f"for {n} completions")
        names.append(objective)
        cols.append(np.array([_to_float(reward.name, objective, v, i) for i, v in enumerate(values)], dtype=np.float64))
        applicable.append(np.array([v is not None for v in values], dtype=bool))
    return names, cols, applicable


def evaluate_reward(reward: Reward, prompts: list, completions: list, columns: dict | None = None,
                    per_sample: bool = False) -> RewardValues:
    """One reward over a batch. A wrong shape or a non-number is a ``RewardError``. If the call
    raises: with ``per_sample`` the batch is re-scored one sample at a time and the samples that
    raise are marked ``failed`` (the others keep their values); without it, ``RewardError``."""
    columns = columns or {}
    n = len(completions)
    try:
        names, cols, app = _columns_of(reward, reward.call(prompts, completions, columns), n)
        return RewardValues(names, np.stack(cols, axis=1) if cols else np.zeros((n, 0)),
                            np.stack(app, axis=1) if app else np.zeros((n, 0), dtype=bool), np.zeros(n, dtype=bool))
    except RewardError:
        raise
    except Exception as exc:
        if not per_sample:
            raise RewardError(f"reward {reward.name!r} raised on a batch of {n}: {type(exc).__name__}: {exc}") from exc
        first = f"{type(exc).__name__}: {exc}"
    rows: list[tuple[list[str], list[np.ndarray], list[np.ndarray]] | None] = []
    error = None
    for i in range(n):
        try:
            out = reward.call(prompts[i : i + 1], completions[i : i + 1], {k: v[i : i + 1] for k, v in columns.items()})
            rows.append(_columns_of(reward, out, 1))
        except RewardError:
            raise
        except Exception as exc:
            rows.append(None)
            error = error or f"reward {reward.name!r} raised at sample {i}: {type(exc).__name__}: {exc}"
    ok = [r for r in rows if r is not None]
    if not ok:  # every sample fails: no objective names to report beyond the reward's own
        return RewardValues([reward.name], np.full((n, 1), np.nan), np.ones((n, 1), dtype=bool), np.ones(n, dtype=bool),
                            error or f"reward {reward.name!r} raised on the batch: {first}")
    names = ok[0][0]
    values, applicable = np.full((n, len(names)), np.nan), np.ones((n, len(names)), dtype=bool)
    failed = np.array([r is None for r in rows])
    for i, r in enumerate(rows):
        if r is not None:
            if r[0] != names:
                raise RewardError(f"reward {reward.name!r} returned objectives {r[0]} at sample {i} but {names} before")
            values[i], applicable[i] = [c[0] for c in r[1]], [a[0] for a in r[2]]
    if error is None:  # no sample fails alone: the batch as a whole made it raise
        failed[:] = True
        error = f"reward {reward.name!r} raised on the batch (no single sample fails alone): {first}"
    return RewardValues(names, values, applicable, failed, error)


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
    n = len(completions)
    names: list[str] = []
    owners: list[str] = []  # the reward that produced each objective
    cols: list[np.ndarray] = []
    applicable_cols: list[np.ndarray] = []
    for reward in rewards:
        values = evaluate_reward(reward, prompts, completions, columns, per_sample=True)
        if values.failed.any():  # the first sample it raises on, or the batch as a whole
            raise RewardError(values.error)
        for k, objective in enumerate(values.names):
            if objective in names:
                raise RewardError(f"reward {reward.name!r}: objective name {objective!r} is given by two rewards")
            names.append(objective)
            owners.append(reward.name)
            cols.append(values.values[:, k])
            applicable_cols.append(values.applicable[:, k])
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
