"""Preference losses: DPO (sigmoid, IPO, hinge) and SimPO (ALGORITHMS.md section 0).

Inputs are per-example sequence log-probabilities, shape ``(b,)``; outputs per-example losses
``(b,)`` so that the caller chooses the reduction (and its global normaliser).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_KINDS = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    kind: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO family (Rafailov et al., 2023; IPO: Azar et al., 2023, eq. 17).

    With ``h = beta * ((c - rc) - (r - rr))``:
    - ``sigmoid``: ``-(1 - ls) * logsigmoid(h) - ls * logsigmoid(-h)`` (conservative DPO when ls > 0);
    - ``ipo``: ``(h / beta - 1 / (2 * beta))^2``; TRL feeds it token-averaged log-probs, so pass
      averages here to match TRL, sums to follow the paper's words;
    - ``hinge``: ``relu(1 - h)`` (SLiC).
    Returns ``(losses (b,), chosen_rewards (b,), rejected_rewards (b,))`` where the implicit rewards
    ``beta * (c - rc)`` and ``beta * (r - rr)`` are detached.
    """
    if kind not in DPO_KINDS:
        raise ValueError(f"kind must be one of {DPO_KINDS}, got {kind!r}")
    if label_smoothing and kind != "sigmoid":
        raise ValueError("label_smoothing applies to kind='sigmoid' only")
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    h = beta * (chosen_ratio - rejected_ratio)
    if kind == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    elif kind == "ipo":
        losses = (h / beta - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - h)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def simpo_loss(
    chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, beta: float = 2.0, gamma: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al., 2024, eq. 6): ``-logsigmoid(beta * (c_avg - r_avg) - gamma)``.

    No reference model; inputs are length-averaged log-probs ``(b,)``. ``gamma`` is the target
    margin itself (SimPO's code uses ``gamma_beta_ratio * beta``; set ``gamma`` accordingly).
    Returns ``(losses, chosen_rewards, rejected_rewards)`` with rewards ``beta * avg_logps``.
    """
    losses = -F.logsigmoid(beta * (chosen_avg_logps - rejected_avg_logps) - gamma)
    return losses, beta * chosen_avg_logps.detach(), beta * rejected_avg_logps.detach()


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                  center_coef: float = 0.0) -> torch.Tensor:
    """Per-pair reward-model loss (TRL's ``RewardTrainer``)."""
    margin = torch.zeros_like(chosen) if margin is None else margin
    return -torch.nn.functional.logsigmoid(chosen - rejected - margin) + center_coef * (chosen + rejected) ** 2
