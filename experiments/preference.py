"""OFS-DPO versus DPO (online, in-domain) and COFS-DPO versus sequential DPO (two domains) (issue 7).

    .venv/bin/python experiments/preference.py [--reuse] [--seeds 0 1] [--report-only]

A. Online, on the built-in arithmetic prompts, warm-started tiny model, the same steps, seeds and
   data: DPO (one adapter) and OFS-DPO (fast and slow modules; the fast one served). Compared by
   greedy accuracy on held-out prompts (``align eval``) and by a win-rate: per held-out prompt, the
   mean reward of 4 sampled completions (T 1) of OFS-DPO's adapter against DPO's (same seeds);
   win = higher, tie = half.
B. Offline pairs, arithmetic then string reversal (configs/cofs_dpo_tiny.yaml): COFS-DPO (OFS +
   combination), sequential DPO, and the two ablations (OFS without combination, DPO with
   combination). Score on each domain after each domain (greedy accuracy, 200 held-out prompts
   each), the lambda chosen, a table and PNGs.

Writes experiments/results/preference.md and PNGs beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import numpy as np

from runs import ALIGN, OUT, ROOT, train  # experiments/runs.py

ONLINE = [
    "algorithm.preference.online=true",
    "data.train=builtin:arithmetic",
    "data.eval=builtin:arithmetic-eval",
    "data.eval_size=200",
    "data.prompts_per_step=16",
    "algorithm.preference.num_completions=4",
    "rollout.temperature=1.0",
    "trainer.max_steps=40",
    "trainer.eval_every=10",
    "trainer.save_every=40",
]
ARMS_A = {"dpo": [], "ofs_dpo": ["algorithm.preference.ofs.enabled=true"]}
ARMS_B = {  # label -> overrides of configs/cofs_dpo_tiny.yaml
    "cofs_dpo": [],
    "sequential_dpo": ["algorithm.preference.ofs.enabled=false", "algorithm.preference.cofs.combine=false"],
    "sequential_ofs": ["algorithm.preference.cofs.combine=false"],
    "dpo_combined": ["algorithm.preference.ofs.enabled=false"],
}


def served(run: Path) -> Path:
    return (
        sorted((run / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[-1] / "adapter"
    )


def sampled_rewards(runs: dict[str, Path], n: int = 4, prompts: int = 200) -> dict[str, np.ndarray]:
    """Per held-out prompt, the mean correctness of ``n`` sampled completions (T 1, the same seeds
    for every adapter) of each run's served adapter: ``label -> (prompts,)``."""
    import ray
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    from align.config.loading import load_config
    from align.data.loading import load_prompts
    from align.models.builtin import resolve_model_path
    from align.workers.groups import RolloutGroup
    from align.workers.reward import RewardPool
    from align.workers.rollout import RolloutSpec

    cfg = load_config(ROOT / "configs" / "dpo_tiny.yaml", ONLINE)
    path = resolve_model_path(cfg.model.path)
    rows = load_prompts("builtin:arithmetic-eval", AutoTokenizer.from_pretrained(path))[:prompts]
    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    try:
        rewards = RewardPool([r.model_dump() for r in cfg.rewards], None)
        rollouts = RolloutGroup(RolloutSpec.from_config(cfg, path), 1, cfg.rollout.num_cpus)
        out = {}
        for version, (label, run) in enumerate(runs.items(), start=1):
            adapter = served(run)
            rollouts.load_adapter(
                version,
                ray.put(load_file(str(adapter / "adapter_model.safetensors"))),
                json.loads((adapter / "adapter_config.json").read_text()),
            )
            groups = rollouts.generate(
                [r["prompt"] for r in rows],
                list(range(len(rows))),
                n=n,
                max_tokens=cfg.rollout.max_new_tokens,
                temperature=1.0,
                top_p=1.0,
            )
            flat = [r for r in rows for _ in range(n)]
            samples = [s for g in groups for s in g]
            scores = ray.get(
                rewards.score.remote(
                    [r["prompt"] for r in flat],
                    [s["text"] for s in samples],
                    {"answer": [r["answer"] for r in flat]},
                )
            )
            out[label] = scores.scores[:, 0].reshape(-1, n).mean(axis=1)
    finally:
        ray.shutdown()
    return out


