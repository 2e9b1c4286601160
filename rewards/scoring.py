"""Run reward functions over a batch and check what they return.

Every reward returns one value per completion: a number, or ``None`` ("not applicable to this
sample"). It may instead return ``{objective_name: [values]}`` to give several objectives at once.
The result is a matrix ``scores[N, K]`` (NaN where not applicable) plus the objective names.

Policies (``apply_failure_policy``, the one implementation the reward actors use too):
- a wrong length, a non-number or a non-list breaks the reward's contract: always an error
  (``RewardContractError``) naming the reward and the first failing sample;
- a reward that raises, times out, dies, or returns NaN/inf follows its ``on_failure``: ``error``
  (default) raises naming the reward and sample, ``skip`` drops the samples and counts them,
  ``retry`` scores them again (with backoff), then raises.
"""

from __future__ import annotations

import inspect
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

NAN_POLICIES = ("error", "skip")  # the deprecated nan_policy
ON_FAILURE = ("error", "skip", "retry")


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
            raise RewardContractError(
                f"reward {reward.name!r}{_obj(reward.name, objective)} returned {type(values).__name__}; "
                f"return a list with one value per completion"
            )
        if len(values) != n:
            raise RewardContractError(
                f"reward {reward.name!r}{_obj(reward.name, objective)} returned {len(values)} values "
                f"for {n} completions"
            )
        names.append(objective)
        cols.append(
            np.array(
                [_to_float(reward.name, objective, v, i) for i, v in enumerate(values)], dtype=np.float64
            )
        )
        applicable.append(np.array([v is not None for v in values], dtype=bool))
    return names, cols, applicable


def evaluate_reward(
    reward: Reward, prompts: list, completions: list, columns: dict | None = None, per_sample: bool = False
) -> RewardValues:
    """One reward over a batch. A wrong shape or a non-number is a ``RewardError``. If the call
    raises: with ``per_sample`` the batch is re-scored one sample at a time and the samples that
    raise are marked ``failed`` (the others keep their values); without it, ``RewardError``."""
    columns = columns or {}
    n = len(completions)
    try:
        names, cols, app = _columns_of(reward, reward.call(prompts, completions, columns), n)
        return RewardValues(
            names,
            np.stack(cols, axis=1) if cols else np.zeros((n, 0)),
            np.stack(app, axis=1) if app else np.zeros((n, 0), dtype=bool),
            np.zeros(n, dtype=bool),
        )
    except RewardError:
        raise
    except Exception as exc:
        if not per_sample:
            raise RewardError(
                f"reward {reward.name!r} raised on a batch of {n}: {type(exc).__name__}: {exc}"
            ) from exc
        first = f"{type(exc).__name__}: {exc}"
    rows: list[tuple[list[str], list[np.ndarray], list[np.ndarray]] | None] = []
    error = None
    for i in range(n):
        try:
            out = reward.call(
                prompts[i : i + 1], completions[i : i + 1], {k: v[i : i + 1] for k, v in columns.items()}
            )
            rows.append(_columns_of(reward, out, 1))
        except RewardError:
            raise
        except Exception as exc:
            rows.append(None)
            error = error or f"reward {reward.name!r} raised at sample {i}: {type(exc).__name__}: {exc}"
    ok = [r for r in rows if r is not None]
    if not ok:  # every sample fails: no objective names to report beyond the reward's own
        return RewardValues(
            [reward.name],
            np.full((n, 1), np.nan),
            np.ones((n, 1), dtype=bool),
            np.ones(n, dtype=bool),
            error or f"reward {reward.name!r} raised on the batch: {first}",
        )
    names = ok[0][0]
    values, applicable = np.full((n, len(names)), np.nan), np.ones((n, len(names)), dtype=bool)
    failed = np.array([r is None for r in rows])
    for i, r in enumerate(rows):
        if r is not None:
            if r[0] != names:
                raise RewardError(
                    f"reward {reward.name!r} returned objectives {r[0]} at sample {i} but {names} before"
                )
            values[i], applicable[i] = [c[0] for c in r[1]], [a[0] for a in r[2]]
    if error is None:  # no sample fails alone: the batch as a whole made it raise
        failed[:] = True
        error = f"reward {reward.name!r} raised on the batch (no single sample fails alone): {first}"
    return RewardValues(names, values, applicable, failed, error)


def _snippet(x, limit: int = 80) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# attempt(try_index, rows, (prompts, completions, columns) of those rows) ->
#   (RewardValues of those rows, "", "") or (None, reason, message) when the reward failed as a whole
Attempt = Callable[[int, np.ndarray, tuple], tuple["RewardValues | None", str, str]]


