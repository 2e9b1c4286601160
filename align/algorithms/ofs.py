"""OFS-DPO (Qi et al., 2024, arXiv 2406.05534): how a pair method trains its LoRA modules. No author
code is public.

A pair method (``align.algorithms.dpo.PairMethod``) holds one of two module strategies, each with the
same small interface (the learner's modules, the loss's extra fields, what is served and saved, the
update after a step, state and restore):

- ``OneModule``: one LoRA module, the default;
- ``FastSlow`` (``preference.ofs.enabled``): our reading of the paper (every constant is configurable
  in ``algorithm.preference.ofs``):

  - Two identical LoRA modules F (fast, learning rate ``learner.lr``) and S (slow, ``learner.lr /
    lr_ratio``) on one frozen base, which is also the DPO reference pi_0. Each minimises its own DPO
    loss against pi_0.
  - The fast-slow term is DPO with the other module as the reference,
    ``L_FS = -log sigmoid(beta * [(log F(y_w) - log S(y_w)) - (log F(y_l) - log S(y_l))])``.
    F minimises ``L_DPO(F) + alpha * L_FS`` with S detached: it widens its lead over S. S minimises
    ``L_DPO(S) - alpha * L_FS`` with F detached (``slow_term: neg_fs``, the min-max reading of the
    paper's shared objective: S closes the gap), or ``L_DPO(S) + alpha * L_SF`` (``sf``: DPO of S
    against F, the bounded variant of the same push). With F = S the term is log 2 and its gradient
    is not zero, which is the paper's point: it keeps a gradient where plain DPO's fades
    (``align.losses.preference.fast_slow_losses``).
  - Chasing: the two modules' DPO losses are averaged over non-overlapping windows of
    ``swap_window`` steps; when the slow module's mean is lower, the roles (and so the learning
    rates) swap and the window restarts.

COFS-DPO's schedule over domains is a wrapper around any pair method (``align.algorithms.cofs``).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("align.train")


class Chase:
    """Which of the two modules (0 or 1) is fast, and the swap rule over windows of DPO losses."""

    def __init__(self, window: int):
        if window < 1:
            raise ValueError("swap window must be >= 1")
        self.window, self.fast, self.swaps = window, 0, 0
        self.history: list[tuple[float, float]] = []  # (fast module's DPO loss, slow module's) this window

    @property
    def slow(self) -> int:
        return 1 - self.fast

    def update(self, loss_fast: float, loss_slow: float) -> bool:
        """Record one step; at the end of a window swap the roles if the slow module's mean DPO loss
        is lower. Returns True when the roles swapped."""
        self.history.append((float(loss_fast), float(loss_slow)))
        if len(self.history) < self.window:
            return False
        fast_mean = float(np.mean([f for f, _ in self.history]))
        slow_mean = float(np.mean([s for _, s in self.history]))
        self.history = []
        if slow_mean < fast_mean:
            self.fast, self.swaps = self.slow, self.swaps + 1
            return True
        return False

    def state_dict(self) -> dict:
        return {
            "window": self.window,
            "fast": self.fast,
            "swaps": self.swaps,
            "history": [list(h) for h in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        self.fast, self.swaps = int(state["fast"]), int(state["swaps"])
        self.history = [tuple(h) for h in state["history"]]


class OneModule:
    """One LoRA module (``default``), trained, served and saved as the run's adapter."""

    names: tuple[str, ...] = ("default",)

    def loss_fields(self) -> dict:
        return {}

    def train_adapter(self) -> str:
        return "default"

    def fast_adapter(self) -> str:
        return "default"

    def setup(self, ctx) -> None:
        pass

    def after_step(self, ctx, stats: dict, metrics: dict) -> None:
        pass

    def extra_adapters(self, ctx) -> dict:
        return {}

    def state_dict(self) -> dict | None:
        return None

    def restore(self, ctx, ckpt: dict) -> None:
        extra = ckpt.get("extra_adapters", {})
        ctx.learners.load_state(
            extra["default"][0] if "default" in extra else ckpt["adapter"], ckpt["optimizer_states"]
        )


class FastSlow:
    """OFS-DPO's two modules, ``default`` and ``second``, chasing each other (see the module
    docstring); both are checkpointed, the fast (or, with ``ofs.serve: slow``, the slow) one served."""

    names: tuple[str, ...] = ("default", "second")

    def __init__(self, ofs, lr: float):
        self.ofs, self.lr = ofs, lr
        self.chase = Chase(ofs.swap_window)

    def loss_fields(self) -> dict:
        return {
            "fast": self.chase.fast,
            "fast_slow": {"alpha": self.ofs.alpha, "slow_term": self.ofs.slow_term},
        }

    def train_adapter(self) -> str:
        return self.names[self.chase.fast if self.ofs.serve == "fast" else self.chase.slow]

    def fast_adapter(self) -> str:
        return self.names[self.chase.fast]

    def lrs(self) -> list[float]:
        """The fast module gets learner.lr, the other learner.lr / lr_ratio."""
        return [self.lr if i == self.chase.fast else self.lr / self.ofs.lr_ratio for i in range(2)]

    def setup(self, ctx) -> None:
        ctx.learners.set_lrs(self.lrs())

    def after_step(self, ctx, stats: dict, metrics: dict) -> None:
        """Both modules' DPO losses into the metrics (``dpo/loss`` is the fast module's, the total is
        ``ofs/total``), then the chase: a swap changes the learning rates."""
        n = max(stats["pairs"], 1.0)
        fast, slow = stats["dpo_fast"] / n, stats["dpo_slow"] / n
        metrics.update(
            {
                "ofs/total": metrics["dpo/loss"],
                "dpo/loss": fast,
                "ofs/dpo_fast": fast,
                "ofs/dpo_slow": slow,
                "ofs/fs": stats["fs"] / n,
                "ofs/slow_accuracy": stats["slow_accuracy"] / n,
            }
        )
        if self.chase.update(fast, slow):
            ctx.learners.set_lrs(self.lrs())
            log.info(
                "OFS-DPO: the slow module overtook the fast one; roles swapped (swap %d)", self.chase.swaps
            )
        metrics.update({"ofs/fast_module": self.chase.fast, "ofs/swaps": self.chase.swaps})

    def extra_adapters(self, ctx) -> dict:
        return {name: ctx.learners.adapter(name) for name in self.names}

    def state_dict(self) -> dict:
        return self.chase.state_dict()

    def restore(self, ctx, ckpt: dict) -> None:
        self.chase.load_state_dict(ckpt["state"]["chase"])
        extra = ckpt["extra_adapters"]
        ctx.learners.load_state(extra["second"][0], None, "second")
        ctx.learners.load_state(extra["default"][0], ckpt["optimizer_states"], "default")
        ctx.learners.set_lrs(self.lrs())
