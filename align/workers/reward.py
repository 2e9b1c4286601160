"""RewardWorker: runs the configured reward functions in batches, off the learners' path."""

from __future__ import annotations

from rewards import Reward, RewardScores, load, score_batch


class RewardScorer:
    """Loads the reward functions once (plug-in files import here) and scores batches."""

    def __init__(self, entries: list[dict], base_dir: str | None = None):
        self.rewards = [Reward(e["name"], load(e["fn"], base_dir), e.get("kwargs", {})) for e in entries]
        self.policies = {e["name"]: e["nan_policy"] for e in entries}

    def score(self, prompts: list, completions: list, columns: dict) -> RewardScores:
        return score_batch(self.rewards, prompts, completions, columns, nan_policy=self.policies)