def apply_failure_policy(
    name: str,
    policy: str,
    prompts: list,
    completions: list,
    columns: dict,
    attempt: Attempt,
    retries: int = 2,
    backoff: float = 0.5,
    known_names: list[str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    warn: Callable[..., None] | None = None,
) -> tuple[RewardValues, np.ndarray, dict[str, int], int]:
    """The one implementation of a reward's ``on_failure`` policy (the reward actors' pool and the
    in-process ``score_batch`` both call it). Samples fail when the reward raised on them, ran past
    its timeout, died, or gave NaN/inf; then ``error`` raises ``RewardError`` naming the reward, the
    sample and what it returned, ``skip`` drops them (counted by reason), ``retry`` scores them again
    up to ``retries`` times with backoff ``backoff * 2**k`` seconds, then raises as ``error``.

    Returns the reward's values for the whole batch, the dropped samples, the skip counts
    (``<name>/<raised|timeout|died|nan>``) and the number of retries spent."""
    if policy not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {policy!r}")
    n = len(completions)
    tries = (retries if policy == "retry" else 0) + 1
    rows = np.arange(n)
    args = (prompts, completions, columns)
    result: RewardValues | None = None
    dropped = np.zeros(n, dtype=bool)
    skipped: dict[str, int] = {}
    spent = 0
    for k in range(tries):
        got, reason, message = attempt(k, rows, args)
        if got is not None:
            if result is None:
                result = RewardValues(
                    got.names,
                    np.full((n, len(got.names)), np.nan),
                    np.ones((n, len(got.names)), dtype=bool),
                    np.zeros(n, dtype=bool),
                )
            elif got.names != result.names:
                raise RewardError(
                    f"reward {name!r} returned objectives {got.names}, but {result.names} before"
                )
            result.values[rows], result.applicable[rows] = got.values, got.applicable
            bad = got.bad()
            reason = "raised" if got.failed.any() else "nan"
            if got.failed.any():
                message = got.error
            elif bad.any():
                i = int(np.flatnonzero(bad)[0])
                j = int(np.flatnonzero(got.applicable[i] & ~np.isfinite(got.values[i]))[0])
                message = f"reward {name!r} returned {got.values[i, j]} for objective {got.names[j]!r}"
        else:
            bad = np.ones(len(rows), dtype=bool)
        failing = rows[bad]
        if not failing.size:
            break
        if k + 1 < tries:
            spent += 1
            sleep(backoff * 2**k)
            if warn:
                warn("%s on %d sample(s); retry %d/%d", message, failing.size, k + 1, tries - 1)
            rows = failing
            args = (
                [prompts[i] for i in rows],
                [completions[i] for i in rows],
                {c: [v[i] for i in rows] for c, v in columns.items()},
            )
            continue
        first = int(failing[0])
        where = (
            f"at sample {first} of {n} (prompt {_snippet(prompts[first])}, completion {_snippet(completions[first])}); "
            f"{failing.size} sample(s) failed"
        )
        if policy in ("error", "retry"):
            after = f" after {tries} tries" if policy == "retry" else ""
            raise RewardError(
                f"{message}{after} {where}. on_failure: {policy} stops the run; 'skip' would drop such samples"
            )
        if warn:
            warn("%s %s: skipped (on_failure: skip)", message, where)
        dropped[failing] = True
        skipped[f"{name}/{reason}"] = skipped.get(f"{name}/{reason}", 0) + int(failing.size)
    if result is None:  # every try failed as a whole (and was skipped): NaN under the known names
        names = known_names or [name]
        result = RewardValues(
            names,
            np.full((n, len(names)), np.nan),
            np.ones((n, len(names)), dtype=bool),
            np.ones(n, dtype=bool),
        )
    return result, dropped, skipped, spent


def combine(
    n: int,
    results: list[tuple[str, RewardValues]],
    dropped: np.ndarray,
    skipped: dict,
    stats: dict | None = None,
) -> RewardScores:
    """The rewards' values side by side as ``RewardScores`` (one column per objective; dropped
    samples NaN in every column); two rewards may not give the same objective name."""
    names, owners, cols = [], [], []
    for reward, values in results:
        for j, objective in enumerate(values.names):
            if objective in names:
                raise RewardError(f"reward {reward!r}: objective name {objective!r} is given by two rewards")
            names.append(objective)
            owners.append(reward)
            cols.append(values.values[:, j])
    scores = np.stack(cols, axis=1) if cols else np.zeros((n, 0))
    scores[dropped] = np.nan
    return RewardScores(names, scores, dropped, skipped, owners, stats or {})


def score_batch(
    rewards: Sequence[Reward],
    prompts: list,
    completions: list,
    columns: dict[str, list] | None = None,
    on_failure: str | dict[str, str] = "error",
    retries: int = 2,
    backoff: float = 0.0,
    nan_policy: str | dict[str, str] | None = None,
) -> RewardScores:
    """Score every completion with every reward in this process, with each reward's ``on_failure``
    policy (one for all, or ``{reward_name: policy}``, missing: "error"), exactly as the reward
    actors apply it (``apply_failure_policy``); a function that raises is re-run sample by sample
    to find the samples it raises on. ``nan_policy`` is the deprecated name of ``on_failure``."""
    policy = nan_policy if nan_policy is not None else on_failure
    policies = policy if isinstance(policy, dict) else {r.name: policy for r in rewards}
    columns = columns or {}
    n = len(completions)
    dropped = np.zeros(n, dtype=bool)
    skipped: dict[str, int] = {}
    stats: dict[str, float] = {}
    results = []
    for reward in rewards:

        def attempt(k, rows, args, reward=reward):
            return evaluate_reward(reward, *args, per_sample=True), "", ""

        values, drop, skip, spent = apply_failure_policy(
            reward.name,
            policies.get(reward.name, "error"),
            list(prompts),
            list(completions),
            columns,
            attempt,
            retries,
            backoff,
        )
        dropped |= drop
        skipped.update(skip)
        if spent:
            stats[f"reward/retries/{reward.name}"] = spent
        results.append((reward.name, values))
    return combine(n, results, dropped, skipped, stats)
