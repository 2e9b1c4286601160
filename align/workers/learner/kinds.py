"""Loss kinds: what one optimizer step of the learners minimises, each a small object looked up by the
``kind`` of its config.

A kind says how a batch is split over the ranks and which global counts normalise it (``plan``, on
the driver), the loss of one micro-batch on a rank (``loss``), which engine it steps (``target``: the
policy's, or the critic's), how many rows make one unit that never straddles micro-batches (``unit``:
a pair is two), and how the ranks' summed statistics become the step's metrics (``reduce``). The
accumulation loop (``align.workers.learner.loop``) is the same for every kind.

- ``policy``: the policy-gradient loss of the GRPO family and PPO (a row of ``POLICY_LOSSES``) plus
  the KL term; rows are samples;
- ``pair``: the DPO family (a row of ``PAIR_LOSSES``; with ``fast_slow`` OFS-DPO's two modules);
  rows 2i and 2i+1 are a pair's chosen and rejected responses;
- ``reward_model``: the Bradley-Terry loss on a sequence classifier's scores, pairs as above;
- ``value``: PPO's clipped value loss, stepping the critic's own engine.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from align.losses import POLICY_LOSSES, aggregate, kl_penalty, policy_loss_name, with_behaviour_logps
from align.rollout.batch import shard_indices

Stats = dict[str, float]


# ------------------------------------------------------------------ the configs a step sends
@dataclass
class PolicyLossConfig:
    kind: ClassVar[str] = "policy"
    temperature: float = 1.0
    clip_low: float | None = 0.2
    clip_high: float | None = 0.2
    agg: str = "token_mean"
    kl_coef: float = 0.0
    kl_in_loss: bool = True
    kl_estimator: str = "k3"
    max_len: int | None = None  # seq_mean_token_sum_norm's constant (Dr.GRPO: rollout.max_new_tokens)
    loss: str | None = None  # a row of POLICY_LOSSES; None: from ``ratio``
    ratio: str = "token"

    def __post_init__(self):
        self.loss = policy_loss_name({"loss": self.loss, "ratio": self.ratio})


@dataclass
class PairLossConfig:
    kind: ClassVar[str] = "pair"
    loss: str = "sigmoid"  # a row of PAIR_LOSSES
    beta: float = 0.1
    gamma: float = 0.5
    label_smoothing: float = 0.0
    fast: int = 0  # with fast_slow: which of the learner's two LoRA modules is the fast one
    fast_slow: dict | None = None  # OFS-DPO: {alpha, slow_term}


@dataclass
class RewardModelLossConfig:
    kind: ClassVar[str] = "reward_model"
    loss: str = "bradley_terry"
    center_coef: float = 0.0


@dataclass
class ValueLossConfig:
    kind: ClassVar[str] = "value"
    value_clip: float | None = 0.2
    agg: str = "token_mean"


CONFIGS = {c.kind: c for c in (PolicyLossConfig, PairLossConfig, RewardModelLossConfig, ValueLossConfig)}


def loss_config(cfg):
    """A loss config from a config or a plain dict (``kind`` defaults to policy; keys it does not
    have are an error)."""
    if not isinstance(cfg, dict):
        return cfg
    cls = CONFIGS[cfg.get("kind", "policy")]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - known - {"kind"})
    if unknown:
        raise TypeError(f"{cls.kind} loss config: unknown keys {unknown}")
    return cls(**{k: v for k, v in cfg.items() if k != "kind"})


# ------------------------------------------------------------------ the kinds
class RowKind:
    """Rows are samples; losses are normalised by the batch's completion tokens and sequences."""

    unit = 1
    target = "policy"

    def plan(self, batch: dict, cfg, num_ranks: int, micro_batch_size: int):
        """``(shares, normalizers, num_micro)``: each rank's ``(row indices, rows)``, the global
        counts, and the micro-batches every rank runs (the same count on every rank)."""
        n = batch["input_ids"].shape[0]
        normalizers = {"num_tokens": float(batch["completion_mask"].sum().item()), "num_seqs": float(n)}
        if getattr(cfg, "agg", None) == "seq_mean_token_sum_norm":
            normalizers["max_len"] = cfg.max_len
        shares = [(idx, {k: v[idx] for k, v in batch.items()}) for idx in shard_indices(n, num_ranks)]
        num_micro = max(1, max(math.ceil(len(idx) / micro_batch_size) for idx, _ in shares))
        return shares, normalizers, num_micro


