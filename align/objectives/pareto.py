"""Hypervolume and its contribution, for hypervolume-guided weighting and sweeps.

Lu et al. (2025, arXiv 2509.11452), the authors' "vanilla" trainer keeps
a buffer of validation points, measures the hypervolume contribution (HVC) of each new point
against the initial point as reference, and scales the next step's reward by the meta reward
``0.5 + 1.5 * tanh(HVC)``. The hypervolume itself is moocore's (exact, any dimension).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def hypervolume(points, ref, maximize: bool | Sequence[bool] = True) -> float:
    """Hypervolume dominated by ``points`` ``(n, k)`` with respect to ``ref`` ``(k,)``.

    ``maximize`` is one flag or one per objective (e.g. accuracy up, length down). Points that do
    not dominate the reference contribute nothing.
    """
    import moocore

    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if pts.size == 0:
        return 0.0
    flags = (
        [bool(maximize)] * pts.shape[1]
        if isinstance(maximize, (bool, np.bool_))
        else [bool(m) for m in maximize]
    )
    return float(moocore.hypervolume(pts, ref=np.asarray(ref, dtype=np.float64), maximise=flags))


def hypervolume_contribution(buffer, point, ref, maximize: bool | Sequence[bool] = True) -> float:
    """``HV(buffer + [point]) - HV(buffer)``, never negative (adding a point cannot shrink HV).

    Like the authors' code, a clearly negative value (below -1e-12) is a bug and raises.
    """
    before = hypervolume(buffer, ref, maximize) if len(buffer) else 0.0
    after = hypervolume([*buffer, point], ref, maximize)
    hvc = after - before
    if hvc < -1e-12 * max(1.0, abs(before)):
        raise ArithmeticError(f"hypervolume decreased by {-hvc} after adding a point")
    return max(0.0, hvc)


def meta_reward(hvc: float, base: float = 0.5, scale: float = 1.5) -> float:
    """The authors' reward multiplier: ``0.5 + 1.5 * tanh(HVC)``, in [0.5, 2)."""
    return base + scale * math.tanh(max(0.0, hvc))
