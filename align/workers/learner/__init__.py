"""A learner rank, split by what it holds (``rank.Learner`` composes them):

- ``spec``: what a rank is asked to hold (capabilities: head, LoRA modules, components);
- ``model``: the base model and its LoRA modules, and the forward passes;
- ``engine``: a DeepSpeed engine and its optimizer state;
- ``loop``: the one accumulation loop, and the per-objective gradients;
- ``kinds``: the loss kinds (policy, pair, reward model, value), looked up by kind;
- components a spec asks for: ``critic`` (PPO's value model, its own engine), ``slots`` (trials of a
  sweep job sharing the rank).
"""

from align.workers.learner.spec import CriticSpec, LearnerSpec

__all__ = ["CriticSpec", "LearnerSpec"]
