"""Prompt and preference data in TRL's formats, from JSONL files, local HF datasets or built-ins.

Formats (detected per row):
- prompt-only: ``{"prompt": str, ...}``; every other column is passed to the rewards;
- conversational: ``{"prompt": [{"role", "content"}, ...]}`` rendered with the tokenizer's chat
  template (generation prompt added);
- preference: ``{"prompt", "chosen", "rejected"}``, each standard (strings) or conversational
  (message lists; the completions are rendered as the template continues the prompt); or with an
  implicit prompt, ``{"chosen", "rejected"}`` only: the shared prefix is the prompt, as TRL's
  ``extract_prompt`` takes it.
A bad row fails with ``DataError`` naming the file and line (or the dataset row).

Built-ins: ``builtin:arithmetic``, ``builtin:arithmetic-eval``, ``builtin:reversal``,
``builtin:reversal-eval``, ``builtin:preference-arithmetic[-eval]``,
``builtin:preference-reversal[-eval]`` (see ``align.data.tasks``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

from align.data import chat, tasks

ROLES = ("system", "user", "assistant", "tool")
BUILTIN_SIZES = {"train": 4000, "eval": 500}


class DataError(ValueError):
    """A dataset row or file that cannot be used; the message names the file and line."""


def _builtin_rows(name: str) -> list[dict]:
    split = "eval" if name.endswith("-eval") else "train"
    base = name[: -len("-eval")] if split == "eval" else name
    n = BUILTIN_SIZES[split]
    makers: dict[str, Callable[[], list[dict]]] = {
        "arithmetic": lambda: tasks.arithmetic_dataset(n, 0, split),
        "reversal": lambda: tasks.reversal_dataset(n, 0, split),
        "preference-arithmetic": lambda: tasks.preference_pairs("arithmetic", n, 0, split),
        "preference-reversal": lambda: tasks.preference_pairs("reversal", n, 0, split),
        "chat-arithmetic": lambda: chat.chat_dataset(n, 0, split),
        "preference-chat": lambda: chat.chat_preference_pairs(n, 0, split),
        "preference-chat-implicit": lambda: chat.chat_preference_pairs(n, 0, split, implicit=True),
    }
    if base not in makers:
        names = ", ".join(f"builtin:{k}[-eval]" for k in makers)
        raise DataError(f"unknown built-in dataset 'builtin:{name}'; choose one of {names}")
    return makers[base]()


def iter_raw_rows(source: str, base_dir: str | Path | None = None) -> Iterator[tuple[str, dict]]:
    """Yield ``(location, row)`` pairs, location like ``"data.jsonl:12"`` for error messages."""
    if source.startswith("builtin:"):
        for i, row in enumerate(_builtin_rows(source[len("builtin:") :])):
            yield f"{source}[{i}]", row
        return
    path = Path(source)
    if not path.exists() and base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / source
    if not path.exists():
        raise DataError(
            f"dataset {source!r} not found (a .jsonl file, a local HF dataset folder, or builtin:...)"
        )
    if path.is_file():
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a BOM may open the file
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} "
                        f"of the line); save the file as UTF-8"
                    ) from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                yield f"{path}:{lineno}", row
        return
    import datasets

    try:
        ds = (
            datasets.load_from_disk(str(path))
            if (path / "state.json").exists() or (path / "dataset_dict.json").exists()
            else datasets.load_dataset(str(path), split="train")
        )
    except Exception as exc:
        raise DataError(f"{path}: cannot load as a local HF dataset: {type(exc).__name__}: {exc}") from exc
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: dataset has splits {list(ds)}; name the split folder directly")
        ds = ds["train"]
    for i, row in enumerate(ds):
        yield f"{path}[row {i}]", row


def _check_messages(where: str, field: str, value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {field!r} must be a non-empty string or a list of messages")
    for j, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise DataError(
                f"{where}: field {field!r}: message {j} must be an object with 'role' and 'content'"
            )
        if msg["role"] not in ROLES:
            raise DataError(
                f"{where}: field {field!r}: message {j} has role {msg['role']!r}; use one of {ROLES}"
            )
        if not isinstance(msg["content"], str):
            raise DataError(f"{where}: field {field!r}: message {j} content must be a string")
    return value


def _text(where: str, field: str, row: dict) -> str | list[dict]:
    if field not in row or row[field] is None:
        raise DataError(f"{where}: missing field {field!r} (row has: {', '.join(row) or 'nothing'})")
    value = row[field]
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field {field!r} is empty")
        return value
    return _check_messages(where, field, value)


def _render_prompt(where: str, prompt, tokenizer) -> str:
    if isinstance(prompt, str):
        return prompt
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: conversational prompt needs a tokenizer with a chat template")
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def _render_completion(where: str, field: str, prompt, completion, tokenizer) -> str:
    if isinstance(completion, str):
        if not isinstance(prompt, str):
            raise DataError(
                f"{where}: prompt is conversational but {field!r} is a string; use a message list"
            )
        return completion
    if isinstance(prompt, str):
        raise DataError(
            f"{where}: {field!r} is a message list but the prompt is a string; use one format per row"
        )
    prefix = _render_prompt(where, prompt, tokenizer)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full.startswith(prefix):
        raise DataError(
            f"{where}: the chat template does not render {field!r} as a continuation of the prompt"
        )
    return full[len(prefix) :]


def extract_prompt(chosen, rejected) -> tuple:
    """TRL's implicit prompt: the longest shared prefix of ``chosen`` and ``rejected`` (messages of
    a conversation, or characters of a string; a space right before the first difference stays
    with the completions). Same split as ``trl.extract_prompt`` (which, on a first difference at
    position 0, would also look at the last character). Returns (prompt, chosen, rejected)."""
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if idx > 0 and chosen[idx - 1] == " ":
                idx -= 1
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def _pair(where: str, row: dict) -> tuple:
    """(prompt, chosen, rejected) of a preference row, explicit or with an implicit prompt."""
    chosen, rejected = _text(where, "chosen", row), _text(where, "rejected", row)
    if row.get("prompt") is not None:
        return _text(where, "prompt", row), chosen, rejected
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DataError(
            f"{where}: implicit prompt: 'chosen' and 'rejected' must both be strings or both message lists"
        )
    prompt, chosen, rejected = extract_prompt(chosen, rejected)
    if not prompt:
        raise DataError(
            f"{where}: missing field 'prompt', and 'chosen' and 'rejected' share no prefix to take as "
            f"the implicit prompt"
        )
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if not value or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{where}: implicit prompt: field {field!r} is empty after the shared prefix")
    return prompt, chosen, rejected


def load_prompts(source: str, tokenizer=None, base_dir=None) -> list[dict]:
    """Rows with a rendered ``prompt`` string plus every other column (passed to rewards); a
    conversational row also keeps its messages as ``prompt_messages`` (a reward model renders them
    with its own chat template)."""
    rows = []
    for where, row in iter_raw_rows(source, base_dir):
        prompt = _text(where, "prompt", row)
        messages = {"prompt_messages": prompt} if isinstance(prompt, list) else {}
        rows.append({**row, **messages, "prompt": _render_prompt(where, prompt, tokenizer)})
    if not rows:
        raise DataError(f"dataset {source!r} has no rows")
    return rows


def load_eval_rows(source: str, tokenizer=None, base_dir=None) -> list[dict]:
    """Eval rows of either type: preference rows (a ``chosen`` column) rendered like training
    pairs, so held-out pair metrics see strings; prompt rows otherwise."""
    first = next(iter(iter_raw_rows(source, base_dir)), (None, {}))[1]
    if "chosen" in first and "rejected" in first:
        return load_preferences(source, tokenizer, base_dir)
    return load_prompts(source, tokenizer, base_dir)


SKIP_REASONS = ("missing_field", "empty_field", "bad_format", "identical_pair")


def _reason(message: str) -> str:
    if "missing field" in message:
        return "missing_field"
    if "is empty" in message:
        return "empty_field"
    if "identical" in message:
        return "identical_pair"
    return "bad_format"


def load_preferences(
    source: str, tokenizer=None, base_dir=None, on_bad: str = "error", skipped: dict[str, int] | None = None
) -> list[dict]:
    """Rows with rendered ``prompt``, ``chosen`` and ``rejected`` strings plus the other columns.

    Policy for a bad row (a missing or empty field, a malformed message list, chosen equal to
    rejected): ``on_bad="error"`` raises ``DataError`` naming the file and line; ``"skip"`` drops the
    row and counts it in ``skipped`` by reason (``SKIP_REASONS``). Invalid JSON always raises: the
    file itself is broken.
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    rows = []
    for where, row in iter_raw_rows(source, base_dir):
        try:
            prompt, chosen, rejected = _pair(where, row)
            chosen = _render_completion(where, "chosen", prompt, chosen, tokenizer)
            rejected = _render_completion(where, "rejected", prompt, rejected, tokenizer)
            if not chosen.strip() or not rejected.strip():
                raise DataError(f"{where}: field {'chosen' if not chosen.strip() else 'rejected'!r} is empty")
            if chosen == rejected:
                raise DataError(f"{where}: 'chosen' and 'rejected' are identical; a pair must differ")
        except DataError as exc:
            if on_bad == "error":
                raise
            if skipped is not None:
                reason = _reason(str(exc))
                skipped[reason] = skipped.get(reason, 0) + 1
            continue
        messages = {"prompt_messages": prompt} if isinstance(prompt, list) else {}
        rows.append(
            {
                **row,
                **messages,
                "prompt": _render_prompt(where, prompt, tokenizer),
                "chosen": chosen,
                "rejected": rejected,
            }
        )
    if not rows:
        raise DataError(
            f"dataset {source!r} has no usable rows" + (f" (skipped: {skipped})" if skipped else "")
        )
    return rows
