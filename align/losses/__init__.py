"""Pure tensor functions: advantages, policy-gradient and preference losses, KL estimators.

No I/O, no state, no Ray / vLLM / DeepSpeed imports (a test checks it).
"""

from align.losses.advantages import group_advantages, reinforce_pp_advantages, rloo_advantages
from align.losses.aggregation import AGG_MODES, aggregate
from align.losses.policy import (
    POLICY_LOSSES,
    cispo_loss,
    kl_penalty,
    mismatch_weights,
    policy_loss,
    policy_loss_name,
    sequence_policy_loss,
    token_logprobs,
    with_behaviour_logps,
)
from align.losses.preference import DPO_KINDS, PAIR_LOSSES, dpo_loss, fast_slow_losses, simpo_loss
from align.losses.value import (
    explained_variance,
    gae,
    last_token_mask,
    masked_whiten,
    token_rewards,
    value_loss,
)

__all__ = [
    "AGG_MODES",
    "PAIR_LOSSES",
    "POLICY_LOSSES",
    "cispo_loss",
    "explained_variance",
    "gae",
    "last_token_mask",
    "masked_whiten",
    "token_rewards",
    "value_loss",
    "fast_slow_losses",
    "mismatch_weights",
    "policy_loss_name",
    "DPO_KINDS",
    "aggregate",
    "dpo_loss",
    "group_advantages",
    "kl_penalty",
    "policy_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "sequence_policy_loss",
    "simpo_loss",
    "token_logprobs",
    "with_behaviour_logps",
]
