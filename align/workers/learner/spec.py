"""What a learner rank is asked to hold, as plain values sent to the Ray actor.

The spec names capabilities, not methods: the model's head (a causal LM, or a sequence classifier
with one score), how it trains (LoRA or every weight), the LoRA modules it carries (one, or two for a
method that trains two on one base), and the optional components (a critic, trial slots). A method
asks for what it needs in ``Algorithm.learner_spec``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from align.workers.spec import Spec


@dataclass
class CriticSpec(Spec):
    """A critic: LoRA module ``critic`` and a value head trained by their own DeepSpeed engine."""

    lr: float
    model_path: str | None = None  # a separate base for it; None: on the policy's own base


@dataclass
class LearnerSpec(Spec):
    """What a learner rank needs. ``from_config`` fills the shared part from a run config."""

    model_path: str
    lora: dict
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    micro_batch_size: int = 16
    zero_stage: int = 2
    lr: float = 1e-4
    grad_clip: float = 1.0
    threads: int = 0
    autocast: str = "off"
    head: str = "lm"  # lm: a causal LM; score: a sequence classifier with one output (a reward model)
    finetune: str = "lora"  # lora, or full: every weight trains (head score only)
    pad_token_id: int | None = None
    # LoRA modules on the base, each its own optimizer parameter group (their learning rates can be
    # set apart, ``Learner.set_lrs``); the first is the one a single-module method trains
    lora_modules: tuple[str, ...] = ("default",)
    critic: CriticSpec | dict | None = None
    # trials sharing this learner (``align sweep`` with trials_per_job > 1): their seeds, whose LoRA
    # initialisations are made at start-up exactly as a learner of that seed makes its own
    slot_seeds: list[int] = field(default_factory=list)
    # keep the first state, so that ``Learner.reset`` can put the rank back to it (runs one after another
    # on one set of actors, ``align.runner.pool``)
    keep_fresh: bool = False
    master_addr: str = "127.0.0.1"

    def __post_init__(self):
        self.lora_modules = tuple(self.lora_modules)
        if self.critic is not None:
            self.critic = CriticSpec.of(self.critic)
        self.slot_seeds = list(self.slot_seeds or [])
        if self.head not in ("lm", "score"):
            raise ValueError(f"head {self.head!r}: lm or score")
        if self.finetune == "full" and self.head != "score":
            raise ValueError("finetune 'full' trains a reward model (head score) only")

    @classmethod
    def from_config(cls, c, model_path: str) -> "LearnerSpec":
        return cls(
            model_path=model_path,
            device=c.model.device,
            dtype=c.model.dtype,
            trust_remote_code=c.model.trust_remote_code,
            lora=c.model.lora.model_dump(),
            micro_batch_size=c.learner.micro_batch_size,
            zero_stage=c.learner.zero_stage,
            lr=c.learner.lr,
            grad_clip=c.learner.grad_clip,
            threads=c.learner.threads,
            autocast=c.learner.autocast,
        )
