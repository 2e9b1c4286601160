"""The ``algorithm`` section of a run: a union tagged by ``algorithm.name``, each method's class
carrying only its own settings and checking what it needs of the rest of the run (``check``).

This file: the policy-gradient methods (the GRPO family, AdaptThink, PPO) and the union; the pair
methods' classes are in ``align.config.preference``. A GRPO-family variant is a row of
``align.algorithms.family.GRPO_FAMILY``.
"""

from __future__ import annotations

import logging
import typing
from typing import Annotated, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, Field, TypeAdapter, field_validator, model_validator

from align.algorithms.family import GRPO_FAMILY, GRPO_NAMES, LOSS_CLIPS
from align.config.preference import PairAlgorithm, RewardModelAlgorithm, SimPOAlgorithm
from align.config.section import Section, reward_name


class KLSection(Section):
    coef: float = Field(
        0.0, ge=0, description="KL coefficient to the reference (the base model, adapter off); 0 disables."
    )
    estimator: Literal["k1", "k2", "k3"] = Field("k3", description="Per-token KL estimator.")
    where: Literal["loss", "reward"] = Field(
        "loss", description="Add KL to the loss, or subtract it from the reward."
    )


class MismatchSection(Section):
    """Train/inference mismatch correction: truncated importance sampling of the learner's log-probs
    against the rollout engine's (TRL's vllm_importance_sampling_*, verl's rollout correction)."""

    level: Literal["off", "token", "sequence"] = Field(
        "off",
        description="Weight each token by pi_learner / pi_rollout (token) or each sequence by the product over its "
        "tokens (sequence); off: none. On, every sample's vLLM log-probs come back (costs rollout throughput).",
    )
    mode: Literal["truncate", "mask"] = Field(
        "truncate",
        description="truncate: clip the weight to [floor, cap]; mask: weight 0 outside [floor, cap].",
    )
    cap: float = Field(3.0, gt=0, description="Upper bound C (TRL's default 3.0).")
    floor: Optional[float] = Field(None, ge=0, description="Lower bound; default none (0).")


class APOSection(Section):
    """APO (Hong et al., 2025): asymmetric treatment of positive and negative samples."""

    dads: bool = Field(
        False,
        description="DADS: per-sample KL weight 1 - exp(-dads_scale * p) for positive-advantage samples "
        "of groups with accuracy p in (0, 1); 1 otherwise. Needs algorithm.kl.coef > 0 with where: loss.",
    )
    dads_scale: float = Field(
        2.718281828459045, gt=0, description="The e in 1 - exp(-e * p) (authors: Euler's number)."
    )
    stcr: bool = Field(
        False,
        description="STCR: a wrong response longer than its group's mean correct length gets its "
        "advantage scaled by 2 - base^(-dL).",
    )
    stcr_base: float = Field(
        1.00001, gt=1, description="STCR base (authors: 1.00001, which makes c <= 1.04 below 4K tokens)."
    )
    accuracy: str = Field(
        "correctness", description="The reward whose raw value, truncated, says correct (>= 1) or not."
    )


class AdaptThinkSection(Section):
    """AdaptThink (Zhang et al., 2025): learn when to skip thinking."""

    delta: float = Field(
        0.05, description="NoThinking bonus: advantage = R - R_ref(x) + delta * 1[NoThinking] (paper: 0-0.1)."
    )
    nothink_ratio: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of each group forced to start with the end-of-thinking "
        "token (round(G * ratio) samples); the rest are forced into Thinking.",
    )
    nothink_max_tokens: Optional[int] = Field(
        None,
        ge=1,
        description="Length budget of NoThinking responses, forced token "
        "included (authors: 4K of 16K); default rollout.max_new_tokens.",
    )
    end_think_token: str = Field(
        "</think>", description="The token that closes thinking; a response starting with it is NoThinking."
    )
    think_token: Optional[str] = Field(
        None,
        description="A token that opens Thinking (authors: 'Alright'), forced with proposal probability 1 - nothink_ratio. null: "
        "sample the first token from the policy with the end-of-thinking token banned (proposal probability "
        "(1 - nothink_ratio) times the renormalised policy, exact).",
    )
    ref_samples: int = Field(
        16, ge=1, description="K: Thinking samples per prompt from the reference (adapter off) for R_ref(x)."
    )
    ref_temperature: Optional[float] = Field(
        None, gt=0, description="Temperature of the reference samples; default rollout.temperature."
    )
    ref_prompts: Literal["run", "all"] = Field(
        "run",
        description="Before training, compute R_ref for the prompts this run will draw (run) or for every training "
        "prompt (all); prompts met later (dynamic sampling, a longer run) are computed when first met.",
    )
    ref_cache: Optional[str] = Field(
        None,
        description="JSON cache of R_ref keyed by prompt, reused across runs; default "
        "$ALIGN_CACHE/ref_accuracy/<fingerprint of model, rewards and sampling>.json.",
    )


