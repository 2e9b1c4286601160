"""Asynchronous training (``rollout.max_staleness: K > 0``): the rollout workers generate the batches
of steps t+1..t+K while the learners train step t.

The schedule is fixed, not timed: the batch of step ``b`` is drawn (prompts from the sampler, in
step order) and sampled at the start of step ``max(0, b - K)``, from the adapter version served then,
``max(0, b - K)``. So a run's samples do not depend on which side is faster, the staleness of step
t's batch is ``min(t, K)``, and a checkpoint after step t names what is in flight: the batches of
steps t..t+K-1 (their prompts and adapter versions; their seeds follow from the step). ``--resume``
samples them again from those versions (kept in the checkpoint), bit for bit.

The learners take the importance ratio against the behaviour policy: the log-probs of the version
that sampled the batch, computed by the learner with that version's LoRA tensors swapped in
(:meth:`behaviour_logprobs`), so the ratio has no train/inference mismatch inside it (the mismatch
correction, ``algorithm.mismatch``, then compares the same version's vLLM and learner log-probs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import ray
import torch

from align.data.sampling import sample_seed


@dataclass
class Planned:
    """One step's batch: drawn and (unless past the run's last step) sampling on the rollout workers."""

    step: int
    version: int
    rows: list[int]  # indices into the training rows
    position: int = 0  # the prompt sampler's position before they were drawn
    pending: object | None = field(default=None, repr=False)  # a PendingRollout


class RolloutQueue:
    """The batches in flight, the adapter versions they need, and the time each side waited."""

    def __init__(self, ctx, algorithm, max_staleness: int):
        self.ctx, self.algorithm, self.K = ctx, algorithm, max_staleness
        self.planned: dict[int, Planned] = {}
        self.adapters: dict[int, tuple] = {}  # version -> (tensors ref, tensors, adapter config)
        self._last_end: float | None = None  # when the engines finished their last training batch

    # ------------------------------------------------------------------ adapter versions
    def add_version(self, version: int, tensors: dict, adapter_config: dict):
        """Keep ``version`` (the one served from now on); returns its object ref. Versions no batch
        from here on can use (older than ``version - K``) are dropped."""
        ref = ray.put(tensors)
        self.adapters[version] = (ref, tensors, adapter_config)
        for v in [v for v in self.adapters if v < version - self.K]:
            del self.adapters[v]
        return ref

    def adapter(self, version: int) -> tuple:
        """(version, tensors ref, config): what a rollout call names to sample from ``version``."""
        ref, _, config = self.adapters[version]
        return version, ref, config

    # ------------------------------------------------------------------ the schedule
    def fill(self, step: int) -> None:
        """At the start of ``step`` (adapter version ``step`` served): draw and send every batch up to
        step + K not drawn yet. Batches past ``trainer.max_steps`` are drawn (the prompt order stays
        that of a longer run) but not sampled."""
        for b in range(step, step + self.K + 1):
            if b not in self.planned:
                version = max(0, b - self.K)
                if version not in self.adapters:  # resumed from a lockstep run's checkpoint: none older
                    version = min(self.adapters)
                n, position = self.ctx.cfg.data.prompts_per_step, self.ctx.sampler.position
                self.planned[b] = self._send(Planned(b, version, self.ctx.sampler.take(n), position))

    def _send(self, p: Planned) -> Planned:
        if p.step < self.ctx.cfg.trainer.max_steps:
            cfg, ctx = self.ctx.cfg, self.ctx
            prompts = [ctx.train_rows[i]["prompt"] for i in p.rows]
            seeds = [sample_seed(cfg.trainer.seed, p.step, 0, j) for j in range(len(p.rows))]
            p.pending = ctx.rollouts.submit(
                prompts,
                seeds,
                adapter=self.adapter(p.version),
                **self.algorithm.rollout_kwargs(len(prompts)),
            )
        return p

    def take(self, step: int) -> tuple[list[dict], list[list[dict]], int, dict[str, float]]:
        """Step ``step``'s batch: its rows, groups of samples, adapter version, and timings:
        ``timing/rollout_wait`` (the learners waited for it), ``timing/rollout`` (the engines
        generated it), ``timing/rollout_idle`` (the engines had no batch to generate before it)."""
        p = self.planned.pop(step)
        t0 = time.time()
        groups, t = p.pending.result()
        waited = time.time() - t0
        idle = max(0.0, t["start"] - self._last_end) if self._last_end is not None else 0.0
        self._last_end = t["end"]
        rows = [self.ctx.train_rows[i] for i in p.rows]
        stats = {
            "timing/rollout_wait": waited,
            "timing/rollout": t["end"] - t["start"],
            "timing/rollout_idle": idle,
            "rollout/staleness": float(step - p.version),
            "rollout/staleness_max": float(step - p.version),
        }
        return rows, groups, p.version, stats

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> list[dict]:
        """The batches in flight, in step order: step, adapter version, row indices, and the sampler's
        position before they were drawn (a lockstep run resuming from this checkpoint starts there)."""
        return [
            {"step": b, "version": p.version, "rows": p.rows, "position": p.position}
            for b, p in sorted(self.planned.items())
        ]

    def saved_adapters(self) -> dict[str, tuple[dict, dict]]:
        """The adapter versions the batches in flight were sampled from (``step_N/adapters/version_V``)."""
        return {
            f"version_{v}": (self.adapters[v][1], self.adapters[v][2])
            for v in sorted({p.version for p in self.planned.values()})
        }

    def restore(self, state: list[dict], extra_adapters: dict[str, tuple[dict, dict]]) -> None:
        """Forget what is in flight now (a restarted learner group goes back to a checkpoint) and send
        the checkpoint's batches again from their saved versions."""
        self.planned, self.adapters, self._last_end = {}, {}, None
        for name, (tensors, config) in extra_adapters.items():
            if name.startswith("version_"):
                self.adapters[int(name.removeprefix("version_"))] = (ray.put(tensors), tensors, config)
        for entry in state:
            if entry["version"] not in self.adapters:
                raise ValueError(
                    f"the checkpoint's batch of step {entry['step']} was sampled from adapter version "
                    f"{entry['version']}, which the checkpoint does not hold (adapters/version_{entry['version']})"
                )
            self.planned[entry["step"]] = self._send(
                Planned(entry["step"], entry["version"], entry["rows"], entry["position"])
            )

    # ------------------------------------------------------------------ the learner side
    def behaviour_logprobs(
        self, batch: dict, versions: np.ndarray, current: int, temperature: float, reference: bool
    ) -> dict[str, torch.Tensor]:
        """``old_logps``: each row's log-probs under the adapter version that sampled it (``versions``,
        ``(b,)``; ``current`` is the learners' own), and ``ref_logps`` if ``reference``."""
        learners = self.ctx.learners
        distinct = sorted(set(int(v) for v in versions))

        def weights(v: int):
            return None if v == current else self.adapters[v][0]

        if len(distinct) == 1:
            return learners.compute_logprobs(batch, temperature, reference, True, weights(distinct[0]))
        out = learners.compute_logprobs(batch, temperature, True, False) if reference else {}
        old = torch.zeros(batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
        for v in distinct:
            idx = torch.from_numpy(np.flatnonzero(versions == v))
            part = {k: t[idx] for k, t in batch.items()}
            old[idx] = learners.compute_logprobs(part, temperature, False, True, weights(v))["old_logps"]
        out["old_logps"] = old
        return out
