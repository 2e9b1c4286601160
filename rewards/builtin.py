"""Built-in rewards, each a plain function with TRL's signature ``f(prompts, completions, **columns)``.

Completions may be strings (standard format) or message lists (conversational format: the last
message's ``content`` is scored).
"""

from __future__ import annotations

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


BUILTIN_REWARDS: dict[str, Callable] = {
    "correctness": correctness,
    "think_format": think_format,
    "length": length,
    "no_thinking": no_thinking,
}
