"""The GRPO family (grpo, dr_grpo, dapo, rloo, reinforce_pp, gspo, cispo) as one algorithm whose
variants are data: ``align.algorithms.family.GRPO_FAMILY`` gives each name its advantage estimator (a row
of ``ESTIMATORS``), loss aggregation, clip range and policy loss (a row of
``align.losses.POLICY_LOSSES``); DAPO's dynamic sampling and overlong filter are switches.

One step, in labelled phases: sample (G completions per prompt on the rollout workers), score (the
rewards, running while the learners compute log-probs), log-probs (reference / old policy, the
vLLM-vs-learner parity check, the train/inference mismatch weights), shape (the objective: one reward
or advantage per sample), advantage (the estimator; hooks such as APO adjust it), update
(``ppo_epochs x num_minibatches`` optimizer steps); the runner then syncs the adapter.
AdaptThink (``align.algorithms.adaptthink``) overrides sampling and advantages; PPO
(``align.algorithms.ppo``) overrides ``before_scores`` (the critic's values), ``advantages`` (GAE per
token) and ``train_minibatch`` (the critic's step before the policy's).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from align.algorithms.apo import APOHook, correct_from_raw
from align.algorithms.base import Algorithm, RunContext, register_algorithm, reward_metrics, sampling_kwargs
from align.algorithms.family import GRPO_FAMILY, GRPO_NAMES
from align.data.sampling import sample_seed
from align.losses import group_advantages, mismatch_weights, reinforce_pp_advantages, rloo_advantages
from align.reporting.metrics import PANELS
from align.rollout.batch import pack
from align.workers.learner.kinds import PolicyLossConfig

ESTIMATORS = {
    "group_std": lambda r, g: group_advantages(r, g, normalize="std"),
    "group_none": lambda r, g: group_advantages(r, g, normalize="none"),
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "naive": lambda r, g: (
        r.clone()
    ),  # AdaptThink: the shaped reward is the advantage (its baseline is inside)
}


def compute_advantages(estimator: str, rewards: np.ndarray, group_size: int) -> np.ndarray:
    """Advantages ``(N,)`` for rewards laid out group by group."""
    return ESTIMATORS[estimator](torch.as_tensor(rewards, dtype=torch.float64), group_size).numpy()


def informative_groups(rewards: np.ndarray, group_size: int, tol: float = 1e-9) -> np.ndarray:
    """DAPO dynamic sampling: True for groups whose rewards are not all equal, ``(N / G,)``."""
    g = rewards.reshape(-1, group_size)
    return (g.max(axis=1) - g.min(axis=1)) > tol


def fill_group_mean(r: np.ndarray, invalid: np.ndarray, group_size: int) -> np.ndarray:
    """``r`` with each invalid entry replaced by the mean of its group's valid ones (0 if none)."""
    if not invalid.any():
        return r
    g, bad = r.reshape(-1, group_size).copy(), invalid.reshape(-1, group_size)
    for row, b in zip(g, bad):
        row[b] = row[~b].mean() if (~b).any() else 0.0
    return g.reshape(-1)


# what the learner reads of a step's batch
LEARNER_KEYS = (
    "input_ids",
    "attention_mask",
    "completion_mask",
    "advantages",
    "old_logps",
    "ref_logps",
    "kl_weight",
    "behaviour_logps",
    "behaviour_mask",
    "is_weights",
)


