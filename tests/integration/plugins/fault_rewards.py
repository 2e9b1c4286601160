"""Rewards that misbehave on purpose, for the failure-policy tests. Call counts live in a file
(``state``): a reward actor killed after a timeout restarts with fresh memory."""

import math
import time
from pathlib import Path


def _call(state: str) -> int:
    """This call's number (1, 2, ...), counted in the file ``state``."""
    path = Path(state)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


def sleepy(prompts, completions, state, sleep_on=(2,), seconds=60.0, **kwargs):
    """1.0 per sample; on the calls numbered in ``sleep_on`` it first sleeps ``seconds``."""
    if _call(state) in tuple(sleep_on):
        time.sleep(seconds)
    return [1.0] * len(completions)


def nan_first(prompts, completions, state=None, from_call=1, **kwargs):
    """The completion's length, but NaN for the batch's first sample from call ``from_call`` on."""
    n = _call(state) if state else from_call
    return [math.nan if i == 0 and n >= from_call else float(len(c)) for i, c in enumerate(completions)]


def flaky_nan(prompts, completions, state, fail_calls=1, **kwargs):
    """NaN for every sample on the first ``fail_calls`` calls, then 0.5."""
    bad = _call(state) <= fail_calls
    return [math.nan if bad else 0.5 for _ in completions]


def raises_on(prompts, completions, word="boom", **kwargs):
    """1.0, but raises on a completion containing ``word``."""
    if any(word in c for c in completions):
        raise ValueError(f"cannot score a completion with {word!r}")
    return [1.0] * len(completions)


def crashes(prompts, completions, state, crash_on=(1,), **kwargs):
    """1.0 per sample, but the process dies (as on a segfault) on the calls numbered in ``crash_on``."""
    if _call(state) in tuple(crash_on):
        import os

        os._exit(1)
    return [1.0] * len(completions)
