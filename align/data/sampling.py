"""Deterministic prompt order and sampling seeds, so that a resumed run repeats exactly.

The k-th prompt drawn is ``perm(epoch)[k % N]`` with ``perm`` seeded by (seed, epoch); the
position ``k`` is saved in checkpoints. Each prompt's vLLM sampling seed derives from
(seed, step, round, index), so no generator state needs saving.
"""

from __future__ import annotations

import numpy as np


class PromptSampler:
    def __init__(self, num_rows: int, seed: int, position: int = 0):
        self.num_rows, self.seed, self.position = num_rows, seed, position
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)}
        return self._perms[epoch]

    def take(self, n: int) -> list[int]:
        """The next ``n`` row indices (epochs roll over)."""
        out = []
        for k in range(self.position, self.position + n):
            out.append(int(self._perm(k // self.num_rows)[k % self.num_rows]))
        self.position += n
        return out


def sample_seed(seed: int, step: int, round_: int, index: int) -> int:
    """A 31-bit sampling seed for one prompt of one rollout round."""
    return int(np.random.SeedSequence([seed, step, round_, index]).generate_state(1)[0] & 0x7FFFFFFF)
