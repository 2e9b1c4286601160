"""Pair methods on the same actors as GRPO (``algorithm.name: dpo | simpo``; ``reward_model`` in
``align.algorithms.reward_model`` builds on it).

- Offline: pairs from preference data in TRL's formats; reference log-probs (adapter off) computed
  once for the pairs the run will draw, or in every step; length-bucketed micro-batches of pairs.
- Online (``preference.online``): the rollout workers sample ``num_completions`` per prompt with
  the current adapter, the rewards rank them, best versus worst form a pair (ties dropped), a step
  follows and the adapter syncs back.
- Modules: one LoRA module, or OFS-DPO's fast and slow modules chasing (``preference.ofs.enabled``):
  a strategy object the method holds (``align.algorithms.ofs``: ``OneModule`` / ``FastSlow``).
- Domains (``preference.domains``): the method wrapped in COFS-DPO's schedule over domains
  (``align.algorithms.cofs.DomainSchedule``).

The loss is a row of ``align.losses.PAIR_LOSSES`` (sigmoid, ipo, hinge, simpo, bradley_terry); the
learner looks it up by name.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from align.algorithms.base import Algorithm, RunContext, register_algorithm, reward_metrics, sampling_kwargs
from align.algorithms.ofs import FastSlow, OneModule
from align.data.sampling import PromptSampler, sample_seed
from align.rollout.batch import pack
from align.workers.learner.kinds import PairLossConfig
from rewards.model import sequence_ids

log = logging.getLogger("align.train")

PREFERENCE_PANELS = (
    ("DPO loss", lambda k: k in ("dpo/loss", "ofs/dpo_fast", "ofs/dpo_slow", "ofs/fs", "eval/pairs_loss")),
    (
        "implicit rewards",
        lambda k: k in ("dpo/rewards_chosen", "dpo/rewards_rejected", "dpo/margin", "eval/pairs_margin"),
    ),
    (
        "preference accuracy",
        lambda k: (
            k in ("dpo/accuracy", "eval/pairs_accuracy", "eval/pairs_logp_accuracy", "ofs/slow_accuracy")
        ),
    ),
    (
        "eval (greedy)",
        lambda k: (
            k.startswith("eval/")
            and "/level_" not in k
            and not k.startswith("eval/pairs")
            and not k.startswith("eval/length")
            and not k.startswith("eval/nothink")
        ),
    ),
    (
        "train reward (online)",
        lambda k: k.startswith("reward/") and "/skipped/" not in k and "/retries/" not in k,
    ),
)


def tokenize_pair(tokenizer, prompt: str, chosen: str, rejected: str, templated: bool = False) -> dict:
    """Token ids as TRL's DPOTrainer builds them (``rewards.model.sequence_ids`` for each side)."""
    p, c = sequence_ids(tokenizer, prompt, chosen, templated)
    p2, r = sequence_ids(tokenizer, prompt, rejected, templated)
    n = min(len(p), len(p2))  # each side splits where its prompt and prompt+response diverge (TRL's min)
    return {"prompt_ids": p[:n], "chosen_ids": p[n:] + c, "rejected_ids": p2[n:] + r}


def tokenize_row(tokenizer, row: dict) -> dict:
    """``tokenize_pair`` of a loaded preference row (templated when it was conversational)."""
    return tokenize_pair(
        tokenizer, row["prompt"], row["chosen"], row["rejected"], templated="prompt_messages" in row
    )


