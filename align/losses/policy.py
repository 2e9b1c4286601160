"""Clipped policy-gradient surrogate and per-token KL estimators."""

from __future__ import annotations

import functools

import torch

from align.losses.aggregation import aggregate


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each ``token_ids`` ``(b, t)`` under ``logits`` ``(b, t, vocab)``.

    Computed as ``logit[id] - logsumexp(logits)`` in float32 so that it does not materialise a
    ``(b, t, vocab)`` log-softmax in the logits' dtype (matches TRL's ``selective_log_softmax``).
    """
    logits = logits.float()
    picked = torch.gather(logits, -1, token_ids.unsqueeze(-1)).squeeze(-1)  # (b, t)
    return picked - torch.logsumexp(logits, dim=-1)


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimator with ``d = logps - ref_logps`` (Schulman, 2020).

    ``k1 = d`` (unbiased, can be negative), ``k2 = d^2 / 2``, ``k3 = exp(-d) - 1 + d`` (unbiased,
    non-negative; the GRPO paper's form). Shapes ``(b, t)`` in, ``(b, t)`` out.
    """
    d = logps - ref_logps
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d.pow(2)
    if kind == "k3":
        return torch.exp(-d) - 1 + d
    raise ValueError(f"kind must be 'k1', 'k2' or 'k3', got {kind!r}")


def with_behaviour_logps(
    old_logps: torch.Tensor, behaviour_logps: torch.Tensor, behaviour_mask: torch.Tensor
) -> torch.Tensor:
    """``old_logps`` ``(b, t)`` with the tokens of ``behaviour_mask`` taking ``behaviour_logps``: the
    log-prob of the distribution those tokens were actually sampled from (e.g. AdaptThink's forced
    first token), so the importance ratio is taken against it; the input is not modified."""
    return torch.where(behaviour_mask > 0, behaviour_logps.to(old_logps.dtype), old_logps)


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = "token_mean",
    weights: torch.Tensor | None = None,
    **agg_kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO/GRPO clipped surrogate, ``-min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)``.

    Shapes: ``logps``, ``old_logps``, ``mask`` ``(b, t)``; ``advantages`` ``(b,)`` (one per
    sequence) or ``(b, t)``. ``clip_high > clip_low`` is DAPO's clip-higher. ``agg`` and
    ``agg_kwargs`` (global ``num_tokens``/``num_seqs``/``max_len``) go to :func:`aggregate`.
    ``weights`` ``(b, t)`` (train/inference mismatch correction, :func:`mismatch_weights`) multiply
    the per-token terms. Returns the scalar loss and detached stats: ``clip_frac`` (share of masked
    tokens whose clipped term was the active one), ``ratio_mean`` and ``ratio_max`` over masked tokens.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (b, 1), broadcast over tokens
    ratio = torch.exp(logps - old_logps)  # (b, t)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)  # (b, t)
    return _token_loss(per_token, ratio, clipped < unclipped, mask, agg, weights, agg_kwargs)


