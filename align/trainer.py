"""The controller loop of the GRPO family: sample, score, shape, advantage, update, sync, log,
checkpoint. It drives Ray actors (vLLM rollout workers, DeepSpeed learner ranks, a reward worker)
and is the only place that waits on their results.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import torch

from align.algorithms.adaptthink import ReferenceAccuracy, adaptthink_advantages, model_fingerprint, nothink_count
from align.algorithms.apo import correct_from_raw, dads_weights, stcr_scale
from align.algorithms.grpo import compute_advantages, informative_groups
from align.batch import pack
from align.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from align import interrupts
from align.cluster import ClusterLost, ClusterWatch, check_address
from align.interrupts import StopRequested
from align.evaluation_loop import evaluate, format_eval
from align.metrics import StartupClock, LEVEL_METRICS, OBJECTIVE_PANELS, PANELS, MetricsLog, plot_curves, plot_levels
from align.objectives import build_objective
from align.sampling import PromptSampler, sample_seed
from align.workers.groups import LearnerLost
from align.config.loading import save_resolved
from align.config.schema import GRPO_FAMILY, PREFERENCE_FAMILY, Config

log = logging.getLogger("align.train")


def learner_spec(c: Config, model_path: str) -> dict:
    """What a learner rank needs, as plain values (sent to the Ray actor)."""
    return {"model_path": model_path, "device": c.model.device, "dtype": c.model.dtype,
            "trust_remote_code": c.model.trust_remote_code, "lora": c.model.lora.model_dump(),
            "micro_batch_size": c.learner.micro_batch_size, "zero_stage": c.learner.zero_stage,
            "lr": c.learner.lr, "grad_clip": c.learner.grad_clip, "threads": c.learner.threads,
            "autocast": c.learner.autocast}


def rollout_spec(c: Config, model_path: str) -> dict:
    """What a rollout worker needs, as plain values (sent to the Ray actor)."""
    return {"model_path": model_path, "device": c.model.device, "dtype": c.model.dtype,
            "max_model_len": c.data.max_prompt_tokens + c.rollout.max_new_tokens + 8,
            "gpu_memory_utilization": c.rollout.gpu_memory_utilization, "lora_rank": c.model.lora.r,
            "lora_mode": c.rollout.lora_mode, "seed": c.trainer.seed, "trust_remote_code": c.model.trust_remote_code}


def check_resources(c: Config, cluster: dict, gpu_per_actor: int, rollout_workers: int | None = None) -> None:
    """Refuse a run whose actors cannot all be placed (Ray would otherwise wait for ever)."""
    workers = c.rollout.num_workers if rollout_workers is None else rollout_workers
    need = {"CPU": workers * c.rollout.num_cpus + c.learner.num_ranks * c.learner.num_cpus,
            "GPU": (workers + c.learner.num_ranks) * gpu_per_actor}
    for kind, wanted in need.items():
        have = cluster.get(kind, 0.0)
        if wanted > have + 1e-9:
            raise ValueError(
                f"the run needs {wanted:g} Ray {kind}s (rollout.num_workers x rollout.num_cpus + learner.num_ranks x "
                f"learner.num_cpus{'' if kind == 'CPU' else ', one GPU per actor'}) but the cluster has {have:g}: "
                f"lower learner.num_ranks / rollout.num_workers or their num_cpus, or use a bigger cluster"
            )


def check_context(c: Config, model_path: str) -> None:
    """Prompt budget + completion budget must fit the model's context."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=c.model.trust_remote_code)
    context = getattr(config, "max_position_embeddings", None)
    need = c.data.max_prompt_tokens + c.rollout.max_new_tokens
    if context and need > context:
        raise ValueError(f"data.max_prompt_tokens ({c.data.max_prompt_tokens}) + rollout.max_new_tokens ({c.rollout.max_new_tokens}) "
                         f"= {need} tokens exceed the model's context of {context} (max_position_embeddings): lower them")


def make_trainer(config: Config, config_dir: str | None = None, address: str | None = None, resume: bool = False) -> "Trainer":
    """The trainer of ``algorithm.name``: the GRPO family's, or the DPO family's (``align.preference``)."""
    if config.algorithm.name == "reward_model":
        from align.reward_model import RewardModelTrainer

        return RewardModelTrainer(config, config_dir, address=address, resume=resume)
    if config.algorithm.name in PREFERENCE_FAMILY:
        from align.preference import PreferenceTrainer

        return PreferenceTrainer(config, config_dir, address=address, resume=resume)
    return Trainer(config, config_dir, address=address, resume=resume)


