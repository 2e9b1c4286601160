"""Rollout throughput with the adapter active, as every training step generates: align's vLLM
RolloutEngine (``lora_mode`` merged and adapter) against the same vLLM engine without LoRA and
against HF ``generate`` with and without the peft adapter, on the same model, prompts, adapter and
sampling settings (G samples per prompt, as GRPO rollouts are). Completion tokens per second, EOS
and padding not counted. Each side runs in its own process (vLLM's threads would otherwise slow
the other side) and is timed after a warm-up call on the same prompts.

    .venv/bin/python bench/rollout.py [--model builtin:smollm2-135m] [--prompts 16] [--group 4] [--new-tokens 48]

The adapter is LoRA r=16 on every linear layer, B drawn N(0, 0.002) (seed 0) so that it changes the
outputs (a fresh adapter has B = 0) but keeps the text sensible; every side serves the same one.
Prompts: the built-in chat task for a model with a chat template, the arithmetic task otherwise.
Writes bench/results/rollout[_<model>].md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

SIDES = {
    "vllm_plain": "vLLM engine without LoRA, no seeds, no log-probs (the ceiling)",
    "merged": "align RolloutEngine, lora_mode=merged, adapter active",
    "adapter": "align RolloutEngine, lora_mode=adapter (vLLM LoRA), adapter active",
    "hf": "HF generate, no adapter",
    "hf_peft": "HF generate with the peft adapter",
}


def make_adapter(path: str, directory: str) -> str:
    """A peft adapter folder with small random B (the same for every side: seed 0)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0.0, 0.002, generator=gen)
    model.save_pretrained(directory)
    return directory


def prompts_for(path: str, n: int) -> list[str]:
    from transformers import AutoTokenizer

    from align.data.chat import chat_dataset
    from align.data.tasks import arithmetic_dataset

    tok = AutoTokenizer.from_pretrained(path)
    if getattr(tok, "chat_template", None):
        return [
            tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
            for r in chat_dataset(n, 0)
        ]
    return [r["prompt"] for r in arithmetic_dataset(n, 0)]