def _token_loss(
    per_token, ratio, clipped, mask, agg, weights, agg_kwargs
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Aggregate per-token terms (scaled by ``weights`` when given) and the detached stats of a
    token-level loss: share of masked tokens ``clipped``, mean and max ratio over them."""
    if weights is not None:
        per_token = per_token * weights
    loss = aggregate(per_token, mask, agg, **agg_kwargs)
    m = mask.bool()
    with torch.no_grad():
        n = m.sum().clamp(min=1)
        stats = {
            "clip_frac": (clipped & m).sum() / n,
            "ratio_mean": (ratio.detach() * m).sum() / n,
            "ratio_max": ratio.detach()[m].max() if m.any() else torch.tensor(1.0),
        }
    return loss, stats


def sequence_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ratio: str = "mean",
    num_seqs: float | None = None,
    weights: torch.Tensor | None = None,
    **_unused,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip at the *sequence* level: one ratio per response, ``-min(rho A, clip(rho) A)``,
    averaged over sequences (``num_seqs``: the global count, default this batch's).

    ``ratio="mean"`` (AdaptThink's code, also GSPO's): ``rho = exp(mean_t (log pi - log pi_old))``
    over the masked tokens, the geometric mean of the per-token ratios. ``ratio="sum"``: the
    full-sequence ratio ``pi(y) / pi_old(y) = exp(sum_t ...)`` (the paper's formula as written).
    Shapes: ``logps``, ``old_logps``, ``mask`` ``(b, t)``; ``advantages`` ``(b,)``. A fully masked row
    contributes 0. ``weights`` ``(b, t)`` (mismatch correction) scale each sequence's term by their
    mean over its tokens (what a per-token weight does to a sequence term averaged over its tokens).
    Stats: ``clip_frac`` (share of sequences whose clipped term was active),
    ``ratio_mean``, ``ratio_max`` (over sequences with tokens).
    """
    if ratio not in ("mean", "sum"):
        raise ValueError(f"ratio must be 'mean' or 'sum', got {ratio!r}")
    mask = mask.to(logps.dtype)
    n_tok = mask.sum(dim=1)
    log_ratio = ((logps - old_logps) * mask).sum(dim=1)
    if ratio == "mean":
        log_ratio = log_ratio / n_tok.clamp(min=1.0)
    rho = torch.exp(log_ratio)  # (b,)
    adv = advantages.reshape(-1).to(rho.dtype)
    unclipped = rho * adv
    clipped = torch.clamp(rho, 1 - clip_low, 1 + clip_high) * adv
    per_seq = -torch.minimum(unclipped, clipped) * (n_tok > 0)
    if weights is not None:
        per_seq = per_seq * (weights.to(mask.dtype) * mask).sum(dim=1) / n_tok.clamp(min=1.0)
    loss = per_seq.sum() / max(float(logps.shape[0] if num_seqs is None else num_seqs), 1.0)
    with torch.no_grad():
        has = n_tok > 0
        k = has.sum().clamp(min=1)
        stats = {
            "clip_frac": ((clipped < unclipped) & has).sum() / k,
            "ratio_mean": (rho * has).sum() / k,
            "ratio_max": rho[has].max() if has.any() else torch.tensor(1.0),
        }
    return loss, stats


def cispo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float | None = None,
    clip_high: float = 4.0,
    agg: str = "token_mean",
    weights: torch.Tensor | None = None,
    **agg_kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO (MiniMax-M1, 2025): REINFORCE with clipped, stop-gradient importance-sampling weights,
    ``-sg(clip(ratio, 1 - clip_low, 1 + clip_high)) * A * log pi`` per token. Unlike PPO's clip no
    token's gradient is dropped: the weight is bounded, the log-prob term always gets its gradient.
    ``clip_low`` None: no lower bound (the paper's setting); ``clip_high`` 4.0 caps the weight at 5
    (ScaleRL's and TRL's recommended epsilon_max of 5.0). Same shapes, ``weights`` and stats as
    :func:`policy_loss`; ``clip_frac`` is the share of masked tokens whose weight was clipped.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps).detach()
    low = None if clip_low is None else 1 - clip_low
    weight = torch.clamp(ratio, min=low, max=1 + clip_high)
    per_token = -weight * advantages * logps
    return _token_loss(per_token, ratio, weight != ratio, mask, agg, weights, agg_kwargs)


def mismatch_weights(
    learner_logps: torch.Tensor,
    rollout_logps: torch.Tensor,
    mask: torch.Tensor,
    level: str = "token",
    mode: str = "truncate",
    cap: float = 3.0,
    floor: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Train/inference mismatch correction (truncated importance sampling, as TRL's
    ``vllm_importance_sampling_*`` and verl's rollout correction): the samples came from the rollout
    engine's distribution, the loss is computed under the learner's; weight each token by
    ``pi_learner / pi_rollout`` (``level="token"``) or each sequence by the product over its tokens
    (``"sequence"``), then ``truncate`` (clip to [floor, cap]) or ``mask`` (0 outside [floor, cap]).

    ``learner_logps`` are the learner's log-probs of the sampled tokens *without* gradient (pi_old),
    ``rollout_logps`` the engine's; shapes ``(b, t)``. Returns weights ``(b, t)`` (0 off the mask)
    and stats: the mean raw ratio, the share of tokens (or sequences) truncated or masked.
    """
    if level not in ("token", "sequence") or mode not in ("truncate", "mask"):
        raise ValueError(f"level must be token|sequence and mode truncate|mask, got {level!r}, {mode!r}")
    mask = mask.to(learner_logps.dtype)
    diff = (learner_logps - rollout_logps) * mask
    raw = torch.exp(diff.sum(dim=1, keepdim=True)) if level == "sequence" else torch.exp(diff)
    lo = 0.0 if floor is None else floor
    outside = (raw > cap) | (raw < lo)
    w = (
        torch.clamp(raw, min=lo, max=cap)
        if mode == "truncate"
        else torch.where(outside, torch.zeros_like(raw), raw)
    )
    w = w.expand_as(mask) * mask
    unit = mask.sum(dim=1).clamp(max=1.0) if level == "sequence" else mask
    out = (
        outside.to(mask.dtype).expand_as(unit) * unit
        if level == "token"
        else outside.squeeze(1).to(mask.dtype) * unit
    )
    n = unit.sum().clamp(min=1.0)
    ratio = raw.expand_as(mask) if level == "token" else raw.squeeze(1)
    return w, {"ratio_mean": float((ratio * unit).sum() / n), "outside": float(out.sum() / n)}


# Policy losses by name (``algorithm.loss`` / the GRPO family's rows in ``align.algorithms.family``): a
# new loss is a function with ``policy_loss``'s signature and one row here.
POLICY_LOSSES = {
    "clip": policy_loss,  # PPO / GRPO / DAPO: per-token ratio
    "clip_sequence_mean": functools.partial(sequence_policy_loss, ratio="mean"),  # GSPO, AdaptThink's code
    "clip_sequence_sum": functools.partial(sequence_policy_loss, ratio="sum"),  # the full-sequence ratio
    "cispo": cispo_loss,
}


def policy_loss_name(loss_cfg: dict) -> str:
    """The ``POLICY_LOSSES`` row of a learner loss config: ``loss`` when given, else from ``ratio``."""
    if loss_cfg.get("loss"):
        return loss_cfg["loss"]
    ratio = loss_cfg.get("ratio", "token")
    return "clip" if ratio == "token" else f"clip_{ratio}"
