"""OFS-DPO and COFS-DPO (Qi et al., 2024, arXiv 2406.05534). No author code is public.

Our reading of the paper (ALGORITHMS.md section 5; every constant is configurable in
``algorithm.preference.ofs`` / ``cofs``):

- Two identical LoRA modules F (fast, learning rate ``lr``) and S (slow, ``lr / lr_ratio``) on one
  frozen base, which is also the DPO reference pi_0. Each minimises its own DPO loss against pi_0.
- The fast-slow term is DPO with the other module as the reference,
  ``L_FS = -log sigmoid(beta * [(log F(y_w) - log S(y_w)) - (log F(y_l) - log S(y_l))])``.
  F minimises ``L_DPO(F) + alpha * L_FS`` with S detached: it widens its lead over S. S minimises
  ``L_DPO(S) - alpha * L_FS`` with F detached (``slow_term: neg_fs``, the min-max reading of the
  paper's shared objective: S closes the gap), or ``L_DPO(S) + alpha * L_SF`` (``sf``: DPO of S
  against F, the bounded variant of the same push). With F = S the term is log 2 and its gradient
  is not zero, which is the paper's point: it keeps a gradient where plain DPO's fades.
- Chasing: the two modules' DPO losses are averaged over non-overlapping windows of
  ``swap_window`` steps; when the slow module's mean is lower, the roles (and so the learning
  rates) swap and the window restarts.
- COFS-DPO: after each domain the fast module is stored; the served adapter is the linear
  combination ``lambda * C + (1 - lambda) * F_t`` of the previous combination C and this domain's
  fast module, taken on the low-rank product ``delta W = B A`` (never on A and B separately, which
  is not linear in delta W). The combination is exact and stays a LoRA adapter: the factors are
  concatenated along the rank, ``A = [A_1; A_2]``, ``B = [c_1 B_1, c_2 B_2]``, so the rank adds up.
  lambda is chosen on a grid by the mean score on held-out rows of every domain seen so far.
"""

from __future__ import annotations

import re

import numpy as np


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


# ------------------------------------------------------------------ LoRA combination (COFS)
_A = re.compile(r"\.lora_A(\.[^.]+)?\.weight$")


def _pairs(tensors: dict[str, np.ndarray]) -> dict[str, tuple[str, str]]:
    """Module prefix -> (A key, B key) in peft's saved names."""
    out = {}
    for key in tensors:
        m = _A.search(key)
        if m:
            b = key[: m.start()] + ".lora_B" + (m.group(1) or "") + ".weight"
            if b not in tensors:
                raise ValueError(f"adapter has {key} but no {b}")
            out[key[: m.start()]] = (key, b)
    if not out:
        raise ValueError("no LoRA A/B tensors in the adapter")
    return out


def _scale(config: dict) -> float:
    if config.get("use_rslora"):
        return config["lora_alpha"] / config["r"] ** 0.5
    return config["lora_alpha"] / config["r"]


def delta_w(tensors: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    """``scale * B A`` per adapted module (float64): what the adapter adds to each weight."""
    s = _scale(config)
    return {
        p: s * (tensors[b].astype(np.float64) @ tensors[a].astype(np.float64))
        for p, (a, b) in _pairs(tensors).items()
    }


def combine_lora(
    adapters: list[tuple[dict[str, np.ndarray], dict]], coeffs: list[float]
) -> tuple[dict[str, np.ndarray], dict]:
    """The adapter whose ``delta W`` is ``sum_j coeffs[j] * delta W_j``, exactly, as one LoRA adapter.

    Factors are concatenated along the rank (``A = [A_1; A_2; ...]``, ``B = [c_1 s_1/s B_1, ...]``,
    with ``s`` the LoRA scale of the result), so the rank is the sum of the ranks of the terms kept.
    Terms with coefficient 0 are dropped, and a single term with coefficient 1 is returned as it
    was, so ``combine([x, y], [1, 0])`` reproduces adapter ``x`` bit for bit.
    """
    if len(adapters) != len(coeffs) or not adapters:
        raise ValueError("give one coefficient per adapter")
    kept = [(t, c, k) for (t, c), k in zip(adapters, coeffs) if k != 0]
    if not kept:
        raise ValueError("every coefficient is 0: the combination would be the base model")
    if len(kept) == 1 and kept[0][2] == 1:
        return {k: v.copy() for k, v in kept[0][0].items()}, dict(kept[0][1])
    keys = [set(_pairs(t)) for t, _, _ in kept]
    if any(k != keys[0] for k in keys):
        raise ValueError("the adapters adapt different modules; they cannot be combined")
    rank = sum(int(c["r"]) for _, c, _ in kept)
    config = {**kept[0][1], "r": rank, "lora_alpha": float(rank), "use_rslora": False}  # result scale 1
    for field in ("rank_pattern", "alpha_pattern"):
        if config.get(field):
            raise ValueError(f"adapters with a {field} are not supported by combine_lora")
    out: dict[str, np.ndarray] = {}
    for prefix, (a_key, b_key) in _pairs(kept[0][0]).items():
        a_parts, b_parts = [], []
        for tensors, cfg, k in kept:
            a, b = _pairs(tensors)[prefix]
            a_parts.append(tensors[a].astype(np.float32))
            b_parts.append((k * _scale(cfg)) * tensors[b].astype(np.float32))
        out[a_key] = np.ascontiguousarray(np.concatenate(a_parts, axis=0))
        out[b_key] = np.ascontiguousarray(np.concatenate(b_parts, axis=1))
    return out, config


def truncate_lora(
    tensors: dict[str, np.ndarray], config: dict, rank: int, alpha: float
) -> tuple[dict[str, np.ndarray], dict, float]:
    """The best rank-``rank`` adapter (scale ``alpha / rank``) for each module's ``delta W`` (truncated
    SVD), so a learner of that rank can start from a combination. Returns the relative Frobenius
    error over all modules too (0 when the combination's rank is at most ``rank``)."""
    scale = alpha / rank
    out, err2, total2 = {}, 0.0, 0.0
    for prefix, dw in delta_w(tensors, config).items():
        a_key, b_key = _pairs(tensors)[prefix]
        u, s, vt = np.linalg.svd(dw, full_matrices=False)
        k = min(rank, len(s))
        root = np.sqrt(s[:k])
        a = np.zeros((rank, dw.shape[1]))
        b = np.zeros((dw.shape[0], rank))
        a[:k] = root[:, None] * vt[:k]
        b[:, :k] = u[:, :k] * root[None, :] / scale
        out[a_key], out[b_key] = a.astype(np.float32), b.astype(np.float32)
        err2 += float((s[k:] ** 2).sum())
        total2 += float((s**2).sum())
    return (
        out,
        {**config, "r": rank, "lora_alpha": alpha, "use_rslora": False},
        (err2 / total2) ** 0.5 if total2 else 0.0,
    )
