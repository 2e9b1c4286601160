"""Evaluate checkpoints (``align eval CONFIG [--checkpoint DIR]``): the config's eval split, generated
with vLLM (greedy, or sampled with data.eval_temperature and data.eval_samples), for the base model
(adapter off) and each checkpoint's adapter. A library function: it returns an ``EvalReport`` (the
results, and the lines of a table per level for whoever shows them) and writes ``eval.json`` and a
plot into ``trainer.output_dir``; it prints nothing."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import ray

from align.eval.loop import evaluate
from align.reporting.metrics import LEVEL_METRICS, plot_levels
from align.store.checkpoint import load_checkpoint, verify

log = logging.getLogger("align.eval")


def _adapter_from(path: str) -> tuple[dict, dict]:
    """Adapter tensors and config from a ``step_N`` checkpoint (verified) or a peft adapter folder."""
    from safetensors.numpy import load_file

    p = Path(path)
    if (p / "checkpoints").is_dir():  # a run directory: its newest checkpoint
        from align.store.checkpoint import list_checkpoints

        found = list_checkpoints(p / "checkpoints")
        if not found:
            raise FileNotFoundError(f"--checkpoint {path}: the run directory has no complete checkpoint")
        p = found[-1]
    if (p / "manifest.json").exists():
        ckpt = load_checkpoint(p)
        return ckpt["adapter"], ckpt["adapter_config"]
    if not (p / "adapter_model.safetensors").exists():
        raise FileNotFoundError(
            f"--checkpoint {path}: neither a checkpoint (manifest.json) nor an adapter folder (adapter_model.safetensors)"
        )
    if (p.parent / "manifest.json").exists():
        verify(p.parent)  # the adapter folder of a checkpoint: check it too
    return load_file(str(p / "adapter_model.safetensors")), json.loads(
        (p / "adapter_config.json").read_text()
    )


def table(results: dict[str, dict[str, float]]) -> str:
    """Rows: model x metric; columns: overall and each level."""
    keys = list(
        dict.fromkeys(k for res in results.values() for k in res)
    )  # a model may lack one (no wrong answers)
    levels = sorted({k.split("/level_")[1] for k in keys if "/level_" in k}, key=lambda x: (len(x), x))
    metrics = [k for k in keys if "/level_" not in k]
    header = f"{'model':<12}{'metric':<16}{'all':>8}" + "".join(f"{'L' + lv:>8}" for lv in levels)
    lines = [header]
    for name, res in results.items():
        for m in metrics:
            cells = "".join(f"{res.get(f'{m}/level_{lv}', float('nan')):>8.3f}" for lv in levels)
            lines.append(f"{name:<12}{m:<16}{res.get(m, float('nan')):>8.3f}{cells}")
    return "\n".join(lines)


@dataclass
class EvalReport:
    """What ``run_eval`` measured: ``results`` (label -> metric -> value; ``base`` is the adapter off)."""

    results: dict[str, dict[str, float]]
    header: str
    json_path: Path
    plot: Path | None

    def lines(self) -> list[str]:
        """The header, the table per level, and where the plot is."""
        return [self.header, table(self.results)] + ([f"plot: {self.plot}"] if self.plot else [])


def run_eval(
    cfg,
    config_dir: str | None,
    checkpoints: list[str] | str | None,
    address: str | None = None,
    labels: list[str] | None = None,
) -> EvalReport:
    from transformers import AutoTokenizer

    from align.data.loading import load_eval_rows
    from align.models.builtin import resolve_model_path
    from align.runner.actors import Actors
    from align.runner.cluster import check_address, start_ray
    from align.runner.pool import ActorPool
    from align.workers.groups import RolloutGroup
    from align.workers.reward import RewardPool
    from align.workers.rollout import RolloutSpec

    if not cfg.data.eval:
        raise ValueError("data.eval is null: name an eval dataset to evaluate on")
    checkpoints = [checkpoints] if isinstance(checkpoints, str) else list(checkpoints or [])
    labels = list(labels or [])
    if labels and len(labels) != len(checkpoints):
        raise ValueError(f"--label given {len(labels)} times for {len(checkpoints)} --checkpoint")
    labels = labels or (["checkpoint"] if len(checkpoints) == 1 else [Path(c).name for c in checkpoints])
    if len(set(labels)) != len(labels) or "base" in labels:
        raise ValueError(f"labels must be distinct and not 'base': {labels} (use --label)")
    from align.models.adapters import check_adapter

    adapters = [_adapter_from(c) for c in checkpoints]  # all checked before anything starts
    model_path = resolve_model_path(cfg.model.path)
    for c, (tensors, _) in zip(checkpoints, adapters):
        check_adapter(tensors, model_path, f"--checkpoint {c}", cfg.model.trust_remote_code)
    if address:  # before loading anything: a wrong address costs nothing
        check_address(address)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = load_eval_rows(cfg.data.eval, tokenizer, config_dir)[: cfg.data.eval_size]
    spec = RolloutSpec.from_config(cfg, model_path)
    spec.lora_rank = max([cfg.model.lora.r] + [int(a[1].get("r", 0)) for a in adapters])  # COFS: larger
    _, owns_ray = start_ray(cfg, address, rollout_workers=1, learner_ranks=0)
    started = None
    try:
        # kept actors of this process (``align.runner.pool``) when an engine of this spec is kept
        kept = (
            ActorPool.current.eval_views(cfg, spec, config_dir) if ActorPool.current and not address else None
        )
        if kept is not None:
            rollouts, rewards = kept
        else:
            rewards = RewardPool(
                [r.model_dump() for r in cfg.rewards], config_dir, cfg.trainer.actor_restarts
            )
            rollouts = RolloutGroup(spec, 1, cfg.rollout.num_cpus, max_restarts=cfg.trainer.actor_restarts)
            started = Actors(None, rollouts, rewards, owns_ray)
        results = {"base": evaluate(rollouts, rewards, rows, tokenizer, cfg, use_adapter=False)}
        for version, (label, adapter) in enumerate(zip(labels, adapters), start=1):
            rollouts.load_adapter(version, ray.put(adapter[0]), adapter[1])
            results[label] = evaluate(rollouts, rewards, rows, tokenizer, cfg, use_adapter=True)
    finally:
        if owns_ray:
            ray.shutdown()
        elif started is not None and ray.is_initialized():  # a cluster it did not start: free what it used
            started.release()
    how = (
        f"{cfg.data.eval_samples} samples at T={cfg.data.eval_temperature:g}"
        if cfg.data.eval_temperature > 0
        else "greedy"
    )
    header = f"eval: {cfg.data.eval} ({len(rows)} prompts, {how}, vLLM)" + "".join(
        f"; {lb}: {c}" for lb, c in zip(labels, checkpoints)
    )
    out = Path(cfg.trainer.output_dir) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    plot = plot_levels(
        results,
        out.with_name("eval_levels.png"),
        LEVEL_METRICS + ("length_wrong",),
        title=f"{cfg.data.eval}, {how}, {len(rows)} prompts",
    )
    return EvalReport(results, header, out, plot)
