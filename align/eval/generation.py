"""Accuracy by difficulty level and thinking mode, with HF ``generate`` (greedy).

Used to report what the warm-start gives; distributed evaluation through vLLM rollout workers
reports the same table. The mode is forced the way AdaptThink forces it: NoThinking by appending
``</think>`` to the prompt, Thinking by forbidding ``</think>`` as the first generated token.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from align.models.tokenizer import END_THINK
from rewards import final_answer, number_match


class _BanFirstToken(LogitsProcessor):
    def __init__(self, token_id: int, prompt_len: int):
        self.token_id, self.prompt_len = token_id, prompt_len

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.prompt_len:
            scores[:, self.token_id] = -float("inf")
        return scores


@torch.no_grad()
def generate(
    model, tok, prompts: list[str], mode: str = "free", max_new_tokens: int = 48, batch_size: int = 256
) -> list[str]:
    """Greedy completions (special tokens kept, EOS and padding dropped) in ``mode`` free/think/nothink."""
    end_id = tok.convert_tokens_to_ids(END_THINK)
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = [p + END_THINK if mode == "nothink" else p for p in prompts[i : i + batch_size]]
        enc = tok(chunk, return_tensors="pt", padding=True)
        procs = (
            LogitsProcessorList([_BanFirstToken(end_id, enc.input_ids.shape[1])]) if mode == "think" else None
        )
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            logits_processor=procs,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        for row in gen[:, enc.input_ids.shape[1] :]:
            text = tok.decode([t for t in row.tolist() if t not in (tok.pad_token_id, tok.eos_token_id)])
            out.append((END_THINK + text) if mode == "nothink" else text)
    return out


def accuracy_by_level(model, tok, rows: list[dict], modes=("free", "think", "nothink")) -> dict:
    """``{mode: {level: accuracy}}`` plus ``{"nothink_rate": {level: rate}}`` for free generation."""
    report: dict = {}
    levels = sorted({r["level"] for r in rows})
    for mode in modes:
        comps = generate(model, tok, [r["prompt"] for r in rows], mode)
        report[mode] = {
            lv: sum(final_answer(c) == r["answer"] for c, r in zip(comps, rows) if r["level"] == lv)
            / max(1, sum(r["level"] == lv for r in rows))
            for lv in levels
        }
        if mode == "free":
            report["nothink_rate"] = {
                lv: sum(c.startswith(END_THINK) for c, r in zip(comps, rows) if r["level"] == lv)
                / max(1, sum(r["level"] == lv for r in rows))
                for lv in levels
            }
    return report


@torch.no_grad()
def chat_accuracy_by_level(
    model, tok, rows: list[dict], max_new_tokens: int = 32, batch_size: int = 64
) -> dict:
    """Greedy accuracy per level on conversational rows (``align.data.chat``), scored by the
    ``number_match`` reward: ``{"accuracy": {level: acc}, "length": {level: mean tokens}, "samples": [...]}``."""
    side, tok.padding_side = tok.padding_side, "left"  # generation continues every prompt from its last token
    texts, lengths = [], []
    try:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            prompts = [
                tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
                for r in chunk
            ]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            for row in gen[:, enc.input_ids.shape[1] :].tolist():
                n = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
                texts.append(tok.decode(row[:n], skip_special_tokens=True))
                lengths.append(n)
    finally:
        tok.padding_side = side
    right = number_match(None, texts, [r["answer"] for r in rows])
    levels = sorted({r["level"] for r in rows})
    by = {lv: [i for i, r in enumerate(rows) if r["level"] == lv] for lv in levels}
    return {
        "accuracy": {lv: sum(right[i] for i in ix) / len(ix) for lv, ix in by.items()},
        "length": {lv: sum(lengths[i] for i in ix) / len(ix) for lv, ix in by.items()},
        "overall": sum(right) / len(right),
        "samples": [
            {"prompt": r["prompt"][-1]["content"], "reply": t, "answer": r["answer"]}
            for r, t in zip(rows[:5], texts)
        ],
    }
