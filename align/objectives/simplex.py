"""Gradient-based weight optimisation on the simplex.

Lu et al. (2025): one backward pass per objective gives gradients ``g_k`` (over a subset of the
parameters, for LoRA the adapter); the influence of objective k is ``I_k = <g_k, sum_j g_j>``
and the weights take a mirror-descent (exponentiated-gradient) step
``w <- softmax(log w + step * I)`` with ``step = lr / regularization`` in the authors' code.
"""

from __future__ import annotations

import numpy as np


def gradient_influence(grads: np.ndarray) -> np.ndarray:
    """``I_k = <g_k, sum_j g_j>`` for flattened per-objective gradients ``grads`` ``(K, P)``.

    The sign convention of the gradients does not matter: I is bilinear in them.
    """
    g = np.asarray(grads, dtype=np.float64)
    return g @ g.sum(axis=0)  # (K,)


def exponentiated_gradient_step(weights: np.ndarray, influence: np.ndarray, step: float) -> np.ndarray:
    """``softmax(log w + step * I)``: stays on the open simplex; equal influences change nothing."""
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w <= 0) or not np.isclose(w.sum(), 1.0, atol=1e-6):
        raise ValueError(f"weights must be positive and sum to 1, got {w.tolist()}")
    logits = np.log(w) + step * np.asarray(influence, dtype=np.float64)
    logits -= logits.max()  # softmax is shift-invariant; this avoids overflow
    e = np.exp(logits)
    return e / e.sum()
