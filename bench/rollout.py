"""Rollout throughput: align's vLLM RolloutEngine versus HF ``generate`` on the same model,
prompts and sampling settings (G samples per prompt, as GRPO rollouts are). Completion tokens per
second, EOS and padding not counted. Each side runs in its own process (vLLM's CPU threads would
otherwise slow the other side) and is timed after a warm-up call.

    .venv/bin/python bench/rollout.py [--model builtin:small-init] [--prompts 64] [--group 4] [--new-tokens 192]

Writes bench/results/rollout.md. ``builtin:small-init`` (23.7M parameters, random init) needs no
warm-start build and generates long completions, which is what a throughput test wants.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from align.data.tasks import arithmetic_dataset
from align.models.builtin import resolve_model_path


def hf_tokens_per_second(path: str, prompts: list[str], group: int, new_tokens: int, threads: int) -> tuple[float, int, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    enc = tok(prompts, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_p=1.0, pad_token_id=tok.pad_token_id,
              eos_token_id=tok.eos_token_id, num_return_sequences=group)
    with torch.no_grad():
        model.generate(**tok(prompts[:2], return_tensors="pt", padding=True), **{**kw, "max_new_tokens": 4})  # warm-up
        t0 = time.time()
        out = model.generate(**enc, **kw)
    seconds = time.time() - t0
    gen = out[:, enc.input_ids.shape[1]:]
    tokens = int(((gen != tok.pad_token_id) & (gen != tok.eos_token_id)).sum())
    return tokens / seconds, tokens, seconds


def vllm_tokens_per_second(path: str, prompts: list[str], group: int, new_tokens: int) -> tuple[float, int, float]:
    from align.workers.rollout import RolloutEngine

    engine = RolloutEngine({"model_path": path, "dtype": "float32", "max_model_len": new_tokens + 32,
                            "gpu_memory_utilization": 0.15, "lora_rank": 8})
    t0 = time.time()
    groups = engine.generate(prompts, n=group, max_tokens=new_tokens, temperature=1.0, top_p=1.0, seeds=list(range(len(prompts))),
                             use_adapter=False, logprobs_for=1)  # as the trainer asks: log-probs for one prompt
    seconds = time.time() - t0
    eos = engine.tokenizer.eos_token_id
    tokens = sum(sum(1 for t in s["completion_ids"] if t != eos) for g in groups for s in g)
    return tokens / seconds, tokens, seconds


def main() -> None:
    import json
    import subprocess
    import sys

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:small-init")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=192)
    ap.add_argument("--side", choices=["vllm", "hf"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_model_path(args.model)
    prompts = [r["prompt"] for r in arithmetic_dataset(args.prompts, 0)]
    if args.side:
        fn = vllm_tokens_per_second if args.side == "vllm" else hf_tokens_per_second
        extra = () if args.side == "vllm" else (os.cpu_count() or 1,)
        print(json.dumps(fn(path, prompts, args.group, args.new_tokens, *extra)))
        return
    results = {}
    for side in ("vllm", "hf"):
        out = subprocess.run([sys.executable, __file__, "--side", side, "--model", args.model, "--prompts", str(args.prompts),
                              "--group", str(args.group), "--new-tokens", str(args.new_tokens)],
                             capture_output=True, text=True, check=True)
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    v, h = results["vllm"], results["hf"]
    ratio = v[0] / h[0]
    report = (
        f"# Rollout throughput: vLLM RolloutEngine vs HF generate\n\n"
        f"model `{args.model}`, {args.prompts} prompts x {args.group} samples, up to {args.new_tokens} new tokens, "
        f"temperature 1.0, float32, {os.cpu_count()} CPU cores, each side in its own process\n\n"
        f"| engine | completion tokens | seconds | tokens/s |\n|---|---:|---:|---:|\n"
        f"| align RolloutEngine (vLLM) | {v[1]} | {v[2]:.2f} | {v[0]:.0f} |\n"
        f"| HF generate | {h[1]} | {h[2]:.2f} | {h[0]:.0f} |\n\n"
        f"**ratio: {ratio:.1f}x** (target >= 8x)\n"
    )
    out_md = Path(__file__).parent / "results" / "rollout.md"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
