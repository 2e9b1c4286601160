"""Reward functions for configs/byo/grpo.yaml, in TRL's convention.

align calls each function with ``prompts`` (the rendered prompt strings), ``completions`` (the reply
strings) and every other column of the data rows as keyword arguments (here ``answer``; also
``prompt_messages`` and ``completion_ids``), plus the entry's ``kwargs`` from the config. It returns
one float per completion, or None where the reward does not apply to a sample.
"""

import re
import unicodedata


def _words(text: str) -> str:
    """Lower case, accents and punctuation dropped, single spaces: "Bogotá." -> "bogota"."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def capital_match(prompts, completions, answer, **kwargs):
    """1.0 when the reply names the ``answer`` city (as whole words, any case or accents), else 0.0."""
    return [float(f" {_words(a)} " in f" {_words(c)} ") for c, a in zip(completions, answer)]


def short_reply(prompts, completions, max_words=8, **kwargs):
    """1.0 when the reply has at most ``max_words`` words, else 0.0 (the prompt asks for the city only)."""
    return [float(len(c.split()) <= max_words) for c in completions]
