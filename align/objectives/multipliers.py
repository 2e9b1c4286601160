"""Lagrange multipliers for constrained RLHF (Moskovitz et al., ICLR 2024).

Following the authors' code (rl4lms ``constrained_ppo.py``): raw multipliers ``lambda`` are squashed
by ``tanh`` (equality constraints), ``sigmoid`` (inequality) or not at all; each update minimises
``L = sum_i s(lambda_i) * (v_i - theta_i)`` (the constraint values detached) with momentum SGD
(lr 0.1, momentum 0.1 in their dialog config). An objective above its threshold loses weight; one
below gains weight. The policy's advantage mixes the task advantage and the constraint advantages
as ``(N - sum s) * A_task + sum s_i * A_i`` (squashed) or ``A_task + sum lambda_i A_i`` (not).
"""

from __future__ import annotations

import numpy as np

SQUASH = ("tanh", "sigmoid", "none")


def squash(raw: np.ndarray, kind: str) -> np.ndarray:
    """``s(lambda)`` for ``kind`` in tanh / sigmoid / none."""
    raw = np.asarray(raw, dtype=np.float64)
    if kind == "tanh":
        return np.tanh(raw)
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-raw))
    if kind == "none":
        return raw
    raise ValueError(f"squash must be one of {SQUASH}, got {kind!r}")


def squash_grad(raw: np.ndarray, kind: str) -> np.ndarray:
    """``d s / d lambda``."""
    s = squash(raw, kind)
    return {"tanh": lambda: 1.0 - s**2, "sigmoid": lambda: s * (1.0 - s), "none": lambda: np.ones_like(s)}[
        kind
    ]()


def mixed_advantage(
    task_adv: np.ndarray, constraint_adv: np.ndarray, s: np.ndarray, squashed: bool = True
) -> np.ndarray:
    """Advantage ``(N,)`` from the task advantage ``(N,)`` and constraint advantages ``(N, C)``."""
    task_adv, constraint_adv, s = (np.asarray(x, dtype=np.float64) for x in (task_adv, constraint_adv, s))
    if squashed:
        return (len(s) - s.sum()) * task_adv + constraint_adv @ s
    return task_adv + constraint_adv @ s


class Multipliers:
    """Raw multipliers with their momentum buffer; ``step`` applies one update."""

    def __init__(
        self,
        num: int,
        kind: str = "tanh",
        lr: float = 0.1,
        momentum: float = 0.1,
        max_grad_norm: float | None = None,
        init: np.ndarray | None = None,
        clamp_nonnegative: bool = False,
    ):
        if kind not in SQUASH:
            raise ValueError(f"squash must be one of {SQUASH}, got {kind!r}")
        self.kind, self.lr, self.momentum, self.max_grad_norm = kind, lr, momentum, max_grad_norm
        self.clamp_nonnegative = clamp_nonnegative
        self.raw = np.zeros(num) if init is None else np.asarray(init, dtype=np.float64).copy()
        self.buffer = np.zeros(num)

    @property
    def weights(self) -> np.ndarray:
        return squash(self.raw, self.kind)

    def step(self, values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        """One momentum-SGD step on ``sum s(lambda) (v - theta)``; returns the new ``s(lambda)``."""
        grad = squash_grad(self.raw, self.kind) * (
            np.asarray(values, dtype=np.float64) - np.asarray(thresholds, dtype=np.float64)
        )
        if self.max_grad_norm is not None:
            norm = np.linalg.norm(grad)
            if norm > self.max_grad_norm:
                grad = grad * (self.max_grad_norm / norm)
        self.buffer = self.momentum * self.buffer + grad  # torch.optim.SGD's momentum (dampening 0)
        self.raw = self.raw - self.lr * self.buffer
        if self.clamp_nonnegative:
            self.raw = np.maximum(self.raw, 0.0)
        return self.weights

    def state_dict(self) -> dict:
        return {"raw": self.raw.tolist(), "buffer": self.buffer.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.raw = np.asarray(state["raw"], dtype=np.float64)
        self.buffer = np.asarray(state["buffer"], dtype=np.float64)
