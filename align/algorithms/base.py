"""The seam between the runner (``align.runner.trainer``) and a training method.

The runner owns what every method shares: Ray and the actor groups, the run directory, signals,
recovery from lost actors, checkpoints and ``--resume``, the evaluation cadence, metrics and plots.
A method is an :class:`Algorithm` registered under one or more ``algorithm.name`` values; the runner
calls, in this order:

1. ``load_data(ctx)``: read and check the data (before any actor starts: bad data costs nothing);
2. ``learner_spec(ctx, spec)`` / ``rollout_spec(ctx, spec)`` / ``uses_rewards``: what actors to start
   (``rollout_spec`` returns None for a method that never generates);
3. ``setup(ctx)``: work that needs the actors before the first step (reference accuracy, reference
   log-probs);
4. per step ``step(ctx, step)`` -> metrics; the runner then evaluates, checkpoints and logs;
5. ``evaluate(ctx)`` when the runner evaluates; ``finish(ctx, summary)`` at the end.

For checkpoints: ``served_adapter`` (saved as ``step_N/adapter`` and served to rollout workers),
``extra_adapters`` (other LoRA modules the method trains), ``state_dict`` / ``load_state_dict`` (the
method's own state, in ``state.json``) and ``restore`` (put the learners back). ``panels`` are its
plot panels and ``progress`` the middle of its per-step log line.

A new method is one file in this package with ``@register_algorithm("name")`` and a config section
(``align.config``); ``README.md`` ("Adding a method") says which file to copy.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from align.eval.loop import columns

log = logging.getLogger("align.train")

ALGORITHMS: dict[str, type["Algorithm"]] = {}
BUILTIN = ("grpo", "adaptthink", "ppo", "dpo", "reward_model")  # modules that register the built-in methods


def register_algorithm(*names: str) -> Callable[[type], type]:
    """Class decorator: make an algorithm selectable as ``algorithm.name: <name>`` (each of ``names``)."""

    def wrap(cls: type) -> type:
        for name in names:
            ALGORITHMS[name] = cls
        return cls

    return wrap


def algorithm_class(name: str) -> type["Algorithm"]:
    """The algorithm registered as ``name`` (the built-in modules are imported first)."""
    for module in BUILTIN:
        importlib.import_module(f"align.algorithms.{module}")
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


@dataclass
class RunContext:
    """What a step works with: the config, the model's tokenizer, the actor groups, the data and the
    objective (built from the first scored batch: a reward may return several named objectives)."""

    cfg: Any
    config_dir: str | None
    run_dir: Path
    model_path: str = ""
    context_length: int = 10**9  # the model's max_position_embeddings
    tokenizer: Any = None
    clock: Any = None
    learners: Any = None
    rollouts: Any = None
    rewards: Any = None
    sampler: Any = None
    train_rows: list[dict] = field(default_factory=list)
    eval_rows: list[dict] = field(default_factory=list)
    objective: Any = None
    objective_state: dict | None = None  # from a checkpoint, loaded into the objective once it exists
    before_eval: dict | None = None  # the initial model's validation, handed to the objective once it exists
    queue: Any = None  # asynchronous training (rollout.max_staleness > 0): align.rollout.queue.RolloutQueue

    def objective_for(self, scores) -> Any:
        """The objective (built once the objective names are known, from the first scored batch)."""
        if self.objective is None:
            from align.objectives import build_objective

            weights = {r.name: r.weight for r in self.cfg.rewards}
            self.objective = build_objective(
                self.cfg.objective.name,
                scores.names,
                {n: weights[o] for n, o in zip(scores.names, scores.owners)},
                self.cfg,
            )
            if self.objective_state is not None:
                self.objective.load_state_dict(self.objective_state)
            elif self.before_eval is not None:  # the initial model's validation (step 0)
                self.objective.observe_eval(0, self.before_eval)
        return self.objective

    def checked(self, rows: list[dict], source: str) -> list[dict]:
        """``rows`` after checking every prompt fits ``data.max_prompt_tokens``."""
        limit = self.cfg.data.max_prompt_tokens
        for i, row in enumerate(rows):
            n = len(self.tokenizer(row["prompt"])["input_ids"])
            if n > limit:
                raise ValueError(f"{source}: row {i} prompt has {n} tokens > data.max_prompt_tokens={limit}")
        return rows

    def score(self, rows: list[dict], samples: list[dict], wait: bool = True):
        """Send the samples of ``rows`` (one row per sample) to the rewards; their scores, or with
        ``wait=False`` a pending handle for ``rewards.result``."""
        args = (
            [r["prompt"] for r in rows],
            [s["text"] for s in samples],
            {**columns(rows), "completion_ids": [s["completion_ids"] for s in samples]},
        )
        return self.rewards.score(*args) if wait else self.rewards.submit(*args)


def sampling_kwargs(cfg, n: int, logprobs_for: int) -> dict:
    """``RolloutGroup.submit``'s keywords for ``n`` samples per prompt at the run's rollout settings,
    with vLLM's sampling log-probs for the first ``logprobs_for`` prompts."""
    return {
        "n": n,
        "max_tokens": cfg.rollout.max_new_tokens,
        "temperature": cfg.rollout.temperature,
        "top_p": cfg.rollout.top_p,
        "logprobs_for": logprobs_for,
    }


