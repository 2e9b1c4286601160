"""Constrained (Lagrangian) RLHF vs fixed weights, where the true score peaks in the interior (issue 20).

    .venv/bin/python experiments/effect_constrained.py [--reuse] [--steps 40] [--nm-steps 80]
    .venv/bin/python experiments/effect_constrained.py --budget 10 --steps 80 --nm-steps 120   # round 2

The paper's claim (Moskovitz et al. 2024): a proxy reward helps only up to a point; holding it at that
point with a learned Lagrange multiplier beats fixed weightings (which overshoot or undershoot) and a
reward that saturates there, and Nelder-Mead finds the point within one run.
Task: half level-1 prompts (NoThinking is reliably right), half levels 4-5 (thinking is needed).
Proxy: brevity (budget 48 tokens). True score: efficiency = correctness - 0.2 if the answer thinks.
Best policy: no thinking on level 1, thinking on levels 4-5: efficiency 0.9, brevity
(0.9375 + 0.396) / 2 = 0.667: the proxy point. Thinking everywhere: efficiency 0.8; never thinking:
0.5 + 0.5 x (NoThinking accuracy on levels 4-5, about 0.5) = about 0.75. So the true score's peak
sits inside the proxy's range, 0.1-0.15 above both ends.
Arms (two seeds each): fixed weights correctness + w brevity (w = 0.5, 2); the saturated proxy
min(brevity, 0.667) (weight 2); the Lagrangian with brevity held at 0.667 (and a longer one with --long-steps); Nelder-Mead over
thresholds in [0.55, 0.85] maximising eval efficiency.

Round 2 (``--budget 10``): with the 48-token budget, thinking cost 0.1 brevity on level 1 but 0.5 on
levels 4-5, so any weight that pushed level 1 to skip pushed the hard levels harder (w 2 skipped
everything, w 0.5 thought everywhere), and thinking everywhere already sat at brevity 0.615, next to
the proxy point 0.667: the proxy did not determine the policy. With a 10-token budget a NoThinking
answer scores 0.7, thinking 0.2 on level 1 and 0 on levels 4-5, so skipping pays about the same on
every level and correctness alone separates them: for w < 0.7 the best policy of correctness +
w brevity is the best policy for the true score. The proxy point is 0.35, thinking everywhere 0.10,
never thinking 0.70; a level-blind policy reaches 0.35 by skipping 42% of all prompts (efficiency
0.78), so holding the proxy there leaves the allocation to correctness. Arms: fixed w 0.1 / 0.3 / 2,
the saturated proxy (weight 2), the Lagrangian at 0.35, Nelder-Mead over [0.2, 0.5].

Round 3 (``--budget 10 --easy-share 0.8 --steps 120 --nm-steps 160``): round 2 stayed level-blind in
every arm; the weighting experiment found the first token separating by level only when 80% of the
prompts are easy and the run is 100-120 steps long. So: 80% level 1, 10% each level 4 and 5. Best
policy: efficiency 0.8 + 0.2 x 0.8 = 0.96 at brevity 0.8 x 0.7 = 0.56 (the proxy point); never
thinking 0.8 + 0.2 x (NoThinking accuracy on levels 4-5, about 0.5) = about 0.9; thinking everywhere
0.8. Arms: fixed w 0.1 / 0.3 / 2, the Lagrangian at 0.56, Nelder-Mead over [0.4, 0.7] (the
saturated proxy acted as w 2 in round 2 and is left out).
"""

from __future__ import annotations

import argparse

from effects import (
    ROOT,
    arm_table,
    compare,
    eval_runs,
    level_mix_file,
    metrics_rows,
    per_arm,
    run_arms,
    share_tag,
    write_report,
)

THINK_COST = 0.2
SAMPLED = ["data.eval_temperature=1.0", "data.eval_samples=2", "data.eval_size=200"]
FN = ROOT / "experiments" / "task_rewards.py"


def proxy_point(budget: int, easy: float = 0.5) -> float:
    """Mean brevity of the best policy: NoThinking (3 tokens) on level 1 (share ``easy``), thinking on
    levels 4-5."""

    def brev(n: int) -> float:
        return 1 - min(n, budget) / budget

    return easy * brev(3) + (1 - easy) * (brev(26) + brev(32)) / 2


