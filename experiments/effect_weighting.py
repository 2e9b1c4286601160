"""Dynamic reward weighting (hypervolume-guided, gradient-based) vs static weights, on objectives
that can all improve from the start (issue 20).

    .venv/bin/python experiments/effect_weighting.py [--reuse] [--steps 30]
    .venv/bin/python experiments/effect_weighting.py --easy-share 0.8 --steps 120   # round 2

The paper's claim (Lu et al. 2025): dynamic weighting reaches a better Pareto front than fixed
weights, in fewer steps. The earlier built-in front had two corners (think always / never) and the
warm start was not dominated by any reachable point, so the hypervolume contribution was 0 at every
validation. Here the three objectives do not conflict at the optimum: correctness (all prompts),
brevity on level-1 prompts only (``brevity_easy``, budget 10 tokens: NoThinking 0.7, Thinking 0.2)
and shown work on levels 3-5 only (``shows_work_hard``), None elsewhere. The ideal point (think on
hard prompts, answer level 1 directly, always right) is (1.0, 0.7, 1.0); the warm start is far below it
on correctness and shown work, so every objective can improve from the start.
Arms: static weights, the authors' hypervolume meta-reward, gradient-based weights (step 0.1, the
authors' effective step), each with two weight vectors and two seeds; dr_grpo keeps the reward scale
(the meta reward is a no-op under std-normalised advantages). Metric: the hypervolume (reference 0)
of the sampled eval point every 5 steps; steps to reach 90% of the best hypervolume any run reached.

Round 2 (``--easy-share 0.8 --steps 120``): round 1 (the built-in uniform mix, 30 steps) never
dominated its start, because the tiny model's think / no-think choice moved the same way on every
level. With 80% level-1 prompts the brevity signal sets the shared choice towards NoThinking and the
hard prompts pull it back where it costs correctness, so the choice can separate by level (as
AdaptThink's did); 120 steps give it time. The gradient arm adds the scale-free normalisation
(``normalize: grad_norm_sq``), since at the authors' raw step the weights moved by 1e-4 in round 1.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from effects import (
    EFFECTS,
    ROOT,
    arm_table,
    compare,
    easy_share_mix,
    eval_runs,
    level_mix_file,
    metrics_rows,
    per_arm,
    run_arms,
    share_tag,
    write_report,
)

from align.objectives.pareto import hypervolume

OBJECTIVES = ("correctness", "brevity_easy", "shows_work_hard")
IDEAL = (1.0, 0.7, 1.0)
WEIGHTS = {"w1": (0.4, 0.3, 0.3), "w2": (0.6, 0.3, 0.1)}
METHODS = {
    "static": ["objective.name=static"],
    "hv": [
        "objective.name=hypervolume",
        "objective.hypervolume.variant=meta_reward",
        "objective.hypervolume.every=5",
    ],
    "gradient": ["objective.name=gradient", "objective.gradient.step=0.1"],
}
SAMPLED = ["data.eval_temperature=1.0", "data.eval_samples=2", "data.eval_size=150"]


def reward_sets(w: tuple[float, float, float]) -> list[str]:
    fn = ROOT / "experiments" / "task_rewards.py"
    return [
        "rewards=["
        f"{{fn: correctness, weight: {w[0]}}}, "
        f"{{fn: '{fn}:brevity_easy', name: brevity_easy, weight: {w[1]}, kwargs: {{max_tokens: 10}}}}, "
        f"{{fn: '{fn}:shows_work_hard', name: shows_work_hard, weight: {w[2]}}}]"
    ]


def hv_curve(run) -> list[tuple[int, float]]:
    out = []
    for row in metrics_rows(run):
        if all(f"eval/{o}" in row for o in OBJECTIVES):
            point = [row[f"eval/{o}"] for o in OBJECTIVES]
            out.append((int(row.get("step", 0)), hypervolume([point], np.zeros(3), True)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reuse", action="store_true", help="Keep runs and evals that already exist.")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument(
        "--easy-share",
        type=float,
        help="Share of level-1 prompts (others uniform over 2-5); default: built-in.",
    )
    args = ap.parse_args()
    name, suffix, data = "weighting", "", ["data.eval=builtin:arithmetic-eval"]
    methods = dict(METHODS)
    task = "built-in arithmetic (levels 1-5 uniform)"
    if args.easy_share is not None:
        p = args.easy_share
        suffix = f"_{share_tag(p)}"
        name += suffix
        shares = easy_share_mix(p)
        data = [
            f"data.train={level_mix_file(name, shares, 2000, 'train')}",
            f"data.eval={level_mix_file(name, shares, 300, 'eval')}",
        ]
        # the authors' raw step moved the weights by 1e-4 in round 1: round 2 runs the scale-free one
        methods["gradient_sq"] = [*methods.pop("gradient"), "objective.gradient.normalize=grad_norm_sq"]
        task = f"arithmetic with {p:.0%} level-1 prompts (the rest uniform over levels 2-5)"
    every = 5 if args.steps <= 40 else 10  # trainer eval interval
    common = [
        "algorithm.name=dr_grpo",
        f"trainer.max_steps={args.steps}",
        f"trainer.eval_every={every}",
        "trainer.save_every=0",
        *data,
        *SAMPLED,
    ]
    arms = {
        f"{m}_{wn}{suffix}": [*sets, *reward_sets(w)]
        for wn, w in WEIGHTS.items()
        for m, sets in methods.items()
    }
    runs = run_arms("multi_objective_tiny.yaml", arms, common, args.reuse)
    curves = {arm: [hv_curve(d) for d in dirs] for arm, dirs in runs.items()}
    best = max(h for cs in curves.values() for c in cs for _, h in c)
    ideal_hv = float(np.prod(IDEAL))

    def reach(curve) -> int | None:
        return next((s for s, h in curve if h >= 0.9 * best), None)

    final = eval_runs(
        "multi_objective_tiny.yaml",
        runs,
        f"{name}_eval",
        [*SAMPLED, *data, "data.eval_size=300", *reward_sets(WEIGHTS["w1"])],
        args.reuse,
    )
    for label, res in final.items():
        res["hypervolume"] = hypervolume([[res[o] for o in OBJECTIVES]], np.zeros(3), True)
    table = compare(
        runs,
        [f"eval/{o}" for o in OBJECTIVES]
        + [f"objective/weight/{o}" for o in OBJECTIVES]
        + ["objective/meta_reward"],
        f"{name}_curves.png",
    )
    lines = [
        "# Dynamic reward weighting vs static weights",
        "",
        "Claim (Lu et al. 2025): hypervolume-guided and gradient-based dynamic weighting reach better Pareto "
        "points than fixed weights, and in fewer steps.",
        "",
        f"Task: {task}, objectives correctness, brevity on level 1 only (budget 10 "
        "tokens), shown work on levels 3-5 only; `builtin:tiny`, dr_grpo, LoRA r 8, lr 5e-4, 16 prompts x 8, "
        f"{args.steps} steps, seeds 0 and 1, weight vectors w1 = {WEIGHTS['w1']} and w2 = {WEIGHTS['w2']}. "
        f"Eval every {every} steps on 150 prompts x 2 samples at temperature 1; the final "
        "eval on 300 x 2.",
        "",
        f"Ceiling: the ideal point {IDEAL} has hypervolume {ideal_hv:.3f} (reference 0); the warm start's is "
        f"{final['base']['hypervolume']:.3f}. Best hypervolume any run reached during training: {best:.3f}.",
        "",
        *arm_table(final, arms, [*OBJECTIVES, "hypervolume"]),
        "",
        "Steps to reach 90% of the best hypervolume (per seed; '-' never):",
        "",
        "| arm | seed 0 | seed 1 |",
        "|---|---|---|",
    ]
    for arm, cs in curves.items():
        lines.append(f"| {arm} | " + " | ".join(str(reach(c) or "-") for c in cs) + " |")
    lines += ["", f"![curves]({name}_curves.png)", "", "```", table.strip(), "```"]
    write_report(
        name,
        lines,
        {"final": final, "curves": curves, "best": best, "hv_final": per_arm(final, arms, "hypervolume")},
    )
    (EFFECTS / f"{name}_curves.json").write_text(json.dumps(curves))


if __name__ == "__main__":
    main()
