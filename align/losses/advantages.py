"""Group-relative advantage estimators of the GRPO family.

All take ``rewards`` of shape ``(n_groups * group_size,)`` laid out group by group (the G samples
of one prompt are contiguous) and return advantages of the same shape. A group whose rewards are
all equal gets zero advantage, so it contributes no policy gradient.
"""

from __future__ import annotations

import torch


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (n_groups * group_size,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: torch.Tensor, group_size: int, normalize: str = "std", eps: float = 1e-6
) -> torch.Tensor:
    """GRPO (``normalize="std"``): ``(r - mean_g) / (std_g + eps)``; Dr.GRPO (``"none"``): ``r - mean_g``.

    The std is the unbiased sample std (``torch.std``), as in TRL and verl; with a group of one
    sample the std is undefined and the advantage is taken as 0.
    """
    g = _grouped(rewards, group_size)  # (n_groups, G)
    centered = g - g.mean(dim=1, keepdim=True)
    if normalize == "none":
        return centered.reshape(-1)
    if normalize != "std":
        raise ValueError(f"normalize must be 'std' or 'none', got {normalize!r}")
    if group_size == 1:
        return torch.zeros_like(rewards)
    return (centered / (g.std(dim=1, keepdim=True) + eps)).reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO: ``r_i - mean_{j != i} r_j`` = ``G / (G - 1) * (r_i - mean_g)`` (Ahmadian et al., 2024)."""
    if group_size < 2:
        raise ValueError("RLOO needs group_size >= 2 (the baseline leaves one sample out)")
    g = _grouped(rewards, group_size)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).reshape(-1)


def reinforce_pp_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++ (baseline form): ``r - mean_g`` per group, then normalised over the whole batch.

    Batch normalisation divides by the batch std (unbiased) after subtracting the batch mean of the
    centred values (which is 0 up to rounding), as OpenRLHF's ``reinforce_baseline`` does.
    """
    centered = group_advantages(rewards, group_size, normalize="none")
    if centered.numel() < 2:
        return torch.zeros_like(centered)
    return (centered - centered.mean()) / (centered.std() + eps)
