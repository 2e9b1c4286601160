"""A learner rank put back to its first state: the component that lets one set of actors serve runs
one after another (``align.runner.pool.ActorPool``) whatever learner state the method keeps (PPO's
critic, OFS-DPO's two modules, a reward model's head), as long as each run has the seed the rank was
started with.

At start it keeps, for every engine (the policy's and each component's), a copy of the trainable
weights and the parameter groups' settings of the fresh optimizer; ``reset`` copies them back in place
(DeepSpeed's buffers and hooks keep pointing at the same tensors), takes ZeRO's fp32 masters from
them, empties the optimizer state (moments, step counts) and seeds the RNG as a fresh rank does. A
learner holds this component when its spec has ``keep_fresh``.
"""

from __future__ import annotations

import torch

from align.workers.learner.engine import base_optimizer, refresh_masters


class FreshState:
    adapters: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    optimizer_prefix = None

    @classmethod
    def prepare(cls, learner) -> "FreshState | None":
        return cls() if learner.spec.keep_fresh else None

    def start(self, learner) -> None:
        """Called last: every engine exists."""
        engines = [(learner.optimizer, learner.train_params)]
        engines += [
            (c.optimizer, c.params)
            for c in learner.components.values()
            if getattr(c, "optimizer", None) is not None
        ]
        self.kept = [
            (
                optimizer,
                params,
                [p.detach().clone() for p in params],
                [
                    {k: v for k, v in g.items() if k != "params"}
                    for g in base_optimizer(optimizer).param_groups
                ],
            )
            for optimizer, params in engines
        ]

    def reset(self, learner) -> None:
        with torch.no_grad():
            for optimizer, params, weights, groups in self.kept:
                for p, w in zip(params, weights):
                    p.copy_(w)
                refresh_masters(optimizer)
                opt = base_optimizer(optimizer)
                opt.state.clear()
                for g, fresh in zip(opt.param_groups, groups):
                    g.update(fresh)
        learner.model.activate(learner.spec.lora_modules[0])
        torch.manual_seed(learner.seed)
