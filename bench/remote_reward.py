"""Throughput of a reward scored locally (its own Ray actor) versus over HTTP (an actor calling
``align serve-reward`` in another process), side by side on the same machine, same batches.

Two rewards: the ``correctness`` function (the HTTP overhead alone) and a reward model on the tiny
base (``--model``, default: a seeded sequence-classification head on builtin:tiny; pass a trained
one, e.g. runs/rm_tiny/reward_model). Batches alternate local / remote so that drift hits both.

    python bench/remote_reward.py [--batches 20] [--batch 128] [--out bench/results/remote_reward.md]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sides import write_report  # noqa: E402


def seeded_reward_model(out: Path) -> str:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from align.models.builtin import resolve_model_path

    base = resolve_model_path("builtin:tiny")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


def batches(n: int, size: int) -> list[tuple[list, list, dict]]:
    from align.data.tasks import arithmetic_dataset

    rows = arithmetic_dataset(n * size, 0, "train")
    rng = random.Random(0)
    out = []
    for b in range(n):
        part = rows[b * size : (b + 1) * size]
        comps = [
            f"{r['prompt'][:-1]},{r['answer']}</think>{r['answer'] if rng.random() < 0.7 else int(r['answer']) + 1}"
            for r in part
        ]
        out.append(([r["prompt"] for r in part], comps, {"answer": [r["answer"] for r in part]}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--model", help="A reward model directory (default: a seeded head on builtin:tiny).")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "remote_reward.md"))
    args = ap.parse_args()

    import ray
    import yaml

    from align.config import reward_entry
    from align.workers.reward import RewardPool
    from rewards.process import RewardServer

    tmp = Path(tempfile.mkdtemp(prefix="bench_remote_"))
    model = args.model or seeded_reward_model(tmp / "rm")
    data = batches(args.batches + 2, args.batch)
    os.environ["ALIGN_REWARD_TOKEN"] = "bench-token"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    for label, entry in (
        ("correctness (function)", {"fn": "correctness"}),
        ("reward model (tiny, batch 64)", {"model": model, "name": "rm", "batch_size": 64}),
    ):
        config = tmp / "serve.yaml"
        config.write_text(yaml.safe_dump({"rewards": [entry]}))
        server = RewardServer(str(config), token="bench-token")
        try:
            local = RewardPool([reward_entry(**entry).model_dump()])
            remote = RewardPool(
                [reward_entry(url=server.url, name="remote", batch_size=args.batch).model_dump()]
            )
            times = {"local": [], "remote": []}
            for i, (p, c, cols) in enumerate(data):
                for side, pool in (
                    (("local", local), ("remote", remote))
                    if i % 2 == 0
                    else (("remote", remote), ("local", local))
                ):
                    t0 = time.perf_counter()
                    scores = pool.score(p, c, cols)
                    if i >= 2:  # two warm-up batches
                        times[side].append(time.perf_counter() - t0)
                    assert not scores.dropped.any()
            local.release(), remote.release()
        finally:
            server.kill()
        tput = {s: args.batch / statistics.median(t) for s, t in times.items()}
        rows.append(
            (
                label,
                tput["local"],
                tput["remote"],
                tput["remote"] / tput["local"],
                statistics.median(times["local"]) * 1e3,
                statistics.median(times["remote"]) * 1e3,
            )
        )
        print(
            f"{label}: local {tput['local']:.0f}/s, remote {tput['remote']:.0f}/s, ratio {tput['remote'] / tput['local']:.3f}"
        )
    ray.shutdown()
    import platform

    lines = [
        "# Remote (HTTP) versus local reward throughput",
        "",
        f"`python bench/remote_reward.py --batches {args.batches} --batch {args.batch}"
        + (f" --model {args.model}" if args.model else "")
        + f"` on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, CPU only. Each side scores the same {args.batches} batches of {args.batch} "
        "completions (after 2 warm-up batches), alternating; median batch time. Local: the reward in its own Ray actor "
        "(as in a run). Remote: an actor with the `http` reward calling `align serve-reward` (FastAPI/uvicorn, bearer "
        "token) in another process on 127.0.0.1.",
        "",
        "| reward | local samples/s | remote samples/s | remote / local | local ms/batch | remote ms/batch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r[0]} | {r[1]:.0f} | {r[2]:.0f} | {r[3]:.3f} | {r[4]:.1f} | {r[5]:.1f} |" for r in rows]
    lines += [
        "",
        "The remote path adds JSON encoding, one HTTP round trip per request and the server's decoding; "
        "for a model reward the forward pass dominates and the ratio approaches 1.",
    ]
    write_report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
