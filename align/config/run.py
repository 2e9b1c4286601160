"""The run configuration: one typed, nested pydantic model tree, grouped by concern, a file per
section (``model``, ``algorithms`` and ``preference``, ``objectives``, the reward entries in
``rewards.config``); this file holds the loop, data, rollout and learner sections and ``Config``.

Every field has a type, a default and help text; unknown keys are errors. Batch knobs state their
unit. Values that depend on others (DAPO's clip-higher, each algorithm's loss aggregation) are
filled in when the config is validated, so the saved resolved config shows what actually ran;
checks across sections live with the section they are about (``Section.check``).
"""

from __future__ import annotations

import importlib.util
from typing import Literal, Optional

from pydantic import Field, PrivateAttr, field_validator, model_validator

from align.config.algorithms import AlgorithmSection, GRPOFamilyAlgorithm, _sort_algorithm
from align.config.model import ModelSection
from align.config.objectives import ObjectiveSection
from align.config.section import Section
from rewards.config import FunctionReward, RewardEntry

TRACKERS = ("tensorboard", "mlflow", "wandb")


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

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_name(cls, value):
        """One tracker as a plain string, as TRL's ``report_to`` takes it; ``none``: no tracker,
        ``all``: every one installed."""
        if isinstance(value, str):
            if value == "none":
                return []
            if value == "all":
                return [t for t in TRACKERS if importlib.util.find_spec(t) is not None]
            return [value]
        return value

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, value):
        dup = sorted({t for t in value if value.count(t) > 1})
        if dup:
            raise ValueError(f"{dup[0]} is named twice")
        missing = [t for t in value if importlib.util.find_spec(t) is None]  # each is its module's name
        if missing:
            raise ValueError(
                f"{', '.join(missing)}: not installed; from the checkout: pip install -e '.[trackers]' "
                "(mlflow-skinny, wandb)"
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
        "weights at each sync (CPU: vLLM-CPU's LoRA kernels are about 7x slower than the engine without them on SmolLM2-135M, 4.4x on builtin:small-init), 'adapter' "
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

    def check(self, cfg) -> None:
        if self.lora_mode == "merged" and cfg.model.device == "cuda":
            raise ValueError(
                "rollout.lora_mode 'merged' is the CPU path (vLLM-CPU packs weights); on model.device "
                "'cuda' use 'adapter' (vLLM's LoRA kernels) or 'auto'"
            )
        if self.behaviour_logps == "rollout" and not self.max_staleness:
            raise ValueError(
                "rollout.behaviour_logps 'rollout' applies to asynchronous training: set rollout.max_staleness > 0 "
                "(lockstep batches are sampled by the learners' own version)"
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
        "losses in float32). On CPUs with avx512_bf16 the learner step ran 1.4x (the GRPO bench's learner phase) to 1.8x "
        "(32 sequences of 58 tokens) faster on SmolLM2-135M; learner log-probs then differ from the rollout's at the "
        "bf16 level (about 3e-2 per token) instead of float32's.",
    )

    @field_validator("autocast", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return "off" if v is False or v is None else v  # YAML reads a bare `off` as false


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

    # values one section derived for another, and why (``--dry-run`` prints them); not a key
    _derived: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def derived(self) -> dict[str, str]:
        """``{dotted key: "value: why"}`` of the values one section set for another."""
        return self._derived

    @model_validator(mode="before")
    @classmethod
    def _algorithm_keys(cls, data):
        return _sort_algorithm(data)

    @model_validator(mode="after")
    def _whole_run(self):
        """Reward names are distinct and there is one unless the method trains without; then every
        section checks what it needs of the others (``Section.check``)."""
        names = [r.name for r in self.rewards]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"two rewards share the name {dup[0]!r}: give each a distinct 'name'")
        if not self.rewards and self.algorithm.uses_rewards:
            raise ValueError("rewards is empty: name at least one reward function")
        for name in type(self).model_fields:  # in the order of the fields
            section = getattr(self, name)
            if isinstance(section, Section):
                section.check(self)
        return self
