"""One reduction for every per-token loss: how token terms become a scalar.

The normalisers (token count, sequence count) are *global* to the optimisation batch and are
computed before micro-batching or splitting across learner ranks, then passed in. So the sum of
the micro-batch losses over all ranks equals the loss of the whole batch, for every mode: no
hidden gradient-accumulation scaling (the silent bug STYLE.md point 2 names).

Modes (frameworks disagree, and it changes results):
- ``token_mean`` (DAPO, our default): sum of all token terms / number of tokens in the batch.
- ``seq_mean_token_mean`` (GRPO paper): mean over each sequence's tokens, then / number of sequences.
- ``seq_mean_token_sum_norm`` (Dr.GRPO): sum over each sequence / a constant ``max_len``, then
  / number of sequences.
"""

from __future__ import annotations

import torch

AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    agg: str = "token_mean",
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce ``per_token`` ``(b, t)`` under ``mask`` ``(b, t)`` to a scalar.

    ``num_tokens`` / ``num_seqs`` default to this batch's own counts; pass the global counts when
    the batch is one micro-batch or one rank's share. ``max_len`` (Dr.GRPO) defaults to ``t``.
    Fully masked rows contribute 0.
    """
    if agg not in AGG_MODES:
        raise ValueError(f"agg must be one of {AGG_MODES}, got {agg!r}")
    mask = mask.to(per_token.dtype)
    masked = per_token * mask
    if agg == "token_mean":
        denom = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=per_token.dtype)
        return masked.sum() / denom.clamp(min=1.0)
    n_seq = per_token.shape[0] if num_seqs is None else num_seqs
    if agg == "seq_mean_token_mean":
        per_seq = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    else:
        per_seq = masked.sum(dim=1) / float(max_len if max_len is not None else per_token.shape[1])
    return per_seq.sum() / max(float(n_seq), 1.0)
