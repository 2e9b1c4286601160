"""PPO with a learned critic (Schulman et al. 2017; the RLHF form of Ouyang et al. 2022, as
OpenRLHF, verl and TRL's former PPOTrainer run it).

The GRPO family's step (sample, score, log-probs, shape, update) with three differences:
- values: after the log-prob pass, while the rewards run, the critic scores every prefix;
- advantages: per token. The shaped reward (static weights, dynamic weighting or the Lagrangian mix:
  the objective's ``rewards``) is placed at each completion's last token, the KL penalty
  ``-kl.coef * KL_t`` on every token (``kl.where: reward``, the default), and GAE with ``gamma`` and
  ``lam`` gives advantages and returns; advantages are whitened over the batch's tokens;
- update: each of the ``ppo_epochs x num_minibatches`` minibatches steps the critic (clipped value
  loss, its own optimizer) and then the policy (none during ``critic_warmup`` steps).

The critic is LoRA module ``critic`` plus a value head on the policy's own frozen base in every
learner rank (``align.workers.learner.critic``), or on a separate base with ``ppo.critic_model``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from align.algorithms.base import RunContext, register_algorithm
from align.algorithms.grpo import GRPO, LEARNER_KEYS
from align.losses import explained_variance, gae, kl_penalty, masked_whiten, token_rewards
from align.reporting.metrics import PANELS
from align.workers.learner.critic import CRITIC
from align.workers.learner.kinds import ValueLossConfig
from align.workers.learner.spec import CriticSpec

CRITIC_PANELS = (
    ("critic", lambda k: k in ("critic/value_loss", "critic/explained_variance")),
    ("values and returns", lambda k: k in ("critic/values", "critic/returns")),
)


@register_algorithm("ppo")
class PPO(GRPO):
    panels = PANELS + CRITIC_PANELS
    adapter_modules = ("default", CRITIC)
    learner_keys = LEARNER_KEYS + ("old_values", "returns")
    objective_advantages = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.ppo = cfg.algorithm.ppo
        self.value_cfg = ValueLossConfig(value_clip=self.ppo.value_clip, agg="token_mean")

    def learner_spec(self, ctx: RunContext, spec):
        spec.critic = CriticSpec(
            lr=self.ppo.critic_lr or self.cfg.learner.lr, model_path=self._critic_path(ctx)
        )
        return spec

    def _critic_path(self, ctx: RunContext) -> str | None:
        """The critic's own base (``ppo.critic_model``), resolved as ``model.path`` is; None: shared."""
        from pathlib import Path

        from align.models.builtin import resolve_model_path

        if not self.ppo.critic_model:
            return None
        path = resolve_model_path(self.ppo.critic_model)
        if not Path(path, "config.json").exists():
            raise FileNotFoundError(
                f"algorithm.ppo.critic_model {self.ppo.critic_model!r}: no config.json in {path} "
                "(not a HF model directory)"
            )
        return path

    def progress(self, m: dict) -> str:
        return (
            f"{super().progress(m)} | vloss {m.get('critic/value_loss', float('nan')):.4f} "
            f"ev {m.get('critic/explained_variance', float('nan')):.2f}"
        )

    # ---------------------------------------------------------------- the step's hooks
    def group_advantages(self, r: np.ndarray, dropped: np.ndarray) -> np.ndarray:
        """Per-objective advantages for the gradient objective's per-objective gradients (``r`` (N,)
        or (N, K)): each reward whitened over the batch (one critic serves the mixed reward, none
        each objective; a group of 1 has no group baseline)."""
        r = torch.as_tensor(np.asarray(r, dtype=np.float64))
        cols = r[:, None] if r.ndim == 1 else r
        ok = ~(torch.as_tensor(dropped)[:, None] | torch.isnan(cols))  # (N, K)
        out = torch.stack(
            [masked_whiten(torch.nan_to_num(c)[None], m[None])[0] for c, m in zip(cols.T, ok.T)], dim=1
        ).numpy()
        return out[:, 0] if r.ndim == 1 else out

    def before_scores(self, ctx: RunContext, batch: dict, metrics: dict) -> None:
        t0 = time.time()
        batch["old_values"] = ctx.learners.compute_values(batch)
        metrics["timing/values"] = time.time() - t0

    def advantages(self, ctx, rows, samples, rewards, kl_reward, dropped, metrics, batch=None) -> np.ndarray:
        """Per-token GAE advantages ``(N, t)`` (whitened); the returns go into ``batch``."""
        alg, ppo = self.cfg.algorithm, self.ppo
        mask = batch["completion_mask"]
        kl = None
        if alg.kl.coef > 0 and alg.kl.where == "reward":
            kl = kl_penalty(batch["old_logps"], batch["ref_logps"], alg.kl.estimator) * mask
        seq = torch.from_numpy(np.nan_to_num(np.asarray(rewards, dtype=np.float64))).float()
        r = token_rewards(seq, mask, kl, alg.kl.coef)
        values = batch["old_values"]
        adv, returns = gae(r, values, mask, ppo.gamma, ppo.lam)  # (values off the mask never enter)
        batch["returns"] = returns
        m = mask > 0
        if m.any():
            metrics.update(
                {
                    "critic/values": float(values[m].mean()),
                    "critic/returns": float(returns[m].mean()),
                    "critic/advantages": float(adv[m].mean()),
                    "critic/explained_variance": explained_variance(values, returns, mask),
                }
            )
            if kl is not None:
                metrics["kl/reward_penalty"] = float((alg.kl.coef * kl).sum(dim=1).mean())
        if ppo.whiten_advantages:
            adv = masked_whiten(adv, mask)
        return adv.double().numpy()

    def train_minibatch(self, ctx: RunContext, part: dict, step: int) -> dict[str, float]:
        """The critic's step, then the policy's (none while the critic warms up)."""
        stats = ctx.learners.train_step(part, self.value_cfg)
        if step >= self.ppo.critic_warmup:  # (step counts from 0)
            stats.update(ctx.learners.train_step(part, self.loss_cfg))
        return stats

    # ---------------------------------------------------------------- checkpoints
    def extra_adapters(self, ctx: RunContext) -> dict:
        return {CRITIC: ctx.learners.adapter(CRITIC)}

    def restore(self, ctx: RunContext, ckpt: dict) -> None:
        """The critic's weights, then the policy's with both optimizers' state."""
        extra = ckpt.get("extra_adapters", {})
        if CRITIC not in extra:
            raise ValueError(f"{ckpt.get('path')}: no adapters/{CRITIC} (not a ppo run's checkpoint)")
        ctx.learners.load_state(extra[CRITIC][0], None, CRITIC)
        super().restore(ctx, ckpt)
