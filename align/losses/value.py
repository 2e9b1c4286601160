"""PPO with a learned critic: token-level rewards, generalised advantage estimation and the clipped
value loss (Schulman et al. 2016 and 2017, the RLHF form of Ouyang et al. 2022).

Layout as everywhere in ``align.losses``: per-token tensors ``(b, t)`` aligned with the shifted
targets, ``mask`` 1 on completion tokens (one contiguous run per row). A row's value column ``j`` is
``V(s_j)``, the value of the prefix that predicts token ``j + 1``; the episode ends after the last
masked token (its next value is 0).
"""

from __future__ import annotations

import torch

from align.losses.aggregation import aggregate


def last_token_mask(mask: torch.Tensor) -> torch.Tensor:
    """1 at each row's last masked column, 0 elsewhere (rows without tokens: all 0)."""
    m = mask > 0
    t = m.shape[1]
    idx = torch.arange(t, device=mask.device).expand_as(m)
    last = torch.where(m, idx, torch.full_like(idx, -1)).max(dim=1).values  # (b,)
    out = torch.zeros_like(mask, dtype=torch.float32)
    rows = torch.nonzero(last >= 0).flatten()
    out[rows, last[rows]] = 1.0
    return out


def token_rewards(
    seq_rewards: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None, kl_coef: float = 0.0
) -> torch.Tensor:
    """Per-token rewards ``(b, t)``: ``-kl_coef * kl_t`` on every completion token (the KL penalty
    in the reward, ``kl`` ``(b, t)`` a per-token estimator of KL(pi_old || pi_ref)) and the sequence's
    reward ``seq_rewards`` ``(b,)`` added at its last token."""
    m = mask.to(torch.float32)
    r = last_token_mask(m) * seq_rewards.to(torch.float32).unsqueeze(1)
    if kl is not None and kl_coef:
        r = r - kl_coef * kl.to(torch.float32) * m
    return r


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's completion tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (``V`` after the last token is 0) and
    ``A_t = delta_t + gamma * lam * A_{t+1}``; returns ``(advantages, returns = A + V)``, both 0 off
    the mask. ``rewards``, ``values``, ``mask`` ``(b, t)``; computed in float64 then cast to float32.
    """
    m = mask.to(torch.float64)
    r, v = rewards.to(torch.float64) * m, values.to(torch.float64) * m
    b, t = m.shape
    adv = torch.zeros(b, t, dtype=torch.float64)
    next_v = torch.zeros(b, dtype=torch.float64)
    next_a = torch.zeros(b, dtype=torch.float64)
    for j in range(t - 1, -1, -1):
        delta = r[:, j] + gamma * next_v - v[:, j]
        a = delta + gamma * lam * next_a
        adv[:, j] = a * m[:, j]
        # a masked column (padding after the episode, or the prompt before it) ends the recursion
        next_v = v[:, j] * m[:, j]
        next_a = adv[:, j]
    returns = (adv + v) * m
    return adv.float(), returns.float()


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``x`` standardised by its mean and (unbiased) standard deviation over the masked entries, as
    TRL's ``masked_whiten``; 0 off the mask."""
    m = mask.to(torch.float64)
    n = m.sum()
    xd = x.to(torch.float64)
    mean = (xd * m).sum() / n.clamp(min=1)
    var = (((xd - mean) * m) ** 2).sum() / (n - 1).clamp(min=1)
    out = (xd - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return (out * m).to(x.dtype)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
    agg: str = "token_mean",
    **agg_kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped value loss, per token ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``
    (``clip`` None: ``0.5 * (V - R)^2``), reduced by :func:`aggregate` (global ``num_tokens`` etc. in
    ``agg_kwargs``). Stats: ``clip_frac`` (share of masked tokens where the clipped term was the larger).
    """
    err = (values - returns) ** 2
    if clip is None:
        per_token = 0.5 * err
        clipped_active = torch.zeros_like(err, dtype=torch.bool)
    else:
        v_clip = old_values + torch.clamp(values - old_values, -clip, clip)
        err_clip = (v_clip - returns) ** 2
        per_token = 0.5 * torch.maximum(err, err_clip)
        clipped_active = err_clip > err
    loss = aggregate(per_token, mask, agg, **agg_kwargs)
    m = mask.bool()
    with torch.no_grad():
        stats = {"clip_frac": (clipped_active & m).sum() / m.sum().clamp(min=1)}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over the masked tokens: 1 for a perfect critic, 0 for a constant
    one, negative for one worse than the mean (NaN when the returns do not vary)."""
    m = mask > 0
    r, v = returns[m].to(torch.float64), values[m].to(torch.float64)
    if r.numel() < 2:
        return float("nan")
    var_r = r.var()
    return float("nan") if var_r <= 0 else float(1.0 - (r - v).var() / var_r)
