"""Offline DPO, align versus TRL's DPOTrainer, side by side on this machine.

Same model (``builtin:small-init`` by default: 23.7M parameters), the same LoRA adapter at the
start (both sides build it the same way: seed 0, then ``get_peft_model``; B = 0 so the first loss
is log 2), the same pairs in the same order per step (align's sampler order is handed to TRL with
a sequential sampler), batch size, beta, learning rate (constant), AdamW, gradient clip 1.0.
Each side runs in its own process with all cores.

Reported: pairs per second over training (TRL: ``trainer.train()``; align: the steps plus its
reference precompute), as ratios, for align's default (reference log-probs precomputed once) and
its ``on_the_fly`` mode, against TRL's default (reference on the fly) and TRL with
``precompute_ref_log_probs=True``; and the loss of every step on each side (same data, same start).

    .venv/bin/python bench/dpo_vs_trl.py [--model builtin:smollm2-135m] [--steps 30] [--pairs 32] [--lora-r 8] [--autocast off|bf16]

Writes bench/results/dpo_vs_trl.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SIDES = {
    "align": "align, reference precomputed",
    "align_otf": "align, reference on the fly",
    "trl": "TRL DPOTrainer (defaults: reference on the fly)",
    "trl_pre": "TRL DPOTrainer, precompute_ref_log_probs=True",
}


def _rows(args) -> list[dict]:
    """The pairs of every step, in align's order."""
    from align.data.sampling import PromptSampler
    from align.data.tasks import preference_pairs

    rows = preference_pairs("arithmetic", args.steps * args.pairs, 0)
    order = PromptSampler(len(rows), 0).take(args.steps * args.pairs)
    return [rows[i] for i in order], rows


def run_trl(args, precompute: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from align.models.builtin import resolve_model_path

    torch.set_num_threads(os.cpu_count() or 1)
    path = resolve_model_path(args.model)
    ordered, _ = _rows(args)
    ds = Dataset.from_list(
        [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in ordered]
    )
    torch.manual_seed(0)  # as align's learner: seed, load, wrap
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.pairs,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        beta=args.beta,
        loss_type=[getattr(args, "loss_type", "sigmoid")],
        use_cpu=True,
        bf16=False,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        precompute_ref_log_probs=precompute,
        disable_dropout=True,
    )

    class InOrder(DPOTrainer):  # the pairs in align's order, one step's pairs per batch
        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    trainer = InOrder(
        model=model, args=config, train_dataset=ds, processing_class=AutoTokenizer.from_pretrained(path)
    )
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
    return {"pairs": args.steps * args.pairs, "seconds": seconds, "losses": losses}


def run_align(args, reference: str) -> dict:
    from align.config.loading import load_config
    from align.runner.trainer import Trainer

    out = Path(tempfile.mkdtemp())
    ordered, rows = _rows(args)
    data = out / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows)
    )
    cfg = load_config(
        None,
        [
            f"model.path={args.model}",
            f"model.lora.r={args.lora_r}",
            f"model.lora.alpha={2 * args.lora_r}",
            "algorithm.name=dpo",
            f"algorithm.preference.beta={args.beta}",
            f"algorithm.preference.loss_type={getattr(args, 'loss_type', 'sigmoid')}",
            f"algorithm.preference.pairs_per_step={args.pairs}",
            f"algorithm.preference.reference={reference}",
            f"trainer.max_steps={args.steps}",
            f"trainer.output_dir={out / 'run'}",
            "trainer.save_every=0",
            f"data.train={data}",
            "data.eval=null",
            f"learner.lr={args.lr}",
            f"learner.micro_batch_size={args.micro_batch}",
            "learner.num_ranks=1",
            "learner.num_cpus=1",
            f"learner.autocast={getattr(args, 'autocast', 'off')}",
        ],
    )
    Trainer(cfg).run()
    steps = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "timing/step" in r]
    seconds = sum(r["timing/step"] + r.get("timing/reference_precompute", 0.0) for r in steps)
    return {
        "pairs": sum(r["dpo/pairs"] for r in steps),
        "seconds": seconds,
        "losses": [r["dpo/loss"] for r in steps],
        "precompute": sum(r.get("timing/reference_precompute", 0.0) for r in steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:small-init")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument(
        "--micro-batch",
        type=int,
        default=16,
        help="align: sequences per forward/backward, grouped by length "
        "(gradients accumulate to one optimizer step per step, as TRL's one batch)",
    )
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off", help="align: learner.autocast")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dpo_vs_trl.md"))
    ap.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sides import emit, run_side, write_report  # bench/ is on the path when this file runs as a script

    if args.side:
        fn = {
            "align": lambda: run_align(args, "precompute"),
            "align_otf": lambda: run_align(args, "on_the_fly"),
            "trl": lambda: run_trl(args, False),
            "trl_pre": lambda: run_trl(args, True),
        }[args.side]
        emit(fn())
        return
    res = {}
    for side in SIDES:
        res[side] = run_side(__file__, side, sys.argv[1:])
        print(side, res[side]["seconds"], flush=True)
    rate = {k: v["pairs"] / v["seconds"] for k, v in res.items()}
    lines = [
        "# Offline DPO: align vs TRL DPOTrainer\n",
        f"model `{args.model}`, LoRA r={args.lora_r} (all linear layers), {args.steps} steps x {args.pairs} pairs "
        f"(built-in arithmetic preference pairs, the same pairs per step on both sides), beta {args.beta}, "
        f"lr {args.lr} constant, AdamW, clip 1.0, float32 weights (align learner autocast {args.autocast}), {os.cpu_count()} CPU cores; align: 1 DeepSpeed ZeRO-2 learner "
        f"rank on Ray, micro-batches of {args.micro_batch} sequences of similar length accumulated into one step; TRL one batch per step, padded; TRL {__import__('trl').__version__}.\n",
        "| | pairs | seconds | pairs/s |",
        "|---|---:|---:|---:|",
    ]
    for k, label in SIDES.items():
        extra = (
            f" (of which reference precompute {res[k]['precompute']:.1f} s)"
            if res[k].get("precompute")
            else ""
        )
        lines.append(f"| {label} | {res[k]['pairs']} | {res[k]['seconds']:.1f}{extra} | {rate[k]:.1f} |")
    lines += [
        "",
        f"**ratio align / TRL (both defaults): {rate['align'] / rate['trl']:.2f}x** (target >= 1.5x, with equal losses); "
        f"align on the fly / TRL default: {rate['align_otf'] / rate['trl']:.2f}x; "
        f"align precomputed / TRL precomputed: {rate['align'] / rate['trl_pre']:.2f}x",
        "",
    ]
    n = min(len(res["align"]["losses"]), len(res["trl"]["losses"]))
    diffs = [abs(a - t) for a, t in zip(res["align"]["losses"][:n], res["trl"]["losses"][:n])]
    lines += [
        f"Loss per step (same pairs, same initial adapter): max |align - TRL| = {max(diffs):.2e} over {n} steps; "
        f"final loss align {res['align']['losses'][-1]:.4f}, TRL {res['trl']['losses'][-1]:.4f}.",
        "",
        "| step | align | align on the fly | TRL | TRL precomputed |",
        "|---:|---:|---:|---:|---:|",
    ]
    for i in range(n):
        if i < 5 or i % 5 == 4 or i == n - 1:
            lines.append(
                f"| {i + 1} | {res['align']['losses'][i]:.4f} | {res['align_otf']['losses'][i]:.4f} | "
                f"{res['trl']['losses'][i]:.4f} | {res['trl_pre']['losses'][i]:.4f} |"
            )
    write_report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
