"""The GRPO family as data: each name's advantage estimator (a row of ``align.algorithms.grpo.ESTIMATORS``)
and its defaults (loss aggregation, clip range, policy loss: a row of ``align.losses.POLICY_LOSSES``,
DAPO's switches). A new variant is one row here. Plain data with no imports, so the config models
(``align.config``) read the defaults from the same rows the algorithm runs."""

from __future__ import annotations

from typing import NamedTuple


class Variant(NamedTuple):
    estimator: str
    loss_agg: str
    clip_low: float | None
    clip_high: float
    loss: str
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, sample more
    overlong_filter: bool = False  # DAPO: truncated completions out of the loss


GRPO_FAMILY: dict[str, Variant] = {
    "grpo": Variant("group_std", "seq_mean_token_mean", 0.2, 0.2, "clip"),
    "dr_grpo": Variant("group_none", "seq_mean_token_sum_norm", 0.2, 0.2, "clip"),
    "dapo": Variant(
        "group_std", "token_mean", 0.2, 0.28, "clip", dynamic_sampling=True, overlong_filter=True
    ),
    "rloo": Variant("rloo", "token_mean", 0.2, 0.2, "clip"),
    "reinforce_pp": Variant("reinforce_pp", "token_mean", 0.2, 0.2, "clip"),
    # GSPO (Zheng et al., 2025): the sequence-level ratio (geometric mean of the token ratios), a
    # clip range two orders of magnitude narrower (the paper's 3e-4 / 4e-4), sequences averaged.
    "gspo": Variant("group_std", "seq_mean_token_mean", 3e-4, 4e-4, "clip_sequence_mean"),
    # CISPO (MiniMax-M1, 2025): REINFORCE with the importance weight clipped from above and detached;
    # clip_high 4.0 caps the weight at 5 (ScaleRL / TRL), no lower bound; token-level mean.
    "cispo": Variant("group_std", "token_mean", None, 4.0, "cispo"),
    # AdaptThink: advantage = the shaped reward itself (the authors' ``naive`` estimator: the
    # per-prompt reference accuracy is the baseline), sequence-level ratio by default.
    "adaptthink": Variant("naive", "seq_mean_token_mean", 0.2, 0.2, "clip_sequence_mean"),
    # PPO with a learned critic: per-token advantages from GAE (whitened over the batch), token mean.
    "ppo": Variant("gae", "token_mean", 0.2, 0.2, "clip"),
}

# the names of ``align.algorithms.grpo.GRPO``; adaptthink and ppo have their own sections and files
GRPO_NAMES = tuple(n for n in GRPO_FAMILY if n not in ("adaptthink", "ppo"))

# Default (clip_low, clip_high) of each policy loss used outside its own algorithm.
LOSS_CLIPS = {
    "clip": (0.2, 0.2),
    "clip_sequence_mean": (0.2, 0.2),
    "clip_sequence_sum": (0.2, 0.2),
    "cispo": (None, 4.0),
}