class GRPOFamilyAlgorithm(Section):
    """The GRPO family: group-sampled completions, group advantages, a clipped policy loss."""

    name: Literal[GRPO_NAMES] = Field(  # type: ignore[valid-type]
        "grpo",
        description="Training algorithm: the GRPO family (grpo, dr_grpo, dapo, rloo, reinforce_pp, gspo, cispo), "
        "adaptthink, ppo (a learned critic, GAE), the DPO family (dpo, simpo), or reward_model (a Bradley-Terry reward model on preference pairs); "
        "each carries only its own settings.",
    )
    group_size: int = Field(8, ge=1, description="Completions sampled per prompt (G).")
    clip_low: Optional[float] = Field(
        None,
        gt=0,
        le=1,
        description="Clip range below 1 (ratio >= 1 - clip_low); default "
        "0.2, gspo 3e-4, cispo none (no lower bound).",
    )
    clip_high: Optional[float] = Field(
        None,
        gt=0,
        description="Clip range above 1; default 0.28 for dapo, 4e-4 for gspo, "
        "4.0 for cispo (its weight cap 5), else 0.2.",
    )
    loss: Optional[Literal["clip", "clip_sequence_mean", "clip_sequence_sum", "cispo"]] = Field(
        None,
        description="Policy loss (align.losses.POLICY_LOSSES): PPO's clipped surrogate per token, per sequence "
        "(geometric-mean ratio: GSPO, AdaptThink; or the full-sequence ratio), or CISPO's clipped IS-weighted REINFORCE; "
        "default per algorithm (from `ratio` when that is set).",
    )
    loss_agg: Optional[Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]] = Field(
        None,
        description="Loss aggregation; default per algorithm (grpo, gspo: seq_mean_token_mean, "
        "dr_grpo: seq_mean_token_sum_norm, others: token_mean).",
    )
    ppo_epochs: int = Field(1, ge=1, description="Passes over each step's samples.")
    num_minibatches: int = Field(
        1, ge=1, description="Optimizer steps per pass (each step's samples split into this many)."
    )
    dynamic_sampling: Optional[bool] = Field(
        None,
        description="DAPO: drop groups whose rewards are all equal and sample more prompts to refill "
        "the batch (default: on for dapo, off otherwise).",
    )
    max_sampling_rounds: int = Field(
        3, ge=1, description="Dynamic sampling: at most this many rollout rounds per step."
    )
    overlong_filter: Optional[bool] = Field(
        None,
        description="DAPO: mask truncated completions out of the loss (default: on for dapo, off otherwise).",
    )
    ratio: Optional[Literal["token", "sequence_mean", "sequence_sum"]] = Field(
        None,
        description="Importance ratio of the clipped surrogate (another way to pick `loss`): per token (PPO/GRPO), per "
        "sequence from token-mean log-ratios (AdaptThink's code, GSPO) or the full-sequence ratio.",
    )
    kl: KLSection = Field(default_factory=KLSection, description="KL regularisation.")
    mismatch: MismatchSection = Field(
        default_factory=MismatchSection, description="Train/inference mismatch correction."
    )
    apo: APOSection = Field(default_factory=APOSection, description="APO's DADS and STCR.")

    # what a method of this section compares: a group of at least this many samples per prompt
    min_group_size: ClassVar[int] = 2
    uses_rewards: ClassVar[bool] = True

    @property
    def sequence_kl_reward(self) -> str | None:
        """None when the run subtracts one KL reward per sequence (``objective.lagrangian.task: kl``
        maximises it); else what to change."""
        if self.kl.coef > 0 and self.kl.where == "reward":
            return None
        return "'kl' needs algorithm.kl.coef > 0 and algorithm.kl.where: reward"

    @model_validator(mode="after")
    def _fill_defaults(self):
        """Defaults from the method's row of ``GRPO_FAMILY`` (the loss's own clip range when another
        loss is chosen)."""
        row = GRPO_FAMILY[self.name]
        agg, clip_low, clip_high, loss = row.loss_agg, row.clip_low, row.clip_high, row.loss
        by_ratio = {
            "token": "clip",
            "sequence_mean": "clip_sequence_mean",
            "sequence_sum": "clip_sequence_sum",
        }
        if self.loss is not None and self.ratio is not None and by_ratio[self.ratio] != self.loss:
            raise ValueError(
                f"algorithm.ratio {self.ratio!r} contradicts algorithm.loss {self.loss!r}: set one of them"
            )
        if self.loss is None:
            self.loss = by_ratio[self.ratio] if self.ratio is not None else loss
        if self.ratio is None:
            self.ratio = {v: k for k, v in by_ratio.items()}.get(self.loss, "token")
        # clip defaults: the algorithm's own with its own loss, else the loss's
        low, high = (clip_low, clip_high) if self.loss == loss else LOSS_CLIPS[self.loss]
        if self.clip_low is None:
            self.clip_low = low
        if self.clip_high is None:
            self.clip_high = high
        if self.clip_low is not None and self.clip_low >= 1 and self.loss != "cispo":
            raise ValueError(
                f"algorithm.clip_low {self.clip_low} must be below 1 (the ratio's lower bound is 1 - clip_low)"
            )
        if self.apo.dads and not (self.kl.coef > 0 and self.kl.where == "loss"):
            raise ValueError(
                "algorithm.apo.dads weights the KL loss per sample: set algorithm.kl.coef > 0 and algorithm.kl.where: loss"
            )
        if self.loss_agg is None:
            self.loss_agg = agg
        if self.dynamic_sampling is None:
            self.dynamic_sampling = row.dynamic_sampling
        if self.overlong_filter is None:
            self.overlong_filter = row.overlong_filter
        return self

    @field_validator("group_size")
    @classmethod
    def _group_of_two(cls, value: int, info):
        if value < cls.min_group_size:
            name = info.data.get("name", "grpo")
            raise ValueError(f"{name} compares samples within a group: set it to 2 or more (got {value})")
        return value

    def check(self, cfg) -> None:
        if self.apo.dads or self.apo.stcr:
            reward_name(cfg, self.apo.accuracy, "algorithm.apo.accuracy")