def rewards(brevity_weight: float, capped: bool = False, budget: int = 48, easy: float = 0.5) -> str:
    brev = (
        f"{{fn: '{FN}:brevity_capped', name: brevity, weight: {brevity_weight}, "
        f"kwargs: {{max_tokens: {budget}, cap: {proxy_point(budget, easy):.4f}}}}}"
        if capped
        else f"{{fn: brevity, weight: {brevity_weight}, kwargs: {{max_tokens: {budget}}}}}"
    )
    return (
        f"rewards=[{{fn: correctness, weight: 1.0}}, {brev}, "
        f"{{fn: efficiency, weight: 0.0, kwargs: {{think_cost: {THINK_COST}}}}}]"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reuse", action="store_true", help="Keep runs and evals that already exist.")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--nm-steps", type=int, default=80)
    ap.add_argument(
        "--long-steps", type=int, default=0, help="Also a Lagrangian arm of this many steps (0: none)."
    )
    ap.add_argument("--budget", type=int, default=48, help="brevity's max_tokens (round 2: 10).")
    ap.add_argument("--easy-share", type=float, default=0.5, help="share of level-1 prompts (round 3: 0.8).")
    args = ap.parse_args()
    b, p = args.budget, args.easy_share
    point = proxy_point(b, p)
    ptag = "" if p == 0.5 else f"_{share_tag(p)}"
    sfx = ("" if b == 48 else f"_b{b}") + ptag  # run, arm and report names of rounds 2 and 3
    name = f"constrained{sfx}"
    mix = {1: p, 4: (1 - p) / 2, 5: (1 - p) / 2}
    data = f"constrained{ptag}"
    train = level_mix_file(data, mix, 2000, "train")
    evalf = level_mix_file(data, mix, 200, "eval")
    common = [
        f"data.train={train}",
        f"data.eval={evalf}",
        "trainer.eval_every=10",
        "trainer.save_every=0",
        *SAMPLED,
    ]
    steps = f"trainer.max_steps={args.steps}"
    low, start, high = (0.55, 0.7, 0.85) if b == 48 else (0.2, 0.3, 0.5) if p == 0.5 else (0.4, 0.5, 0.7)
    fixed = (0.5, 2.0) if b == 48 else (0.1, 0.3, 2.0)
    arms = {
        f"fixed_w{w:g}{sfx}": [steps, "objective.name=static", rewards(w, budget=b, easy=p)] for w in fixed
    }
    if p == 0.5:  # rounds 1 and 2 only (in round 2 it acted as w 2)
        arms[f"saturated{sfx}"] = [steps, "objective.name=static", rewards(2.0, capped=True, budget=b)]
    arms |= {
        f"lagrangian{sfx}": [
            steps,
            rewards(1.0, budget=b, easy=p),
            f"objective.lagrangian.constraints=[{{name: brevity, threshold: {point:.4f}, kind: equal}}]",
        ],
        f"nelder_mead{sfx}": [
            f"trainer.max_steps={args.nm_steps}",
            rewards(1.0, budget=b, easy=p),
            f"objective.lagrangian.constraints=[{{name: brevity, threshold: {start}, kind: equal, "
            f"search_low: {low}, search_high: {high}}}]",
            "objective.lagrangian.threshold_search.true_score=efficiency",
            "objective.lagrangian.threshold_search.steps_per_eval=10",
            "objective.lagrangian.threshold_search.check_every=5",
            "objective.lagrangian.threshold_search.max_evals=6",
            "objective.lagrangian.threshold_search.tol=0.001",
        ],
    }
    if (
        args.long_steps
    ):  # the best policy needs a level-dependent first token, which the tiny model learns slowly
        arms[f"lagrangian_long{sfx}"] = [
            f"trainer.max_steps={args.long_steps}",
            rewards(1.0, budget=b, easy=p),
            f"objective.lagrangian.constraints=[{{name: brevity, threshold: {point:.4f}, kind: equal}}]",
        ]
    runs = run_arms("constrained_tiny.yaml", arms, common, args.reuse)
    final = eval_runs(
        "constrained_tiny.yaml",
        runs,
        f"{name}_eval",
        [f"data.eval={evalf}", *SAMPLED, rewards(1.0, budget=b, easy=p)],
        args.reuse,
    )
    curves = compare(
        runs,
        [
            "eval/efficiency",
            "eval/brevity",
            "eval/correctness",
            "objective/multiplier/brevity",
            "objective/threshold/brevity",
        ],
        f"{name}_curves.png",
    )
    nm_lines = []
    for i, d in enumerate(runs[f"nelder_mead{sfx}"]):
        rows, prev, seen = metrics_rows(d), None, []
        for r in rows:
            if "objective/nm/f" in r and prev is not None:
                seen.append(f"{prev:.3f} -> {-r['objective/nm/f']:.3f}")
            prev = r.get("objective/threshold/brevity", prev)
        kept = rows[-1].get("objective/threshold/brevity")
        nm_lines.append(f"- seed {i}: " + "; ".join(seen) + f"; kept threshold {kept}")
    eff = per_arm(final, arms, "efficiency")
    lines = [
        "# Constrained RLHF: a proxy held at its useful point vs fixed and saturated weights",
        "",
        "Claim (Moskovitz et al. 2024): constraining a proxy reward at the point where it stops helping beats fixed "
        "weightings and a saturated proxy on the true score; Nelder-Mead finds that point within one run.",
        "",
        f"Task: {p:.0%} level-1 prompts, the rest levels 4-5 in equal parts; task correctness, proxy brevity (budget {b}), true score "
        f"efficiency = correctness - {THINK_COST} x thinks (never trained on). `builtin:tiny`, dr_grpo, LoRA r 8, "
        f"lr 5e-4, 16 prompts x 8, {args.steps} steps ({args.nm_steps} for Nelder-Mead), seeds 0 and 1. Eval: 200 "
        "prompts of the same mix x 2 samples at temperature 1.",
        "",
        f"Ceiling: the best policy (no thinking on level 1, thinking on 4-5, all right) has efficiency "
        f"{p + (1 - p) * (1 - THINK_COST):.2f} at brevity {point:.3f} (the proxy point the Lagrangian holds); "
        f"thinking everywhere {1 - THINK_COST:.2f}; never thinking {p:g} + {1 - p:g} x NoThinking accuracy on "
        "levels 4-5.",
        "",
        *arm_table(
            final,
            arms,
            [
                "efficiency",
                "brevity",
                "correctness",
                "nothink_rate/level_1",
                "nothink_rate/level_4",
                "nothink_rate/level_5",
            ],
        ),
        "",
        "Nelder-Mead (threshold -> eval efficiency at the end of its segment):",
        "",
        *nm_lines,
        "",
        f"![curves]({name}_curves.png)",
        "",
        "```",
        curves.strip(),
        "```",
    ]
    write_report(name, lines, {"final": final, "efficiency": eff, "proxy_point": point})


if __name__ == "__main__":
    main()
