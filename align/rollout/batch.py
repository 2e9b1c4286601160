"""Turn rollout samples into padded learner tensors, and slice them for ranks and micro-batches.

Layout (right padding): ``input_ids[i] = prompt_ids + completion_ids + pad``. Per-token tensors have
``L - 1`` columns: column ``t`` holds the log-prob of token ``t + 1`` given tokens ``<= t``, so
completion token ``j`` of a sample with prompt length ``p`` sits in column ``p + j - 1``.
"""

from __future__ import annotations

import torch


def pack(samples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad samples (``prompt_ids``, ``completion_ids``, optional ``logprobs``) into a batch.

    Returns ``input_ids``/``attention_mask`` ``(b, L)``, ``completion_mask``/``rollout_logps``/
    ``rollout_logp_mask`` ``(b, L - 1)`` aligned with the shifted targets, and ``has_rollout_logps``
    ``(b,)`` (1 where the rollout returned sampling log-probs). A sample whose first token was drawn
    from another distribution than the policy (``first_logp``: its log-prob there; AdaptThink's
    forced first token) adds ``behaviour_logps`` / ``behaviour_mask`` ``(b, L - 1)``: where the mask
    is 1, the loss takes that log-prob as the sampling policy's instead of pi_old's.
    """
    width = max(len(s["prompt_ids"]) + len(s["completion_ids"]) for s in samples)
    b = len(samples)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    att = torch.zeros((b, width), dtype=torch.long)
    cmask = torch.zeros((b, width - 1), dtype=torch.float32)
    rlogps = torch.zeros((b, width - 1), dtype=torch.float32)
    rmask = torch.zeros((b, width - 1), dtype=torch.float32)
    has = torch.zeros(b, dtype=torch.float32)
    blogps = torch.zeros((b, width - 1), dtype=torch.float32)
    bmask = torch.zeros((b, width - 1), dtype=torch.float32)
    for i, s in enumerate(samples):
        p, c = list(s["prompt_ids"]), list(s["completion_ids"])
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        att[i, : len(p) + len(c)] = 1
        cmask[i, len(p) - 1 : len(p) - 1 + len(c)] = 1
        if s.get("logprobs") is not None:  # None entries (a forced token) have no rollout log-prob
            lp = s["logprobs"]
            rlogps[i, len(p) - 1 : len(p) - 1 + len(c)] = torch.tensor(
                [0.0 if x is None else x for x in lp], dtype=torch.float32
            )
            rmask[i, len(p) - 1 : len(p) - 1 + len(c)] = torch.tensor(
                [x is not None for x in lp], dtype=torch.float32
            )
            has[i] = 1.0
        if s.get("first_logp") is not None:  # AdaptThink: log pi_IS of the forced first token
            blogps[i, len(p) - 1] = s["first_logp"]
            bmask[i, len(p) - 1] = 1.0
    out = {
        "input_ids": ids,
        "attention_mask": att,
        "completion_mask": cmask,
        "rollout_logps": rlogps,
        "rollout_logp_mask": rmask,
        "has_rollout_logps": has,
    }
    if bmask.any():
        out["behaviour_logps"], out["behaviour_mask"] = blogps, bmask
    return out


def select(batch: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    """Rows ``index`` of every tensor, trimmed to the longest remaining sequence."""
    part = {k: v[index] for k, v in batch.items()}
    width = int(part["attention_mask"].sum(dim=1).max().item()) if part["attention_mask"].numel() else 1
    width = max(width, 2)
    for k, v in part.items():
        if v.dim() == 2:
            part[k] = v[:, : width if v.shape[1] == batch["attention_mask"].shape[1] else width - 1]
    return part


def shard_indices(n: int, world_size: int) -> list[list[int]]:
    """Split ``range(n)`` into ``world_size`` contiguous, near-equal shares (rank order)."""
    bounds = [round(r * n / world_size) for r in range(world_size + 1)]
    return [list(range(bounds[r], bounds[r + 1])) for r in range(world_size)]
