"""Preference losses: DPO (sigmoid, IPO, hinge), SimPO, Bradley-Terry and
OFS-DPO's fast-slow term; ``PAIR_LOSSES`` names them for the learner.

Inputs are per-example sequence log-probabilities, shape ``(b,)``; outputs per-example losses
``(b,)`` so that the caller chooses the reduction (and its global normaliser).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


def bradley_terry(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None, center_coef: float = 0.0
) -> torch.Tensor:
    """Per-pair reward-model loss (TRL's ``RewardTrainer``)."""
    margin = torch.zeros_like(chosen) if margin is None else margin
    return (
        -torch.nn.functional.logsigmoid(chosen - rejected - margin) + center_coef * (chosen + rejected) ** 2
    )


SLOW_TERMS = ("neg_fs", "sf")


def fast_slow_losses(
    fast_w: torch.Tensor,
    fast_l: torch.Tensor,
    slow_w: torch.Tensor,
    slow_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    beta: float = 0.1,
    alpha: float = 0.5,
    slow_term: str = "neg_fs",
    kind: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """Per-pair OFS-DPO loss of both modules ``(b,)``, given sequence log-probs of chosen (w) and
    rejected (l) responses under the fast module, the slow module and the reference.

    Returns ``(total, parts)``: ``total = L_DPO(F) + alpha * L_FS + L_DPO(S) + alpha * slow_extra``,
    where each module's terms see the other module detached, so one backward pass gives each its
    own gradient. ``parts`` holds the per-pair ``dpo_fast``, ``dpo_slow``, ``fs`` (``L_FS``) and the
    implicit rewards of the fast module (``chosen_rewards``, ``rejected_rewards``).
    """
    if slow_term not in SLOW_TERMS:
        raise ValueError(f"slow_term must be one of {SLOW_TERMS}, got {slow_term!r}")
    dpo_fast, chosen_r, rejected_r = dpo_loss(fast_w, fast_l, ref_w, ref_l, beta, kind, label_smoothing)
    dpo_slow, _, _ = dpo_loss(slow_w, slow_l, ref_w, ref_l, beta, kind, label_smoothing)
    fs, _, _ = dpo_loss(
        fast_w, fast_l, slow_w.detach(), slow_l.detach(), beta
    )  # the fast module widens its lead
    if slow_term == "neg_fs":
        slow_extra = -dpo_loss(fast_w.detach(), fast_l.detach(), slow_w, slow_l, beta)[0]
    else:
        slow_extra = dpo_loss(slow_w, slow_l, fast_w.detach(), fast_l.detach(), beta)[0]
    total = dpo_fast + alpha * fs + dpo_slow + alpha * slow_extra
    return total, {
        "dpo_fast": dpo_fast.detach(),
        "dpo_slow": dpo_slow.detach(),
        "fs": fs.detach(),
        "chosen_rewards": chosen_r,
        "rejected_rewards": rejected_r,
    }


@dataclass(frozen=True)
class PairLoss:
    """A pair loss as the learner runs it: ``fn(chosen, rejected, ref_chosen, ref_rejected, cfg,
    margin)`` -> ``(losses (b,), chosen_rewards, rejected_rewards)``, ``cfg`` a pair loss config
    (``beta``, ``gamma``, ``label_smoothing``, ``center_coef`` as attributes); what it reads: the reference
    policy's log-probs (``reference``), length-averaged log-probs (``average``), or the model's
    scalar scores instead of log-probs (``scores``: a reward model)."""

    fn: Callable
    reference: bool = True
    average: bool = False
    scores: bool = False


def _dpo(kind: str) -> Callable:
    return lambda c, r, rc, rr, cfg, margin=None: dpo_loss(
        c, r, rc, rr, cfg.beta, kind, getattr(cfg, "label_smoothing", 0.0)
    )


def _bradley_terry(c, r, rc, rr, cfg, margin=None):
    return bradley_terry(c, r, margin, getattr(cfg, "center_coef", 0.0)), c.detach(), r.detach()


# Pair losses by name (``algorithm.preference.loss_type``, simpo, reward_model): a new pair loss is a
# function and one row here.
PAIR_LOSSES: dict[str, PairLoss] = {
    "sigmoid": PairLoss(_dpo("sigmoid")),
    "ipo": PairLoss(_dpo("ipo"), average=True),  # token-averaged log-probs, as TRL
    "hinge": PairLoss(_dpo("hinge")),
    "simpo": PairLoss(
        lambda c, r, rc, rr, cfg, margin=None: simpo_loss(c, r, cfg.beta, cfg.gamma),
        reference=False,
        average=True,
    ),
    "bradley_terry": PairLoss(_bradley_terry, reference=False, scores=True),
}
