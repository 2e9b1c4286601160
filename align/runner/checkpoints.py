"""A run's checkpoints: what a step's checkpoint holds (the served adapter, every rank's optimizer
state, the method's and the objective's state, the data position, asynchronous batches in flight),
which checkpoint a run continues from, and putting a run back to it."""

from __future__ import annotations

import logging
from pathlib import Path

from align.store.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

log = logging.getLogger("align.train")


class RunCheckpoints:
    """The checkpoints of one run directory; ``last`` is the newest this run wrote or resumed from."""

    def __init__(self, run_dir: Path, cfg):
        self.dir, self.cfg = run_dir / "checkpoints", cfg
        self.last: Path | None = None
        self._preloaded: dict | None = None

    def preload(self) -> dict:
        """``--resume``: read and verify the checkpoint to continue from before anything starts (a bad
        checkpoint costs nothing); ``latest`` then returns it once."""
        self._preloaded = self.latest() or {}
        return self._preloaded

    def state_line(self) -> str:
        return (
            f"the last checkpoint is {self.last}"
            if self.last
            else "no checkpoint of this run was written yet"
        )

    def save(self, step: int, ctx, algorithm) -> Path:
        tensors, adapter_cfg = algorithm.served_adapter(ctx)
        objective_state = (
            ctx.objective.state_dict() if ctx.objective is not None else (ctx.objective_state or {})
        )
        state = {
            "version": step,
            "data_position": ctx.sampler.position,
            "seed": self.cfg.trainer.seed,
            "learner_ranks": self.cfg.learner.num_ranks,
            "objective": objective_state,
            **algorithm.state_dict(),
        }
        extra = algorithm.extra_adapters(ctx)
        if ctx.queue is not None:  # asynchronous: the batches in flight and the versions they sample from
            state["in_flight"] = ctx.queue.state()
            extra = {**extra, **ctx.queue.saved_adapters()}
        self.last = save_checkpoint(
            self.dir,
            step,
            tensors,
            adapter_cfg,
            ctx.learners.optimizer_states(),
            state,
            keep=self.cfg.trainer.keep_checkpoints,
            extra_adapters=extra,
        )
        return self.last

    def latest(self) -> dict | None:
        """The checkpoint to continue from (verified): the one ``preload`` read, the newest this run
        wrote, else (``--resume``) the newest complete one in the run directory, or None (then the run
        starts at 0)."""
        preloaded, self._preloaded = self._preloaded, None
        if preloaded is not None:
            return preloaded or None
        if self.last is None:
            found = list_checkpoints(self.dir)
            if not found:
                log.warning("--resume: no checkpoint in %s; starting from step 0", self.dir)
                return None
            self.last = found[-1]
        return load_checkpoint(self.last)

    def restore(self, ctx, algorithm) -> tuple[int, dict] | None:
        """Put the method, the objective's state, the data position and the batches in flight back to
        the latest checkpoint; returns (its step, the checkpoint), or None without one."""
        ckpt = self.latest()
        if ckpt is None:
            return None
        st = ckpt["state"]
        algorithm.load_state_dict(st)
        algorithm.restore(ctx, ckpt)  # may switch the data (a domain), hence the sampler, first
        ctx.objective_state = st.get("objective", {})
        ctx.sampler.position = st["data_position"]
        if ctx.queue is not None:  # the batches in flight at the checkpoint, sampled again
            ctx.queue.restore(st.get("in_flight", []), ckpt["extra_adapters"])
        elif st.get("in_flight"):  # an asynchronous run's checkpoint resumed in lockstep: draw them again
            ctx.sampler.position = st["in_flight"][0]["position"]
            log.info(
                "the checkpoint had %d batch(es) in flight (rollout.max_staleness > 0); lockstep draws their "
                "prompts again from position %d",
                len(st["in_flight"]),
                ctx.sampler.position,
            )
        return st["step"], ckpt