class PolicyLoss(RowKind):
    def loss(self, learner, part: dict, cfg: PolicyLossConfig, normalizers: dict, logps=None):
        """The full actor loss of one micro-batch (the policy loss ``cfg.loss`` + KL term), globally
        normalised; ``logps`` (with grad) when the caller already ran the forward pass. Optional
        ``is_weights`` ``(b, t)`` (train/inference mismatch correction) multiply the per-token terms."""
        ent = None
        if logps is None:
            logps, ent = learner.model.logps(part, cfg.temperature, grad=True, with_entropy=True)
        dev = logps.device
        mask = part["completion_mask"].to(dev)
        # Without old_logps the update is on-policy (one epoch, one minibatch): pi_old = pi, and
        # the ratio is exactly 1 with the same gradient, so no extra forward pass is spent.
        old = part["old_logps"].to(dev) if "old_logps" in part else logps.detach()
        # tokens drawn from another distribution than pi_old (AdaptThink's forced first token)
        if "behaviour_mask" in part:
            old = with_behaviour_logps(old, part["behaviour_logps"].to(dev), part["behaviour_mask"].to(dev))
        weights = part["is_weights"].to(dev) if "is_weights" in part else None
        loss, stats = POLICY_LOSSES[cfg.loss](
            logps,
            old,
            part["advantages"].to(dev),
            mask,
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            agg=cfg.agg,
            weights=weights,
            **normalizers,
        )
        tokens = mask.sum().item()
        terms = {
            "loss/policy": loss.item(),
            "loss/kl": 0.0,
            "clip_tokens": stats["clip_frac"].item() * tokens,
            "ratio_sum": stats["ratio_mean"].item() * tokens,
            "tokens": tokens,
            "entropy_sum": float((ent * mask).sum().item()) if ent is not None else 0.0,
        }
        if cfg.kl_coef > 0 and cfg.kl_in_loss:
            per_tok = kl_penalty(logps, part["ref_logps"].to(dev), cfg.kl_estimator)
            if "kl_weight" in part:  # per-sample KL weights (e.g. APO's DADS)
                per_tok = per_tok * part["kl_weight"].to(dev).unsqueeze(1)
            kl = aggregate(per_tok, mask, cfg.agg, **normalizers)
            terms["loss/kl"] = kl.item()
            loss = loss + cfg.kl_coef * kl
        return loss, terms

    def reduce(self, stats: list[Stats]) -> Stats:
        tokens = max(sum(s.get("tokens", 0.0) for s in stats), 1.0)
        return {
            **_memory(stats),
            "loss/policy": sum(s.get("loss/policy", 0.0) for s in stats),
            "loss/kl": sum(s.get("loss/kl", 0.0) for s in stats),
            "loss/clip_frac": sum(s.get("clip_tokens", 0.0) for s in stats) / tokens,
            "loss/ratio_mean": sum(s.get("ratio_sum", 0.0) for s in stats) / tokens,
            "policy/entropy": sum(s.get("entropy_sum", 0.0) for s in stats) / tokens,  # per completion token
            "loss/grad_norm": stats[0]["grad_norm"],
            "timing/learner_compute": max(s["seconds"] for s in stats),
        }


class ValueLoss(RowKind):
    target = "critic"

    def loss(self, learner, part: dict, cfg: ValueLossConfig, normalizers: dict):
        """PPO's clipped value loss of one micro-batch, normalised by the global token count."""
        from align.losses import value_loss

        values = learner.components[self.target].values(part, grad=True)
        dev = values.device
        mask = part["completion_mask"].to(dev)
        loss, st = value_loss(
            values,
            part["old_values"].to(dev),
            part["returns"].to(dev),
            mask,
            cfg.value_clip,
            cfg.agg,
            num_tokens=normalizers["num_tokens"],
        )
        tokens = mask.sum().item()
        return loss, {
            "critic/value_loss": loss.item(),
            "clip_tokens": st["clip_frac"].item() * tokens,
            "tokens": tokens,
        }

    def reduce(self, stats: list[Stats]) -> Stats:
        tokens = max(sum(s.get("tokens", 0.0) for s in stats), 1.0)
        return {
            **_memory(stats),
            "critic/value_loss": sum(s["critic/value_loss"] for s in stats),
            "critic/clip_frac": sum(s["clip_tokens"] for s in stats) / tokens,
            "critic/grad_norm": stats[0]["grad_norm"],
            "timing/critic_compute": max(s["seconds"] for s in stats),
        }