def pack_pairs(pairs: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows 2i (chosen) and 2i+1 (rejected) of pair i, right-padded (see ``align.rollout.batch.pack``)."""
    samples = []
    for p in pairs:
        samples.append({"prompt_ids": p["prompt_ids"], "completion_ids": p["chosen_ids"]})
        samples.append({"prompt_ids": p["prompt_ids"], "completion_ids": p["rejected_ids"]})
    batch = pack(samples, pad_id)
    return {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}


def best_worst_pairs(rewards: np.ndarray, valid: np.ndarray, k: int) -> tuple[list[tuple[int, int]], int]:
    """Online DPO pairs: per group of ``k`` samples, (index of the best, index of the worst) among
    the valid ones (first occurrence on ties within the best or the worst); a group whose valid
    rewards are all equal, or with fewer than 2 valid samples, gives no pair. Returns the pairs and
    the number of groups dropped."""
    pairs, dropped = [], 0
    for g in range(len(rewards) // k):
        idx = [g * k + j for j in range(k) if valid[g * k + j]]
        if len(idx) < 2:
            dropped += 1
            continue
        r = rewards[idx]
        hi, lo = idx[int(np.argmax(r))], idx[int(np.argmin(r))]
        if rewards[hi] == rewards[lo]:
            dropped += 1
            continue
        pairs.append((hi, lo))
    return pairs, dropped


@register_algorithm("dpo", "simpo")
def pair_method(cfg) -> Algorithm:
    """The DPO family: a ``PairMethod``, inside COFS-DPO's domain schedule when it has domains."""
    method = PairMethod(cfg)
    if cfg.algorithm.preference.domains:
        from align.algorithms.cofs import DomainSchedule

        return DomainSchedule(method)
    return method


class PairMethod(Algorithm):
    panels = PREFERENCE_PANELS
    prefix = "dpo"  # metric namespace of the training statistics

    def __init__(self, cfg):
        super().__init__(cfg)
        self.pref = cfg.algorithm.preference
        self.modules = FastSlow(self.pref.ofs, cfg.learner.lr) if self.pref.ofs.enabled else OneModule()
        self.adapter_modules = self.modules.names
        # rewards score generations only: online pairs, generation eval (a domain schedule sets it)
        self.generates = self.pref.online or self.pref.generate_eval
        self.ref_cache: dict[int, tuple[float, float]] = {}
        self.data_skipped: dict[str, int] = {}
        self.eval_pair_rows: list[dict] = []
        self.eval_pairs: list[dict] = []
        self._precompute_seconds = 0.0

    def loss_name(self) -> str:
        return self.cfg.algorithm.pair_loss

    def loss_cfg(self):
        pref = self.pref
        return PairLossConfig(
            loss=self.loss_name(),
            beta=pref.beta,
            gamma=pref.gamma,
            label_smoothing=pref.label_smoothing,
            **self.modules.loss_fields(),
        )

    # ---------------------------------------------------------------- data and actors
    def train_data(self, ctx: RunContext, source: str) -> list[dict]:
        from align.data.loading import load_preferences, load_prompts

        if self.pref.online:
            return ctx.checked(load_prompts(source, ctx.tokenizer, ctx.config_dir), source)
        rows = load_preferences(
            source, ctx.tokenizer, ctx.config_dir, on_bad=self.cfg.data.bad_rows, skipped=self.data_skipped
        )
        return ctx.checked(rows, source)

    def eval_data(self, ctx: RunContext, source: str | None) -> list[dict]:
        from align.data.loading import load_eval_rows

        return ctx.checked(load_eval_rows(source, ctx.tokenizer, ctx.config_dir), source) if source else []

    def load_data(self, ctx: RunContext) -> None:
        cfg = self.cfg
        ctx.train_rows = self.train_data(ctx, cfg.data.train)
        ctx.eval_rows = self.eval_data(ctx, cfg.data.eval)[: cfg.data.eval_size]
        self.warn_skipped()
        # held-out pairs for the pair metrics: eval rows that are preference rows
        pair_rows = [r for r in ctx.eval_rows if "chosen" in r and "rejected" in r]
        self.eval_pair_rows = pair_rows[: self.pref.eval_pairs]
        self.eval_pairs = [tokenize_row(ctx.tokenizer, r) for r in self.eval_pair_rows]
        if not self.generates:
            ctx.eval_rows = ctx.eval_rows if self.eval_pairs else []

    def warn_skipped(self) -> None:
        if self.data_skipped:
            log.warning(
                "preference data: skipped %s rows (data.bad_rows: skip): %s",
                sum(self.data_skipped.values()),
                self.data_skipped,
            )

    @property
    def uses_rewards(self) -> bool:  # rewards score generations only (online pairs, generation eval)
        return self.generates

    def learner_spec(self, ctx: RunContext, spec):
        spec.lora_modules = self.modules.names
        return spec

    def rollout_spec(self, ctx: RunContext, spec):
        if not self.generates:
            return None
        if not self.pref.online:
            spec.max_model_len = max(spec.max_model_len, self.longest_pair(ctx, ctx.train_rows) + 8)
        return spec

    def longest_pair(self, ctx: RunContext, rows: list[dict]) -> int:
        """Tokens of the longest prompt + response among the first 2000 preference rows."""
        return max(
            len(ctx.tokenizer(r["prompt"] + max(r["chosen"], r["rejected"], key=len))["input_ids"])
            for r in rows[:2000]
        )

    def setup(self, ctx: RunContext, precompute: bool = True) -> None:
        self.modules.setup(ctx)
        if precompute and self.precomputes_reference():
            with ctx.clock.phase("reference log-probs"):
                self.precompute_reference(ctx, ctx.train_rows, ctx.sampler, self.cfg.trainer.max_steps)

    def pairs_of(self, ctx: RunContext, rows: list[dict], idx: list[int]) -> list[dict]:
        """Token ids of rows ``idx`` (tokenized once); a pair longer than the model's context is an
        error naming the row (TRL would truncate it silently)."""
        out = []
        for i in idx:
            r = rows[i]
            if "_ids" not in r:
                r["_ids"] = tokenize_row(ctx.tokenizer, r)
                longest = len(r["_ids"]["prompt_ids"]) + max(
                    len(r["_ids"]["chosen_ids"]), len(r["_ids"]["rejected_ids"])
                )
                if longest > ctx.context_length:
                    raise ValueError(
                        f"training data row {i}: prompt + response is {longest} tokens, more than the model's "
                        f"context ({ctx.context_length}); shorten or drop it"
                    )
            out.append(r["_ids"])
        return out

    def precomputes_reference(self) -> bool:
        """Offline with ``reference: precompute`` and a loss that reads the reference (not SimPO's)."""
        from align.losses import PAIR_LOSSES

        return (
            PAIR_LOSSES[self.loss_name()].reference
            and self.pref.reference == "precompute"
            and not self.pref.online
        )

    def precompute_reference(
        self, ctx: RunContext, rows: list[dict], sampler: PromptSampler, steps: int
    ) -> None:
        """Reference log-prob sums (adapter off) of every pair the run will draw, computed once, one
        batch per step's new pairs: a pair's value depends on the batch it was computed in (padding,
        at float precision), so batches are fixed by the step order and a longer or resumed run
        computes the same values for the same steps."""
        probe = PromptSampler(len(rows), sampler.seed, 0)
        t0, done = time.time(), 0
        for step in range(steps):
            idx = [i for i in dict.fromkeys(probe.take(self.pref.pairs_per_step)) if i not in self.ref_cache]
            if idx:
                batch = pack_pairs(self.pairs_of(ctx, rows, idx), ctx.tokenizer.pad_token_id)
                ref = ctx.learners.sequence_logps(batch, ["reference"])["reference"]
                for j, i in enumerate(idx):
                    self.ref_cache[i] = (float(ref[2 * j]), float(ref[2 * j + 1]))
                done += len(idx)
            if (step + 1) % 50 == 0 or step + 1 == steps:
                eta = (time.time() - t0) / (step + 1) * (steps - step - 1)
                log.info(
                    "reference log-probs: %d pairs for %d/%d steps (%.1fs, ETA %.0fs)",
                    done,
                    step + 1,
                    steps,
                    time.time() - t0,
                    eta,
                )
        self._precompute_seconds += time.time() - t0

    def progress(self, m: dict) -> str:
        p = self.prefix
        parts = [
            f"loss {m.get(f'{p}/loss', float('nan')):.4f}",
            f"acc {m.get(f'{p}/accuracy', float('nan')):.2f}",
            f"margin {m.get(f'{p}/margin', float('nan')):.4f}",
        ]
        if "reward/total" in m:
            parts.append(f"reward {m['reward/total']:.3f} ({m.get('online/pairs', 0)} pairs)")
        if "ofs/dpo_fast" in m:
            parts.append(
                f"fast/slow {m['ofs/dpo_fast']:.4f}/{m['ofs/dpo_slow']:.4f} fs {m['ofs/fs']:.4f} swaps {m['ofs/swaps']}"
            )
        if "eval/pairs_accuracy" in m and p != "dpo":
            parts.append(f"eval acc {m['eval/pairs_accuracy']:.3f}")
        return " | ".join(parts)

    # ---------------------------------------------------------------- adapters and state
    def train_adapter(self) -> str:
        return self.modules.train_adapter()

    def fast_adapter(self) -> str:
        return self.modules.fast_adapter()

    def extra_adapters(self, ctx: RunContext) -> dict:
        return self.modules.extra_adapters(ctx)  # the modules step_N/adapter alone does not hold

    def state_dict(self) -> dict:
        return {"chase": self.modules.state_dict()}

    def restore(self, ctx: RunContext, ckpt: dict) -> None:
        self.modules.restore(ctx, ckpt)

    # ---------------------------------------------------------------- evaluation
    def pair_metrics(self, ctx: RunContext) -> dict[str, float]:
        """Loss, accuracy and margin of the served adapter on held-out pairs, and ``pairs_logp_accuracy``:
        the share of pairs whose chosen response the policy itself finds likelier (summed log-probs;
        before training, the base model's own preference, which the DPO accuracy cannot show: its
        implicit rewards are all 0 then)."""
        if not self.eval_pairs:
            return {}
        from align.losses import PAIR_LOSSES

        batch = pack_pairs(self.eval_pairs, ctx.tokenizer.pad_token_id)
        lp = ctx.learners.sequence_logps(batch, [self.train_adapter(), "reference"])
        spec, counts = PAIR_LOSSES[self.loss_name()], batch["completion_mask"].sum(dim=1).clamp(min=1)
        pol, ref = (
            (lp[self.train_adapter()] / counts, lp["reference"] / counts)
            if spec.average
            else (lp[self.train_adapter()], lp["reference"])
        )
        losses, cr, rr = spec.fn(pol[0::2], pol[1::2], ref[0::2], ref[1::2], self.loss_cfg())
        summed = lp[
            self.train_adapter()
        ]  # the policy's summed log-probs (pol may be length-normalised above)
        return {
            "pairs_loss": float(losses.mean()),
            "pairs_accuracy": float((cr > rr).float().mean()),
            "pairs_margin": float((cr - rr).mean()),
            "pairs_logp_accuracy": float((summed[0::2] > summed[1::2]).float().mean()),
        }

    def evaluate(self, ctx: RunContext) -> dict[str, float]:
        from align.eval.loop import evaluate

        out = self.pair_metrics(ctx)
        if ctx.rollouts is not None and ctx.eval_rows:
            out.update(evaluate(ctx.rollouts, ctx.rewards, ctx.eval_rows, ctx.tokenizer, self.cfg))
        return out

    # ---------------------------------------------------------------- one step
    def pack(self, ctx: RunContext, rows: list[dict], idx: list[int]) -> dict:
        """The pairs ``rows[idx]`` as one batch (rows 2i chosen, 2i+1 rejected)."""
        return pack_pairs(self.pairs_of(ctx, rows, idx), ctx.tokenizer.pad_token_id)

    def offline_batch(self, ctx: RunContext, metrics: dict) -> dict:
        idx = ctx.sampler.take(self.pref.pairs_per_step)
        batch = self.pack(ctx, ctx.train_rows, idx)
        if self.ref_cache and all(i in self.ref_cache for i in idx):
            batch["ref_seq_logps"] = torch.tensor(
                [v for i in idx for v in self.ref_cache[i]], dtype=torch.float32
            )
        metrics[f"{self.prefix}/pairs"] = len(idx)
        return batch

    def rollout_kwargs(self, num_prompts: int) -> dict:
        return sampling_kwargs(self.cfg, self.pref.num_completions, 0)

    def online_batch(self, ctx: RunContext, step: int, metrics: dict) -> dict | None:
        """Online DPO's pairs: best vs worst of k samples per prompt. Asynchronous (``ctx.queue``): the
        samples come from an earlier adapter version; the loss needs no sampling log-probs (its
        reference is the base model), so only the data's freshness changes."""
        cfg, k = self.cfg, self.pref.num_completions
        if ctx.queue is not None:
            rows, groups, _, timings = ctx.queue.take(step)
            metrics.update(timings)
        else:
            rows = [ctx.train_rows[i] for i in ctx.sampler.take(cfg.data.prompts_per_step)]
            t0 = time.time()
            groups = ctx.rollouts.generate(
                [r["prompt"] for r in rows],
                [sample_seed(cfg.trainer.seed, step, 0, j) for j in range(len(rows))],
                **self.rollout_kwargs(len(rows)),
            )
            metrics["timing/rollout"] = time.time() - t0
        samples = [s for g in groups for s in g]
        t0 = time.time()
        scores = ctx.score([r for r in rows for _ in range(k)], samples)
        metrics["timing/reward"] = time.time() - t0
        rewards = ctx.objective_for(scores).shape(scores.scores, {"group_size": k}).rewards
        valid = ~scores.dropped & np.isfinite(rewards)
        chosen_rejected, dropped = best_worst_pairs(rewards, valid, k)
        metrics.update(reward_metrics(ctx.objective.names, scores.scores))
        metrics.update(
            {
                "reward/total": float(np.nanmean(rewards)),
                "online/pairs": len(chosen_rejected),
                "online/groups_dropped": dropped,
                "rollout/length": float(np.mean([len(s["completion_ids"]) for s in samples])),
            }
        )
        for key, n in scores.skipped_by.items():
            metrics[f"reward/skipped/{key}"] = n
        metrics.update(scores.stats)  # reward/retries/<name>
        if not chosen_rejected:
            return None
        metrics["online/reward_chosen"] = float(np.mean([rewards[c] for c, _ in chosen_rejected]))
        metrics["online/reward_rejected"] = float(np.mean([rewards[r] for _, r in chosen_rejected]))
        pairs = [
            {
                "prompt_ids": samples[c]["prompt_ids"],
                "chosen_ids": samples[c]["completion_ids"],
                "rejected_ids": samples[r]["completion_ids"],
            }
            for c, r in chosen_rejected
        ]
        return pack_pairs(pairs, ctx.tokenizer.pad_token_id)

    def step_metrics(self, stats: dict) -> dict[str, float]:
        """The learner's summed statistics as per-pair means in this method's namespace."""
        n, p = max(stats["pairs"], 1.0), self.prefix
        return {
            f"{p}/loss": stats["loss"] / n,
            f"{p}/accuracy": stats["accuracy"] / n,
            f"{p}/margin": stats["margin"] / n,
            f"{p}/rewards_chosen": stats["chosen_rewards"] / n,
            f"{p}/rewards_rejected": stats["rejected_rewards"] / n,
            f"{p}/logps_chosen": stats["chosen_logps"] / n,
            f"{p}/logps_rejected": stats["rejected_logps"] / n,
            "loss/grad_norm": stats["grad_norm"],
            "timing/learner_compute": stats["seconds"],
            **{k: v for k, v in stats.items() if k.startswith("memory/")},  # summed over the ranks
        }

    def step(self, ctx: RunContext, step: int) -> dict[str, float]:
        metrics: dict = {}
        batch = (
            self.online_batch(ctx, step, metrics) if self.pref.online else self.offline_batch(ctx, metrics)
        )
        if batch is not None:
            t0 = time.time()
            stats = ctx.learners.train_step(batch, self.loss_cfg())
            metrics["timing/learner"] = time.time() - t0
            metrics.update(self.step_metrics(stats))
            self.modules.after_step(ctx, stats, metrics)
        else:
            metrics["online/empty"] = 1
        if self._precompute_seconds:  # logged once, with the next step
            metrics["timing/reference_precompute"] = self._precompute_seconds
            self._precompute_seconds = 0.0
        for reason, count in self.data_skipped.items():
            metrics[f"data/skipped/{reason}"] = count
        return metrics
