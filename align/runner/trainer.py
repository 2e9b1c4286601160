"""The runner's loop: prepare (data, specs), start the actors (``align.runner.actors``), then per
step the algorithm's step, the adapter sync, the evaluation cadence, a checkpoint
(``align.runner.checkpoints``) and the metrics row; a stop signal (``align.runner.signals``) or a lost
learner rank (recovery from the last checkpoint) is handled between steps. What a step does belongs
to the algorithm (``align.algorithms``, looked up by ``algorithm.name``): the loop calls
``algorithm.step(ctx, step)`` and syncs the adapter it serves.
"""

from __future__ import annotations

import contextlib
import logging
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
from align.runner.actors import Actors, start_actors
from align.runner.checkpoints import RunCheckpoints
from align.runner.cluster import ClusterLost, ClusterWatch
from align.runner.interrupts import StopRequested
from align.runner.pool import ActorPool
from align.runner.signals import StopSignals
from align.store.checkpoint import list_checkpoints
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
        # actors shared with other trials of one job (``align.runner.jobs``): this run takes views of
        # them and neither starts nor stops them
        self.shared = shared
        self.tag = ""  # a job's trials prefix their progress lines with their names
        # a job's trials take turns (``align.runner.jobs.Turns``): held for a step (with its evaluation
        # and checkpoint) and for the start (first sync, eval before)
        self.turn = contextlib.nullcontext()
        self._prepared = False
        self.run_dir = Path(config.trainer.output_dir)
        self.checkpoints = RunCheckpoints(self.run_dir, config)
        self.ckpt_dir = self.checkpoints.dir
        self.signals = StopSignals(config.trainer.stop_timeout, self.checkpoints.state_line)
        self.algorithm: Algorithm = algorithm_class(config.algorithm.name)(config)
        self.ctx = RunContext(cfg=config, config_dir=config_dir, run_dir=self.run_dir)
        self.actors: Actors | None = None
        self._learner_restarts = 0

    # the actor groups (tests and tools reach them here)
    learners = property(lambda self: self.ctx.learners)
    rollouts = property(lambda self: self.ctx.rollouts)
    rewards = property(lambda self: self.ctx.rewards)

    @property
    def _stop_signal(self) -> int | None:
        """The signal that asked the run to stop (a test may set it as a signal would)."""
        return self.signals.signum

    @_stop_signal.setter
    def _stop_signal(self, signum: int | None) -> None:
        self.signals.signum = signum

    @property
    def _owns_ray(self) -> bool:
        return self.actors is not None and self.actors.owns_ray

    # ------------------------------------------------------------------ set-up
    def prepare(self) -> None:
        """Everything before the actors: the checkpoint ``--resume`` continues from (read and
        verified: a bad checkpoint costs nothing), the tokenizer, the data, the resolved config, the
        actors' specs. A job of several trials prepares each before it starts their shared actors."""
        if self._prepared:
            return
        preloaded = self.checkpoints.preload() if self.resume else None
        self.clock = StartupClock(log)
        self._setup_local(preloaded)
        self._prepared = True

    def _setup_local(self, preloaded: dict | None) -> None:
        from transformers import AutoTokenizer

        from align.models.builtin import resolve_model_path
        from align.workers.learner.spec import LearnerSpec
        from align.workers.rollout import RolloutSpec

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
        if preloaded:  # the checkpoint --resume continues from must hold an adapter of this base model
            from align.models.adapters import check_adapter

            where = f"--resume {preloaded['path']}"
            check_adapter(preloaded["adapter"], self.model_path, where, cfg.model.trust_remote_code)
        for key, why in cfg.derived.items():
            log.info("config: %s = %s", key, why)
        save_resolved(cfg, self.run_dir)
        self.rspec = alg.rollout_spec(ctx, RolloutSpec.from_config(cfg, self.model_path))
        self.lspec = alg.learner_spec(ctx, LearnerSpec.from_config(cfg, self.model_path))

    def _setup_actors(self) -> None:
        cfg, ctx, alg = self.cfg, self.ctx, self.algorithm
        if self.shared is None and ActorPool.current is not None and not self.address:
            self.shared = ActorPool.current.lease(self)  # kept actors of this process, if they fit
        if self.shared is not None:
            ctx.learners, ctx.rollouts, ctx.rewards = self.shared.views(self)
        else:
            self.actors = self._start_actors(self.lspec, self.rspec, rewards=alg.uses_rewards)
            ctx.learners, ctx.rollouts, ctx.rewards = (
                self.actors.learners,
                self.actors.rollouts,
                self.actors.rewards,
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

    def _start_actors(self, lspec, rspec, rewards: bool = True) -> Actors:
        """This run's actors (``align.runner.actors.start_actors``; a sweep job starts its shared ones here)."""
        return start_actors(self.cfg, lspec, rspec, rewards, self.clock, self.config_dir, self.address)

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

    def _after_step(self, step: int, m: dict) -> tuple[bool, dict | None]:
        """The step's evaluation (the last step, every ``eval_every``, or when the objective asks),
        the objective's and faults' metrics, and its checkpoint (the last step, every ``save_every``,
        or a stop requested). Returns (whether it checkpointed, the evaluation of the last step)."""
        cfg, ctx = self.cfg, self.ctx
        last = step + 1 == cfg.trainer.max_steps
        periodic = cfg.trainer.eval_every and (step + 1) % cfg.trainer.eval_every == 0
        wanted = ctx.objective.wants_eval(step + 1) if ctx.objective is not None else False
        after = None
        if ctx.eval_rows and (last or periodic or wanted):
            result = self._evaluate()
            m.update({f"eval/{k}": v for k, v in result.items()})
            # only the evaluations it asked for move the objective (a run extended later continues exactly)
            if wanted:
                m.update(ctx.objective.observe_eval(step + 1, result))
            after = result if last else None
        if ctx.objective is not None:
            m.update(ctx.objective.state_metrics())
        m.update(self._fault_metrics())
        every = cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0
        saved = bool(last or every or self._stop_signal)
        if saved:  # before the metrics row: a row is never logged for a step a restart would redo
            self._save(step + 1)
        return saved, after

    # ------------------------------------------------------------------ faults and checkpoints
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
        limit, last = self.cfg.trainer.learner_restarts, self.checkpoints.last
        if self._learner_restarts > limit:
            raise RuntimeError(
                f"{exc}; the learner group was already restarted {limit} time(s) "
                f"(trainer.learner_restarts={limit}); the last checkpoint is {last}"
            ) from exc
        if last is None:
            raise RuntimeError(
                f"{exc}; no checkpoint of this run to restart the learners from yet "
                f"(trainer.save_every={self.cfg.trainer.save_every})"
            ) from exc
        log.warning(
            "%s; restarting the learner group (%d/%d) from %s", exc, self._learner_restarts, limit, last
        )
        self.learners.restart()
        self.ctx.objective = None  # rebuilt from the checkpoint's state at the next scores
        step = self._restore()
        self.metrics.close()
        # the steps after it are recomputed
        self.metrics = MetricsLog(self.run_dir, self.trackers, resume_step=step)
        return step

    def _save(self, step: int) -> None:
        self.checkpoints.save(step, self.ctx, self.algorithm)

    def _restore(self) -> int:
        """The latest checkpoint's state back in the method, the learners and the data; its adapter
        served again. Returns its step (0 without one)."""
        restored = self.checkpoints.restore(self.ctx, self.algorithm)
        if restored is None:
            return 0
        step, ckpt = restored
        self._sync(step)
        log.info("resumed from %s (step %d)", ckpt["path"], step)
        return step

    # ------------------------------------------------------------------ the loop
    def _start(self) -> tuple[int, dict | None]:
        """Everything up to the first step: data, trackers, actors, signals, the restore or first sync,
        the evaluation before training. Returns (the first step, that evaluation)."""
        cfg, ctx = self.cfg, self.ctx
        if self.shared is None:  # (a job's trials share the process: one stop request for all)
            interrupts.clear()
        self.prepare()
        self.trackers = Trackers(cfg, self.run_dir, resume=self.resume)
        self._setup_actors()
        if self.address and self._owns_ray:  # a joined cluster that goes away: ClusterLost, not a hang
            self._watch = ClusterWatch(self.address, self.checkpoints.state_line).__enter__()
        # After ray.init, which installs its own SIGTERM handler in the driver: from here on a signal
        # finishes the step, writes a checkpoint and stops (a second one stops at once).
        self.signals.install()
        before = None
        with self.turn:
            with self.clock.phase("restore" if self.resume else "first adapter sync"):
                start = self._restore() if self.resume else 0
                if start == 0:
                    self._sync(0)
            self.metrics = MetricsLog(self.run_dir, self.trackers, resume_step=start if self.resume else None)
            if start == 0 and ctx.eval_rows:
                with self.clock.phase("eval before", f"{len(ctx.eval_rows)} prompts"):
                    before = self._evaluate()
                ctx.before_eval = before  # handed to the objective once it exists (first scored batch)
                self.metrics.log(0, {f"eval/{k}": v for k, v in before.items()})
        startup = self.clock.metrics()
        self.metrics.log_startup(startup)
        log.info("start-up: %.1fs in all", startup["startup/total"])
        return start, before

    def run(self) -> dict:
        cfg = self.cfg
        status = "FAILED"  # how the trackers' runs end, unless the run finishes or is stopped
        try:
            step, before = self._start()
            t_loop, done, after = time.time(), 0, None
            while step < cfg.trainer.max_steps:
                try:
                    with self.turn:
                        interrupts.check()
                        m = self._step(step)
                        done += 1
                        saved, last_eval = self._after_step(step, m)
                        after = last_eval or after
                except LearnerLost as exc:
                    step = self._recover_learners(exc)
                    continue
                self.metrics.log(step + 1, m)
                self._log_progress(step, m, (time.time() - t_loop) / done)
                if self._stop_signal and step + 1 < cfg.trainer.max_steps:
                    if not saved:  # the signal came while the row was being logged
                        self._save(step + 1)
                    raise StopRequested(
                        f"stopped by {self.signals.name} after step {step + 1}; "
                        f"checkpoint written to {self.ckpt_dir}; continue with --resume"
                    )
                step += 1
            summary = self._finish(before, after or {})
            status = "FINISHED"
            return summary
        except (StopRequested, KeyboardInterrupt):
            status = "KILLED"  # the trackers' word for a run stopped on purpose (it resumes)
            raise
        except ClusterLost:
            self._cluster_lost = True
            raise
        finally:
            self._teardown(status)

    def _log_progress(self, step: int, m: dict, seconds_per_step: float) -> None:
        cfg = self.cfg
        if (step + 1) % cfg.trainer.log_every == 0:
            log.info(
                "%sstep %d/%d | %s | %.1fs/step | ETA %s",
                self.tag,
                step + 1,
                cfg.trainer.max_steps,
                self.algorithm.progress(m),
                m.get("timing/step", 0.0),
                _hms(seconds_per_step * (cfg.trainer.max_steps - step - 1)),
            )

    def _teardown(self, status: str) -> None:
        """Signals back, the metrics and trackers closed (the trackers' run ends as ``status``), the
        actors stopped: Ray shut down if this run started it, else its actors killed (a job's trials
        leave theirs to the job, which makes the learners forget the trial)."""
        if getattr(self, "_watch", None) is not None:
            self._watch.__exit__()
        self.signals.uninstall()
        if getattr(self, "metrics", None):
            self.metrics.close()
        if getattr(self, "trackers", None):
            self.trackers.finish(status)
        if getattr(self, "_cluster_lost", False):
            return  # nothing to shut down: talking to a dead cluster would only wait
        if self.shared is not None:
            self.shared.release(self)
        elif self.actors is None or not ray.is_initialized():
            return  # no actor started (a failed start shut down the Ray it started)
        elif self.actors.owns_ray:
            ray.shutdown()
        else:  # a run in a cluster it did not start: free its actors
            self.actors.release()

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
