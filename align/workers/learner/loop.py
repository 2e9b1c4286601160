"""The one accumulation loop of every loss kind, and the per-objective gradients of the policy loss.

Loss terms are normalised by global counts computed on the driver (``align.losses.aggregation``), so
the gradient of one optimizer step is exactly the gradient of the whole batch's loss, whatever the
split across ranks and micro-batches: each backward is scaled by the world size to undo DeepSpeed's
data-parallel mean, and accumulation scaling is switched off.
"""

from __future__ import annotations

import math
import re
import time
from typing import Callable

import numpy as np
import torch

from align.rollout.batch import select


def accumulate(
    engine,
    params: list[torch.nn.Parameter],
    batch: dict,
    unit: int,
    num_micro: int,
    world_size: int,
    loss_fn: Callable[[dict], tuple[torch.Tensor, dict[str, float]]],
) -> dict[str, float]:
    """Accumulate gradients over this rank's share in ``num_micro`` micro-batches (the same count on
    every rank: ranks with fewer rows run empty, zero-loss micro-batches) and take one step of
    ``engine``. ``unit`` rows make one unit that never straddles micro-batches (a pair: 2). Returns
    the micro-batches' summed statistics, the global gradient norm and the seconds spent."""
    engine.train()
    n = batch["input_ids"].shape[0] // unit
    size = max(1, math.ceil(n / num_micro))
    # Units of similar lengths pad less; the order does not change the (globally normalised) sum of
    # their losses.
    lengths = batch["attention_mask"].sum(dim=1).view(-1, unit).max(dim=1).values
    by_length = torch.argsort(lengths, stable=True).tolist()
    totals: dict[str, float] = {}
    t0 = time.time()
    for m in range(num_micro):
        units = by_length[m * size : (m + 1) * size]
        engine.set_gradient_accumulation_boundary(m == num_micro - 1)
        if units:
            loss, stats = loss_fn(select(batch, [u * unit + j for u in units for j in range(unit)]))
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
        else:  # an empty share still joins the gradient reduction
            loss = sum(p.sum() for p in params) * 0.0
        engine.backward(loss * world_size, scale_wrt_gas=False)
        engine.step()
    grad_norm = engine.get_global_grad_norm()
    totals["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
    totals["seconds"] = time.time() - t0
    return totals


def objective_gram(
    named: list[tuple[str, torch.nn.Parameter]],
    batch: dict,
    advantages: torch.Tensor,
    num_micro: int,
    world_size: int,
    logps_fn: Callable[[dict], torch.Tensor],
    loss_fn: Callable[[dict, torch.Tensor], torch.Tensor],
    param_pattern: str | None = None,
    clip: float | None = None,
) -> np.ndarray:
    """Gram matrix ``S = G G^T`` ``(K, K)`` of the per-objective gradients of a loss.

    For each objective k the loss ``loss_fn(part with advantages[k], logps)`` is differentiated with
    ``torch.autograd.grad`` over the parameters of ``named`` whose name matches ``param_pattern``
    (all by default); one forward pass (``logps_fn``) per micro-batch serves the K losses. No
    optimizer step, and the engine's gradient buffers are not touched. The gradients are summed
    over ranks (all-reduce: the parameters are replicated), so every rank returns the same matrix;
    each g_k is clipped to ``clip`` in norm first, as the authors' code does before reading it.
    """
    import torch.distributed as dist

    if param_pattern:
        named = [(n, p) for n, p in named if re.search(param_pattern, n)]
        if not named:
            raise ValueError(f"objective.param_pattern {param_pattern!r} matches no trainable parameter")
    params = [p for _, p in named]
    n = batch["input_ids"].shape[0]
    size = max(1, math.ceil(n / num_micro))
    num_obj = advantages.shape[0]
    g = torch.zeros(num_obj, sum(p.numel() for p in params), dtype=torch.float32)  # (K, P): this rank's
    for m in range(num_micro):
        idx = list(range(m * size, min(n, (m + 1) * size)))
        if not idx:
            continue
        part = select(batch, idx)
        logps = logps_fn(part)
        for k in range(num_obj):
            loss = loss_fn({**part, "advantages": advantages[k, idx]}, logps)
            grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=k < num_obj - 1)
            g[k] += torch.cat(
                [
                    (gr if gr is not None else torch.zeros_like(p)).reshape(-1).float().cpu()
                    for gr, p in zip(grads, params)
                ]
            )
    if world_size > 1:
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
    if clip:
        norms = g.norm(dim=1, keepdim=True)
        g = g * torch.clamp(clip / (norms + 1e-6), max=1.0)
    g = g.double()
    return (g @ g.T).numpy()