class Trainer:
    def __init__(self, config: Config, config_dir: str | None = None, address: str | None = None, resume: bool = False):
        self.cfg, self.config_dir, self.address, self.resume = config, config_dir, address, resume
        self.run_dir = Path(config.trainer.output_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._stop_signal: int | None = None
        self._last_ckpt: Path | None = None  # the newest checkpoint this run wrote or resumed from
        self._learner_restarts = 0

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        from transformers import AutoTokenizer

        from align.data.loading import load_prompts
        from align.models.builtin import resolve_model_path

        cfg = self.cfg
        self.model_path = resolve_model_path(cfg.model.path)
        if not Path(self.model_path, "config.json").exists():
            raise FileNotFoundError(f"model.path {cfg.model.path!r}: no config.json in {self.model_path} (not a HF model directory)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        check_context(cfg, self.model_path)
        self.train_rows = self._checked(load_prompts(cfg.data.train, self.tokenizer, self.config_dir), cfg.data.train)
        self.eval_rows = (self._checked(load_prompts(cfg.data.eval, self.tokenizer, self.config_dir), cfg.data.eval)[: cfg.data.eval_size]
                          if cfg.data.eval else [])
        adaptthink = cfg.algorithm.name == "adaptthink"
        self.forced_sampling = self._forced_sampling() if adaptthink else None  # token ids looked up once, before any actor
        self._check_resumed_adapter()
        save_resolved(cfg, self.run_dir)
        self.learners, self.rollouts, self.rewards = self._start_actors(learner_spec(cfg, self.model_path),
                                                                        rollout_spec(cfg, self.model_path))
        self.objective = None  # built from the first scores: a reward may return several named objectives
        self._objective_state: dict | None = None
        self.sampler = PromptSampler(len(self.train_rows), cfg.trainer.seed)
        if adaptthink:
            with self.clock.phase("reference accuracy"):
                self.ref_acc = self._reference_accuracy()
        else:
            self.ref_acc = None

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
        learners = LearnerGroup(lspec, cfg.learner.num_ranks, cfg.learner.num_cpus, gpu, cfg.trainer.seed, wait=False)
        rollouts = (RolloutGroup(rspec, cfg.rollout.num_workers, cfg.rollout.num_cpus, gpu, cfg.trainer.actor_restarts, wait=False)
                    if rspec is not None else None)
        pool = None
        if rewards:
            with clock.phase("reward actors", f"{len(cfg.rewards)}"):
                pool = RewardPool([r.model_dump() for r in cfg.rewards], self.config_dir, cfg.trainer.actor_restarts)
        learners.ready()
        clock.record("learners", time.time() - t0, f"{cfg.learner.num_ranks} DeepSpeed rank(s)")
        if rollouts is not None:
            rollouts.ready()
            clock.record("rollout workers", time.time() - t0, f"{cfg.rollout.num_workers} vLLM engine(s), lora_mode="
                         f"{rollouts.lora_mode}, started with the learners; the engine's own load {rollouts.start_seconds:.1f}s")
        return learners, rollouts, pool

    def _init_ray(self, rollout_workers: int | None = None) -> int:
        """Start (or join) Ray and check the run's actors fit; returns GPUs per actor (0 or 1). Every
        trainer calls it before its first actor; what can be checked without Ray is checked first
        (function rewards import, reward-model folders exist, a local cluster is big enough)."""
        from rewards.loading import load, model_dir

        cfg = self.cfg
        for entry in cfg.rewards:
            if entry.type == "model":
                model_dir(entry.model_dump(), self.config_dir)
            elif entry.type == "function":  # the user's plug-in, imported here as the reward actor will
                load(entry.fn, self.config_dir)
        # Inside a Ray job already (an ``align sweep`` trial): use that cluster and the trial's
        # placement group, which Tune sized from the same config (see launch/sweep.py).
        self._owns_ray = not ray.is_initialized()
        gpu = 1 if cfg.model.device == "cuda" or (cfg.model.device == "auto" and torch.cuda.is_available()) else 0
        if self._owns_ray:
            if self.address:
                check_address(self.address)
                ray.init(address=self.address, log_to_driver=False)
                check_resources(cfg, ray.cluster_resources(), gpu, rollout_workers)
            else:
                cpus = max(2, os.cpu_count() or 2)
                check_resources(cfg, {"CPU": cpus, "GPU": torch.cuda.device_count()}, gpu, rollout_workers)
                # address="local": always a cluster of our own, even where `ray start` left one running
                ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        return gpu

    # ------------------------------------------------------------------ AdaptThink
    def _token_id(self, token: str, field: str) -> int:
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{field}: {token!r} is {len(ids)} tokens for this tokenizer ({ids}); it must be exactly one token")
        return ids[0]

    def _forced_sampling(self) -> dict:
        """Keyword arguments of ``RolloutGroup.generate(forced=True)`` from the config."""
        cfg, at = self.cfg, self.cfg.algorithm.adaptthink
        return {"end_think_id": self._token_id(at.end_think_token, "algorithm.adaptthink.end_think_token"),
                "think_id": self._token_id(at.think_token, "algorithm.adaptthink.think_token") if at.think_token else None,
                "nothink_max_tokens": min(at.nothink_max_tokens or cfg.rollout.max_new_tokens, cfg.rollout.max_new_tokens),
                "max_tokens": cfg.rollout.max_new_tokens, "top_p": cfg.rollout.top_p}

    def _reference_accuracy(self) -> ReferenceAccuracy:
        """R_ref(x): mean R of K Thinking samples of the reference policy (adapter off), cached by prompt."""
        cfg, at = self.cfg, self.cfg.algorithm.adaptthink
        K, temp = at.ref_samples, at.ref_temperature or cfg.rollout.temperature
        meta = {"model": model_fingerprint(self.model_path), "rewards": [r.model_dump() for r in cfg.rewards], "K": K,
                "temperature": temp, "top_p": cfg.rollout.top_p, "max_tokens": cfg.rollout.max_new_tokens,
                "think_token": at.think_token, "end_think_token": at.end_think_token, "seed": cfg.trainer.seed}

        by_prompt = {r["prompt"]: r for r in self.train_rows}

        def compute(prompts: list[str]) -> list[float]:
            seeds = [sample_seed(cfg.trainer.seed, 2**31, 0, int(hashlib.sha256(p.encode()).hexdigest()[:8], 16)) for p in prompts]
            groups = self.rollouts.generate(prompts, seeds, forced=True, n=K, n_nothink=0, temperature=temp, use_adapter=False,
                                            logprobs_for=0, **self.forced_sampling)
            flat = [by_prompt[p] for p in prompts for _ in range(K)]
            samples = [s for g in groups for s in g]
            scores = self.rewards.score([r["prompt"] for r in flat], [s["text"] for s in samples],
                                        {**self._columns(flat), "completion_ids": [s["completion_ids"] for s in samples]})
            self._objective_for(scores)
            r = self.objective.shape(scores.scores, {"group_size": K}).rewards
            return list(np.nanmean(r.reshape(-1, K), axis=1))

        ref = ReferenceAccuracy(at.ref_cache or ReferenceAccuracy.default_path(meta), meta, compute)
        if at.ref_prompts == "all":
            wanted = [r["prompt"] for r in self.train_rows]
        else:  # exactly the prompts this run will draw (the prompt order is deterministic)
            probe = PromptSampler(len(self.train_rows), cfg.trainer.seed)
            wanted = [self.train_rows[i]["prompt"] for i in probe.take(cfg.trainer.max_steps * cfg.data.prompts_per_step)]
        t0 = time.time()
        done = ref.ensure(wanted, chunk=256, progress=log.info)
        log.info("AdaptThink reference accuracy: %d prompts (%d cached, %d computed in %.1fs; K=%d) in %s", len(set(wanted)),
                 len(set(wanted)) - done, done, time.time() - t0, K, ref.path)
        return ref

    def _objective_for(self, scores) -> None:
        """Build the objective once the objective names are known (from the first scored batch)."""
        if self.objective is None:
            weights = {r.name: r.weight for r in self.cfg.rewards}
            self.objective = build_objective(self.cfg.objective.name, scores.names,
                                             {n: weights[o] for n, o in zip(scores.names, scores.owners)}, self.cfg)
            if self._objective_state is not None:
                self.objective.load_state_dict(self._objective_state)
            elif getattr(self, "_before_eval", None) is not None:  # the initial model's validation (step 0)
                self.objective.observe_eval(0, self._before_eval)

    def _release_actors(self) -> None:
        actors = [*getattr(getattr(self, "rewards", None), "actors", []), *getattr(getattr(self, "learners", None), "ranks", []),
                  *getattr(getattr(self, "rollouts", None), "workers", [])]
        for actor in actors:
            if actor is not None:
                ray.kill(actor)

    def _checked(self, rows: list[dict], source: str) -> list[dict]:
        limit = self.cfg.data.max_prompt_tokens
        for i, row in enumerate(rows):
            n = len(self.tokenizer(row["prompt"])["input_ids"])
            if n > limit:
                raise ValueError(f"{source}: row {i} prompt has {n} tokens > data.max_prompt_tokens={limit}")
        return rows

    @staticmethod
    def _columns(rows: list[dict]) -> dict[str, list]:
        keys = [k for k in rows[0] if k != "prompt" and not k.startswith("_")]
        return {k: [r.get(k) for r in rows] for k in keys}

    # ------------------------------------------------------------------ one step
    def _rollout(self, step: int) -> tuple[list[dict], list[dict], Callable[[], tuple[np.ndarray, np.ndarray]], dict]:
        """Sample prompts and G completions each, and send them to the rewards. Returns the rows, the
        samples, a function giving ``(scores, dropped)`` and the stats. Without dynamic sampling the
        rewards run while the caller goes on (the learners' log-prob pass needs no reward): the function
        waits for them. With dynamic sampling each round's rewards decide which groups to keep."""
        cfg, G = self.cfg, self.cfg.algorithm.group_size
        want = cfg.data.prompts_per_step
        kept_rows, kept_samples, kept_scores, stats = [], [], [], {"rollout/rounds": 0, "rollout/groups_dropped": 0}
        t_roll = 0.0

        def scored(pending, t_submit: float):
            t0 = time.time()
            scores = self.rewards.result(pending)
            stats["timing/reward_wait"] = stats.get("timing/reward_wait", 0.0) + time.time() - t0
            stats["timing/reward"] = stats.get("timing/reward", 0.0) + time.time() - t_submit
            self._objective_for(scores)
            for key, n in [*((f"reward/skipped/{k}", n) for k, n in scores.skipped_by.items()), *scores.stats.items()]:
                stats[key] = stats.get(key, 0) + n
            return scores

        for rnd in range(cfg.algorithm.max_sampling_rounds if cfg.algorithm.dynamic_sampling else 1):
            need = want - len(kept_rows)
            idx = self.sampler.take(need)
            rows = [self.train_rows[i] for i in idx]
            t0 = time.time()
            prompts, seeds = [r["prompt"] for r in rows], [sample_seed(cfg.trainer.seed, step, rnd, j) for j in range(need)]
            if cfg.algorithm.name == "adaptthink":  # importance-sampled: part of each group forced into each mode
                groups = self.rollouts.generate(prompts, seeds, forced=True, n=G, temperature=cfg.rollout.temperature,
                                                n_nothink=nothink_count(G, cfg.algorithm.adaptthink.nothink_ratio),
                                                logprobs_for=cfg.rollout.logprob_check_prompts, **self.forced_sampling)
            else:
                groups = self.rollouts.generate(prompts, seeds, n=G, max_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                                                top_p=cfg.rollout.top_p, logprobs_for=cfg.rollout.logprob_check_prompts)
            t_roll += time.time() - t0
            samples = [s for g in groups for s in g]
            flat_rows = [r for r in rows for _ in range(G)]
            t_submit = time.time()
            pending = self.rewards.submit([r["prompt"] for r in flat_rows], [s["text"] for s in samples],
                                          {**self._columns(flat_rows), "completion_ids": [s["completion_ids"] for s in samples]})
            stats["rollout/rounds"] += 1
            if not cfg.algorithm.dynamic_sampling:
                stats.update({"timing/rollout": t_roll, "rollout/prompts": len(rows)})

                def resolve(pending=pending, t_submit=t_submit) -> tuple[np.ndarray, np.ndarray]:
                    scores = scored(pending, t_submit)
                    return scores.scores, scores.dropped

                return rows, samples, resolve, stats
            scores = scored(pending, t_submit)
            shaped = self.objective.shape(scores.scores, {"group_size": G})
            keep = informative_groups(shaped.rewards, G)
            stats["rollout/groups_dropped"] += int((~keep).sum())
            for j in np.flatnonzero(keep):
                kept_rows.append(rows[j])
                kept_samples.extend(samples[j * G : (j + 1) * G])
                kept_scores.append((scores.scores[j * G : (j + 1) * G], scores.dropped[j * G : (j + 1) * G]))
            if len(kept_rows) >= want:
                break
        if not kept_rows:  # every group was uninformative in every round: train on nothing, say so
            stats["rollout/empty"] = 1
        stats.update({"timing/rollout": t_roll, "rollout/prompts": len(kept_rows)})
        scores = np.concatenate([s for s, _ in kept_scores]) if kept_scores else np.zeros((0, len(self.objective.names)))
        dropped = np.concatenate([d for _, d in kept_scores]) if kept_scores else np.zeros(0, dtype=bool)
        return kept_rows, kept_samples, lambda: (scores, dropped), stats

    def _step(self, step: int) -> dict:
        cfg, G = self.cfg, self.cfg.algorithm.group_size
        t_step = time.time()
        rows, samples, resolve, metrics = self._rollout(step)
        if not samples:
            return metrics
        batch = pack(samples, self.tokenizer.pad_token_id)
        # -- learner log-probs: reference (adapter off) for KL; current policy (old) only when the
        #    update is off-policy (several epochs/minibatches) or KL goes into the reward
        t0 = time.time()
        need_ref = cfg.algorithm.kl.coef > 0
        need_old = cfg.algorithm.ppo_epochs * cfg.algorithm.num_minibatches > 1 or (need_ref and cfg.algorithm.kl.where == "reward")
        if need_ref or need_old:
            batch.update(self.learners.compute_logprobs(batch, cfg.rollout.temperature, reference=need_ref, policy=need_old))
        mask = batch["completion_mask"]
        check = torch.nonzero(batch["has_rollout_logps"]).flatten()  # parity: vLLM vs learner on these rows
        if len(check):
            sub = {k: v[check] for k, v in batch.items()}
            learner_lp = sub["old_logps"] if need_old else self.learners.compute_logprobs(sub, cfg.rollout.temperature, False)["old_logps"]
            m = sub["rollout_logp_mask"]
            metrics["rollout/logprob_abs_diff"] = float(((learner_lp - sub["rollout_logps"]).abs() * m).sum() / m.sum().clamp(min=1))
        metrics["timing/logprobs"] = time.time() - t0
        scores, dropped = resolve()  # the rewards ran during the log-prob pass
        # -- shape: objectives -> one reward (or advantage) per sample, with KL in the reward if asked
        lengths = np.array([len(s["completion_ids"]) for s in samples], dtype=np.float64)
        kl_reward = None
        if need_ref and need_old:
            kl_tok = (batch["old_logps"] - batch["ref_logps"]) * mask  # k1 per token
            metrics["kl/mean"] = float(kl_tok.sum() / mask.sum().clamp(min=1))
            if cfg.algorithm.kl.where == "reward":
                kl_reward = -cfg.algorithm.kl.coef * kl_tok.sum(dim=1).double().numpy()
        if dropped.any():  # nan_policy=skip: out of the loss (and neutral in its group's baseline, below)
            mask[torch.from_numpy(dropped)] = 0
        truncated = torch.tensor([s["truncated"] for s in samples])
        if cfg.algorithm.overlong_filter:
            mask[truncated] = 0
        estimator = GRPO_FAMILY[cfg.algorithm.name][0]
        learner_keys = ("input_ids", "attention_mask", "completion_mask", "advantages", "old_logps", "ref_logps", "kl_weight",
                        "first_logp", "forced_first")
        loss_cfg = {"temperature": cfg.rollout.temperature, "clip_low": cfg.algorithm.clip_low, "ratio": cfg.algorithm.ratio,
                    "clip_high": cfg.algorithm.clip_high, "agg": cfg.algorithm.loss_agg, "kl_coef": cfg.algorithm.kl.coef,
                    "kl_in_loss": cfg.algorithm.kl.where == "loss", "kl_estimator": cfg.algorithm.kl.estimator,
                    "max_len": cfg.rollout.max_new_tokens}

        def advantages(r: np.ndarray) -> np.ndarray:
            """Group advantages of rewards (N,) or (N, K), column by column; a skipped or NaN sample
            takes its group's mean (neutral in the baseline, advantage 0)."""
            r = np.asarray(r, dtype=np.float64)
            cols = r[:, None] if r.ndim == 1 else r
            out = np.stack([compute_advantages(estimator, _fill_group_mean(c, dropped | np.isnan(c), G), G) for c in cols.T], axis=1)
            return out[:, 0] if r.ndim == 1 else out

        def gradient_gram(adv: np.ndarray, param_pattern: str | None, clip: float | None) -> np.ndarray:
            part = {k: batch[k] for k in learner_keys if k in batch and k != "advantages"}
            return self.learners.objective_gradients(part, adv, loss_cfg, param_pattern, clip)

        ctx = {"group_size": G, "lengths": lengths, "step": step, "advantages": advantages, "kl_reward": kl_reward}
        t0 = time.time()
        metrics.update(self.objective.before_update(scores, {**ctx, "gradient_gram": gradient_gram}))
        metrics["timing/objective"] = time.time() - t0
        shaped = self.objective.shape(scores, ctx)
        kl_in_reward = kl_reward if kl_reward is not None else 0.0
        if shaped.advantages is not None:  # the objective mixed per-objective advantages itself
            adv = np.asarray(shaped.advantages, dtype=np.float64)
        elif cfg.algorithm.name == "adaptthink":  # R - R_ref(x) + delta * 1[NoThinking], no group normalisation
            nothink = np.array([s["forced"] == "nothink" for s in samples])
            ref = np.repeat(self.ref_acc.get([r["prompt"] for r in rows]), G)
            adv = advantages(adaptthink_advantages(shaped.rewards, ref, nothink, cfg.algorithm.adaptthink.delta) + kl_in_reward)
            metrics.update(_adaptthink_metrics(shaped.rewards, ref, nothink, np.repeat([r.get("level") for r in rows], G)))
        else:
            adv = advantages(shaped.rewards + kl_in_reward)
        kl_weight = shaped.kl_weight
        apo = cfg.algorithm.apo  # "correct" from the raw accuracy reward (validated to exist when dads/stcr is on)
        correct = correct_from_raw(scores[:, self.objective.names.index(apo.accuracy)]) if apo.accuracy in self.objective.names else None
        if apo.dads or apo.stcr:
            if correct is None:
                raise ValueError(f"algorithm.apo.accuracy: {apo.accuracy!r} is not among the objectives {self.objective.names}")
            if apo.stcr:  # after the group normalisation, as in the authors' code
                c = stcr_scale(correct, lengths, G, apo.stcr_base)
                adv = adv * c
                metrics["apo/stcr_scaled"] = float((c > 1).mean())
                metrics["apo/stcr_c_max"] = float(c.max())
            if apo.dads:
                w = dads_weights(adv, correct, G, apo.dads_scale)
                kl_weight = w if kl_weight is None else kl_weight * w
                metrics["apo/dads_weight_mean"] = float(w.mean())
                metrics["apo/dads_relaxed"] = float((w < 1).mean())
        batch["advantages"] = torch.from_numpy(adv).float()
        if kl_weight is not None:
            batch["kl_weight"] = torch.from_numpy(np.asarray(kl_weight)).float()
        # -- update: ppo_epochs x num_minibatches optimizer steps
        t0 = time.time()
        n = len(samples)
        order = np.random.default_rng([cfg.trainer.seed, step]).permutation(n) if cfg.algorithm.num_minibatches > 1 else np.arange(n)
        learn_stats: list[dict] = []
        for _ in range(cfg.algorithm.ppo_epochs):
            for mb in np.array_split(order, cfg.algorithm.num_minibatches):
                part = {k: batch[k][torch.from_numpy(np.sort(mb))] for k in learner_keys if k in batch}
                learn_stats.append(self.learners.train_step(part, loss_cfg))
        metrics["timing/learner"] = time.time() - t0
        metrics.update({k: float(np.mean([s[k] for s in learn_stats])) for k in learn_stats[0]})
        # -- sync: only the LoRA tensors go to the rollout workers, as a new adapter version
        t0 = time.time()
        metrics["timing/sync_load"] = self._sync(step + 1)
        metrics["timing/sync"] = time.time() - t0
        # -- metrics
        for k, name in enumerate(self.objective.names):
            col = scores[:, k]
            if np.isfinite(col).any():
                metrics[f"reward/{name}"] = float(np.nanmean(col))
        metrics["reward/total"] = float(shaped.rewards.mean())
        metrics.update(shaped.metrics)
        metrics.update(self.objective.update(scores, ctx))
        metrics["rollout/length"] = float(lengths.mean())
        if correct is not None:  # APO's target: how long the wrong answers are
            wrong = ~correct
            if wrong.any():
                metrics["rollout/length_wrong"] = float(lengths[wrong].mean())
        metrics["rollout/truncated"] = float(truncated.float().mean())
        metrics["timing/step"] = time.time() - t_step
        return metrics

    # ------------------------------------------------------------------ the loop
    PANELS = PANELS

    def _progress(self, m: dict) -> str:
        """The middle of the per-step log line."""
        rewards = " ".join(f"{k[7:]} {v:.3f}" for k, v in m.items() if k.startswith("reward/") and k != "reward/total")
        return (f"reward {m.get('reward/total', float('nan')):.3f} | {rewards} | kl {m.get('kl/mean', m.get('loss/kl', 0.0)):.4f} | "
                f"len {m.get('rollout/length', 0.0):.1f}")

    def _train_adapter(self) -> str:
        """The learner adapter whose copies must agree across ranks (and that is served)."""
        return "default"

    def _sync(self, version: int) -> float:
        """Serve the learners' adapter on the rollout workers as ``version``; returns seconds."""
        tensors, adapter_cfg = self.learners.adapter(self._train_adapter())
        return self.rollouts.load_adapter(version, ray.put(tensors), adapter_cfg)

    def _evaluate(self) -> dict[str, float]:
        return evaluate(self.rollouts, self.rewards, self.eval_rows, self.tokenizer, self.cfg)

    def _check_resumed_adapter(self) -> None:
        """The checkpoint ``--resume`` continues from must hold an adapter of this base model."""
        ckpt = getattr(self, "_preloaded", None)
        if ckpt:
            from align.models.adapters import check_adapter

            check_adapter(ckpt["adapter"], self.model_path, f"--resume {ckpt['path']}", self.cfg.model.trust_remote_code)

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second signal: stop now
            interrupts.post(KeyboardInterrupt())
            return
        self._stop_signal = signum
        timeout = self.cfg.trainer.stop_timeout
        signal.alarm(max(1, math.ceil(timeout)))  # past trainer.stop_timeout: _on_alarm stops at once
        log.warning("received %s: finishing this step, writing a checkpoint, then stopping (within %gs)",
                    signal.Signals(signum).name, timeout)

    def _on_alarm(self, signum, frame) -> None:
        interrupts.post(StopRequested(f"stopped by {signal.Signals(self._stop_signal).name}: the step did not finish within "
                            f"trainer.stop_timeout={self.cfg.trainer.stop_timeout:g}s, so no checkpoint was written; "
                            f"{self._state_line()}"))

    def _state_line(self) -> str:
        return f"the last checkpoint is {self._last_ckpt}" if self._last_ckpt else "no checkpoint of this run was written yet"

    def _fault_metrics(self) -> dict[str, int]:
        """Actors lost and recovered so far in this run (only when there were some)."""
        counts = {"faults/rollout_restarts": getattr(self.rollouts, "restarts", 0) if self.rollouts else 0,
                  "faults/reward_restarts": getattr(self.rewards, "restarts", 0) if self.rewards else 0,
                  "faults/learner_restarts": self._learner_restarts}
        return {k: v for k, v in counts.items() if v}

    def _recover_learners(self, exc: LearnerLost) -> int:
        """A learner rank died: restart the group, restore the last checkpoint of this run; returns its step."""
        self._learner_restarts += 1
        limit = self.cfg.trainer.learner_restarts
        if self._learner_restarts > limit:
            raise RuntimeError(f"{exc}; the learner group was already restarted {limit} time(s) "
                               f"(trainer.learner_restarts={limit}); the last checkpoint is {self._last_ckpt}") from exc
        if self._last_ckpt is None:
            raise RuntimeError(f"{exc}; no checkpoint of this run to restart the learners from yet "
                               f"(trainer.save_every={self.cfg.trainer.save_every})") from exc
        log.warning("%s; restarting the learner group (%d/%d) from %s", exc, self._learner_restarts, limit, self._last_ckpt)
        self.learners.restart()
        self.objective = None  # rebuilt from the checkpoint's state at the next scores
        step = self._restore()
        self.metrics.close()
        self.metrics = MetricsLog(self.run_dir, resume_step=step)  # the steps after it are recomputed
        return step

    def _run_state(self, step: int) -> dict:
        """What every checkpoint's state.json holds (trainers add their own entries)."""
        return {"version": step, "data_position": self.sampler.position, "seed": self.cfg.trainer.seed,
                "learner_ranks": self.cfg.learner.num_ranks}

    def _checkpoint(self, step: int) -> Path:
        tensors, adapter_cfg = self.learners.adapter()
        objective_state = self.objective.state_dict() if self.objective is not None else (self._objective_state or {})
        state = {**self._run_state(step), "objective": objective_state}
        return save_checkpoint(self.ckpt_dir, step, tensors, adapter_cfg, self.learners.optimizer_states(), state,
                               keep=self.cfg.trainer.keep_checkpoints)

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
        self.learners.load_state(ckpt["adapter"], ckpt["optimizer_states"])
        self._objective_state = ckpt["state"]["objective"]
        self.sampler.position = ckpt["state"]["data_position"]
        step = ckpt["state"]["step"]
        self.rollouts.load_adapter(step, ray.put(ckpt["adapter"]), ckpt["adapter_config"])
        log.info("resumed from %s (step %d)", ckpt["path"], step)
        return step

    def run(self) -> dict:
        cfg = self.cfg
        old_handlers: dict = {}
        try:
            interrupts.clear()
            if self.resume:  # read and verified before any actor starts: a bad checkpoint costs nothing
                self._preloaded = self._latest_checkpoint() or {}
            self.clock = StartupClock(log)
            self._setup()
            if self.address and self._owns_ray:  # a joined cluster that goes away: ClusterLost, not a hang
                self._watch = ClusterWatch(self.address, self._state_line).__enter__()
            # After ray.init, which installs its own SIGTERM handler in the driver: from here on a
            # signal finishes the step, writes a checkpoint and stops (a second one stops at once).
            if threading.current_thread() is threading.main_thread():  # (a sweep trial runs in a thread)
                old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
                old_handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
            with self.clock.phase("restore" if self.resume else "first adapter sync"):
                start = self._restore() if self.resume else 0
                if start == 0:
                    self._sync(0)
            self.metrics = MetricsLog(self.run_dir, resume_step=start if self.resume else None)
            before = None
            if start == 0 and self.eval_rows:
                with self.clock.phase("eval before", f"{len(self.eval_rows)} prompts"):
                    before = self._evaluate()
                self._before_eval = before  # handed to the objective once it exists (first scored batch)
                self.metrics.log(0, {f"eval/{k}": v for k, v in before.items()})
            startup = self.clock.metrics()
            self.metrics.log_startup(startup)
            log.info("start-up: %.1fs in all", startup["startup/total"])
            t_loop, done, after = time.time(), 0, {}
            step = start
            while step < cfg.trainer.max_steps:
                try:
                    interrupts.check()
                    m = self._step(step)
                    done += 1
                    last = step + 1 == cfg.trainer.max_steps
                    periodic = cfg.trainer.eval_every and (step + 1) % cfg.trainer.eval_every == 0
                    wanted = self.objective.wants_eval(step + 1) if self.objective is not None else False
                    if self.eval_rows and (last or periodic or wanted):
                        result = self._evaluate()
                        m.update({f"eval/{k}": v for k, v in result.items()})
                        if wanted:  # only the evaluations it asked for move the objective (a run extended later
                            m.update(self.objective.observe_eval(step + 1, result))  # continues exactly)
                        after = result if last else after
                    if self.objective is not None:
                        m.update(self.objective.state_metrics())
                    m.update(self._fault_metrics())
                    saved = bool(last or (cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0) or self._stop_signal)
                    if saved:  # before the metrics row: a row is never logged for a step a restart would redo
                        self._save(step + 1)
                except LearnerLost as exc:
                    step = self._recover_learners(exc)
                    continue
                self.metrics.log(step + 1, m)
                eta = (time.time() - t_loop) / done * (cfg.trainer.max_steps - step - 1)
                if (step + 1) % cfg.trainer.log_every == 0:
                    log.info("step %d/%d | %s | %.1fs/step | ETA %s", step + 1, cfg.trainer.max_steps, self._progress(m),
                             m.get("timing/step", 0.0), _hms(eta))
                if self._stop_signal and not last:
                    if not saved:  # the signal came while the row was being logged
                        self._save(step + 1)
                    raise StopRequested(f"stopped by {signal.Signals(self._stop_signal).name} after step {step + 1}; "
                                        f"checkpoint written to {self.ckpt_dir}; continue with --resume")
                step += 1
            adapters = self.learners.all_adapters(self._train_adapter())  # data-parallel ranks must hold identical adapters
            self.rank_max_abs_diff = max((float(abs(a[k] - adapters[0][k]).max()) for a in adapters[1:] for k in a), default=0.0)
            plot = plot_curves(self.metrics.path, self.run_dir / "plots" / "reward_curves.png", self.PANELS)
            # weights / multipliers / thresholds / hypervolume against step, when the objective has state
            plot_curves(self.metrics.path, self.run_dir / "plots" / "objective.png", OBJECTIVE_PANELS)
            if before and after:  # accuracy, length, length of wrong answers, NoThinking rate per level
                plot_levels({"before": before, "after": after}, self.run_dir / "plots" / "levels.png",
                            LEVEL_METRICS + ("length_wrong",), title=f"{cfg.algorithm.name}: {self.run_dir.name}")
            return self._summary(before, after, plot)
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
            if getattr(self, "_cluster_lost", False):
                pass  # nothing to shut down: talking to a dead cluster would only wait
            elif ray.is_initialized() and getattr(self, "_owns_ray", True):
                ray.shutdown()
            elif ray.is_initialized():  # a trial in a shared cluster: free its actors
                self._release_actors()

    def _summary(self, before, after, plot) -> dict:
        last = list_checkpoints(self.ckpt_dir)[-1]
        lines = ["", f"run directory: {self.run_dir}", f"adapter: {last / 'adapter'}",
                 f"learner ranks agree: max |adapter difference| = {self.rank_max_abs_diff:.3g}"]
        if plot:
            lines.append(f"plots: {plot}")
        if after:
            lines.append(format_eval(before, after))
        log.info("\n".join(lines))
        return {"before": before, "after": after, "adapter": str(last / "adapter"), "plot": str(plot) if plot else None,
                "rank_max_abs_diff": self.rank_max_abs_diff}


def _adaptthink_metrics(rewards: np.ndarray, ref: np.ndarray, nothink: np.ndarray, levels: np.ndarray) -> dict[str, float]:
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


def _fill_group_mean(r: np.ndarray, invalid: np.ndarray, group_size: int) -> np.ndarray:
    """``r`` with each invalid entry replaced by the mean of its group's valid ones (0 if none)."""
    if not invalid.any():
        return r
    g, bad = r.reshape(-1, group_size).copy(), invalid.reshape(-1, group_size)
    for row, b in zip(g, bad):
        row[b] = row[~b].mean() if (~b).any() else 0.0
    return g.reshape(-1)


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
