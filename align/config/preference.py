"""The pair methods' sections: DPO (with OFS-DPO's modules and COFS-DPO's domains), SimPO and
reward-model training, each checking what it needs of the rest of the run (``check``)."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from align.config.section import Section, derive, reward_name


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
    """OFS-DPO (Qi et al., 2024): two LoRA modules at different speeds chasing each other.

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
    """DPO family settings."""

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


class PairAlgorithm(Section):
    """DPO (its ``loss_type``: sigmoid, ipo, hinge) on preference pairs (offline) or ranked samples
    (online), with OFS-DPO's two modules and COFS-DPO's domains as options."""

    name: Literal["dpo"] = Field("dpo", description="dpo (its loss_type: sigmoid, ipo, hinge).")
    preference: PreferenceSection = Field(
        default_factory=PreferenceSection, description="DPO family settings."
    )
    default_beta: ClassVar[float] = 0.1
    uses_rewards: ClassVar[bool] = True  # rewards rank online samples and score generation evals

    @model_validator(mode="after")
    def _fill_defaults(self):
        if self.preference.beta is None:
            self.preference.beta = self.default_beta
        return self

    @property
    def pair_loss(self) -> str:
        """The learner's pair loss (a row of ``align.losses.PAIR_LOSSES``)."""
        return self.preference.loss_type

    def check(self, cfg) -> None:
        pref = self.preference
        if cfg.objective.name != "static":
            raise ValueError(
                f"algorithm.name {self.name!r} ranks completions by static reward weights: set objective.name: static"
            )
        if (pref.online or pref.domains) and cfg.rollout.temperature <= 0:
            raise ValueError(
                "algorithm.preference.online samples several completions per prompt: set rollout.temperature > 0"
            )
        if pref.domains:
            reward_name(cfg, pref.cofs.score, "algorithm.preference.cofs.score")
            derive(
                cfg,
                cfg.trainer,
                "max_steps",
                "trainer.max_steps",
                sum(d.steps for d in pref.domains),
                "the sum of algorithm.preference.domains[].steps",
            )
        staleness = cfg.rollout.max_staleness
        if staleness and pref.domains:
            raise ValueError(
                f"rollout.max_staleness {staleness}: COFS (algorithm.preference.domains) switches "
                "the prompt set at each domain boundary, so batches generated ahead would come from the previous "
                "domain: set rollout.max_staleness: 0"
            )
        if staleness and not pref.online:
            raise ValueError(
                f"rollout.max_staleness {staleness}: algorithm.name {self.name!r} trains on fixed "
                "pairs (nothing is generated during training, so there is nothing to overlap): set it to 0, or "
                "algorithm.preference.online: true"
            )


class SimPOAlgorithm(PairAlgorithm):
    """SimPO: the pair machinery with SimPO's reference-free, length-averaged loss."""

    name: Literal["simpo"] = Field("simpo", description="simpo.")
    default_beta: ClassVar[float] = 2.0

    @model_validator(mode="after")
    def _own_loss(self):
        if self.preference.loss_type != "sigmoid" or self.preference.ofs.enabled:
            raise ValueError(
                "algorithm.name simpo has its own loss (no reference): leave preference.loss_type and ofs alone"
            )
        return self

    @property
    def pair_loss(self) -> str:
        return "simpo"


class RewardModelAlgorithm(Section):
    """A sequence-classification reward model trained on preference pairs (Bradley-Terry)."""

    name: Literal["reward_model"] = Field("reward_model", description="reward_model.")
    preference: PreferenceSection = Field(
        default_factory=PreferenceSection, description="The pairs: pairs_per_step, eval_pairs."
    )
    reward_model: RewardModelSection = Field(
        default_factory=RewardModelSection, description="Reward-model settings."
    )

    uses_rewards: ClassVar[bool] = False  # trains on pairs alone: a run may name no reward

    @property
    def pair_loss(self) -> str:
        return "bradley_terry"

    def check(self, cfg) -> None:
        if cfg.objective.name != "static":
            raise ValueError(
                "algorithm.name 'reward_model' ranks completions by static reward weights: set objective.name: static"
            )
        if cfg.rollout.max_staleness:
            raise ValueError(
                f"rollout.max_staleness {cfg.rollout.max_staleness}: algorithm.name 'reward_model' trains on fixed "
                "pairs (nothing is generated during training, so there is nothing to overlap): set it to 0"
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
