"""Built-in rewards, each a plain function with TRL's signature ``f(prompts, completions, **columns)``.

Completions may be strings (standard format) or message lists (conversational format: the last
message's ``content`` is scored).
"""

from __future__ import annotations

import re
from typing import Callable

THINK, END_THINK = "<think>", "</think>"


def completion_text(completion) -> str:
    """The text of a completion in either of TRL's formats."""
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"]


def final_answer(text: str) -> str:
    """The answer of a response: the text after the last ``</think>``, stripped."""
    return text.rsplit(END_THINK, 1)[-1].strip()


def correctness(prompts, completions, answer=None, **kwargs) -> list[float | None]:
    """1.0 when the final answer equals the ``answer`` column, else 0.0; None where no answer is given."""
    if answer is None:
        raise ValueError("the correctness reward needs an 'answer' column in the dataset")
    return [
        None if a is None else float(final_answer(completion_text(c)) == str(a).strip())
        for c, a in zip(completions, answer)
    ]


def think_format(prompts, completions, **kwargs) -> list[float]:
    """1.0 when the response closes thinking exactly once, never reopens it, and gives an answer."""
    out = []
    for c in completions:
        text = completion_text(c)
        ok = text.count(END_THINK) == 1 and THINK not in text and final_answer(text) != ""
        out.append(float(ok))
    return out


def length(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
    """Response length: tokens when ``completion_ids`` are given, else characters. Weight it
    negatively (or use it as a constrained objective) to prefer short answers."""
    if completion_ids is not None:
        return [float(len(ids)) for ids in completion_ids]
    return [float(len(completion_text(c))) for c in completions]


def no_thinking(prompts, completions, **kwargs) -> list[float]:
    """1.0 for a NoThinking response (it starts with ``</think>``), else 0.0 (AdaptThink's indicator)."""
    return [float(completion_text(c).lstrip().startswith(END_THINK)) for c in completions]


def brevity(prompts, completions, completion_ids=None, max_tokens: int = 48, **kwargs) -> list[float]:
    """``1 - min(n, max_tokens) / max_tokens`` for a response of n tokens (characters without
    ``completion_ids``): 1 for an empty answer, 0 at the length budget. A [0, 1] objective that can
    sit on the simplex with the others (the weighting methods refuse negative weights)."""
    if max_tokens <= 0:
        raise ValueError(f"brevity: max_tokens must be positive, got {max_tokens}")
    n = length(prompts, completions, completion_ids)
    return [1.0 - min(x, max_tokens) / max_tokens for x in n]


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (thousands separators dropped), or None."""
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def number_match(prompts, completions, answer=None, **kwargs) -> list[float | None]:
    """1.0 when the last number of the reply equals the ``answer`` column (numerically), else 0.0;
    None where no answer is given. For chat models, which wrap the answer in words ("17 + 25 = 42.")."""
    if answer is None:
        raise ValueError("the number_match reward needs an 'answer' column in the dataset")
    out: list[float | None] = []
    for c, a in zip(completions, answer):
        if a is None:
            out.append(None)
            continue
        got = last_number(completion_text(c))
        out.append(float(got is not None and abs(got - float(a)) < 1e-9))
    return out


_STEP = re.compile(r"^\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")


def shows_work(prompts, completions, **kwargs) -> list[float]:
    """Style: the share of the thinking trace's comma-separated steps that are well-formed, true
    ``a op b = c`` equations, times 1 when there is at least one step. A NoThinking response (or a
    response without ``</think>``) scores 0. Conflicts with brevity: showing work costs tokens."""
    out = []
    for c in completions:
        text = completion_text(c)
        if END_THINK not in text:
            out.append(0.0)
            continue
        trace = text.split(END_THINK, 1)[0].replace(THINK, "").strip()
        steps = [s for s in trace.split(",") if s.strip()]
        good = 0
        for s in steps:
            m = _STEP.match(s)
            if m:
                a, op, b, r = int(m[1]), m[2], int(m[3]), int(m[4])
                good += {"+": a + b, "-": a - b, "*": a * b}[op] == r
        out.append(good / len(steps) if steps else 0.0)
    return out


def efficiency(prompts, completions, answer=None, think_cost: float = 0.1, **kwargs) -> list[float | None]:
    """A true score for the constrained example: correctness minus ``think_cost`` when the response
    thinks (does not start with ``</think>``). Brevity is a proxy of it: dropping needless thinking
    on easy problems raises both, dropping it on hard ones lowers efficiency (answers go wrong)."""
    right = correctness(prompts, completions, answer)
    thinks = [1.0 - x for x in no_thinking(prompts, completions)]
    return [None if r is None else r - think_cost * t for r, t in zip(right, thinks)]


BUILTIN_REWARDS: dict[str, Callable] = {
    "number_match": number_match,
    "brevity": brevity,
    "shows_work": shows_work,
    "efficiency": efficiency,
    "correctness": correctness,
    "think_format": think_format,
    "length": length,
    "no_thinking": no_thinking,
}
