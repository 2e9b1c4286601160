"""AdaptThink (Zhang et al., 2025, arXiv 2505.13417; code THU-KEG/AdaptThink): teach the policy when
to skip thinking (ALGORITHMS.md section 3).

Pieces, each where it runs:
- rollouts: ``RolloutEngine.generate_forced`` forces ``round(G * nothink_ratio)`` samples of each group
  to open with the end-of-thinking token and the rest into Thinking; the forced token's proposal
  log-probability replaces its old log-prob in the loss (``learner.forced_first_old``);
- reward/advantage: :func:`adaptthink_advantages` (the authors' ``naive`` estimator, no group
  normalisation: the reference accuracy is the baseline);
- reference accuracy: :class:`ReferenceAccuracy`, ``R_ref(x)`` = mean R of K Thinking samples of the
  reference policy (adapter off), cached on disk by prompt;
- loss: the sequence-level clipped surrogate (``align.losses.sequence_policy_loss``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


def nothink_count(group_size: int, ratio: float) -> int:
    """How many samples of a group are forced into NoThinking (the authors' ``round(n * ratio)``)."""
    return int(round(group_size * ratio))


def adaptthink_advantages(rewards: np.ndarray, ref: np.ndarray, nothink: np.ndarray, delta: float) -> np.ndarray:
    """``R(x, y) - R_ref(x) + delta * 1[y is NoThinking]`` per sample, ``(N,)``."""
    return (np.asarray(rewards, dtype=np.float64) - np.asarray(ref, dtype=np.float64)
            + delta * np.asarray(nothink, dtype=np.float64))


def _fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(model_path: str) -> dict:
    """What identifies a model directory's weights cheaply: its config and its weight files' names and sizes."""
    p = Path(model_path)
    files = sorted((f.name, f.stat().st_size) for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".pt"))
    cfg = (p / "config.json").read_text() if (p / "config.json").exists() else ""
    return {"path": str(p.resolve()), "config": hashlib.sha256(cfg.encode()).hexdigest(), "weights": files}


class ReferenceAccuracy:
    """``R_ref(x)`` per prompt, cached in one JSON file ``{"meta": ..., "values": {prompt: mean}}``.

    ``compute(prompts) -> list[float]`` samples and scores (the trainer passes one that generates
    K Thinking responses with the adapter off and averages R). The file is rewritten atomically
    (temporary file, then rename) after each computation, so an interrupted run loses nothing
    already computed and a reader never sees half a file. ``meta`` records what the values depend
    on; the default path has its fingerprint in the name, so a different model, reward or sampling
    setting never reads another's values.
    """

    def __init__(self, path: str | Path, meta: dict, compute: Callable[[list[str]], list[float]]):
        self.path, self.meta, self.compute = Path(path), meta, compute
        self.values: dict[str, float] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text())
            if data.get("meta") != json.loads(json.dumps(meta, default=str)):
                raise ValueError(f"{self.path}: reference-accuracy cache was made with other settings "
                                 f"({data.get('meta')}); delete it or point algorithm.adaptthink.ref_cache elsewhere")
            self.values = {k: float(v) for k, v in data["values"].items()}
        self.computed = 0

    @staticmethod
    def default_path(meta: dict) -> Path:
        root = Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align"))
        return root / "ref_accuracy" / f"{_fingerprint(meta)}.json"

    def ensure(self, prompts: list[str], chunk: int | None = None, progress: Callable[..., None] | None = None) -> int:
        """Compute and store the values of the prompts not yet cached, ``chunk`` prompts at a time (the
        file is saved after each); returns how many were computed."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self.values))
        size = chunk or max(1, len(missing))
        t0 = time.time()
        for start in range(0, len(missing), size):
            part = missing[start : start + size]
            vals = self.compute(part)
            self.values.update({p: float(v) for p, v in zip(part, vals)})
            self._save()
            done = start + len(part)
            if progress and len(missing) > size:
                eta = (time.time() - t0) / done * (len(missing) - done)
                progress("reference accuracy: %d/%d prompts, ETA %.0fs", done, len(missing), eta)
        self.computed += len(missing)
        return len(missing)

    def get(self, prompts: list[str]) -> np.ndarray:
        self.ensure(prompts)
        return np.array([self.values[p] for p in prompts], dtype=np.float64)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"meta": self.meta, "values": self.values}, default=str))
        os.replace(tmp, self.path)