def reward_metrics(names: list[str], scores: np.ndarray) -> dict[str, float]:
    """``reward/<name>``: each objective's mean over the samples it applies to."""
    out = {}
    for k, name in enumerate(names):
        col = scores[:, k]
        if np.isfinite(col).any():
            out[f"reward/{name}"] = float(np.nanmean(col))
    return out


class Algorithm:
    """Base class of a training method; every hook but ``step`` has a default."""

    panels: tuple = ()  # plot panels of reward_curves.png: (title, key predicate)
    uses_rewards = True  # start the reward actors
    adapter_modules: tuple[str, ...] = ("default",)  # the learner's LoRA modules

    def __init__(self, cfg):
        self.cfg = cfg

    def shares_learners(self) -> bool:
        """Whether trials of this method can share one learner group with other trials (``align
        sweep``'s ``trials_per_job``): the learner then holds each trial's one LoRA module and its
        optimizer state; a method with more learner state than that runs alone."""
        return self.adapter_modules == ("default",)

    # ---------------------------------------------------------------- set-up
    def load_data(self, ctx: RunContext) -> None:
        """Training prompts and eval rows (``data.train`` / ``data.eval``), checked."""
        from align.data.loading import load_prompts

        cfg = self.cfg
        ctx.train_rows = ctx.checked(
            load_prompts(cfg.data.train, ctx.tokenizer, ctx.config_dir), cfg.data.train
        )
        ctx.eval_rows = (
            ctx.checked(load_prompts(cfg.data.eval, ctx.tokenizer, ctx.config_dir), cfg.data.eval)[
                : cfg.data.eval_size
            ]
            if cfg.data.eval
            else []
        )

    def learner_spec(self, ctx: RunContext, spec):
        """The ``LearnerSpec`` built from the config, with this method's parts."""
        return spec

    def rollout_kwargs(self, num_prompts: int) -> dict:
        """How a training batch of ``num_prompts`` prompts is sampled (``RolloutGroup.submit``'s
        keywords; asynchronous training sends batches ahead with them)."""
        raise NotImplementedError(f"{type(self).__name__} does not sample training batches")

    def rollout_spec(self, ctx: RunContext, spec):
        """The ``RolloutSpec`` built from the config, or None: this method never generates."""
        return spec

    def setup(self, ctx: RunContext) -> None:
        """After the actors started, before the first step (and before a restore)."""

    # ---------------------------------------------------------------- a step
    def step(self, ctx: RunContext, step: int) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, ctx: RunContext) -> dict[str, float]:
        """Greedy generations of the eval rows, scored by every reward."""
        from align.eval.loop import evaluate

        return evaluate(ctx.rollouts, ctx.rewards, ctx.eval_rows, ctx.tokenizer, self.cfg)

    def progress(self, m: dict) -> str:
        return ""

    # ---------------------------------------------------------------- adapters and state
    def train_adapter(self) -> str:
        """The learner module that is served and must agree across ranks."""
        return "default"

    def served_adapter(self, ctx: RunContext) -> tuple[dict, dict]:
        return ctx.learners.adapter(self.train_adapter())

    def extra_adapters(self, ctx: RunContext) -> dict[str, tuple[dict, dict]]:
        """LoRA modules to checkpoint besides the served one (``step_N/adapters/<name>``)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def restore(self, ctx: RunContext, ckpt: dict) -> None:
        """Put the learners back to ``ckpt`` (adapter and optimizer state); the method's own state
        (``load_state_dict``) is loaded first."""
        ctx.learners.load_state(ckpt["adapter"], ckpt["optimizer_states"])

    def finish(self, ctx: RunContext, summary: dict) -> dict:
        """After the last step: more plots or exports; returns entries to add to the summary."""
        return {}