@register_algorithm(*GRPO_NAMES)  # every row of GRPO_FAMILY but adaptthink and ppo (their own files)
class GRPO(Algorithm):
    panels = PANELS
    learner_keys = LEARNER_KEYS  # what a minibatch sends to the learners
    # the objective may mix per-objective advantages itself (Lagrangian, GDPO), and the KL reward is
    # one number per sample; PPO (per-token advantages from a critic) takes neither
    objective_advantages = True

    def __init__(self, cfg):
        super().__init__(cfg)
        alg = cfg.algorithm
        self.estimator = GRPO_FAMILY[alg.name].estimator
        self.hooks = [h for h in (APOHook.from_config(alg.apo),) if h is not None]
        self.loss_cfg = PolicyLossConfig(
            loss=alg.loss,
            temperature=cfg.rollout.temperature,
            clip_low=alg.clip_low,
            clip_high=alg.clip_high,
            agg=alg.loss_agg,
            kl_coef=alg.kl.coef,
            kl_in_loss=alg.kl.where == "loss",
            kl_estimator=alg.kl.estimator,
            max_len=cfg.rollout.max_new_tokens,
        )

    def progress(self, m: dict) -> str:
        rewards = " ".join(
            f"{k[7:]} {v:.3f}" for k, v in m.items() if k.startswith("reward/") and k != "reward/total"
        )
        return (
            f"reward {m.get('reward/total', float('nan')):.3f} | {rewards} | kl {m.get('kl/mean', m.get('loss/kl', 0.0)):.4f} | "
            f"len {m.get('rollout/length', 0.0):.1f}"
        )

    # ---------------------------------------------------------------- sample
    def logprob_prompts(self, n: int) -> int:
        """Prompts (of ``n``) whose vLLM sampling log-probs come back: all of them for the mismatch
        correction, else the few of the parity check."""
        cfg = self.cfg
        every = cfg.algorithm.mismatch.level != "off" or (
            cfg.rollout.max_staleness and cfg.rollout.behaviour_logps == "rollout"
        )
        return n if every else cfg.rollout.logprob_check_prompts

    def rollout_kwargs(self, num_prompts: int) -> dict:
        """How a batch of ``num_prompts`` prompts is sampled (``RolloutGroup.generate``'s keywords)."""
        return sampling_kwargs(self.cfg, self.cfg.algorithm.group_size, self.logprob_prompts(num_prompts))

    def generate(self, ctx: RunContext, prompts: list[str], seeds: list[int]) -> list[list[dict]]:
        return ctx.rollouts.generate(prompts, seeds, **self.rollout_kwargs(len(prompts)))

    def sample(self, ctx: RunContext, step: int):
        """Sample prompts and G completions each, and send them to the rewards. Returns the rows, the
        samples, a function giving ``(scores, dropped)`` and the stats. Without dynamic sampling the
        rewards run while the caller goes on (the learners' log-prob pass needs no reward): the function
        waits for them. With dynamic sampling each round's rewards decide which groups to keep."""
        cfg, G = self.cfg, self.cfg.algorithm.group_size
        want = cfg.data.prompts_per_step
        kept_rows, kept_samples, kept_scores, stats = (
            [],
            [],
            [],
            {"rollout/rounds": 0, "rollout/groups_dropped": 0},
        )
        t_roll = 0.0

        def scored(pending, t_submit: float):
            t0 = time.time()
            scores = ctx.rewards.result(pending)
            stats["timing/reward_wait"] = stats.get("timing/reward_wait", 0.0) + time.time() - t0
            stats["timing/reward"] = stats.get("timing/reward", 0.0) + time.time() - t_submit
            ctx.objective_for(scores)
            for key, n in [
                *((f"reward/skipped/{k}", n) for k, n in scores.skipped_by.items()),
                *scores.stats.items(),
            ]:
                stats[key] = stats.get(key, 0) + n
            return scores

        for rnd in range(cfg.algorithm.max_sampling_rounds if cfg.algorithm.dynamic_sampling else 1):
            need = want - len(kept_rows)
            if rnd == 0 and ctx.queue is not None:  # asynchronous: sampled while earlier steps trained
                rows, groups, version, timings = ctx.queue.take(step)
                stats.update(timings)
            else:
                rows, version = [ctx.train_rows[i] for i in ctx.sampler.take(need)], step
                t0 = time.time()
                groups = self.generate(
                    ctx,
                    [r["prompt"] for r in rows],
                    [sample_seed(cfg.trainer.seed, step, rnd, j) for j in range(need)],
                )
                t_roll += time.time() - t0
            samples = [s for g in groups for s in g]
            for s in samples:  # the adapter version that sampled it (asynchronous: an earlier one)
                s["version"] = version
            t_submit = time.time()
            pending = ctx.score([r for r in rows for _ in range(G)], samples, wait=False)
            stats["rollout/rounds"] += 1
            if not cfg.algorithm.dynamic_sampling:
                stats.update(
                    {"timing/rollout": stats.get("timing/rollout", t_roll), "rollout/prompts": len(rows)}
                )

                def resolve(pending=pending, t_submit=t_submit) -> tuple[np.ndarray, np.ndarray]:
                    scores = scored(pending, t_submit)
                    return scores.scores, scores.dropped

                return rows, samples, resolve, stats
            scores = scored(pending, t_submit)
            keep = informative_groups(ctx.objective.shape(scores.scores, {"group_size": G}).rewards, G)
            stats["rollout/groups_dropped"] += int((~keep).sum())
            for j in np.flatnonzero(keep):
                kept_rows.append(rows[j])
                kept_samples.extend(samples[j * G : (j + 1) * G])
                kept_scores.append((scores.scores[j * G : (j + 1) * G], scores.dropped[j * G : (j + 1) * G]))
            if len(kept_rows) >= want:
                break
        if not kept_rows:  # every group was uninformative in every round: train on nothing, say so
            stats["rollout/empty"] = 1
        stats["timing/rollout"] = stats.get("timing/rollout", 0.0) + t_roll
        stats["rollout/prompts"] = len(kept_rows)
        if ctx.queue is not None and kept_samples:  # refill rounds sample from the current version
            versions = np.array([s["version"] for s in kept_samples])
            stats["rollout/staleness"] = float(np.mean(step - versions))
            stats["rollout/staleness_max"] = float(np.max(step - versions))
        scores = (
            np.concatenate([s for s, _ in kept_scores])
            if kept_scores
            else np.zeros((0, len(ctx.objective.names)))
        )
        dropped = np.concatenate([d for _, d in kept_scores]) if kept_scores else np.zeros(0, dtype=bool)
        return kept_rows, kept_samples, lambda: (scores, dropped), stats

    # ---------------------------------------------------------------- log-probs
    def logprobs(
        self, ctx: RunContext, batch: dict, metrics: dict, step: int = 0, versions: np.ndarray | None = None
    ) -> None:
        """Learner log-probs into ``batch``: reference (adapter off) for KL; the sampling policy (old)
        when the update is off-policy (several epochs/minibatches, or a batch sampled by an earlier
        adapter version: asynchronous training), KL goes into the reward, or the mismatch correction
        needs it; then the parity check and the mismatch weights. ``versions`` ``(b,)``: the adapter
        version that sampled each row (None: the current one, ``step``)."""
        alg, cfg = self.cfg.algorithm, self.cfg
        t0 = time.time()
        need_ref = alg.kl.coef > 0
        stale = versions is not None and bool((versions != step).any())
        need_old = (
            alg.ppo_epochs * alg.num_minibatches > 1
            or (need_ref and alg.kl.where == "reward")
            or alg.mismatch.level != "off"
            or stale  # asynchronous: the ratio is taken against the version that sampled the batch
        )
        from_rollout = ctx.queue is not None and cfg.rollout.behaviour_logps == "rollout"
        if from_rollout:  # vLLM's sampling log-probs are the behaviour policy's: no learner pass
            if need_ref:
                batch.update(ctx.learners.compute_logprobs(batch, cfg.rollout.temperature, True, False))
            batch["old_logps"] = batch["rollout_logps"] * batch["rollout_logp_mask"]
        elif stale:
            batch.update(
                ctx.queue.behaviour_logprobs(batch, versions, step, cfg.rollout.temperature, need_ref)
            )
        elif need_ref or need_old:
            batch.update(
                ctx.learners.compute_logprobs(
                    batch, cfg.rollout.temperature, reference=need_ref, policy=need_old
                )
            )
        check = torch.nonzero(batch["has_rollout_logps"]).flatten()  # parity: vLLM vs learner on these rows
        if from_rollout:  # every row has them: the learner checks the first prompts', under their versions
            check = check[: cfg.rollout.logprob_check_prompts * alg.group_size]
        if len(check):
            sub = {k: v[check] for k, v in batch.items()}
            if from_rollout:
                learner_lp = ctx.queue.behaviour_logprobs(
                    sub, versions[check.numpy()], step, cfg.rollout.temperature, False
                )["old_logps"]
            elif need_old:
                learner_lp = sub["old_logps"]
            else:
                learner_lp = ctx.learners.compute_logprobs(sub, cfg.rollout.temperature, False)["old_logps"]
            m = sub["rollout_logp_mask"]
            metrics["rollout/logprob_abs_diff"] = float(
                ((learner_lp - sub["rollout_logps"]).abs() * m).sum() / m.sum().clamp(min=1)
            )
        if alg.mismatch.level != "off":
            mm = alg.mismatch
            w, stats = mismatch_weights(
                batch["old_logps"],
                batch["rollout_logps"],
                batch["completion_mask"] * batch["rollout_logp_mask"],
                mm.level,
                mm.mode,
                mm.cap,
                mm.floor,
            )
            # tokens without a rollout log-prob (a forced first token) keep weight 1
            batch["is_weights"] = torch.where(batch["rollout_logp_mask"] > 0, w, torch.ones_like(w))
            metrics.update({"mismatch/ratio_mean": stats["ratio_mean"], "mismatch/outside": stats["outside"]})
        metrics["timing/logprobs"] = time.time() - t0

    # ---------------------------------------------------------------- advantage
    def group_advantages(self, r: np.ndarray, dropped: np.ndarray) -> np.ndarray:
        """Group advantages of rewards (N,) or (N, K), column by column; a skipped or NaN sample
        takes its group's mean (neutral in the baseline, advantage 0)."""
        G = self.cfg.algorithm.group_size
        r = np.asarray(r, dtype=np.float64)
        cols = r[:, None] if r.ndim == 1 else r
        out = np.stack(
            [
                compute_advantages(self.estimator, fill_group_mean(c, dropped | np.isnan(c), G), G)
                for c in cols.T
            ],
            axis=1,
        )
        return out[:, 0] if r.ndim == 1 else out

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
        """The advantage of each sample from its shaped reward and the KL reward (None: none);
        ``batch``: the step's learner tensors (PPO's per-token advantages read them)."""
        return self.group_advantages(rewards + (kl_reward if kl_reward is not None else 0.0), dropped)

    def before_scores(self, ctx: RunContext, batch: dict, metrics: dict) -> None:
        """After the log-prob pass, while the rewards may still run (PPO: the critic's values)."""

    def train_minibatch(self, ctx: RunContext, part: dict, step: int) -> dict[str, float]:
        """One optimizer step of the update on minibatch ``part``; its metrics."""
        return ctx.learners.train_step(part, self.loss_cfg)

    # ---------------------------------------------------------------- the step
    def step(self, ctx: RunContext, step: int) -> dict[str, float]:
        cfg, alg, G = self.cfg, self.cfg.algorithm, self.cfg.algorithm.group_size
        rows, samples, resolve, metrics = self.sample(ctx, step)
        if not samples:
            return metrics
        batch = pack(samples, ctx.tokenizer.pad_token_id)
        self.logprobs(ctx, batch, metrics, step, np.array([s["version"] for s in samples]))
        self.before_scores(ctx, batch, metrics)
        scores, dropped = resolve()  # the rewards ran during the log-prob pass (and PPO's values)
        objective = ctx.objective
        # -- shape: objectives -> one reward (or advantage) per sample, with KL in the reward if asked
        mask = batch["completion_mask"]
        lengths = np.array([len(s["completion_ids"]) for s in samples], dtype=np.float64)
        kl_reward = None
        if "ref_logps" in batch and "old_logps" in batch:
            kl_tok = (batch["old_logps"] - batch["ref_logps"]) * mask  # k1 per token
            metrics["kl/mean"] = float(kl_tok.sum() / mask.sum().clamp(min=1))
            if alg.kl.where == "reward" and self.objective_advantages:
                kl_reward = -alg.kl.coef * kl_tok.sum(dim=1).double().numpy()
        if dropped.any():  # nan_policy=skip: out of the loss (and neutral in its group's baseline, below)
            mask[torch.from_numpy(dropped)] = 0
        truncated = torch.tensor([s["truncated"] for s in samples])
        if alg.overlong_filter:
            mask[truncated] = 0

        def advantages(r: np.ndarray) -> np.ndarray:
            return self.group_advantages(r, dropped)

        def gradient_gram(adv: np.ndarray, param_pattern: str | None, clip: float | None) -> np.ndarray:
            part = {k: batch[k] for k in LEARNER_KEYS if k in batch and k != "advantages"}
            return ctx.learners.objective_gradients(part, adv, self.loss_cfg, param_pattern, clip)

        octx = {"group_size": G, "lengths": lengths, "step": step, "kl_reward": kl_reward}
        t0 = time.time()
        metrics.update(
            objective.before_update(
                scores, {**octx, "advantages": advantages, "gradient_gram": gradient_gram}
            )
        )
        metrics["timing/objective"] = time.time() - t0
        shaped = objective.shape(
            scores, {**octx, "advantages": advantages} if self.objective_advantages else octx
        )
        # -- advantage
        if shaped.advantages is not None and self.objective_advantages:  # mixed by the objective itself
            adv = np.asarray(shaped.advantages, dtype=np.float64)
        else:
            adv = self.advantages(ctx, rows, samples, shaped.rewards, kl_reward, dropped, metrics, batch)
        kl_weight = shaped.kl_weight
        for hook in self.hooks:  # APO: STCR scales advantages, DADS weights the KL per sample
            adv, kl_weight = hook.adjust(adv, kl_weight, scores, objective.names, lengths, G, metrics)
        batch["advantages"] = torch.from_numpy(adv).float()
        if kl_weight is not None:
            batch["kl_weight"] = torch.from_numpy(np.asarray(kl_weight)).float()
        # -- update: ppo_epochs x num_minibatches optimizer steps
        t0 = time.time()
        n = len(samples)
        order = (
            np.random.default_rng([cfg.trainer.seed, step]).permutation(n)
            if alg.num_minibatches > 1
            else np.arange(n)
        )
        learn_stats: list[dict] = []
        for _ in range(alg.ppo_epochs):
            for mb in np.array_split(order, alg.num_minibatches):
                part = {k: batch[k][torch.from_numpy(np.sort(mb))] for k in self.learner_keys if k in batch}
                learn_stats.append(self.train_minibatch(ctx, part, step))
        metrics["timing/learner"] = time.time() - t0
        metrics.update({k: float(np.mean([s[k] for s in learn_stats])) for k in learn_stats[0]})
        # -- metrics
        metrics.update(reward_metrics(objective.names, scores))
        metrics["reward/total"] = float(shaped.rewards.mean())
        metrics.update(shaped.metrics)
        metrics.update(objective.update(scores, octx))
        metrics["rollout/length"] = float(lengths.mean())
        accuracy = alg.apo.accuracy
        if accuracy in objective.names:  # APO's target: how long the wrong answers are
            wrong = ~correct_from_raw(scores[:, objective.names.index(accuracy)])
            if wrong.any():
                metrics["rollout/length_wrong"] = float(lengths[wrong].mean())
        metrics["rollout/truncated"] = float(truncated.float().mean())
        return metrics