class AdaptThinkAlgorithm(GRPOFamilyAlgorithm):
    """AdaptThink: the GRPO family's sampling and loss with forced modes and the reference accuracy."""

    name: Literal["adaptthink"] = Field("adaptthink", description="adaptthink.")
    adaptthink: AdaptThinkSection = Field(
        default_factory=AdaptThinkSection, description="AdaptThink's settings."
    )

    @model_validator(mode="after")
    def _no_apo(self):
        if self.apo.dads or self.apo.stcr:
            raise ValueError(
                "algorithm.apo (dads, stcr) works on group advantages of the GRPO family, not adaptthink"
            )
        return self

    def check(self, cfg) -> None:
        if cfg.objective.name != "static":
            raise ValueError(
                "algorithm.name 'adaptthink' takes R from static reward weights: set objective.name: static"
            )
        if cfg.rollout.temperature <= 0:
            raise ValueError("algorithm.name 'adaptthink' samples groups: set rollout.temperature > 0")
        n_no = round(self.group_size * self.adaptthink.nothink_ratio)
        if n_no == 0 or n_no == self.group_size:
            logging.getLogger("align.config").warning(
                "algorithm.adaptthink.nothink_ratio %.2f x group_size %d forces every sample into one mode",
                self.adaptthink.nothink_ratio,
                self.group_size,
            )


class PPOSection(Section):
    """PPO's critic and advantage estimation (Schulman et al. 2017)."""

    gamma: float = Field(1.0, ge=0, le=1, description="Discount per token in GAE (OpenRLHF, TRL: 1.0).")
    lam: float = Field(0.95, ge=0, le=1, description="GAE's lambda (OpenRLHF, TRL: 0.95).")
    value_clip: Optional[float] = Field(
        0.2,
        gt=0,
        description="Clip of the value update around the rollout's values, as PPO's value loss (OpenRLHF 0.2, "
        "TRL cliprange_value 0.2); null: the plain squared error.",
    )
    whiten_advantages: bool = Field(
        True, description="Standardise the advantages over the batch's completion tokens (OpenRLHF, TRL)."
    )
    critic_lr: Optional[float] = Field(
        None, gt=0, description="The critic's learning rate (its own optimizer); default learner.lr."
    )
    critic_warmup: int = Field(
        0,
        ge=0,
        description="Steps at the start where only the critic trains (the policy is not updated; OpenRLHF's "
        "freezing_actor_steps).",
    )
    critic_model: Optional[str] = Field(
        None,
        description="A separate base model for the critic (a second copy of the weights in every learner rank, "
        "as other frameworks hold it); null: the critic is a second LoRA adapter with a value head on the "
        "policy's own frozen base (one copy).",
    )