class PairKind:
    """Rows 2i and 2i+1 are a pair (chosen, rejected): whole pairs per rank and per micro-batch,
    losses normalised by the batch's pair count; statistics are sums over the pairs."""

    unit = 2
    target = "policy"

    def plan(self, batch: dict, cfg, num_ranks: int, micro_batch_size: int):
        n_pairs = batch["input_ids"].shape[0] // 2
        shares = []
        for idx in shard_indices(n_pairs, num_ranks):
            rows = [i for p in idx for i in (2 * p, 2 * p + 1)]
            shares.append((rows, {k: v[rows] for k, v in batch.items()}))
        # micro_batch_size counts sequences: a pair is two (chosen and rejected share a micro-batch)
        per_micro = max(2, micro_batch_size - micro_batch_size % 2)
        num_micro = max(1, max(math.ceil(len(rows) / per_micro) for rows, _ in shares))
        return shares, {"num_pairs": batch["input_ids"].shape[0] / 2}, num_micro

    def reduce(self, stats: list[Stats]) -> Stats:
        out = {k: sum(s.get(k, 0.0) for s in stats) for k in stats[0] if k not in ("grad_norm", "seconds")}
        out["grad_norm"], out["seconds"] = stats[0]["grad_norm"], max(s["seconds"] for s in stats)
        return out  # (memory/* summed over the ranks too)

    @staticmethod
    def summed(losses, c, r, cr, rr, normalizers) -> tuple[torch.Tensor, Stats]:
        """The micro-batch's share of the batch loss and its summed statistics."""
        return losses.sum() / normalizers["num_pairs"], {
            "loss": losses.detach().sum().item(),
            "chosen_rewards": cr.sum().item(),
            "rejected_rewards": rr.sum().item(),
            "accuracy": float((cr > rr).float().sum().item()),
            "margin": (cr - rr).sum().item(),
            "chosen_logps": c.detach().sum().item(),
            "rejected_logps": r.detach().sum().item(),
            "pairs": float(c.shape[0]),
        }


class PairLoss(PairKind):
    def loss(self, learner, part: dict, cfg: PairLossConfig, normalizers: dict):
        """The DPO family's loss of one micro-batch of pairs; with ``cfg.fast_slow`` (two LoRA
        modules, OFS-DPO) the fast-slow term joins it."""
        from align.losses.preference import PAIR_LOSSES, fast_slow_losses

        model = learner.model
        spec = PAIR_LOSSES[cfg.loss]
        if spec.scores:
            raise ValueError(f"pair loss {cfg.loss!r} reads a model's scores: use the reward_model loss kind")
        counts = part["completion_mask"].sum(dim=1).clamp(min=1)

        def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = x / counts.to(x.device) if spec.average else x
            return x[0::2], x[1::2]

        stats: Stats = {}
        rc = rrj = None
        if spec.reference:
            ref = part["ref_seq_logps"] if "ref_seq_logps" in part else model.seq_logps(part, False, None)
            rc, rrj = split(ref.to(model.device))
        margin = part["margin"][0::2].to(model.device) if "margin" in part else None
        modules = model.spec.lora_modules
        if cfg.fast_slow:
            c, r = split(model.seq_logps(part, True, modules[cfg.fast]))
            sc, sr = split(model.seq_logps(part, True, modules[1 - cfg.fast]))
            fs = cfg.fast_slow
            losses, parts = fast_slow_losses(
                c, r, sc, sr, rc, rrj, cfg.beta, fs["alpha"], fs["slow_term"], cfg.loss, cfg.label_smoothing
            )
            cr, rr = parts["chosen_rewards"], parts["rejected_rewards"]
            stats = {
                "dpo_fast": parts["dpo_fast"].sum().item(),
                "dpo_slow": parts["dpo_slow"].sum().item(),
                "fs": parts["fs"].sum().item(),
                "slow_accuracy": float(((sc - rc) > (sr - rrj)).float().sum().item()),
            }
        else:
            c, r = split(model.seq_logps(part, True, modules[0]))
            losses, cr, rr = spec.fn(c, r, rc, rrj, cfg, margin)
        loss, summed = self.summed(losses, c, r, cr, rr, normalizers)
        return loss, {**stats, **summed}


class RewardModelLoss(PairKind):
    def loss(self, learner, part: dict, cfg: RewardModelLossConfig, normalizers: dict):
        """The Bradley-Terry loss on the model's scores of one micro-batch of pairs (with the data's
        ``margin`` when the batch has it)."""
        from align.losses.preference import PAIR_LOSSES

        scores = learner.model.scores(part, True)
        margin = part["margin"][0::2].to(scores.device) if "margin" in part else None
        c, r = scores[0::2], scores[1::2]
        losses, cr, rr = PAIR_LOSSES[cfg.loss].fn(c, r, None, None, cfg, margin)
        return self.summed(losses, c, r, cr, rr, normalizers)


def _memory(stats: list[Stats]) -> Stats:
    return {k: sum(s[k] for s in stats) for k in stats[0] if k.startswith("memory/")}  # all ranks


KINDS = {
    "policy": PolicyLoss(),
    "pair": PairLoss(),
    "reward_model": RewardModelLoss(),
    "value": ValueLoss(),
}
