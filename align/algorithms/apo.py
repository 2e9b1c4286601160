"""APO (Hong et al., 2025, arXiv 2506.21655; code Indolent-Kawhi/View-R1): asymmetric policy
optimisation inside GRPO.

- DADS (positive samples): a per-sample weight on the KL loss, ``1 - exp(-e * p)`` for a sample
  with positive advantage in a group of accuracy ``p`` strictly between 0 and 1, else 1. Rare
  successes on hard prompts get a weak KL leash; on easy prompts it is close to full strength.
- STCR (negative samples): a wrong response longer than its group's mean correct length gets its
  advantage multiplied by ``c = 2 - base^(-dL)`` (``1 + (1 - base^(-dL))`` in the authors' code).

"Correct" is the truncated *raw* accuracy reward (``trunc(r) >= 1``), never a normalised total.
All functions take samples laid out group by group, ``(N,)`` with ``N = n_groups * group_size``.
"""

from __future__ import annotations

import math

import numpy as np

from align.eval.loop import correct_from_raw  # "correct": what evaluation reports too


def dads_weight(p: float | np.ndarray, scale: float = math.e) -> np.ndarray:
    """``1 - exp(-scale * p)`` for group accuracy ``p`` in (0, 1), and 1 at ``p`` in {0, 1}."""
    p = np.asarray(p, dtype=np.float64)
    inside = (p > 0) & (p < 1)
    return np.where(inside, 1.0 - np.exp(-scale * p), 1.0)


def dads_weights(
    advantages: np.ndarray, correct: np.ndarray, group_size: int, scale: float = math.e
) -> np.ndarray:
    """Per-sample KL weights ``(N,)``: :func:`dads_weight` of the group accuracy for samples with a
    positive advantage (the sign, not correctness, defines "positive", as in the authors' code); 1
    for the others."""
    adv = np.asarray(advantages, dtype=np.float64)
    p = np.repeat(np.asarray(correct, dtype=np.float64).reshape(-1, group_size).mean(axis=1), group_size)
    return np.where(adv > 0, dads_weight(p, scale), 1.0)


def stcr_scale(
    correct: np.ndarray, lengths: np.ndarray, group_size: int, base: float = 1.00001
) -> np.ndarray:
    """Advantage multipliers ``(N,)``: ``2 - base^(-(L_i - mean correct L))`` for a wrong response
    longer than its group's mean correct length; 1 for correct responses, shorter wrong ones, and
    every sample of a group without a correct response."""
    ok = np.asarray(correct, dtype=bool).reshape(-1, group_size)
    ln = np.asarray(lengths, dtype=np.float64).reshape(-1, group_size)
    n_ok = ok.sum(axis=1, keepdims=True)
    mean_ok = np.where(n_ok > 0, (ln * ok).sum(axis=1, keepdims=True) / np.maximum(n_ok, 1), np.inf)
    dl = ln - mean_ok
    c = np.where((~ok) & (dl > 0), 2.0 - np.power(base, -np.where(dl > 0, dl, 0.0)), 1.0)
    return c.reshape(-1)


class APOHook:
    """DADS and STCR applied to a GRPO step's advantages (``algorithm.apo``); "correct" comes from
    the raw accuracy reward ``apo.accuracy`` (checked at config time to be a reward)."""

    def __init__(self, opts):
        self.opts = opts

    @classmethod
    def from_config(cls, opts) -> "APOHook | None":
        return cls(opts) if opts.dads or opts.stcr else None

    def adjust(
        self,
        adv: np.ndarray,
        kl_weight,
        scores: np.ndarray,
        names: list[str],
        lengths: np.ndarray,
        group_size: int,
        metrics: dict,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        opts = self.opts
        if opts.accuracy not in names:
            raise ValueError(f"algorithm.apo.accuracy: {opts.accuracy!r} is not among the objectives {names}")
        correct = correct_from_raw(scores[:, names.index(opts.accuracy)])
        if opts.stcr:  # after the group normalisation, as in the authors' code
            c = stcr_scale(correct, lengths, group_size, opts.stcr_base)
            adv = adv * c
            metrics["apo/stcr_scaled"] = float((c > 1).mean())
            metrics["apo/stcr_c_max"] = float(c.max())
        if opts.dads:
            w = dads_weights(adv, correct, group_size, opts.dads_scale)
            kl_weight = w if kl_weight is None else kl_weight * w
            metrics["apo/dads_weight_mean"] = float(w.mean())
            metrics["apo/dads_relaxed"] = float((w < 1).mean())
        return adv, kl_weight
