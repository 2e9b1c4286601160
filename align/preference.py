"""The controller of the DPO family (``algorithm.name: dpo | simpo``) on the same actors as GRPO.

- Offline: pairs from preference data in TRL's formats; reference log-probs (adapter off) computed
  once for the pairs the run will draw, or in every step; length-bucketed micro-batches of pairs.
- Online (``preference.online``): the rollout workers sample ``num_completions`` per prompt with
  the current adapter, the rewards rank them, best versus worst form a pair (ties dropped), a DPO
  step follows and the adapter syncs back.
- OFS-DPO (``preference.ofs.enabled``): two LoRA modules per learner rank, fast and slow, chasing
  (``align.algorithms.ofs``); both are checkpointed, one is served.
- Domains (``preference.domains``): training runs over the domains in order; with
  ``cofs.combine`` (COFS-DPO) the adapter served after each domain is the best (on held-out rows of
  every domain seen so far) linear combination of the previous one and this domain's fast module.

Same run directory, metrics, checkpoints, signals and ``--resume`` as the GRPO trainer.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import ray
import torch

from align.algorithms.ofs import Chase, combine_lora, truncate_lora
from align.batch import pack
from align.checkpoint import atomic_dir, save_checkpoint, write_adapter_dir
from align.evaluation_loop import evaluate
from align.losses.preference import dpo_loss, simpo_loss
from align.sampling import PromptSampler, sample_seed
from align.trainer import Trainer, check_context, learner_spec, rollout_spec
from rewards.model import sequence_ids
from align.config.loading import save_resolved

log = logging.getLogger("align.train")

MODULES = ("default", "second")  # OFS-DPO's two LoRA modules in each learner rank (peft adapter names)

PREFERENCE_PANELS = (
    ("DPO loss", lambda k: k in ("dpo/loss", "ofs/dpo_fast", "ofs/dpo_slow", "ofs/fs", "eval/pairs_loss")),
    ("implicit rewards", lambda k: k in ("dpo/rewards_chosen", "dpo/rewards_rejected", "dpo/margin", "eval/pairs_margin")),
    ("preference accuracy", lambda k: k in ("dpo/accuracy", "eval/pairs_accuracy", "eval/pairs_logp_accuracy", "ofs/slow_accuracy")),
    ("eval (greedy)", lambda k: k.startswith("eval/") and "/level_" not in k and not k.startswith("eval/pairs")
     and not k.startswith("eval/length") and not k.startswith("eval/nothink")),
    ("train reward (online)", lambda k: k.startswith("reward/") and "/skipped/" not in k and "/retries/" not in k),
)


def tokenize_pair(tokenizer, prompt: str, chosen: str, rejected: str, templated: bool = False) -> dict:
    """Token ids as TRL's DPOTrainer builds them (``rewards.model.sequence_ids`` for each side)."""
    p, c = sequence_ids(tokenizer, prompt, chosen, templated)
    p2, r = sequence_ids(tokenizer, prompt, rejected, templated)
    n = min(len(p), len(p2))  # each side splits where its prompt and prompt+response diverge (TRL's min)
    return {"prompt_ids": p[:n], "chosen_ids": p[n:] + c, "rejected_ids": p2[n:] + r}


def tokenize_row(tokenizer, row: dict) -> dict:
    """``tokenize_pair`` of a loaded preference row (templated when it was conversational)."""
    return tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"], templated="prompt_messages" in row)


