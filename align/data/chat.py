"""A built-in chat task for real chat models: arithmetic questions as conversational prompts.

Rows are in TRL's conversational format, ``{"prompt": [{"role": "user", "content": "What is 23 +
41? Reply with just the number."}], "answer": "64", "level": 3, "task": "chat-arithmetic"}``, rendered
with the model's own chat template; the ``last_number`` reward reads the last number of the reply.

Levels (measured on SmolLM2-135M-Instruct, greedy, 48 questions each: 0.90, 0.06, 0.31, 0.04, 0.00):
1. ``a + b``, a, b in 2..9;
2. ``a + b``, a in 10..60, b in 2..9;
3. ``a + b``, a, b in 10..60 (the setting of the issue that added this task);
4. ``a - b``, 10 <= b < a <= 99;
5. ``a + b + c``, each in 2..30.

Preference pairs (``chat_preference_pairs``): chosen is the right number, rejected a near miss
(off by 1 to 10, or the two digits of the answer swapped), as explicit-prompt rows or, with
``implicit=True``, TRL's implicit-prompt rows (the user turn repeated at the start of chosen and
rejected, no ``prompt`` field).

Train and eval splits are disjoint by a hash of the question text (``align.data.tasks``).
"""

from __future__ import annotations

import random

from align.data.tasks import _wanted

LEVELS = (1, 2, 3, 4, 5)
INSTRUCTION = "Reply with just the number."


def chat_question(rng: random.Random, level: int) -> tuple[str, int]:
    """One question of ``level``: (expression, answer)."""
    if level == 1:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"{a} + {b}", a + b
    if level == 2:
        a, b = rng.randint(10, 60), rng.randint(2, 9)
        return f"{a} + {b}", a + b
    if level == 3:
        a, b = rng.randint(10, 60), rng.randint(10, 60)
        return f"{a} + {b}", a + b
    if level == 4:
        a, b = rng.sample(range(10, 100), 2)
        a, b = max(a, b), min(a, b)
        return f"{a} - {b}", a - b
    if level == 5:
        a, b, c = (rng.randint(2, 30) for _ in range(3))
        return f"{a} + {b} + {c}", a + b + c
    raise ValueError(f"chat arithmetic has levels {LEVELS}, got {level}")


def user_turn(expression: str) -> list[dict]:
    """The conversational prompt of a question."""
    return [{"role": "user", "content": f"What is {expression}? {INSTRUCTION}"}]


def chat_row(rng: random.Random, level: int, split: str = "train") -> dict:
    """One conversational prompt-only row plus the columns rewards read (answer, level, task)."""
    while True:
        expression, answer = chat_question(rng, level)
        if _wanted(expression, split):
            break
    return {"prompt": user_turn(expression), "answer": str(answer), "level": level, "task": "chat-arithmetic"}


def chat_dataset(n: int, seed: int, split: str = "train", levels=LEVELS) -> list[dict]:
    """``n`` rows, levels drawn uniformly from ``levels``; deterministic in ``seed``."""
    rng = random.Random(f"chat-arithmetic/{split}/{seed}")
    return [chat_row(rng, rng.choice(tuple(levels)), split) for _ in range(n)]


def near_miss(rng: random.Random, answer: int) -> int:
    """A plausible wrong answer: off by 1 to 10, or the digits of a two-digit answer swapped."""
    swapped = int(str(answer)[::-1]) if 10 <= answer <= 99 else answer
    if swapped != answer and rng.random() < 0.25:
        return swapped
    while True:
        wrong = answer + rng.choice([-1, 1]) * rng.randint(1, 10)
        if wrong >= 0 and wrong != answer:
            return wrong


def chat_preference_pairs(
    n: int, seed: int, split: str = "train", implicit: bool = False, levels=LEVELS
) -> list[dict]:
    """``n`` conversational preference rows: chosen the right number, rejected a near miss.

    Explicit: ``{"prompt": [user], "chosen": [assistant], "rejected": [assistant]}``; implicit (TRL's
    implicit prompt): ``{"chosen": [user, assistant], "rejected": [user, assistant]}``. Columns
    ``answer``, ``level`` and ``task`` are kept.
    """
    rng = random.Random(f"chat-preference/{split}/{seed}")
    out = []
    for row in chat_dataset(n, seed, split, levels):
        answer = int(row["answer"])
        chosen = [{"role": "assistant", "content": str(answer)}]
        rejected = [{"role": "assistant", "content": str(near_miss(rng, answer))}]
        extra = {"answer": row["answer"], "level": row["level"], "task": row["task"]}
        if implicit:
            out.append({"chosen": row["prompt"] + chosen, "rejected": row["prompt"] + rejected, **extra})
        else:
            out.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected, **extra})
    return out
