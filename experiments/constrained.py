"""Constrained vs unconstrained vs Nelder-Mead threshold search on the built-in task (issue 5).

    .venv/bin/python experiments/constrained.py [--steps 40]

Runs configs/constrained_tiny.yaml three ways (Lagrangian with brevity held at 0.7; static
correctness + brevity with no constraint; Lagrangian with Nelder-Mead over the threshold) and
writes experiments/results/constrained.md with the eval numbers and a multiplier-trajectory plot.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results"


def run(name: str, *sets: str, reuse: bool = False) -> list[dict]:
    out = OUT / "runs" / name
    if reuse and (out / "metrics.jsonl").exists() and list((out / "checkpoints").glob("step_*")):
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    cmd = [
        sys.executable,
        "-m",
        "launch.cli",
        "train",
        str(ROOT / "configs" / "constrained_tiny.yaml"),
        "--set",
        f"trainer.output_dir={out}",
        *[a for s in sets for a in ("--set", s)],
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def evals(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "eval/efficiency" in r]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--nm-steps", type=int, default=70)
    ap.add_argument(
        "--reuse", nargs="*", default=[], help="Runs to read from an earlier invocation instead of rerunning."
    )
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    runs = {
        "lagrangian": run("lagrangian", f"trainer.max_steps={args.steps}", reuse="lagrangian" in args.reuse),
        "unconstrained": run(
            "unconstrained",
            f"trainer.max_steps={args.steps}",
            "objective.name=static",
            reuse="unconstrained" in args.reuse,
        ),
        "nelder_mead": run(
            "nelder_mead",
            f"trainer.max_steps={args.nm_steps}",
            "objective.lagrangian.threshold_search.true_score=efficiency",
            "objective.lagrangian.threshold_search.steps_per_eval=10",
            "objective.lagrangian.threshold_search.check_every=5",
            "objective.lagrangian.threshold_search.max_evals=6",
            "objective.lagrangian.threshold_search.tol=0.001",
            reuse="nelder_mead" in args.reuse,
        ),
    }
    lines = [
        "# Constrained RLHF on the built-in task",
        "",
        "Task correctness; proxy brevity (constraint: equal, threshold from configs/constrained_tiny.yaml); true score efficiency = correctness - 0.1 x thinks "
        "(eval split, greedy, 100 prompts).",
        "",
        "| run | steps | eval brevity (start -> end) | eval correctness | eval efficiency (true) | NoThinking rate |",
        "|---|---:|---|---|---|---|",
    ]
    for name, rows in runs.items():
        e = evals(rows)
        a, b = e[0], e[-1]
        lines.append(
            f"| {name} | {rows[-1]['step']} | {a['eval/brevity']:.3f} -> {b['eval/brevity']:.3f} | "
            f"{a['eval/correctness']:.3f} -> {b['eval/correctness']:.3f} | {a['eval/efficiency']:.3f} -> "
            f"{b['eval/efficiency']:.3f} | {a['eval/nothink_rate']:.2f} -> {b['eval/nothink_rate']:.2f} |"
        )
    lag = [r for r in runs["lagrangian"] if "objective/multiplier/brevity" in r]
    last5 = [r["reward/brevity"] for r in runs["lagrangian"][-5:] if "reward/brevity" in r]
    theta = lag[-1]["objective/threshold/brevity"]
    lines += [
        "",
        f"Lagrangian: train brevity (batch mean) over the last 5 steps {sum(last5) / len(last5):.3f} (threshold {theta:.2f}, "
        f"band {0.95 * theta:.3f}-{1.05 * theta:.3f}); final multiplier s(lambda) {lag[-1]['objective/multiplier/brevity']:.3f}.",
        "",
    ]
    nm = [r for r in runs["nelder_mead"] if "objective/nm/f" in r]
    if nm:
        lines += ["Nelder-Mead evaluations (threshold -> true score at the end of its segment):", ""]
        prev = None
        for r in runs["nelder_mead"]:
            if "objective/nm/f" in r:
                lines.append(
                    f"- step {r['step']}: threshold {prev:.3f} -> efficiency {-r['objective/nm/f']:.3f}"
                )
            prev = r.get("objective/threshold/brevity", prev)
        lines.append(f"- kept threshold: {runs['nelder_mead'][-1]['objective/threshold/brevity']:.3f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, rows in runs.items():
        st = [r for r in rows if "reward/brevity" in r]
        axes[0].plot(
            [r["step"] for r in st], [r["reward/brevity"] for r in st], label=f"{name}: train brevity"
        )
        e = evals(rows)
        axes[2].plot([r["step"] for r in e], [r["eval/efficiency"] for r in e], marker="o", label=f"{name}")
    for name in ("lagrangian", "nelder_mead"):
        st = [r for r in runs[name] if "objective/multiplier/brevity" in r]
        axes[1].plot(
            [r["step"] for r in st],
            [r["objective/multiplier/brevity"] for r in st],
            label=f"{name}: s(lambda)",
        )
        axes[1].plot(
            [r["step"] for r in st],
            [r["objective/threshold/brevity"] for r in st],
            ls="--",
            label=f"{name}: threshold",
        )
    axes[0].axhline(theta, color="k", ls=":", lw=1)
    axes[0].set_title("brevity (proxy), train batches")
    axes[1].set_title("multiplier trajectory and threshold")
    axes[2].set_title("efficiency (true score), eval")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "constrained.png", dpi=100)
    lines += ["", "![constrained](constrained.png)"]
    (OUT / "constrained.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