def pack_pairs(pairs: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows 2i (chosen) and 2i+1 (rejected) of pair i, right-padded (see ``align.batch.pack``)."""
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


def _write_adapter_atomic(directory: Path, tensors: dict, config: dict) -> Path:
    with atomic_dir(directory) as tmp:
        write_adapter_dir(tmp, tensors, config)
    return directory


def _read_adapter(directory: Path) -> tuple[dict, dict]:
    from safetensors.numpy import load_file

    return load_file(str(directory / "adapter_model.safetensors")), json.loads((directory / "adapter_config.json").read_text())


class PreferenceTrainer(Trainer):
    PANELS = PREFERENCE_PANELS

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        from transformers import AutoTokenizer

        from align.data.loading import load_eval_rows, load_preferences, load_prompts
        from align.models.builtin import resolve_model_path

        cfg, pref = self.cfg, self.cfg.algorithm.preference
        self.pref = pref
        self.model_path = resolve_model_path(cfg.model.path)
        if not Path(self.model_path, "config.json").exists():
            raise FileNotFoundError(f"model.path {cfg.model.path!r}: no config.json in {self.model_path} (not a HF model directory)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        check_context(cfg, self.model_path)
        self.data_skipped: dict[str, int] = {}
        online = pref.online

        def train_data(source: str) -> list[dict]:
            if online:
                return self._checked(load_prompts(source, self.tokenizer, self.config_dir), source)
            rows = load_preferences(source, self.tokenizer, self.config_dir, on_bad=cfg.data.bad_rows, skipped=self.data_skipped)
            return self._checked(rows, source)

        def eval_data(source: str | None) -> list[dict]:
            return self._checked(load_eval_rows(source, self.tokenizer, self.config_dir), source) if source else []

        if pref.domains:  # every domain's data is checked before any actor starts
            self.domain_train = [train_data(d.train) for d in pref.domains]
            evals = [eval_data(d.eval) for d in pref.domains]
            for d, rows in zip(pref.domains, evals):
                if len(rows) <= pref.cofs.heldout:
                    raise ValueError(f"algorithm.preference.domains {d.name}: eval {d.eval!r} has {len(rows)} rows, "
                                     f"not more than cofs.heldout={pref.cofs.heldout}")
            self.domain_heldout = [rows[: pref.cofs.heldout] for rows in evals]
            self.domain_eval = [rows[pref.cofs.heldout : pref.cofs.heldout + cfg.data.eval_size] for rows in evals]
            self.train_rows, self.eval_rows = self.domain_train[0], self.domain_eval[0]
        else:
            self.train_rows = train_data(cfg.data.train)
            self.eval_rows = eval_data(cfg.data.eval)[: cfg.data.eval_size]
        if self.data_skipped:
            log.warning("preference data: skipped %s rows (data.bad_rows: skip): %s", sum(self.data_skipped.values()), self.data_skipped)
        # held-out pairs for the DPO metrics: eval rows that are preference rows
        pair_rows = [r for r in (self.eval_rows if not pref.domains else []) if "chosen" in r and "rejected" in r]
        self.eval_pair_rows = pair_rows[: pref.eval_pairs]
        self.eval_pairs = [tokenize_row(self.tokenizer, r) for r in self.eval_pair_rows]
        self.generate = online or bool(pref.domains) or pref.generate_eval
        if not self.generate:
            self.eval_rows = self.eval_rows if self.eval_pairs else []
        self._check_resumed_adapter()
        save_resolved(cfg, self.run_dir)
        rspec = None
        if self.generate:  # rewards score generations only (online pairs, generation eval)
            rspec = rollout_spec(cfg, self.model_path)
            rspec["lora_rank"] = cfg.model.lora.r * max(1, len(pref.domains))  # COFS combinations add ranks up
            rspec["max_model_len"] = max(rspec["max_model_len"], self._longest_pair() + 8)
        self.learners, self.rollouts, self.rewards = self._start_actors(self._learner_spec(), rspec, rewards=self.generate)
        self.objective = None
        self._objective_state = None
        self.chase = Chase(pref.ofs.swap_window) if pref.ofs.enabled else None
        self.domain = 0
        self.served: tuple[dict, dict] | None = None  # an adapter served instead of the learner's (a COFS combination)
        self.domain_results: list[dict] = []
        self.sampler = PromptSampler(len(self.train_rows), cfg.trainer.seed)
        self._ref_cache: dict[int, tuple[float, float]] = {}
        if self._precomputes_reference() and not pref.domains:  # domains precompute on entering each one
            with self.clock.phase("reference log-probs"):
                self._precompute_reference(self.train_rows, self.sampler, cfg.trainer.max_steps)

    def _learner_spec(self) -> dict:
        spec = learner_spec(self.cfg, self.model_path)
        if self.pref.ofs.enabled:
            spec["ofs"] = self.pref.ofs.model_dump()
        return spec

    def _longest_pair(self) -> int:
        if self.pref.online:
            return 0
        rows = [r for rows in (getattr(self, "domain_train", None) or [self.train_rows]) for r in rows]
        return max(len(self.tokenizer(r["prompt"] + max(r["chosen"], r["rejected"], key=len))["input_ids"]) for r in rows[:2000])

    def _pairs_of(self, rows: list[dict], idx: list[int]) -> list[dict]:
        """Token ids of rows ``idx`` (tokenized once); a pair longer than the model's context is an
        error naming the row (TRL would truncate it silently)."""
        if not hasattr(self, "_context"):
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(self.model_path, trust_remote_code=self.cfg.model.trust_remote_code)
            self._context = getattr(config, "max_position_embeddings", None) or 10**9
        out = []
        for i in idx:
            r = rows[i]
            if "_ids" not in r:
                r["_ids"] = tokenize_row(self.tokenizer, r)
                longest = len(r["_ids"]["prompt_ids"]) + max(len(r["_ids"]["chosen_ids"]), len(r["_ids"]["rejected_ids"]))
                if longest > self._context:
                    raise ValueError(f"training data row {i}: prompt + response is {longest} tokens, more than the model's "
                                     f"context ({self._context}); shorten or drop it")
            out.append(r["_ids"])
        return out

    def _precompute_reference(self, rows: list[dict], sampler: PromptSampler, steps: int) -> None:
        """Reference log-prob sums (adapter off) of every pair the run will draw, computed once, one
        batch per step's new pairs: a pair's value depends on the batch it was computed in (padding,
        at float precision), so batches are fixed by the step order and a longer or resumed run
        computes the same values for the same steps."""
        pref = self.pref
        probe = PromptSampler(len(rows), sampler.seed, 0)
        t0, done, total = time.time(), 0, steps
        for step in range(total):
            idx = [i for i in dict.fromkeys(probe.take(pref.pairs_per_step)) if i not in self._ref_cache]
            if idx:
                batch = pack_pairs(self._pairs_of(rows, idx), self.tokenizer.pad_token_id)
                ref = self.learners.sequence_logps(batch, ["reference"])["reference"]
                for j, i in enumerate(idx):
                    self._ref_cache[i] = (float(ref[2 * j]), float(ref[2 * j + 1]))
                done += len(idx)
            if (step + 1) % 50 == 0 or step + 1 == total:
                eta = (time.time() - t0) / (step + 1) * (total - step - 1)
                log.info("reference log-probs: %d pairs for %d/%d steps (%.1fs, ETA %.0fs)", done, step + 1, total, time.time() - t0, eta)
        self._precompute_seconds = getattr(self, "_precompute_seconds", 0.0) + time.time() - t0

    def _progress(self, m: dict) -> str:
        parts = [f"loss {m.get('dpo/loss', float('nan')):.4f}", f"acc {m.get('dpo/accuracy', float('nan')):.2f}",
                 f"margin {m.get('dpo/margin', float('nan')):.4f}"]
        if "reward/total" in m:
            parts.append(f"reward {m['reward/total']:.3f} ({m.get('online/pairs', 0)} pairs)")
        if "ofs/dpo_fast" in m:
            parts.append(f"fast/slow {m['ofs/dpo_fast']:.4f}/{m['ofs/dpo_slow']:.4f} fs {m['ofs/fs']:.4f} swaps {m['ofs/swaps']}")
        return " | ".join(parts)

    # ------------------------------------------------------------------ adapters
    def _precomputes_reference(self) -> bool:
        """Offline DPO with ``reference: precompute`` (SimPO has no reference; online pairs are new)."""
        return self.cfg.algorithm.name == "dpo" and self.pref.reference == "precompute" and not self.pref.online

    def _modules(self) -> tuple[str, ...]:
        """The learner's LoRA modules: OFS-DPO's two, or the one adapter."""
        return MODULES if self.chase else ("default",)

    def _train_adapter(self) -> str:
        if self.chase is None:
            return "default"
        index = self.chase.fast if self.pref.ofs.serve == "fast" else self.chase.slow
        return MODULES[index]

    def _fast_adapter(self) -> str:
        return MODULES[self.chase.fast] if self.chase else "default"

    def _served_adapter(self) -> tuple[dict, dict]:
        return self.served if self.served is not None else self.learners.adapter(self._train_adapter())

    def _sync(self, version: int) -> float:
        if self.rollouts is None:
            return 0.0
        tensors, config = self._served_adapter()
        return self.rollouts.load_adapter(version, ray.put(tensors), config)

    # ------------------------------------------------------------------ evaluation
    def _pair_metrics(self) -> dict[str, float]:
        """DPO loss, accuracy and margin of the served adapter on held-out pairs, and ``pairs_logp_accuracy``:
        the share of pairs whose chosen response the policy itself finds likelier (summed log-probs;
        before training, the base model's own preference, which the DPO accuracy cannot show: its
        implicit rewards are all 0 then)."""
        if not self.eval_pairs:
            return {}
        cfg, pref = self.cfg, self.pref
        batch = pack_pairs(self.eval_pairs, self.tokenizer.pad_token_id)
        lp = self.learners.sequence_logps(batch, [self._train_adapter(), "reference"])
        pol, ref = lp[self._train_adapter()], lp["reference"]
        counts = batch["completion_mask"].sum(dim=1).clamp(min=1)
        if cfg.algorithm.name == "simpo":
            losses, cr, rr = simpo_loss((pol / counts)[0::2], (pol / counts)[1::2], pref.beta, pref.gamma)
        else:
            if pref.loss_type == "ipo":
                pol, ref = pol / counts, ref / counts
            losses, cr, rr = dpo_loss(pol[0::2], pol[1::2], ref[0::2], ref[1::2], pref.beta, pref.loss_type, pref.label_smoothing)
        summed = lp[self._train_adapter()]  # the policy's summed log-probs (pol may be length-normalised above)
        return {"pairs_loss": float(losses.mean()), "pairs_accuracy": float((cr > rr).float().mean()),
                "pairs_margin": float((cr - rr).mean()),
                "pairs_logp_accuracy": float((summed[0::2] > summed[1::2]).float().mean())}

    def _evaluate(self) -> dict[str, float]:
        if self.pref.domains:  # every domain's held-out prompts, keys prefixed by the domain's name
            return {f"{d.name}/{k}": v for d, rows in zip(self.pref.domains, self.domain_eval)
                    for k, v in evaluate(self.rollouts, self.rewards, rows, self.tokenizer, self.cfg).items() if "/level_" not in k}
        out = self._pair_metrics()
        if self.rollouts is not None and self.eval_rows:
            out.update(evaluate(self.rollouts, self.rewards, self.eval_rows, self.tokenizer, self.cfg))
        return out

    def _score(self, rows: list[dict]) -> float:
        """Mean greedy ``cofs.score`` reward of the served adapter on ``rows``."""
        return evaluate(self.rollouts, self.rewards, rows, self.tokenizer, self.cfg)[self.pref.cofs.score]

    # ------------------------------------------------------------------ one step
    def _loss_cfg(self) -> dict:
        pref = self.pref
        return {"name": self.cfg.algorithm.name, "loss_type": pref.loss_type, "beta": pref.beta, "gamma": pref.gamma,
                "label_smoothing": pref.label_smoothing, "fast": self.chase.fast if self.chase else 0}

    def _pack(self, rows: list[dict], idx: list[int]) -> dict:
        """The pairs ``rows[idx]`` as one batch (rows 2i chosen, 2i+1 rejected)."""
        return pack_pairs(self._pairs_of(rows, idx), self.tokenizer.pad_token_id)

    def _offline_batch(self, metrics: dict) -> dict:
        idx = self.sampler.take(self.pref.pairs_per_step)
        batch = self._pack(self.train_rows, idx)
        if self._ref_cache and all(i in self._ref_cache for i in idx):
            batch["ref_seq_logps"] = torch.tensor([v for i in idx for v in self._ref_cache[i]], dtype=torch.float32)
        metrics["dpo/pairs"] = len(idx)
        return batch

    def _online_batch(self, step: int, metrics: dict) -> dict | None:
        cfg, k = self.cfg, self.pref.num_completions
        rows = [self.train_rows[i] for i in self.sampler.take(cfg.data.prompts_per_step)]
        t0 = time.time()
        groups = self.rollouts.generate([r["prompt"] for r in rows], [sample_seed(cfg.trainer.seed, step, 0, j) for j in range(len(rows))],
                                        n=k, max_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                                        top_p=cfg.rollout.top_p, logprobs_for=0)
        metrics["timing/rollout"] = time.time() - t0
        samples = [s for g in groups for s in g]
        flat = [r for r in rows for _ in range(k)]
        t0 = time.time()
        scores = self.rewards.score([r["prompt"] for r in flat], [s["text"] for s in samples],
                                    {**self._columns(flat), "completion_ids": [s["completion_ids"] for s in samples]})
        metrics["timing/reward"] = time.time() - t0
        self._objective_for(scores)
        rewards = self.objective.shape(scores.scores, {"group_size": k}).rewards
        valid = ~scores.dropped & np.isfinite(rewards)
        chosen_rejected, dropped = best_worst_pairs(rewards, valid, k)
        for j, name in enumerate(self.objective.names):
            col = scores.scores[:, j]
            if np.isfinite(col).any():
                metrics[f"reward/{name}"] = float(np.nanmean(col))
        metrics.update({"reward/total": float(np.nanmean(rewards)), "online/pairs": len(chosen_rejected),
                        "online/groups_dropped": dropped,
                        "rollout/length": float(np.mean([len(s["completion_ids"]) for s in samples]))})
        for key, n in scores.skipped_by.items():
            metrics[f"reward/skipped/{key}"] = n
        metrics.update(scores.stats)  # reward/retries/<name>
        if not chosen_rejected:
            return None
        metrics["online/reward_chosen"] = float(np.mean([rewards[c] for c, _ in chosen_rejected]))
        metrics["online/reward_rejected"] = float(np.mean([rewards[r] for _, r in chosen_rejected]))
        pairs = [{"prompt_ids": samples[c]["prompt_ids"], "chosen_ids": samples[c]["completion_ids"],
                  "rejected_ids": samples[r]["completion_ids"]} for c, r in chosen_rejected]
        return pack_pairs(pairs, self.tokenizer.pad_token_id)

    def _step(self, step: int) -> dict:
        t_step = time.time()
        metrics: dict = {}
        if self.pref.domains:
            self._enter_domain(step)
        batch = self._online_batch(step, metrics) if self.pref.online else self._offline_batch(metrics)
        if batch is not None:
            t0 = time.time()
            stats = self.learners.preference_step(batch, self._loss_cfg())
            metrics["timing/learner"] = time.time() - t0
            n = max(stats["pairs"], 1.0)
            metrics.update({"dpo/loss": stats["loss"] / n, "dpo/accuracy": stats["accuracy"] / n, "dpo/margin": stats["margin"] / n,
                            "dpo/rewards_chosen": stats["chosen_rewards"] / n, "dpo/rewards_rejected": stats["rejected_rewards"] / n,
                            "dpo/logps_chosen": stats["chosen_logps"] / n, "dpo/logps_rejected": stats["rejected_logps"] / n,
                            "loss/grad_norm": stats["grad_norm"], "timing/learner_compute": stats["seconds"]})
            if self.chase is not None:
                fast, slow = stats["dpo_fast"] / n, stats["dpo_slow"] / n
                metrics.update({"ofs/total": metrics["dpo/loss"], "dpo/loss": fast, "ofs/dpo_fast": fast, "ofs/dpo_slow": slow, "ofs/fs": stats["fs"] / n,
                                "ofs/slow_accuracy": stats["slow_accuracy"] / n})
                if self.chase.update(fast, slow):
                    self.learners.set_fast(self.chase.fast)
                    log.info("OFS-DPO: the slow module overtook the fast one; roles swapped (swap %d)", self.chase.swaps)
                metrics.update({"ofs/fast_module": self.chase.fast, "ofs/swaps": self.chase.swaps})
        else:
            metrics["online/empty"] = 1
        if getattr(self, "_precompute_seconds", None):  # logged once, with the next step
            metrics["timing/reference_precompute"] = self._precompute_seconds
            self._precompute_seconds = 0.0
        for reason, count in self.data_skipped.items():
            metrics[f"data/skipped/{reason}"] = count
        if self.pref.domains and step + 1 == self._domain_end(self.domain):
            metrics.update(self._finish_domain(step + 1))
        t0 = time.time()
        metrics["timing/sync_load"] = self._sync(step + 1)
        metrics["timing/sync"] = time.time() - t0
        metrics["timing/step"] = time.time() - t_step
        return metrics

    # ------------------------------------------------------------------ domains (COFS-DPO)
    def _domain_end(self, d: int) -> int:
        return sum(x.steps for x in self.pref.domains[: d + 1])

    def _domain_dir(self, d: int) -> Path:
        return self.run_dir / "domains" / f"{d}_{self.pref.domains[d].name}"

    def _enter_domain(self, step: int) -> None:
        """At a domain's first step: switch the data; the learner starts from the served adapter."""
        starts = [self._domain_end(i - 1) if i else 0 for i in range(len(self.pref.domains))]
        if step not in starts:
            return
        d = starts.index(step)
        self.domain = d
        self.train_rows, self.eval_rows = self.domain_train[d], self.domain_eval[d]
        self.sampler = PromptSampler(len(self.train_rows), self.cfg.trainer.seed + d)
        self._ref_cache = {}
        if self._precomputes_reference():
            self._precompute_reference(self.train_rows, self.sampler, self.pref.domains[d].steps)
        if self.served is not None and d > 0:
            tensors, config = self.served
            if int(config["r"]) != self.cfg.model.lora.r:  # a combination: the learner's rank is fixed
                lora = self.cfg.model.lora
                tensors, config, err = truncate_lora(tensors, config, lora.r, lora.alpha)
                log.info("domain %s starts from the combination truncated to rank %d (relative error %.3g)",
                         self.pref.domains[d].name, lora.r, err)
            for name in self._modules():
                self.learners.load_state(tensors, None, name)
            self.served = None
        log.info("domain %d/%d: %s (%d steps)", d + 1, len(self.pref.domains), self.pref.domains[d].name, self.pref.domains[d].steps)

    def _finish_domain(self, step: int) -> dict[str, float]:
        """Store this domain's fast module; with cofs.combine choose lambda for the combination with
        the previous served adapter on held-out rows of every domain so far; evaluate on every domain."""
        pref, d = self.pref, self.domain
        fast = self.learners.adapter(self._fast_adapter())
        _write_adapter_atomic(self._domain_dir(d) / "fast_adapter", *fast)
        metrics: dict[str, float] = {}
        grid_scores: dict[float, float] = {}
        if pref.cofs.combine and d > 0:
            previous = _read_adapter(self._domain_dir(d - 1) / "served_adapter")
            best = None
            for v, lam in enumerate(pref.cofs.grid):
                if lam == 0:
                    candidate = fast
                else:
                    candidate = combine_lora([previous, fast], [lam, 1 - lam])
                self.rollouts.load_adapter(10_000 * (d + 1) + v, ray.put(candidate[0]), candidate[1])
                per_domain = [self._score(rows) for rows in self.domain_heldout[: d + 1]]
                grid_scores[lam] = float(np.mean(per_domain))
                log.info("COFS domain %s: lambda %.2f -> held-out %s %.3f (%s)", pref.domains[d].name, lam, pref.cofs.score,
                         grid_scores[lam], ", ".join(f"{s:.3f}" for s in per_domain))
                if best is None or grid_scores[lam] > grid_scores[best[0]]:
                    best = (lam, candidate)
            lam, self.served = best[0], best[1]
            metrics["cofs/lambda"] = lam
        else:
            self.served = fast if self.chase else None
            lam = None
        served = self._served_adapter()
        _write_adapter_atomic(self._domain_dir(d) / "served_adapter", *served)
        self.rollouts.load_adapter(10_000 * (d + 1) + 9_999, ray.put(served[0]), served[1])
        scores = {x.name: self._score(rows) for x, rows in zip(pref.domains, self.domain_eval)}
        for name, value in scores.items():
            metrics[f"domain/{name}"] = value
        self.domain_results.append({"after": pref.domains[d].name, "step": step, "lambda": lam,
                                    "grid": {str(k): v for k, v in grid_scores.items()}, "scores": scores})
        (self.run_dir / "domains.json").write_text(json.dumps({"score": pref.cofs.score, "combine": pref.cofs.combine,
                                                               "ofs": pref.ofs.enabled, "results": self.domain_results}, indent=2))
        log.info("after domain %s: %s", pref.domains[d].name, ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, step: int) -> Path:
        tensors, adapter_cfg = self._served_adapter()
        state = {**self._run_state(step), "domain": self.domain, "chase": self.chase.state_dict() if self.chase else None,
                 "domain_results": self.domain_results, "served_is_combination": self.served is not None}
        # the learner's module(s) whenever step_N/adapter alone does not hold them
        extra = {name: self.learners.adapter(name) for name in self._modules()} if self.chase or self.served is not None else {}
        return save_checkpoint(self.ckpt_dir, step, tensors, adapter_cfg, self.learners.optimizer_states(), state,
                               keep=self.cfg.trainer.keep_checkpoints, extra_adapters=extra)

    def _restore(self) -> int:
        ckpt = self._latest_checkpoint()
        if ckpt is None:
            return 0
        st = ckpt["state"]
        extra = ckpt.get("extra_adapters", {})
        if self.chase is not None:
            self.chase.load_state_dict(st["chase"])
            self.learners.load_state(extra["second"][0], None, "second")
            self.learners.load_state(extra["default"][0], ckpt["optimizer_states"], "default")
            self.learners.set_fast(self.chase.fast)
        else:
            self.learners.load_state(extra["default"][0] if "default" in extra else ckpt["adapter"], ckpt["optimizer_states"])
        step = st["step"]
        if self.pref.domains:
            self.domain = st["domain"]
            self.domain_results = st["domain_results"]
            self.train_rows, self.eval_rows = self.domain_train[self.domain], self.domain_eval[self.domain]
            self.sampler = PromptSampler(len(self.train_rows), self.cfg.trainer.seed + self.domain)
            # at a domain's end the next step enters the next domain, which precomputes its own
            if self._precomputes_reference() and step != self._domain_end(self.domain):
                self._precompute_reference(self.train_rows, self.sampler, self.pref.domains[self.domain].steps)
        self.served = (ckpt["adapter"], ckpt["adapter_config"]) if st.get("served_is_combination") else None
        self.sampler.position = st["data_position"]
        self._sync(step)
        log.info("resumed from %s (step %d)", ckpt["path"], step)
        return step

    def run(self) -> dict:
        out = super().run()
        if self.pref.domains and self.domain_results:
            from align.metrics import plot_domains

            plot_domains(self.run_dir / "domains.json", self.run_dir / "plots" / "domains.png")
        return out
