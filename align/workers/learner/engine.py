"""A DeepSpeed engine over a set of trainable parameters, and its optimizer state as flat named arrays
(for safetensors checkpoints). The policy and the critic each have one."""

from __future__ import annotations

import numpy as np
import torch

from align.workers.learner.spec import LearnerSpec


def ds_config(spec: LearnerSpec, lr: float) -> dict:
    return {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": 1,  # accumulation boundaries are marked by the loop itself
        "zero_optimization": {"stage": spec.zero_stage},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": lr,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": 0.0,
                "torch_adam": True,
            },
        },
        "gradient_clipping": spec.grad_clip,
        "bf16": {"enabled": spec.dtype == "bfloat16"},
        "fp16": {"enabled": spec.dtype == "float16"},
        "steps_per_print": 2**31 - 1,
    }


def start_engine(module: torch.nn.Module, params, spec: LearnerSpec, lr: float):
    """``(engine, optimizer)`` stepping ``params`` (a list, or parameter groups) of ``module``."""
    import deepspeed

    engine, optimizer, _, _ = deepspeed.initialize(
        model=module, model_parameters=params, config=ds_config(spec, lr)
    )
    return engine, optimizer


def base_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer stepping the fp32 weights (ZeRO's inner one, or the engine's own)."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def masters(optimizer) -> list[torch.Tensor]:
    """ZeRO's fp32 master partitions of this rank (none without ZeRO)."""
    if hasattr(optimizer, "single_partition_of_fp32_groups"):
        return list(optimizer.single_partition_of_fp32_groups)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(
            f"trials sharing a learner need learner.zero_stage 1 or 2, or a float32 stage-0 engine "
            f"(this engine's optimizer is {type(optimizer).__name__})"
        )
    return []


def refresh_masters(optimizer) -> None:
    """ZeRO keeps an fp32 master copy of the weights: after the weights were set in place, take it
    from them again (nothing to do without ZeRO)."""
    if hasattr(optimizer, "_restore_from_bit16_weights"):
        optimizer._restore_from_bit16_weights()


def optimizer_state(optimizer, prefix: str = "") -> dict[str, np.ndarray]:
    from align.store.checkpoint import flatten_state

    return flatten_state(optimizer.state_dict(), prefix)


def load_optimizer_state(optimizer, flat: dict[str, np.ndarray], zero_stage: int, world_size: int) -> None:
    from align.store.checkpoint import unflatten_state

    state = unflatten_state(optimizer.state_dict(), flat)
    if zero_stage > 0:
        # ZeRO reads entry [dp_rank] of a per-rank list; the fp32 master partition is restored
        # from the saved one (not re-derived from the weights) so the resume is bit-exact.
        optimizer.load_state_dict([state] * world_size, load_from_fp32_weights=True)
    else:
        optimizer.load_state_dict(state)