class PPOAlgorithm(GRPOFamilyAlgorithm):
    """PPO with a learned critic: the GRPO family's sampling, rewards and clipped policy loss, with
    per-token advantages from GAE over a critic's values instead of group baselines."""

    name: Literal["ppo"] = Field("ppo", description="ppo.")
    group_size: int = Field(
        1, ge=1, description="Completions sampled per prompt (PPO needs no group: 1 by default)."
    )
    ppo: PPOSection = Field(default_factory=PPOSection, description="The critic and GAE.")
    min_group_size: ClassVar[int] = 1

    @property
    def sequence_kl_reward(self) -> str | None:
        return (
            "'kl' maximises the sequence's KL reward; ppo puts the KL penalty per token into its rewards "
            "(algorithm.kl): name a reward as the task"
        )

    @model_validator(mode="before")
    @classmethod
    def _kl_in_reward(cls, data):
        """PPO's KL penalty sits in the per-token reward by default (k1, coefficient 0.05: TRL's PPO);
        keys the user gives override these one by one."""
        if isinstance(data, dict):
            kl = data.get("kl")
            given = kl.model_dump(exclude_unset=True) if isinstance(kl, BaseModel) else dict(kl or {})
            data = {**data, "kl": {"coef": 0.05, "where": "reward", "estimator": "k1", **given}}
        return data

    @model_validator(mode="after")
    def _token_level(self):
        if self.loss not in ("clip", "cispo"):
            raise ValueError(
                f"algorithm.loss {self.loss!r}: ppo's advantages are per token (GAE); use clip or cispo"
            )
        if self.dynamic_sampling:
            raise ValueError("algorithm.dynamic_sampling filters groups; ppo has none: leave it off")
        if self.apo.dads or self.apo.stcr:
            raise ValueError(
                "algorithm.apo (dads, stcr) works on group advantages of the GRPO family, not ppo's per-token ones"
            )
        return self


ALGORITHM_VARIANTS = (
    GRPOFamilyAlgorithm,
    AdaptThinkAlgorithm,
    PPOAlgorithm,
    PairAlgorithm,
    SimPOAlgorithm,
    RewardModelAlgorithm,
)
ALGORITHM_NAMES = {
    n: cls for cls in ALGORITHM_VARIANTS for n in typing.get_args(cls.model_fields["name"].annotation)
}
# ``algorithm`` is a union tagged by ``name``: each method carries only its own settings.
AlgorithmSection = Annotated[
    Union[
        GRPOFamilyAlgorithm,
        AdaptThinkAlgorithm,
        PPOAlgorithm,
        PairAlgorithm,
        SimPOAlgorithm,
        RewardModelAlgorithm,
    ],
    Field(discriminator="name"),
]


def algorithm_section(**values):
    """The validated ``algorithm`` section of ``values`` (``name`` defaults to grpo)."""
    return TypeAdapter(AlgorithmSection).validate_python({"name": "grpo", **values})


def _sort_algorithm(data):
    """Before validation: ``name`` defaults to grpo. A key of another method's section (configs written
    before the sections were split carried every one) is dropped with a warning naming it and the
    methods it belongs to: it would do nothing here. A key no method knows stays, so it is reported
    as unknown."""
    if not isinstance(data, dict) or not isinstance(data.get("algorithm"), dict):
        return data
    alg = dict(data["algorithm"])
    name = alg.setdefault("name", "grpo")
    cls = ALGORITHM_NAMES.get(name)
    if cls is None:
        return {**data, "algorithm": alg}
    dropped = {}
    for key in [k for k in alg if k not in cls.model_fields]:
        owners = [n for n, c in ALGORITHM_NAMES.items() if key in c.model_fields]
        if owners:
            dropped[key] = owners
    if dropped:
        for key, owners in dropped.items():
            logging.getLogger("align.config").warning(
                "algorithm.%s is a setting of %s, not of algorithm.name %s: ignored (an older config carried every "
                "method's settings; remove it)",
                key,
                ", ".join(owners),
                name,
            )
    return {**data, "algorithm": {k: v for k, v in alg.items() if k not in dropped}}
