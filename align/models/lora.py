"""LoRA adapters as arithmetic on their saved tensors (peft's names, numpy): the weight update
``delta W = scale * B A`` of each adapted module, an exact linear combination of adapters as one LoRA
adapter, and the best low-rank approximation of one (COFS-DPO combines per-domain adapters with these;
``align.algorithms.cofs``)."""

from __future__ import annotations

import re

import numpy as np

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
