"""PPO with a learned critic against GRPO at equal samples per step (issue 23), on the tiny model and
on SmolLM2-135M-Instruct, two seeds per arm; and the learner's memory with the critic on the
policy's own base (one copy) against a critic on a second copy of the base.

    .venv/bin/python experiments/ppo_vs_grpo.py [--models tiny smollm2] [--seeds 0 1] [--reuse]

Arms (same samples per step, same update schedule: one epoch, one minibatch, KL 0):
- tiny (configs/grpo_tiny.yaml, ppo_tiny.yaml): GRPO 16 prompts x 8; PPO 128 prompts x 1 (PPO as
  OpenRLHF runs it, one sample per prompt); PPO 16 x 8 (the same prompts as GRPO, the critic as the
  only baseline). Evaluation sampled at temperature 1 (4 samples x 200 prompts: greedy saturates).
- smollm2 (grpo_smollm2.yaml, ppo_smollm2.yaml): GRPO 8 x 8; PPO 64 x 1. Greedy eval on 200 held-out
  prompts (the base model answers 30%: far from the ceiling of 1).
Memory: ``memory/learner_pss_gib`` and ``_rss_gib`` (the learner ranks' own report after each
optimizer step) of the GRPO and PPO runs, and of two short PPO runs whose critic sits on a separate
base: the same model file (``ppo.critic_model`` = the policy's path) and a copy of it in another
directory (another file: what a critic initialised from a reward model costs).

Writes experiments/results/ppo_vs_grpo.md, .json and ppo_vs_grpo.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from effects import metrics_rows  # noqa: E402

from runs import OUT, RUNS, train  # noqa: E402

MODELS = {
    "tiny": {
        "steps": 20,
        "arms": {
            "grpo 16x8": ("grpo_tiny.yaml", []),
            "ppo 128x1": ("ppo_tiny.yaml", ["algorithm.group_size=1", "data.prompts_per_step=128"]),
            "ppo 16x8": ("ppo_tiny.yaml", []),
            # PPO's own update schedule (TRL's PPOTrainer took 4 epochs over each batch), and GRPO's at it
            "grpo 16x8, 4 epochs": ("grpo_tiny.yaml", ["algorithm.ppo_epochs=4"]),
            "ppo 128x1, 4 epochs": (
                "ppo_tiny.yaml",
                ["algorithm.group_size=1", "data.prompts_per_step=128", "algorithm.ppo_epochs=4"],
            ),
            # Monte-Carlo returns (lam 1: no bootstrapping from a young critic) and a faster critic
            "ppo 128x1, lam 1, critic lr 5e-3": (
                "ppo_tiny.yaml",
                [
                    "algorithm.group_size=1",
                    "data.prompts_per_step=128",
                    "algorithm.ppo.lam=1.0",
                    "algorithm.ppo.critic_lr=5.0e-3",
                ],
            ),
        },
        "common": [
            "trainer.eval_every=5",
            "trainer.save_every=0",
            "algorithm.num_minibatches=1",
            "data.eval_size=200",
            "data.eval_temperature=1.0",
            "data.eval_samples=4",
        ],
        "metric": "correctness",
        "path": "builtin:tiny",
    },
    "smollm2": {
        "steps": 15,
        "arms": {
            "grpo 8x8": ("grpo_smollm2.yaml", []),
            "ppo 64x1": ("ppo_smollm2.yaml", []),
        },
        "common": ["trainer.save_every=0", "algorithm.num_minibatches=1"],
        "metric": "number_match",
        "path": "builtin:smollm2-135m",
    },
}


def summarise(run: Path, metric: str) -> dict:
    rows = metrics_rows(run)
    steps = [r for r in rows if r["step"] > 0]
    evals = [r for r in rows if f"eval/{metric}" in r]
    curve = [r.get(f"reward/{metric}") for r in steps]
    mem = [r for r in steps if "memory/learner_pss_gib" in r]
    return {
        "train_curve": curve,
        "train_first5": statistics.fmean(curve[:5]),
        "train_last5": statistics.fmean(curve[-5:]),
        "eval_before": evals[0][f"eval/{metric}"],
        "eval_after": evals[-1][f"eval/{metric}"],
        "eval_curve": [(r["step"], r[f"eval/{metric}"]) for r in evals],
        "step_s": statistics.median(r["timing/step"] for r in steps),
        "pss_gib": max(r["memory/learner_pss_gib"] for r in mem) if mem else None,
        "rss_gib": max(r["memory/learner_rss_gib"] for r in mem) if mem else None,
        "explained_variance_last5": statistics.fmean(r["critic/explained_variance"] for r in steps[-5:])
        if "critic/explained_variance" in steps[-1]
        else None,
    }


def base_params(path: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    from align.models.builtin import resolve_model_path

    local = resolve_model_path(path)
    with __import__("torch").device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(local))
    return sum(p.numel() for p in model.parameters())


def memory_arms(model: str, spec: dict, reuse: bool) -> dict:
    """Short PPO runs (2 steps, no eval) whose critic sits on its own base: the same file, a copy."""
    from align.models.builtin import resolve_model_path

    local = Path(resolve_model_path(spec["path"]))
    copy = RUNS / "ppo_vs_grpo" / f"{model}_critic_base_copy"
    if not (copy / "config.json").exists():
        shutil.copytree(local, copy, dirs_exist_ok=True)
    config = spec["arms"][next(a for a in spec["arms"] if a.startswith("ppo"))][0]
    out = {}
    for arm, critic in (
        ("shared base", None),
        ("separate, same file", str(local)),
        ("separate, copied file", str(copy)),
    ):
        sets = [*spec["common"], "trainer.max_steps=2", "data.eval=null", "trainer.seed=0"]
        if critic:
            sets.append(f"algorithm.ppo.critic_model={critic}")
        run = train(
            config, f"ppo_vs_grpo/{model}_memory_{arm.replace(' ', '_').replace(',', '')}", sets, reuse
        )
        mem = [r for r in metrics_rows(run) if "memory/learner_pss_gib" in r]
        out[arm] = {
            "pss_gib": max(r["memory/learner_pss_gib"] for r in mem),
            "rss_gib": max(r["memory/learner_rss_gib"] for r in mem),
            "step_s": statistics.median(r["timing/step"] for r in metrics_rows(run) if r["step"] > 0),
        }
    return out


def plot(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(13, 4.2 * len(results)), squeeze=False)
    for i, (model, res) in enumerate(results.items()):
        ax_t, ax_e = axes[i]
        for k, (arm, seeds) in enumerate(res["arms"].items()):
            color = f"C{k}"
            for j, s in enumerate(seeds.values()):
                ax_t.plot(
                    range(1, len(s["train_curve"]) + 1),
                    s["train_curve"],
                    color=color,
                    alpha=0.8,
                    ls="-" if j == 0 else "--",
                    label=f"{arm} s{j}",
                )
                xs, ys = zip(*s["eval_curve"])
                ax_e.plot(
                    xs, ys, color=color, marker="o", ms=3, ls="-" if j == 0 else "--", label=f"{arm} s{j}"
                )
        metric = MODELS[model]["metric"]
        ax_t.set_title(f"{model}: train reward/{metric} (sampled)")
        ax_e.set_title(
            f"{model}: eval {metric} ({'sampled T=1, 4x200' if model == 'tiny' else 'greedy, 200'})"
        )
        for ax in (ax_t, ax_e):
            ax.set_xlabel("step")
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")  # the task's ceiling
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def report(results: dict) -> list[str]:
    lines = [
        "# PPO (learned critic) vs GRPO at equal samples per step",
        "",
        "`experiments/ppo_vs_grpo.py`; each run its own process on this machine (2 cores, CPU); one epoch, one",
        "minibatch, KL 0 in every arm; the task's ceiling is 1.0 (every answer right). Mean ± half the",
        "spread of the two seeds, the seeds' values in brackets.",
        "",
    ]
    for model, res in results.items():
        lines += [
            f"## {model}",
            "",
            "| arm | train reward, first 5 steps | last 5 steps | eval before | eval after | step (s) | learner PSS (GiB) | critic EV, last 5 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for arm, seeds in res["arms"].items():
            vals = list(seeds.values())

            def cell(key: str, fmt: str = ".3f") -> str:
                xs = [v[key] for v in vals if v.get(key) is not None]
                if not xs:
                    return "-"
                mean, half = statistics.fmean(xs), (max(xs) - min(xs)) / 2
                return f"{mean:{fmt}} ± {half:{fmt}} [{', '.join(format(x, fmt) for x in xs)}]"

            lines.append(
                f"| {arm} | {cell('train_first5')} | {cell('train_last5')} | {cell('eval_before')} | "
                f"{cell('eval_after')} | {cell('step_s', '.1f')} | {cell('pss_gib', '.2f')} | "
                f"{cell('explained_variance_last5', '.2f')} |"
            )
        mem = res.get("memory")
        if mem:
            n = res["base_params"]
            lines += [
                "",
                f"Learner memory, PPO 2 steps (base: {n / 1e6:.1f}M parameters, {n * 4 / 2**30:.2f} GiB in float32 per copy):",
                "",
                "| critic | base copies in the learner | PSS (GiB) | RSS (GiB) | step (s) |",
                "|---|---:|---:|---:|---:|",
            ]
            for arm, m in mem.items():
                copies = 1 if arm == "shared base" else 2
                lines.append(
                    f"| {arm} | {copies} | {m['pss_gib']:.2f} | {m['rss_gib']:.2f} | {m['step_s']:.1f} |"
                )
        lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--reuse", action="store_true", help="keep runs that already finished")
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args()
    path = OUT / "ppo_vs_grpo.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for model in args.models:
        spec = MODELS[model]
        res = results.setdefault(model, {"arms": {}})
        for arm, (config, sets) in spec["arms"].items():
            for seed in args.seeds:
                label = f"ppo_vs_grpo/{model}_{arm.replace(',', '').replace(' ', '_')}_s{seed}"
                run = train(
                    config,
                    label,
                    [*spec["common"], *sets, f"trainer.max_steps={spec['steps']}", f"trainer.seed={seed}"],
                    args.reuse,
                )
                res["arms"].setdefault(arm, {})[str(seed)] = summarise(run, spec["metric"])
                path.write_text(json.dumps(results, indent=2))
        if not args.no_memory:
            res["memory"] = memory_arms(model, spec, args.reuse)
            res["base_params"] = base_params(spec["path"])
        path.write_text(json.dumps(results, indent=2))
    plot(results, OUT / "ppo_vs_grpo.png")
    lines = report(results)
    (OUT / "ppo_vs_grpo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
