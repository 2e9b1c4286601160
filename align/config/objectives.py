"""The ``objective`` section: how several rewards combine (static weights, GDPO, hypervolume-guided
or gradient-based dynamic weights, constrained (Lagrangian) RLHF with a Nelder-Mead threshold search)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from align.config.section import Section, reward_name


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

    def check(self, cfg) -> None:
        """Objective names against the run's rewards; what the Lagrangian's ``kl`` task and the
        validating objectives need of the method and the data."""
        if self.name == "lagrangian":
            lag = self.lagrangian
            reward_name(cfg, lag.task, "objective.lagrangian.task", ("kl",))
            if lag.task == "kl":
                problem = getattr(cfg.algorithm, "sequence_kl_reward", "'kl' needs a policy-gradient method")
                if problem:
                    raise ValueError(f"objective.lagrangian.task: {problem}")
            for i, c in enumerate(lag.constraints):
                reward_name(cfg, c.name, f"objective.lagrangian.constraints.{i}.name")
        if self.name == "hypervolume" and self.hypervolume.variant == "weights" and self.hypervolume.metrics:
            for m in self.hypervolume.metrics:
                reward_name(
                    cfg, m, "objective.hypervolume.metrics (the weights variant moves reward weights)"
                )
        validates = self.name == "hypervolume" or (
            self.name == "lagrangian" and self.lagrangian.threshold_search
        )
        if validates and not cfg.data.eval:
            raise ValueError(f"objective.name {self.name!r} validates on data.eval: set data.eval")
