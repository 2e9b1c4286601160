"""Evaluation: the loop through the rollout workers, checkpoints (``align eval``), HF ``generate`` per level."""
