"""Reward-model training (``algorithm.name: reward_model``): a sequence-classification model with one
output, trained on preference pairs with the Bradley-Terry loss, as TRL's ``RewardTrainer``:

    loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected) - margin) [+ center_coef * (r_c + r_r)^2]

``margin`` is the data's ``margin`` column when present (``reward_model.margin``). Same data formats,
sharding over learner ranks, micro-batching, checkpoints and ``--resume`` as offline DPO
(``align.algorithms.dpo``), through LoRA (the new score head trains fully) or every weight
(``reward_model.finetune: full``). The score is the model's output at the last token of
prompt + response + EOS. At the end the model is written, merged, to
``<output_dir>/<reward_model.output>`` (safetensors, config and tokenizer, temp folder then rename):
``AutoModelForSequenceClassification.from_pretrained`` loads it, and a reward entry
``{model: <that folder>}`` scores with it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from align.algorithms.base import RunContext, register_algorithm
from align.algorithms.dpo import PairMethod, pack_pairs
from align.losses.preference import bradley_terry
from align.store.checkpoint import atomic_dir, write_adapter_dir
from align.workers.learner.kinds import RewardModelLossConfig

log = logging.getLogger("align.train")

RM_PANELS = (
    ("Bradley-Terry loss", lambda k: k in ("rm/loss", "eval/pairs_loss")),
    ("scores", lambda k: k in ("rm/rewards_chosen", "rm/rewards_rejected", "rm/margin", "eval/pairs_margin")),
    ("preference accuracy", lambda k: k in ("rm/accuracy", "eval/pairs_accuracy")),
)


def export_reward_model(
    base_path: str,
    tensors: dict,
    adapter_config: dict,
    out_dir: Path,
    finetune: str,
    pad_token_id: int | None,
    trust_remote_code: bool = False,
) -> Path:
    """Write the trained reward model, merged, as a plain HF sequence-classification directory."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        base_path, num_labels=1, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    with atomic_dir(out_dir) as tmp:
        if finetune == "full":
            model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items()})
        else:
            write_adapter_dir(tmp / "adapter", tensors, adapter_config)
            model = PeftModel.from_pretrained(model, str(tmp / "adapter")).merge_and_unload()
            shutil.rmtree(tmp / "adapter")
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust_remote_code).save_pretrained(tmp)
    return out_dir


@register_algorithm("reward_model")
class RewardModel(PairMethod):
    """The pair machinery (data, sharding, micro-batches, checkpoints) with the Bradley-Terry loss on
    a sequence-classification model's scores; metrics in ``rm/``."""

    panels = RM_PANELS
    prefix = "rm"

    def shares_learners(self) -> bool:  # a sequence-classification model (its own head, maybe fully trained)
        return False

    def loss_name(self) -> str:
        return "bradley_terry"

    def loss_cfg(self) -> RewardModelLossConfig:
        return RewardModelLossConfig(center_coef=self.cfg.algorithm.reward_model.center_coef)

    def learner_spec(self, ctx: RunContext, spec):
        spec = super().learner_spec(ctx, spec)
        spec.head, spec.finetune, spec.pad_token_id = (
            "score",
            self.cfg.algorithm.reward_model.finetune,
            ctx.tokenizer.pad_token_id,
        )
        return spec

    def with_margin(self, batch: dict, rows: list[dict]) -> dict:
        """``batch`` with the data's ``margin`` column (both rows of a pair) when every pair has one."""
        if self.cfg.algorithm.reward_model.margin and rows and all(r.get("margin") is not None for r in rows):
            batch["margin"] = torch.tensor(
                [float(r["margin"]) for r in rows for _ in range(2)], dtype=torch.float32
            )
        return batch

    def pack(self, ctx: RunContext, rows: list[dict], idx: list[int]) -> dict:
        return self.with_margin(super().pack(ctx, rows, idx), [rows[i] for i in idx])

    def step_metrics(self, stats: dict) -> dict[str, float]:
        return {k: v for k, v in super().step_metrics(stats).items() if not k.startswith("rm/logps_")}

    def pair_metrics(self, ctx: RunContext) -> dict[str, float]:
        """Bradley-Terry loss, accuracy and mean score margin on held-out pairs."""
        if not self.eval_pairs:
            return {}
        batch = self.with_margin(pack_pairs(self.eval_pairs, ctx.tokenizer.pad_token_id), self.eval_pair_rows)
        s = ctx.learners.sequence_logps(batch, ["score"])["score"]
        c, r = s[0::2], s[1::2]
        losses = bradley_terry(
            c,
            r,
            batch["margin"][0::2] if "margin" in batch else None,
            self.cfg.algorithm.reward_model.center_coef,
        )
        return {
            "pairs_loss": float(losses.mean()),
            "pairs_accuracy": float((c > r).float().mean()),
            "pairs_margin": float((c - r).mean()),
            "pairs_chosen": float(c.mean()),
            "pairs_rejected": float(r.mean()),
        }

    def finish(self, ctx: RunContext, summary: dict) -> dict:
        cfg = self.cfg
        tensors, adapter_cfg = ctx.learners.adapter("default")
        out_dir = export_reward_model(
            ctx.model_path,
            tensors,
            adapter_cfg,
            ctx.run_dir / cfg.algorithm.reward_model.output,
            cfg.algorithm.reward_model.finetune,
            ctx.tokenizer.pad_token_id,
            cfg.model.trust_remote_code,
        )
        before, after = summary.get("before"), summary.get("after")
        log.info(
            "reward model: %s (eval accuracy %s -> %s)",
            out_dir,
            _fmt(before, "pairs_accuracy"),
            _fmt(after, "pairs_accuracy"),
        )
        return {"reward_model": str(out_dir)}


def _fmt(d: dict | None, key: str) -> str:
    return f"{d[key]:.3f}" if d and key in d else "-"
