"""A reward model as a reward: any local HF sequence-classification model, scored in batches.

The text scored is built exactly as reward-model training (``algorithm.name: reward_model``) builds
it, so a model trained here scores what it was trained on: prompt token ids (with the tokenizer's
special tokens), then the response's ids, then EOS; the model reads its score at the last token, as
``AutoModelForSequenceClassification`` does. The prompt is

- ``template: plain``: the prompt string the policy was given;
- ``template: chat``: the reward model's own chat template over the row's messages
  (``prompt_messages``, given for conversational data) or, for a plain prompt, over one user turn;
- ``template: auto`` (default): ``chat`` for conversational rows when the reward model's tokenizer
  has a chat template, else ``plain``.

A model with several outputs (``num_labels > 1``) gives one objective per head: ``heads`` names
them in output order.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATES = ("auto", "chat", "plain")


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def sequence_ids(
    tokenizer, prompt: str, completion: str, templated: bool = False
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one sequence, as TRL's DPOTrainer and RewardTrainer (1.16) build
    them; reward-model training (pairs) and scoring (``ModelReward``) use this one function.

    The prompt and the prompt followed by the completion are tokenized whole, and the completion
    starts where the two diverge (TRL's ``common_prefix_length``): tokenizing the two halves apart
    differs wherever BPE merges across the boundary (SmolLM2: ``"=<think>" + "</think>7"`` joins as
    ``"></"``, in 95 of 200 built-in pairs; the DPO losses then parted from TRL's from step 2).
    Standard text: the tokenizer's special tokens added, and the EOS text appended to the completion
    unless it ends with it. ``templated`` (the completion is the chat template's rendering of an
    assistant turn, which closes the turn itself, e.g. ``"42<|im_end|>\n"``): no special tokens are
    added (``apply_chat_template`` adds none) and no EOS."""
    special = not templated
    if special and tokenizer.eos_token and not completion.endswith(tokenizer.eos_token):
        completion = completion + tokenizer.eos_token
    p = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    full = tokenizer(prompt + completion, add_special_tokens=special)["input_ids"]
    n = common_prefix_length(p, full)
    return p[:n], full[n:]


class ModelReward:
    """Callable with TRL's reward signature; returns a list (one head) or ``{head: list}``."""

    def __init__(
        self,
        path: str,
        heads: list[str] | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        template: str = "auto",
        device: str = "auto",
        dtype: str = "float32",
        trust_remote_code: bool = False,
        threads: int = 0,
    ):
        import os

        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not Path(path, "config.json").exists():
            raise FileNotFoundError(f"reward model {path!r}: no config.json (not a local HF model directory)")
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if self.device == "cpu":  # a Ray actor with num_cpus=0 starts with one thread (OMP_NUM_THREADS=1)
            torch.set_num_threads(threads or os.cpu_count() or 1)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(
                path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
            )
            .to(self.device)
            .eval()
        )
        pad = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = pad
        self.pad_id = self.model.config.pad_token_id
        n = self.model.config.num_labels
        if heads is not None and len(heads) != n:
            raise ValueError(f"reward model {path!r} has {n} output(s) but heads names {len(heads)}: {heads}")
        self.heads = heads
        self.batch_size, self.template = batch_size, template
        self.max_length = max_length or getattr(self.model.config, "max_position_embeddings", None) or 10**9

    def _ids(self, prompt, completion, messages) -> list[int]:
        tok = self.tokenizer
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        chat = self.template == "chat" or (
            self.template == "auto" and messages is not None and getattr(tok, "chat_template", None)
        )
        if chat:
            turns = list(messages) if messages is not None else [{"role": "user", "content": prompt}]
            prefix = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(turns + [{"role": "assistant", "content": text}], tokenize=False)
            if full.startswith(prefix):
                p, c = sequence_ids(tok, prefix, full[len(prefix) :], templated=True)
                return (p + c)[-self.max_length :]
        p, c = sequence_ids(tok, prompt, text)
        return (p + c)[-self.max_length :]  # the score is read at the end: keep the end

    def scores(self, ids: list[list[int]]):
        """Model outputs ``(n, num_labels)`` for token id lists, in batches of ``batch_size``."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(ids), self.batch_size):
                part = ids[start : start + self.batch_size]
                width = max(len(x) for x in part)
                input_ids = torch.full((len(part), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(part), width), dtype=torch.long)
                for i, x in enumerate(part):
                    input_ids[i, : len(x)] = torch.tensor(x)
                    mask[i, : len(x)] = 1
                logits = self.model(
                    input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
                ).logits
                out.append(logits.float().cpu())
        return torch.cat(out) if out else torch.zeros((0, self.model.config.num_labels))

    def __call__(self, prompts, completions, prompt_messages=None, **kwargs):
        messages = prompt_messages or [None] * len(completions)
        values = self.scores([self._ids(p, c, m) for p, c, m in zip(prompts, completions, messages)])
        if self.heads is None and values.shape[1] == 1:
            return values[:, 0].tolist()
        names = self.heads or [f"head_{k}" for k in range(values.shape[1])]
        return {name: values[:, k].tolist() for k, name in enumerate(names)}