def side_hf(args, path: str, adapter_dir: str, prompts: list[str], peft: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if peft:
        from peft import PeftModel

        model = PeftModel.from_pretrained(
            model, adapter_dir
        ).eval()  # unmerged: what a LoRA trainer generates with
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    kw = dict(
        max_new_tokens=args.new_tokens,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        num_return_sequences=args.group,
    )
    with torch.no_grad():
        model.generate(**enc, **{**kw, "max_new_tokens": 4})  # warm-up
        t0 = time.time()
        out = model.generate(**enc, **kw)
    seconds = time.time() - t0
    gen = out[:, enc.input_ids.shape[1] :]
    tokens = int(((gen != tok.pad_token_id) & (gen != tok.eos_token_id)).sum())
    return {"tokens": tokens, "seconds": seconds}


def side_vllm_plain(args, path: str, prompts: list[str]) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import torch
    from vllm import LLM, SamplingParams

    torch.set_num_threads(os.cpu_count() or 1)
    llm = LLM(
        model=path,
        dtype="float32",
        max_model_len=512,
        gpu_memory_utilization=0.15,
        enforce_eager=True,
        seed=0,
    )
    sp = SamplingParams(n=args.group, temperature=1.0, top_p=1.0, max_tokens=args.new_tokens)
    llm.generate(prompts, SamplingParams(n=args.group, max_tokens=4), use_tqdm=False)  # warm-up
    t0 = time.time()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    seconds = time.time() - t0
    eos = llm.get_tokenizer().eos_token_id
    return {
        "tokens": sum(sum(1 for t in c.token_ids if t != eos) for o in outs for c in o.outputs),
        "seconds": seconds,
    }


def side_align(args, path: str, adapter_dir: str, prompts: list[str], mode: str) -> dict:
    import json

    from safetensors.numpy import load_file

    from align.workers.rollout import RolloutEngine

    engine = RolloutEngine(
        {
            "model_path": path,
            "dtype": "float32",
            "max_model_len": 512,
            "gpu_memory_utilization": 0.15,
            "lora_rank": 16,
            "lora_mode": mode,
        }
    )
    tensors = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    sync = engine.load_adapter(1, tensors, config)
    kw = dict(
        n=args.group,
        temperature=1.0,
        top_p=1.0,
        seeds=list(range(len(prompts))),
        use_adapter=True,
        adapter_version=1,
        logprobs_for=1,
    )  # as the trainer asks: sampling log-probs for one prompt (the parity check)
    engine.generate(prompts, **{**kw, "max_tokens": 4})  # warm-up
    t0 = time.time()
    groups = engine.generate(prompts, max_tokens=args.new_tokens, **kw)
    seconds = time.time() - t0
    eos = engine.tokenizer.eos_token_id
    tokens = sum(sum(1 for t in s["completion_ids"] if t != eos) for g in groups for s in g)
    return {"tokens": tokens, "seconds": seconds, "sync_seconds": sync}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--out", default=None)
    ap.add_argument("--adapter-dir", help=argparse.SUPPRESS)
    ap.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sides import emit, run_side, write_report  # bench/ is on the path when this file runs as a script

    from align.models.builtin import resolve_model_path

    path = resolve_model_path(args.model)
    if args.side:
        prompts = prompts_for(path, args.prompts)
        if args.side == "vllm_plain":
            emit(side_vllm_plain(args, path, prompts))
        elif args.side in ("hf", "hf_peft"):
            emit(side_hf(args, path, args.adapter_dir, prompts, args.side == "hf_peft"))
        else:
            emit(side_align(args, path, args.adapter_dir, prompts, args.side))
        return
    adapter_dir = make_adapter(path, tempfile.mkdtemp(prefix="bench-adapter-"))
    argv = [
        "--model",
        args.model,
        "--prompts",
        str(args.prompts),
        "--group",
        str(args.group),
        "--new-tokens",
        str(args.new_tokens),
        "--adapter-dir",
        adapter_dir,
    ]
    from align.workers.rollout import cpu_preload_env

    os.environ.update(cpu_preload_env())  # as the trainer starts its rollout actors (the sides inherit it)
    res = {}
    for side in SIDES:
        res[side] = run_side(__file__, side, argv)
        print(side, res[side], flush=True)
    rate = {k: v["tokens"] / v["seconds"] for k, v in res.items()}
    lines = [
        f"# Rollout throughput with the adapter active: model `{args.model}`\n",
        f"{args.prompts} prompts x {args.group} samples, up to {args.new_tokens} new tokens, temperature 1.0, float32, "
        f"{os.cpu_count()} CPU cores, each side in its own process after a warm-up call; LoRA r=16 on every linear layer "
        f"(random small B, the same adapter on every side); align asks sampling log-probs for 1 prompt and seeds every "
        f"request, as the trainer does.\n",
        "| engine | completion tokens | seconds | tokens/s |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {label} | {res[k]['tokens']} | {res[k]['seconds']:.2f} | {rate[k]:.0f} |"
        for k, label in SIDES.items()
    ]
    lines += [
        "",
        f"**merged adapter vs HF generate with the peft adapter: {rate['merged'] / rate['hf_peft']:.1f}x** (target >= 3x); "
        f"vs the vLLM engine without LoRA: {rate['merged'] / rate['vllm_plain']:.2f} (target >= 0.85); "
        f"vs vLLM's own LoRA path: {rate['merged'] / rate['adapter']:.1f}x. Adapter sync: merged "
        f"{res['merged']['sync_seconds']:.2f} s, vLLM LoRA request {res['adapter']['sync_seconds']:.2f} s.",
        "",
    ]
    name = args.model.removeprefix("builtin:").replace("/", "_")
    write_report("\n".join(lines), args.out or Path(__file__).parent / "results" / f"rollout_{name}.md")


if __name__ == "__main__":
    main()
