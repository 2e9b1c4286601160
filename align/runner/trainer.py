"""The runner: Ray and the actor groups (vLLM rollout workers, DeepSpeed learner ranks, reward
actors), run state, signals, recovery from lost actors, checkpoints and ``--resume``, the
evaluation cadence, metrics and plots. What a step does belongs to the algorithm
(``align.algorithms``, looked up by ``algorithm.name``): the loop calls ``algorithm.step(ctx, step)``
and syncs the adapter it serves.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from pathlib import Path

import ray

from align.algorithms.base import Algorithm, RunContext, algorithm_class
from align.config import Config
from align.config.loading import save_resolved
from align.data.sampling import PromptSampler
from align.eval.loop import format_eval
from align.reporting.metrics import (
    LEVEL_METRICS,
    OBJECTIVE_PANELS,
    MetricsLog,
    StartupClock,
    plot_curves,
    plot_levels,
)
from align.reporting.trackers import Trackers
from align.runner import interrupts
from align.runner.cluster import ClusterLost, ClusterWatch, start_ray
from align.runner.interrupts import StopRequested
from align.store.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from align.workers.groups import LearnerLost

log = logging.getLogger("align.train")


def check_context(c: Config, model_path: str) -> int:
    """Prompt budget + completion budget must fit the model's context; returns the context length
    (10**9 when the model's config does not say)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=c.model.trust_remote_code)
    context = getattr(config, "max_position_embeddings", None)
    need = c.data.max_prompt_tokens + c.rollout.max_new_tokens
    if context and need > context:
        raise ValueError(
            f"data.max_prompt_tokens ({c.data.max_prompt_tokens}) + rollout.max_new_tokens ({c.rollout.max_new_tokens}) "
            f"= {need} tokens exceed the model's context of {context} (max_position_embeddings): lower them"
        )
    return context or 10**9


class Trainer:
    """Runs one config: starts the actors the algorithm asks for, steps it, evaluates, checkpoints."""

    def __init__(
        self,
        config: Config,
        config_dir: str | None = None,
        address: str | None = None,
        resume: bool = False,
        shared=None,
    ):
        self.cfg, self.config_dir, self.address, self.resume = config, config_dir, address, resume
        # actors shared with other trials of one job (``align.runner.jobs``): this run takes views of them
        # and neither starts nor stops them
        self.shared = shared
        self.tag = ""  # a job's trials prefix their progress lines with their names
        # a job's trials take turns (``align.runner.jobs.Turns``): held for a step (with its evaluation and
        # checkpoint) and for the start (first sync, eval before)
        self.turn = contextlib.nullcontext()
        self._prepared = False
        self.run_dir = Path(config.trainer.output_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.algorithm: Algorithm = algorithm_class(config.algorithm.name)(config)
        self.ctx = RunContext(cfg=config, config_dir=config_dir, run_dir=self.run_dir)
        self._stop_signal: int | None = None
        self._last_ckpt: Path | None = None  # the newest checkpoint this run wrote or resumed from
        self._learner_restarts = 0

    # the actor groups (tests and tools reach them here)
    learners = property(lambda self: self.ctx.learners)
    rollouts = property(lambda self: self.ctx.rollouts)
    rewards = property(lambda self: self.ctx.rewards)

    # ------------------------------------------------------------------ set-up
    def prepare(self) -> None:
        """Everything before the actors: the checkpoint ``--resume`` continues from (read and
        verified: a bad checkpoint costs nothing), the tokenizer, the data, the resolved config, the
        actors' specs. A job of several trials prepares each before it starts their shared actors."""
        if self._prepared:
            return
        if self.resume:
            self._preloaded = self._latest_checkpoint() or {}
        self.clock = StartupClock(log)
        self._setup_local()
        self._prepared = True

    def _setup_local(self) -> None:
        from transformers import AutoTokenizer

        from align.models.builtin import resolve_model_path

        cfg, ctx, alg = self.cfg, self.ctx, self.algorithm
        ctx.clock = self.clock
        ctx.model_path = self.model_path = resolve_model_path(cfg.model.path)
        if not Path(self.model_path, "config.json").exists():
            raise FileNotFoundError(
                f"model.path {cfg.model.path!r}: no config.json in {self.model_path} (not a HF model directory)"
            )
        ctx.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        ctx.context_length = check_context(cfg, self.model_path)
        alg.load_data(ctx)  # read and checked before any actor starts
        ctx.sampler = PromptSampler(len(ctx.train_rows), cfg.trainer.seed)
        self._check_resumed_adapter()
        save_resolved(cfg, self.run_dir)
        from align.workers.learner.spec import LearnerSpec
        from align.workers.rollout import RolloutSpec

        self.rspec = alg.rollout_spec(ctx, RolloutSpec.from_config(cfg, self.model_path))
        self.lspec = alg.learner_spec(ctx, LearnerSpec.from_config(cfg, self.model_path))

    def _setup_actors(self) -> None:
        cfg, ctx, alg = self.cfg, self.ctx, self.algorithm
        if self.shared is not None:
            self._owns_ray = False
            ctx.learners, ctx.rollouts, ctx.rewards = self.shared.views(self)
        else:
            ctx.learners, ctx.rollouts, ctx.rewards = self._start_actors(
                self.lspec, self.rspec, rewards=alg.uses_rewards
            )
        alg.setup(ctx)
        if cfg.rollout.max_staleness and ctx.rollouts is not None:
            from align.rollout.queue import RolloutQueue

            ctx.queue = RolloutQueue(ctx, alg, cfg.rollout.max_staleness)
            if ctx.rollouts.lora_mode == "merged" and not (cfg.rollout.threads and cfg.learner.threads):
                log.warning(
                    "rollout.max_staleness=%d on CPU with rollout.threads=%d, learner.threads=%d (0: every core): "
                    "the engine and the learners now run at once, and oversubscribed cores are slow (2 cores, "
                    "2 + 2 threads: 0.30x of lockstep, bench/results/async_tiny.md); split the cores",
                    cfg.rollout.max_staleness,
                    cfg.rollout.threads,
                    cfg.learner.threads,
                )

    def _start_actors(self, lspec: dict, rspec: dict | None, rewards: bool = True):
        """Ray, then the learner ranks, rollout workers (``rspec`` None: none) and reward actors
        (``rewards``), each start-up phase timed; learners and rollout engines load at the same time
        (each waits on its own model load). Returns (learners, rollouts, rewards)."""
        from align.workers.groups import LearnerGroup, RolloutGroup
        from align.workers.reward import RewardPool

        cfg, clock = self.cfg, self.clock
        clock.record("config and data", time.time() - clock.t0)
        with clock.phase("ray"):
            gpu = self._init_ray(cfg.rollout.num_workers if rspec is not None else 0)
        t0 = time.time()
        learners = LearnerGroup(
            lspec, cfg.learner.num_ranks, cfg.learner.num_cpus, gpu, cfg.trainer.seed, wait=False
        )
        rollouts = (
            RolloutGroup(
                rspec,
                cfg.rollout.num_workers,
                cfg.rollout.num_cpus,
                gpu,
                cfg.trainer.actor_restarts,
                wait=False,
            )
            if rspec is not None
            else None
        )
        pool = None
        if rewards:
            with clock.phase("reward actors", f"{len(cfg.rewards)}"):
                pool = RewardPool(
                    [r.model_dump() for r in cfg.rewards], self.config_dir, cfg.trainer.actor_restarts
                )
        learners.ready()
        clock.record("learners", time.time() - t0, f"{cfg.learner.num_ranks} DeepSpeed rank(s)")
        if rollouts is not None:
            rollouts.ready()
            clock.record(
                "rollout workers",
                time.time() - t0,
                f"{cfg.rollout.num_workers} vLLM engine(s), lora_mode="
                f"{rollouts.lora_mode}, started with the learners; the engine's own load {rollouts.start_seconds:.1f}s",
            )
        return learners, rollouts, pool

    def _init_ray(self, rollout_workers: int | None = None) -> int:
        """Start (or join) Ray and check the run's actors fit (``align.runner.cluster.start_ray``); returns
        GPUs per actor (0 or 1). What can be checked without Ray is checked first: function rewards
        import, reward-model folders exist."""
        from align.models.builtin import resolve_model_path
        from rewards.loading import load, model_dir

        for entry in self.cfg.rewards:
            if entry.type == "model":
                model_dir(entry.model_dump(), self.config_dir, resolve_model_path)
            elif entry.type == "function":  # the user's plug-in, imported here as the reward actor will
                load(entry.fn, self.config_dir)
        gpu, self._owns_ray = start_ray(self.cfg, self.address, rollout_workers)
        return gpu

    def _release_actors(self) -> None:
        actors = [
            *getattr(self.rewards, "actors", []),
            *getattr(self.learners, "ranks", []),
            *getattr(self.rollouts, "workers", []),
        ]
        for actor in actors:
            if actor is not None:
                ray.kill(actor)

    def _check_resumed_adapter(self) -> None:
        """The checkpoint ``--resume`` continues from must hold an adapter of this base model."""
        ckpt = getattr(self, "_preloaded", None)
        if ckpt:
            from align.models.adapters import check_adapter

            check_adapter(
                ckpt["adapter"], self.model_path, f"--resume {ckpt['path']}", self.cfg.model.trust_remote_code
            )

    # ------------------------------------------------------------------ a step
    def _step(self, step: int) -> dict:
        """The algorithm's step, then the sync of the adapter it serves (only LoRA tensors travel)."""
        t_step = time.time()
        if self.ctx.queue is not None:  # asynchronous: send the batches up to step + K
            self.ctx.queue.fill(step)
        metrics = self.algorithm.step(self.ctx, step)
        # a step that trained nothing has nothing new to serve (asynchronous: the version numbers
        # stay those of the steps)
        if self.rollouts is not None and (self.ctx.queue is not None or not metrics.get("rollout/empty")):
            t0 = time.time()
            metrics["timing/sync_load"] = self._sync(step + 1)
            metrics["timing/sync"] = time.time() - t0
        metrics["timing/step"] = time.time() - t_step
        return metrics

    def _sync(self, version: int) -> float:
        """Serve the algorithm's adapter on the rollout workers as ``version``; returns seconds.
        Asynchronous: kept as a version that later calls name (the engines may still be sampling an
        earlier batch; each loads the version its call names)."""
        if self.rollouts is None:
            return 0.0
        tensors, adapter_cfg = self.algorithm.served_adapter(self.ctx)
        if self.ctx.queue is not None:
            self.rollouts.set_adapter(
                version, self.ctx.queue.add_version(version, tensors, adapter_cfg), adapter_cfg
            )
            return 0.0
        return self.rollouts.load_adapter(version, ray.put(tensors), adapter_cfg)

    def _evaluate(self) -> dict[str, float]:
        return self.algorithm.evaluate(self.ctx)

    # ------------------------------------------------------------------ signals and faults
    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second signal: stop now
            interrupts.post(KeyboardInterrupt())
            return
        self._stop_signal = signum
        timeout = self.cfg.trainer.stop_timeout
        signal.alarm(max(1, math.ceil(timeout)))  # past trainer.stop_timeout: _on_alarm stops at once
        log.warning(
            "received %s: finishing this step, writing a checkpoint, then stopping (within %gs)",
            signal.Signals(signum).name,
            timeout,
        )

    def _on_alarm(self, signum, frame) -> None:
        interrupts.post(
            StopRequested(
                f"stopped by {signal.Signals(self._stop_signal).name}: the step did not finish within "
                f"trainer.stop_timeout={self.cfg.trainer.stop_timeout:g}s, so no checkpoint was written; "
                f"{self._state_line()}"
            )
        )

    def _state_line(self) -> str:
        return (
            f"the last checkpoint is {self._last_ckpt}"
            if self._last_ckpt
            else "no checkpoint of this run was written yet"
        )

    def _fault_metrics(self) -> dict[str, int]:
        """Actors lost and recovered so far in this run (only when there were some)."""
        counts = {
            "faults/rollout_restarts": getattr(self.rollouts, "restarts", 0) if self.rollouts else 0,
            "faults/reward_restarts": getattr(self.rewards, "restarts", 0) if self.rewards else 0,
            "faults/learner_restarts": self._learner_restarts,
        }
        return {k: v for k, v in counts.items() if v}

    def _recover_learners(self, exc: LearnerLost) -> int:
        """A learner rank died: restart the group, restore the last checkpoint of this run; returns its step."""
        self._learner_restarts += 1
        limit = self.cfg.trainer.learner_restarts
        if self._learner_restarts > limit:
            raise RuntimeError(
                f"{exc}; the learner group was already restarted {limit} time(s) "
                f"(trainer.learner_restarts={limit}); the last checkpoint is {self._last_ckpt}"
            ) from exc
        if self._last_ckpt is None:
            raise RuntimeError(
                f"{exc}; no checkpoint of this run to restart the learners from yet "
                f"(trainer.save_every={self.cfg.trainer.save_every})"
            ) from exc
        log.warning(
            "%s; restarting the learner group (%d/%d) from %s",
            exc,
            self._learner_restarts,
            limit,
            self._last_ckpt,
        )
        self.learners.restart()
        self.ctx.objective = None  # rebuilt from the checkpoint's state at the next scores
        step = self._restore()
        self.metrics.close()
        # the steps after it are recomputed
        self.metrics = MetricsLog(self.run_dir, self.trackers, resume_step=step)
        return step

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, step: int) -> Path:
        ctx = self.ctx
        tensors, adapter_cfg = self.algorithm.served_adapter(ctx)
        objective_state = (
            ctx.objective.state_dict() if ctx.objective is not None else (ctx.objective_state or {})
        )
        state = {
            "version": step,
            "data_position": ctx.sampler.position,
            "seed": self.cfg.trainer.seed,
            "learner_ranks": self.cfg.learner.num_ranks,
            "objective": objective_state,
            **self.algorithm.state_dict(),
        }
        extra = self.algorithm.extra_adapters(ctx)
        if ctx.queue is not None:  # asynchronous: the batches in flight and the versions they sample from
            state["in_flight"] = ctx.queue.state()
            extra = {**extra, **ctx.queue.saved_adapters()}
        return save_checkpoint(
            self.ckpt_dir,
            step,
            tensors,
            adapter_cfg,
            self.learners.optimizer_states(),
            state,
            keep=self.cfg.trainer.keep_checkpoints,
            extra_adapters=extra,
        )

    def _save(self, step: int) -> None:
        self._last_ckpt = self._checkpoint(step)

    def _latest_checkpoint(self) -> dict | None:
        """The checkpoint to continue from (verified): the newest this run wrote, else (``--resume``) the
        newest complete one in the run directory, or None (then the run starts at 0)."""
        preloaded, self._preloaded = getattr(self, "_preloaded", None), None
        if preloaded is not None:
            return preloaded or None
        if self._last_ckpt is None:
            found = list_checkpoints(self.ckpt_dir)
            if not found:
                log.warning("--resume: no checkpoint in %s; starting from step 0", self.ckpt_dir)
                return None
            self._last_ckpt = found[-1]
        return load_checkpoint(self._last_ckpt)

    def _restore(self) -> int:
        ckpt = self._latest_checkpoint()
        if ckpt is None:
            return 0
        st = ckpt["state"]
        self.algorithm.load_state_dict(st)
        self.algorithm.restore(self.ctx, ckpt)  # may switch the data (a domain), hence the sampler, first
        self.ctx.objective_state = st.get("objective", {})
        self.ctx.sampler.position = st["data_position"]
        step = st["step"]
        if self.ctx.queue is not None:  # the batches in flight at the checkpoint, sampled again
            self.ctx.queue.restore(st.get("in_flight", []), ckpt["extra_adapters"])
        elif st.get("in_flight"):  # an asynchronous run's checkpoint resumed in lockstep: draw them again
            self.ctx.sampler.position = st["in_flight"][0]["position"]
            log.info(
                "the checkpoint had %d batch(es) in flight (rollout.max_staleness > 0); lockstep draws their "
                "prompts again from position %d",
                len(st["in_flight"]),
                self.ctx.sampler.position,
            )
        self._sync(step)
        log.info("resumed from %s (step %d)", ckpt["path"], step)
        return step

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        old_handlers: dict = {}
        status = "FAILED"  # how the trackers' runs end, unless the run finishes or is stopped
        try:
            if self.shared is None:  # (a job's trials share the process: one stop request for all)
                interrupts.clear()
            self.prepare()
            self.trackers = Trackers(cfg, self.run_dir, resume=self.resume)
            self._setup_actors()
            if self.address and self._owns_ray:  # a joined cluster that goes away: ClusterLost, not a hang
                self._watch = ClusterWatch(self.address, self._state_line).__enter__()
            # After ray.init, which installs its own SIGTERM handler in the driver: from here on a
            # signal finishes the step, writes a checkpoint and stops (a second one stops at once).
            if threading.current_thread() is threading.main_thread():  # (a sweep trial runs in a thread)
                old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
                old_handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
            with self.turn:
                with self.clock.phase("restore" if self.resume else "first adapter sync"):
                    start = self._restore() if self.resume else 0
                    if start == 0:
                        self._sync(0)
                self.metrics = MetricsLog(
                    self.run_dir, self.trackers, resume_step=start if self.resume else None
                )
                before = None
                if start == 0 and ctx.eval_rows:
                    with self.clock.phase("eval before", f"{len(ctx.eval_rows)} prompts"):
                        before = self._evaluate()
                    ctx.before_eval = before  # handed to the objective once it exists (first scored batch)
                    self.metrics.log(0, {f"eval/{k}": v for k, v in before.items()})
            startup = self.clock.metrics()
            self.metrics.log_startup(startup)
            log.info("start-up: %.1fs in all", startup["startup/total"])
            t_loop, done, after = time.time(), 0, {}
            step = start
            while step < cfg.trainer.max_steps:
                try:
                    with self.turn:
                        interrupts.check()
                        m = self._step(step)
                        done += 1
                        last = step + 1 == cfg.trainer.max_steps
                        periodic = cfg.trainer.eval_every and (step + 1) % cfg.trainer.eval_every == 0
                        wanted = ctx.objective.wants_eval(step + 1) if ctx.objective is not None else False
                        if ctx.eval_rows and (last or periodic or wanted):
                            result = self._evaluate()
                            m.update({f"eval/{k}": v for k, v in result.items()})
                            # only the evaluations it asked for move the objective (a run extended later
                            # continues exactly)
                            if wanted:
                                m.update(ctx.objective.observe_eval(step + 1, result))
                            after = result if last else after
                        if ctx.objective is not None:
                            m.update(ctx.objective.state_metrics())
                        m.update(self._fault_metrics())
                        saved = bool(
                            last
                            or (cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0)
                            or self._stop_signal
                        )
                        if (
                            saved
                        ):  # before the metrics row: a row is never logged for a step a restart would redo
                            self._save(step + 1)
                except LearnerLost as exc:
                    step = self._recover_learners(exc)
                    continue
                self.metrics.log(step + 1, m)
                eta = (time.time() - t_loop) / done * (cfg.trainer.max_steps - step - 1)
                if (step + 1) % cfg.trainer.log_every == 0:
                    log.info(
                        "%sstep %d/%d | %s | %.1fs/step | ETA %s",
                        self.tag,
                        step + 1,
                        cfg.trainer.max_steps,
                        self.algorithm.progress(m),
                        m.get("timing/step", 0.0),
                        _hms(eta),
                    )
                if self._stop_signal and not last:
                    if not saved:  # the signal came while the row was being logged
                        self._save(step + 1)
                    raise StopRequested(
                        f"stopped by {signal.Signals(self._stop_signal).name} after step {step + 1}; "
                        f"checkpoint written to {self.ckpt_dir}; continue with --resume"
                    )
                step += 1
            summary = self._finish(before, after)
            status = "FINISHED"
            return summary
        except (StopRequested, KeyboardInterrupt):
            status = "KILLED"  # the trackers' word for a run stopped on purpose (it resumes)
            raise
        except ClusterLost:
            self._cluster_lost = True
            raise
        finally:
            if getattr(self, "_watch", None) is not None:
                self._watch.__exit__()
            if old_handlers:
                signal.alarm(0)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if getattr(self, "metrics", None):
                self.metrics.close()
            if getattr(self, "trackers", None):
                self.trackers.finish(status)
            if getattr(self, "_cluster_lost", False):
                pass  # nothing to shut down: talking to a dead cluster would only wait
            elif self.shared is not None:  # the job stops the actors; the learners forget this trial
                self.shared.release(self)
            elif ray.is_initialized() and getattr(self, "_owns_ray", True):
                ray.shutdown()
            elif ray.is_initialized():  # a trial in a shared cluster: free its actors
                self._release_actors()

    def _finish(self, before: dict | None, after: dict) -> dict:
        """Plots, the ranks' agreement, the algorithm's own end (exports), the summary."""
        cfg, alg = self.cfg, self.algorithm
        adapters = self.learners.all_adapters(
            alg.train_adapter()
        )  # data-parallel ranks must hold identical adapters
        self.rank_max_abs_diff = max(
            (float(abs(a[k] - adapters[0][k]).max()) for a in adapters[1:] for k in a), default=0.0
        )
        plot = plot_curves(self.metrics.path, self.run_dir / "plots" / "reward_curves.png", alg.panels)
        # weights / multipliers / thresholds / hypervolume against step, when the objective has state
        plot_curves(self.metrics.path, self.run_dir / "plots" / "objective.png", OBJECTIVE_PANELS)
        if before and after:  # accuracy, length, length of wrong answers, NoThinking rate per level
            plot_levels(
                {"before": before, "after": after},
                self.run_dir / "plots" / "levels.png",
                LEVEL_METRICS + ("length_wrong",),
                title=f"{cfg.algorithm.name}: {self.run_dir.name}",
            )
        last = list_checkpoints(self.ckpt_dir)[-1]
        self.trackers.artifacts(
            {
                "config.yaml": self.run_dir / "config.yaml",
                "metrics.jsonl": self.metrics.path,
                **{f"plots/{p.name}": p for p in sorted((self.run_dir / "plots").glob("*.png"))},
                **({"adapter": last / "adapter"} if cfg.trainer.tracking.log_adapter else {}),
            }
        )
        summary = {
            "before": before,
            "after": after,
            "adapter": str(last / "adapter"),
            "plot": str(plot) if plot else None,
            "rank_max_abs_diff": self.rank_max_abs_diff,
        }
        summary.update(alg.finish(self.ctx, summary))
        lines = [
            "",
            f"run directory: {self.run_dir}",
            f"adapter: {last / 'adapter'}",
            f"learner ranks agree: max |adapter difference| = {self.rank_max_abs_diff:.3g}",
        ]
        if plot:
            lines.append(f"plots: {plot}")
        if after:
            lines.append(format_eval(before, after))
        log.info("\n".join(lines))
        return summary


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