def part_a(seeds: list[int], reuse: bool) -> list[str]:
    lines = [
        "## A. OFS-DPO vs DPO, online, in-domain (arithmetic)",
        "",
        "Online: 16 prompts x 4 samples (T 1) per step, best vs worst by correctness (ties dropped), 40 steps, "
        "beta 0.1, lr 5e-4 (OFS: fast 5e-4, slow 5e-5, alpha 0.5, swap window 10, the fast module served), "
        "warm-started tiny model. Eval: 200 held-out prompts.",
        "",
        "| seed | greedy acc DPO | greedy acc OFS-DPO | sampled reward DPO | sampled reward OFS-DPO | win-rate OFS vs DPO | OFS swaps |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = []
    for seed in seeds:
        runs = {
            label: train(
                "dpo_tiny.yaml", f"{label}_online_s{seed}", ONLINE + sets + [f"trainer.seed={seed}"], reuse
            )
            for label, sets in ARMS_A.items()
        }
        final = {
            label: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
            for label, run in runs.items()
        }
        acc = {label: final[label]["eval/correctness"] for label in runs}
        sampled = sampled_rewards(runs)
        diff = sampled["ofs_dpo"] - sampled["dpo"]
        win = float((diff > 0).mean() + 0.5 * (diff == 0).mean())
        swaps = final["ofs_dpo"].get("ofs/swaps", 0)
        summary.append((acc["dpo"], acc["ofs_dpo"], sampled["dpo"].mean(), sampled["ofs_dpo"].mean(), win))
        lines.append(
            f"| {seed} | {acc['dpo']:.3f} | {acc['ofs_dpo']:.3f} | {sampled['dpo'].mean():.3f} | "
            f"{sampled['ofs_dpo'].mean():.3f} | {win:.3f} ({(diff > 0).sum()} won, {(diff < 0).sum()} lost, "
            f"{(diff == 0).sum()} tied) | {swaps} |"
        )
        subprocess.run(
            [
                *ALIGN,
                "compare",
                *[str(r) for r in runs.values()],
                *[a for lb in runs for a in ("--label", lb)],
                "--metric",
                "reward/correctness",
                "--metric",
                "eval/correctness",
                "--metric",
                "dpo/loss",
                "--metric",
                "dpo/margin",
                "--metric",
                "online/pairs",
                "-o",
                str(OUT / f"preference_online_s{seed}.png"),
            ],
            check=True,
            cwd=ROOT,
        )
    m = np.mean(summary, axis=0)
    lines += [
        "",
        f"Mean over seeds: greedy accuracy DPO {m[0]:.3f}, OFS-DPO {m[1]:.3f}; sampled reward DPO {m[2]:.3f}, "
        f"OFS-DPO {m[3]:.3f}; win-rate {m[4]:.3f}. Curves: "
        + ", ".join(f"preference_online_s{s}.png" for s in seeds),
        "",
    ]
    return lines


SETTINGS_B = {  # tag -> (extra overrides, description)
    "": ([], "30 steps on arithmetic then 30 on string reversal, lr 5e-4 (the config's)"),
    "_lr3e-3": (
        [
            "learner.lr=3e-3",
            "algorithm.preference.domains.0.steps=40",
            "algorithm.preference.domains.1.steps=40",
        ],
        "40 steps on arithmetic then 40 on string reversal, lr 3e-3 (strong enough to forget)",
    ),
}


def part_b(reuse: bool, tag: str) -> list[str]:
    from align.reporting.metrics import plot_domains

    extra, description = SETTINGS_B[tag]
    runs = {
        label: train("cofs_dpo_tiny.yaml", label + tag, sets + extra, reuse) for label, sets in ARMS_B.items()
    }
    results = {label: json.loads((run / "domains.json").read_text()) for label, run in runs.items()}
    plot_domains(
        {label: run / "domains.json" for label, run in runs.items()}, OUT / f"preference_domains{tag}.png"
    )
    lines = [
        f"## B{'2' if tag else '1'}. COFS-DPO vs sequential DPO over two domains: {description}",
        "",
        f"Offline pairs, {description}, 32 pairs per step, beta 0.1, "
        "warm-started tiny model. Score: greedy accuracy on 200 held-out prompts per domain (the first 32 held-out "
        "rows of each domain choose lambda, not scored). Forgetting = arithmetic after domain 1 minus after domain 2.",
        "",
        "| run | arithmetic after 1 | reversal after 1 | arithmetic after 2 | reversal after 2 | forgetting | lambda |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, res in results.items():
        r1, r2 = res["results"]
        lam = r2["lambda"]
        lines.append(
            f"| {label} | {r1['scores']['arithmetic']:.3f} | {r1['scores']['reversal']:.3f} | "
            f"{r2['scores']['arithmetic']:.3f} | {r2['scores']['reversal']:.3f} | "
            f"{r1['scores']['arithmetic'] - r2['scores']['arithmetic']:+.3f} | {'-' if lam is None else f'{lam:.1f}'} |"
        )
    lines += ["", "Held-out score (mean over both domains' 32 rows) per lambda, the runs that combine:", ""]
    for label, res in results.items():
        grid = res["results"][1]["grid"]
        if grid:
            lines.append(f"- {label}: " + ", ".join(f"{float(k):.1f}: {v:.3f}" for k, v in grid.items()))
    lines += ["", f"![domains](preference_domains{tag}.png)", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reuse", action="store_true", help="skip runs that already have a checkpoint")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--part", choices=["a", "b", "all"], default="all")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    lines = [
        "# Preference optimization: OFS-DPO and COFS-DPO (issue 7)",
        "",
        "Generated by `experiments/preference.py`; 2-core CPU, one seed per row.",
        "",
    ]
    if args.part in ("a", "all"):
        lines += part_a(args.seeds, args.reuse)
    if args.part in ("b", "all"):
        for tag in SETTINGS_B:
            lines += part_b(args.reuse, tag)
    out = OUT / ("preference.md" if args.part == "all" else f"preference_{args.part}.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
