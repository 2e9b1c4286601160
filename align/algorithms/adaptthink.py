"""AdaptThink (Zhang et al., 2025, arXiv 2505.13417; code THU-KEG/AdaptThink): teach the policy when
to skip thinking.

Pieces, each where it runs:
- rollouts: ``RolloutEngine.generate_forced`` forces ``round(G * nothink_ratio)`` samples of each group
  to open with the end-of-thinking token and the rest into Thinking; the forced token's proposal
  log-probability replaces its old log-prob in the loss (``align.rollout.batch.pack``'s ``behaviour_logps``,
  ``align.losses.with_behaviour_logps``: the learner knows no AdaptThink);
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

from align.algorithms.base import RunContext, register_algorithm
from align.algorithms.grpo import GRPO
from align.reporting.metrics import write_text_atomic

log = logging.getLogger(__name__)


def nothink_count(group_size: int, ratio: float) -> int:
    """How many samples of a group are forced into NoThinking (the authors' ``round(n * ratio)``)."""
    return int(round(group_size * ratio))


def adaptthink_advantages(
    rewards: np.ndarray, ref: np.ndarray, nothink: np.ndarray, delta: float
) -> np.ndarray:
    """``R(x, y) - R_ref(x) + delta * 1[y is NoThinking]`` per sample, ``(N,)``."""
    return (
        np.asarray(rewards, dtype=np.float64)
        - np.asarray(ref, dtype=np.float64)
        + delta * np.asarray(nothink, dtype=np.float64)
    )


def _fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(model_path: str) -> dict:
    """What identifies a model directory's weights cheaply: its config and its weight files' names and sizes."""
    p = Path(model_path)
    files = sorted(
        (f.name, f.stat().st_size) for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".pt")
    )
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
                raise ValueError(
                    f"{self.path}: reference-accuracy cache was made with other settings "
                    f"({data.get('meta')}); delete it or point algorithm.adaptthink.ref_cache elsewhere"
                )
            self.values = {k: float(v) for k, v in data["values"].items()}
        self.computed = 0

    @staticmethod
    def default_path(meta: dict) -> Path:
        root = Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align"))
        return root / "ref_accuracy" / f"{_fingerprint(meta)}.json"

    def ensure(
        self, prompts: list[str], chunk: int | None = None, progress: Callable[..., None] | None = None
    ) -> int:
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
        write_text_atomic(self.path, json.dumps({"meta": self.meta, "values": self.values}, default=str))


def adaptthink_metrics(
    rewards: np.ndarray, ref: np.ndarray, nothink: np.ndarray, levels: np.ndarray
) -> dict[str, float]:
    """Mean R of the forced NoThinking and Thinking samples (overall and per level, when the data
    has a level column) and the mean reference R: what the mode choice is weighing."""
    out = {"adaptthink/ref": float(ref.mean()), "adaptthink/nothink_share": float(nothink.mean())}
    suffixes = [("", np.ones(len(rewards), dtype=bool))]
    if all(lv is not None for lv in levels):
        suffixes += [(f"/level_{lv}", levels == lv) for lv in sorted(set(levels))]
    for suffix, at in suffixes:
        for name, sel in (("nothink", nothink & at), ("think", ~nothink & at)):
            if sel.any():
                out[f"adaptthink/reward_{name}{suffix}"] = float(np.nanmean(rewards[sel]))
    return out


def _token_id(tokenizer, token: str, field: str) -> int:
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(
            f"{field}: {token!r} is {len(ids)} tokens for this tokenizer ({ids}); it must be exactly one token"
        )
    return ids[0]


