"""Built-in synthetic tasks with checkable answers.

Arithmetic: a chain of ``level`` single-digit additions/subtractions whose every intermediate value
stays in 0..9, e.g. level 3 ``"2+5-3+4="``. A prompt ends with ``<think>``; a response is either
Thinking (``"2+5=7,7-3=4,4+4=8</think>8"``) or NoThinking (``"</think>8"``), so the first generated
token decides the mode. One step is a table look-up a tiny model learns; a chain of several steps
answered in one go is not, so thinking helps on the higher levels and is not needed on level 1.

Reversal (a second domain for the preference sets): ``"rev:abcd="`` answered by ``"</think>dcba"``.

Train and eval splits are disjoint by a hash of the question text, so a split never depends on
how many examples were drawn.
"""

from __future__ import annotations

import hashlib
import random
import string
from typing import Iterator

from align.models.tokenizer import END_THINK, THINK

LEVELS = (1, 2, 3, 4, 5)
EVAL_FRACTION = 0.1


def in_eval_split(question: str) -> bool:
    """True for questions that belong to the eval split (about EVAL_FRACTION of all questions)."""
    digest = hashlib.sha256(question.encode()).digest()
    return int.from_bytes(digest[:4], "big") < EVAL_FRACTION * 2**32


def _wanted(question: str, split: str) -> bool:
    if split == "all":
        return True
    return in_eval_split(question) == (split == "eval")


def arithmetic_question(rng: random.Random, level: int) -> tuple[str, list[str], int]:
    """Draw one chain of ``level`` operations; return (question, thinking steps, answer)."""
    value = rng.randint(0, 9)
    question, steps = str(value), []
    for _ in range(level):
        op = rng.choice("+-")
        operand = rng.randint(0, 9 - value) if op == "+" else rng.randint(0, value)
        new = value + operand if op == "+" else value - operand
        steps.append(f"{value}{op}{operand}={new}")
        question += f"{op}{operand}"
        value = new
    return question + "=", steps, value


def arithmetic_row(rng: random.Random, level: int, split: str = "train") -> dict:
    """One prompt-only row in TRL's format plus the columns rewards read (answer, level, ...)."""
    while True:
        question, steps, answer = arithmetic_question(rng, level)
        if _wanted(question, split):
            break
    return {
        "prompt": question + THINK,
        "answer": str(answer),
        "level": level,
        "task": "arithmetic",
        "thinking": ",".join(steps),
    }


def reversal_row(rng: random.Random, split: str = "train", min_len: int = 3, max_len: int = 6) -> dict:
    """One row of the string-reversal task; ``level`` is the word length minus 2."""
    while True:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(min_len, max_len)))
        question = f"rev:{word}="
        if _wanted(question, split):
            break
    return {
        "prompt": question + THINK,
        "answer": word[::-1],
        "level": len(word) - 2,
        "task": "reversal",
        "thinking": "",
    }


def response(row: dict, thinking: bool) -> str:
    """The reference response for a row, in Thinking or NoThinking mode (no EOS token)."""
    if thinking and row["thinking"]:
        return f"{row['thinking']}{END_THINK}{row['answer']}"
    return f"{END_THINK}{row['answer']}"


def arithmetic_dataset(n: int, seed: int, split: str = "train", levels=LEVELS) -> list[dict]:
    """``n`` arithmetic rows, levels drawn uniformly from ``levels``; deterministic in ``seed``."""
    rng = random.Random(f"arithmetic/{split}/{seed}")
    return [arithmetic_row(rng, rng.choice(tuple(levels)), split) for _ in range(n)]


def reversal_dataset(n: int, seed: int, split: str = "train") -> list[dict]:
    """``n`` string-reversal rows; deterministic in ``seed``."""
    rng = random.Random(f"reversal/{split}/{seed}")
    return [reversal_row(rng, split) for _ in range(n)]


def _wrong_answer(rng: random.Random, row: dict) -> str:
    if row["task"] == "arithmetic":
        return str(rng.choice([d for d in range(10) if str(d) != row["answer"]]))
    chars = list(row["answer"])
    while "".join(chars) == row["answer"]:
        i, j = rng.sample(range(len(chars)), 2)
        chars[i], chars[j] = chars[j], chars[i]
        if len(set(chars)) == 1:  # a word of one repeated letter cannot be permuted into an error
            chars[0] = "a" if chars[0] != "a" else "b"
    return "".join(chars)


def preference_pairs(domain: str, n: int, seed: int, split: str = "train") -> list[dict]:
    """``n`` preference rows (TRL's standard format: prompt, chosen, rejected) for ``domain``.

    ``arithmetic``: chosen is the correct response, rejected the same style with a wrong answer.
    ``reversal``: chosen is the reversed word, rejected a permutation of it that is not the answer.
    Columns ``answer``, ``level`` and ``task`` are kept so rewards and evaluation can read them.
    """
    if domain not in ("arithmetic", "reversal"):
        raise ValueError(f"unknown preference domain {domain!r}; choose 'arithmetic' or 'reversal'")
    rng = random.Random(f"preference/{domain}/{split}/{seed}")
    rows = arithmetic_dataset(n, seed, split) if domain == "arithmetic" else reversal_dataset(n, seed, split)
    out = []
    for row in rows:
        thinking = row["task"] == "arithmetic" and rng.random() < 0.5
        wrong = dict(row, answer=_wrong_answer(rng, row))
        out.append(
            {
                "prompt": row["prompt"],
                "chosen": response(row, thinking),
                "rejected": response(wrong, thinking),
                "answer": row["answer"],
                "level": row["level"],
                "task": row["task"],
            }
        )
    return out


def iter_levels(rows: list[dict]) -> Iterator[tuple[int, list[dict]]]:
    """Yield (level, rows of that level) in increasing level order."""
    for level in sorted({r["level"] for r in rows}):
        yield level, [r for r in rows if r["level"] == level]
