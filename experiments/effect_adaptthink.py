"""AdaptThink vs GRPO where skipping thinking has room to pay (issue 20).

    .venv/bin/python experiments/effect_adaptthink.py [--reuse] [--steps 60] [--long-steps 120] [--shares 0.2 0.5 0.8]
        [--deltas 0.1 0.2]

The paper's claim: AdaptThink learns to answer easy problems without thinking, cutting the mean
response length at equal (or better) accuracy. On the built-in mix (levels 1-5 uniform) the most any
policy could save at equal accuracy was 4.6%. Here the share of easy (level-1) prompts is varied:
p (0.8 by default; 0.2 and 0.5 with --shares), the other prompts uniform over levels 2-5. Thinking costs 8 + 6 (level - 1)
tokens and NoThinking 3, and NoThinking is reliable only on level 1, so the ceiling (every level-1
prompt answered without thinking, all others thought through) saves 5p / (8p + 23 (1 - p)) of the
think-always length: 5% / 16% / 36%. Both arms at the paper's delta 0.05, two seeds, 60 steps, and at
the largest share a second pair of 120 steps (the tiny model's mode choice separates by level
slowly); metrics are sampled at temperature 1 (4 samples per eval prompt), where greedy accuracy
saturates. ``--deltas`` adds AdaptThink arms with larger NoThinking bonuses to that longer pair (the
paper's accuracy-length trade-off: a larger delta buys length with accuracy).
"""

from __future__ import annotations

import argparse

from effects import (
    arm_table,
    compare,
    easy_share_mix,
    eval_runs,
    level_mix_file,
    per_arm,
    run_arms,
    share_tag,
    write_report,
)

SHARES = (0.8,)  # others with --shares 0.2 0.5 0.8 (ceilings 5%, 16%)
THINK_LEN = {lv: 8 + 6 * (lv - 1) for lv in range(1, 6)}
NOTHINK_LEN = 3
SAMPLED = ["data.eval_temperature=1.0", "data.eval_samples=4", "data.eval_size=200"]


def ceiling(p: float) -> tuple[float, float, float]:
    """(think-always length, best length at full accuracy, saving)."""
    think = sum(s * THINK_LEN[lv] for lv, s in easy_share_mix(p).items())
    best = think - p * (THINK_LEN[1] - NOTHINK_LEN)
    return think, best, 1 - best / think


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reuse", action="store_true", help="Keep runs and evals that already exist.")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--shares", type=float, nargs="*", default=list(SHARES))
    ap.add_argument("--long-steps", type=int, default=120, help="A longer pair of arms at the largest share.")
    ap.add_argument("--deltas", type=float, nargs="*", default=[], help="More deltas for the longer pair.")
    args = ap.parse_args()
    lines = [
        "# AdaptThink: does skipping thinking on easy prompts shorten answers at equal accuracy?",
        "",
        "Claim (Zhang et al. 2025): AdaptThink teaches the policy to answer easy problems without thinking, "
        "cutting mean length (-53% on their math sets) while keeping or raising accuracy.",
        "",
        f"Task: arithmetic with a share p of level-1 prompts, the rest uniform over levels 2-5; `builtin:tiny` "
        f"warm start, LoRA r 8, lr 5e-4, 16 prompts x 8 samples, {args.steps} steps, delta 0.05 (the paper's), "
        "rollout temperature 1. Eval: 200 prompts of the same mix, 4 samples each at temperature 1 "
        "(`align eval`, `data.eval_temperature`). Seeds 0 and 1; cells are mean ± half the seed spread.",
        "",
    ]
    data: dict = {}
    for p in args.shares:
        tag = share_tag(p)
        train = level_mix_file(f"adaptthink_{tag}", easy_share_mix(p), 2000, "train")
        evalf = level_mix_file(f"adaptthink_{tag}", easy_share_mix(p), 200, "eval")
        common = [
            f"data.train={train}",
            f"data.eval={evalf}",
            f"trainer.max_steps={args.steps}",
            "trainer.eval_every=20",
            "trainer.save_every=0",
            *SAMPLED,
        ]
        arms = {f"grpo_{tag}": ["algorithm.name=grpo"], f"adaptthink_{tag}": []}
        pairs = [(f"adaptthink_{tag}", f"grpo_{tag}", args.steps, 0.05)]  # (arm, its GRPO arm, steps, delta)
        if p == max(args.shares) and args.long_steps:  # does the mode choice keep separating by level?
            long = [f"trainer.max_steps={args.long_steps}"]
            arms |= {f"grpo_{tag}_long": ["algorithm.name=grpo", *long], f"adaptthink_{tag}_long": long}
            pairs.append((f"adaptthink_{tag}_long", f"grpo_{tag}_long", args.long_steps, 0.05))
            for d in args.deltas:
                arms[f"adaptthink_{tag}_long_d{d:g}"] = [*long, f"algorithm.adaptthink.delta={d}"]
                pairs.append((f"adaptthink_{tag}_long_d{d:g}", f"grpo_{tag}_long", args.long_steps, d))
        runs = run_arms("adaptthink_tiny.yaml", arms, common, args.reuse)
        results = eval_runs(
            "adaptthink_tiny.yaml", runs, f"adaptthink_{tag}", [f"data.eval={evalf}", *SAMPLED], args.reuse
        )
        compare(
            runs,
            ["eval/correctness", "eval/length", "eval/nothink_rate", "eval/nothink_rate/level_1"],
            f"adaptthink_{tag}_curves.png",
        )
        think, best, saving = ceiling(p)
        data[tag] = {"results": results, "ceiling_saving": saving}
        lines += [
            f"## p = {p} (level-1 share)",
            "",
            f"Ceiling: think-always length {think:.1f} tokens, best at full accuracy {best:.1f}: a saving of "
            f"**{saving:.1%}**.",
            "",
            *arm_table(
                results,
                arms,
                [
                    "correctness",
                    "length",
                    "nothink_rate",
                    "nothink_rate/level_1",
                    "nothink_rate/level_5",
                    "correctness/level_1",
                    "correctness/level_5",
                ],
            ),
            "",
        ]
        for ada, grpo, steps, delta in pairs:
            g = per_arm(results, [grpo], "length")[grpo]
            a = per_arm(results, [ada], "length")[ada]
            ga = per_arm(results, [grpo], "correctness")[grpo]
            aa = per_arm(results, [ada], "correctness")[ada]
            per_seed = [x / y - 1 for x, y in zip(a[2], g[2])]
            data[tag][f"length_change_per_seed{ada.removeprefix(f'adaptthink_{tag}')}"] = per_seed
            lines.append(
                f"- {steps} steps, delta {delta:g}: length, AdaptThink vs GRPO (same seed): "
                f"{', '.join(f'{x:+.1%}' for x in per_seed)} (mean {sum(per_seed) / len(per_seed):+.1%}; "
                f"ceiling -{saving:.1%}); accuracy {aa[0]:.3f} vs {ga[0]:.3f}."
            )
        lines += [
            "",
            f"![per level](adaptthink_{tag}/eval_levels.png)",
            f"![curves](adaptthink_{tag}_curves.png)",
            "",
        ]
    write_report("adaptthink", lines, data)


if __name__ == "__main__":
    main()