@register_algorithm("adaptthink")
class AdaptThink(GRPO):
    """GRPO with forced-mode sampling (part of each group opens with the end-of-thinking token),
    the reference accuracy as the baseline and the NoThinking bonus; it owns both."""

    def load_data(self, ctx: RunContext) -> None:
        super().load_data(ctx)
        cfg, at = self.cfg, self.cfg.algorithm.adaptthink
        # token ids looked up once, before any actor starts
        self.forced = {
            "end_think_id": _token_id(
                ctx.tokenizer, at.end_think_token, "algorithm.adaptthink.end_think_token"
            ),
            "think_id": _token_id(ctx.tokenizer, at.think_token, "algorithm.adaptthink.think_token")
            if at.think_token
            else None,
            "nothink_max_tokens": min(
                at.nothink_max_tokens or cfg.rollout.max_new_tokens, cfg.rollout.max_new_tokens
            ),
            "max_tokens": cfg.rollout.max_new_tokens,
            "top_p": cfg.rollout.top_p,
        }

    def setup(self, ctx: RunContext) -> None:
        with ctx.clock.phase("reference accuracy"):
            self.ref_acc = self._reference_accuracy(ctx)

    def rollout_kwargs(self, num_prompts: int) -> dict:
        """Importance-sampled: part of each group forced into each mode."""
        cfg = self.cfg
        return {
            "forced": True,
            "n": cfg.algorithm.group_size,
            "temperature": cfg.rollout.temperature,
            "n_nothink": nothink_count(cfg.algorithm.group_size, cfg.algorithm.adaptthink.nothink_ratio),
            "nothink_ratio": cfg.algorithm.adaptthink.nothink_ratio,  # the proposal's, as the authors' code
            "logprobs_for": self.logprob_prompts(num_prompts),
            **self.forced,
        }

    def advantages(
        self,
        ctx: RunContext,
        rows: list[dict],
        samples: list[dict],
        rewards: np.ndarray,
        kl_reward,
        dropped: np.ndarray,
        metrics: dict,
        batch: dict | None = None,
    ) -> np.ndarray:
        """``R - R_ref(x) + delta * 1[NoThinking]`` (+ the KL reward when asked), no group normalisation."""
        G = self.cfg.algorithm.group_size
        nothink = np.array([s["forced"] == "nothink" for s in samples])
        ref = np.repeat(self.ref_acc.get([r["prompt"] for r in rows]), G)
        metrics.update(
            adaptthink_metrics(rewards, ref, nothink, np.repeat([r.get("level") for r in rows], G))
        )
        adv = adaptthink_advantages(rewards, ref, nothink, self.cfg.algorithm.adaptthink.delta)
        return self.group_advantages(adv + (kl_reward if kl_reward is not None else 0.0), dropped)

    def _reference_accuracy(self, ctx: RunContext) -> ReferenceAccuracy:
        """R_ref(x): mean R of K Thinking samples of the reference policy (adapter off), cached by prompt."""
        from align.data.sampling import PromptSampler, sample_seed

        cfg, at = self.cfg, self.cfg.algorithm.adaptthink
        K, temp = at.ref_samples, at.ref_temperature or cfg.rollout.temperature
        meta = {
            "model": model_fingerprint(ctx.model_path),
            "rewards": [r.model_dump() for r in cfg.rewards],
            "K": K,
            "temperature": temp,
            "top_p": cfg.rollout.top_p,
            "max_tokens": cfg.rollout.max_new_tokens,
            "think_token": at.think_token,
            "end_think_token": at.end_think_token,
            "seed": cfg.trainer.seed,
        }
        by_prompt = {r["prompt"]: r for r in ctx.train_rows}

        def compute(prompts: list[str]) -> list[float]:
            seeds = [
                sample_seed(cfg.trainer.seed, 2**31, 0, int(hashlib.sha256(p.encode()).hexdigest()[:8], 16))
                for p in prompts
            ]
            groups = ctx.rollouts.generate(
                prompts,
                seeds,
                forced=True,
                n=K,
                n_nothink=0,
                temperature=temp,
                use_adapter=False,
                logprobs_for=0,
                **self.forced,
            )
            scores = ctx.score(
                [by_prompt[p] for p in prompts for _ in range(K)], [s for g in groups for s in g]
            )
            r = ctx.objective_for(scores).shape(scores.scores, {"group_size": K}).rewards
            return list(np.nanmean(r.reshape(-1, K), axis=1))

        ref = ReferenceAccuracy(at.ref_cache or ReferenceAccuracy.default_path(meta), meta, compute)
        if at.ref_prompts == "all":
            wanted = [r["prompt"] for r in ctx.train_rows]
        else:  # exactly the prompts this run will draw (the prompt order is deterministic)
            probe = PromptSampler(len(ctx.train_rows), cfg.trainer.seed)
            wanted = [
                ctx.train_rows[i]["prompt"]
                for i in probe.take(cfg.trainer.max_steps * cfg.data.prompts_per_step)
            ]
        t0 = time.time()
        done = ref.ensure(wanted, chunk=256, progress=log.info)
        log.info(
            "AdaptThink reference accuracy: %d prompts (%d cached, %d computed in %.1fs; K=%d) in %s",
            len(set(wanted)),
            len(set(wanted)) - done,
            done,
            time.time() - t0,
            K,
            ref.path,
        )
        return ref
