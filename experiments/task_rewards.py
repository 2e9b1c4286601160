"""Reward functions of the method-effect experiments (``fn: experiments/task_rewards.py:NAME``).

Each scores a subset of the prompts and returns None elsewhere (the objective is undefined there, as
GDPO and the weighting methods allow), so that the objectives of one run can all improve from the
warm start: brevity only where thinking is not needed (level 1), shown work only where it is.
"""

from __future__ import annotations

from rewards.builtin import brevity, shows_work


def brevity_easy(prompts, completions, completion_ids=None, level=None, max_tokens: int = 48, **kwargs):
    """``brevity`` on level-1 prompts, None on the others."""
    scores = brevity(prompts, completions, completion_ids, max_tokens=max_tokens)
    return [s if lv == 1 else None for s, lv in zip(scores, level)]


def shows_work_hard(prompts, completions, level=None, min_level: int = 3, **kwargs):
    """``shows_work`` on prompts of level >= ``min_level``, None on the others."""
    scores = shows_work(prompts, completions)
    return [s if lv >= min_level else None for s, lv in zip(scores, level)]


def brevity_capped(
    prompts, completions, completion_ids=None, max_tokens: int = 48, cap: float = 1.0, **kwargs
):
    """``min(brevity, cap)``: a proxy reward that stops paying once it reaches ``cap`` (the
    saturated-reward baseline of the constrained experiment)."""
    return [min(s, cap) for s in brevity(prompts, completions, completion_ids, max_tokens=max_tokens)]


def mode_match(prompts, completions, answer=None, level=None, **kwargs):
    """1.0 for the right answer in the mode the level calls for (NoThinking on level 1, Thinking from
    level 2 on), else 0.0: the per-domain score of the COFS experiment."""
    from rewards.builtin import correctness, no_thinking

    right = correctness(prompts, completions, answer)
    nothink = no_thinking(prompts, completions)
    return [float(r == 1.0 and bool(n) == (lv == 1)) for r, n, lv in zip(right, nothink, level)]
