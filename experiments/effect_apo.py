"""APO (DADS + STCR) vs GRPO with the same KL, where wrong answers are long and the KL binds (issue 20).

    .venv/bin/python experiments/effect_apo.py [--reuse] [--steps 40]

The paper's claims: STCR (advantage of a wrong answer longer than the group's mean correct length
scaled by 2 - base^-dL) shortens overly long wrong responses; DADS (KL weight 1 - exp(-e p) on correct
samples of groups with accuracy p in (0, 1)) lets the policy learn more on hard prompts while the KL
keeps what the model knew elsewhere. On the built-in mix wrong answers were 3-token NoThinking guesses
(STCR touched 0.3% of samples) and the KL term was worth 0.0035. Here: levels 4 and 5 only, rollout
temperature 1.3 (thinking traces then go wrong and wrong answers are long), k3 KL in the loss with
coef 0.1 (binding), and a retention metric on another task the warm start knows: string reversal,
evaluated at temperature 1 before and after training on arithmetic only.
Arms: GRPO + KL; APO with the authors' STCR base 1.00001; APO with base 1.05; GRPO without KL (does
the KL bind at all? DADS can only matter where it does). Two seeds each.

Round 2 (``--max-tokens 28 --temperature 1.0``): round 1's wrong answers were no longer than right
ones (a wrong trace is as long as a right one, a wrong guess shorter), so STCR had nothing to cut.
With a 28-token limit a level-4 trace fits (25 tokens + end) and a level-5 trace (31) never does: it
runs into the limit without an answer, the "overly long wrong response" STCR is about, 25 tokens
longer than the group's correct answers (right NoThinking guesses, 2-3 tokens). GRPO scores that
truncated trace like a short wrong guess; STCR with base 1.05 scales its penalty by 1.7, the authors'
base 1.00001 by 1.0003. Best policy: think on level 4, guess on level 5; wrong length then 3.

On the real model (``--smollm2``): SmolLM2-135M-Instruct on the chat arithmetic task rambles when it
is wrong (sampled at T 1 with 48 new tokens: wrong replies 29 tokens, right ones 20; accuracy 0.065),
which is STCR's case without any construction. GRPO + KL vs APO (DADS + STCR base 1.05), rollout and
eval at T 0.7 (the config's), 48 new tokens, 10 steps of 8 prompts x 8, two seeds each. The authors'
base is left out: at these lengths it scales by at most 1.0005, so that arm is DADS alone.
"""

from __future__ import annotations

import argparse

from effects import arm_table, compare, eval_runs, level_mix_file, per_arm, run_arms, write_report

TEMP = 1.3


def smollm2(reuse: bool, steps: int) -> None:
    """STCR and DADS on SmolLM2-135M-Instruct, whose wrong replies are its long ones."""
    t, m = 0.7, 48
    sampled = [f"data.eval_temperature={t}", "data.eval_samples=2", "data.eval_size=200"]
    common = [
        f"rollout.max_new_tokens={m}",
        "algorithm.kl={coef: 0.1, estimator: k3, where: loss}",
        "algorithm.apo.accuracy=number_match",
        f"trainer.max_steps={steps}",
        "trainer.save_every=0",
        "data.eval_size=16",
    ]
    arms = {
        "smollm2_grpo_kl": ["algorithm.apo.dads=false", "algorithm.apo.stcr=false"],
        "smollm2_apo_base1.05": [
            "algorithm.apo.dads=true",
            "algorithm.apo.stcr=true",
            "algorithm.apo.stcr_base=1.05",
        ],
    }
    runs = run_arms("grpo_smollm2.yaml", arms, common, reuse)
    res = eval_runs(
        "grpo_smollm2.yaml",
        runs,
        "apo_smollm2",
        [*sampled, f"rollout.max_new_tokens={m}", "algorithm.apo.accuracy=number_match"],
        reuse,
    )
    curves = compare(
        runs,
        [
            "reward/number_match",
            "rollout/length",
            "rollout/length_wrong",
            "loss/kl",
            "apo/dads_weight_mean",
            "apo/stcr_scaled",
            "apo/stcr_c_max",
        ],
        "apo_smollm2_curves.png",
    )
    base = res["base"]
    lines = [
        "# APO (DADS + STCR) vs GRPO on SmolLM2-135M-Instruct",
        "",
        "Claims (APO): STCR shortens overly long wrong answers; DADS lets correct samples move further from the "
        "reference (better accuracy).",
        "",
        f"Task: the built-in chat arithmetic task (conversational prompts, five levels, reward: the reply's last "
        f"number), `builtin:smollm2-135m`, LoRA r 16 all-linear, lr 4e-4, 8 prompts x 8 samples at T {t}, "
        f"{m} new tokens, k3 KL in the loss coef 0.1, {steps} steps, seeds 0 and 1. Eval: 200 held-out prompts "
        f"x 2 samples at T {t}.",
        "",
        f"The warm start's wrong replies are its long ones: {base['length_wrong']:.1f} tokens against "
        f"{base['length']:.1f} overall (accuracy {base['number_match']:.3f}). Ceilings: accuracy 1.0; the shortest "
        "wrong reply is a bare number (2-3 tokens).",
        "",
        *arm_table(
            res,
            arms,
            ["number_match", "length", "length_wrong", "number_match/level_1", "number_match/level_3"],
        ),
        "",
        "![curves](apo_smollm2_curves.png)",
        "",
        "![levels](apo_smollm2/eval_levels.png)",
        "",
        "```",
        curves.strip(),
        "```",
    ]
    write_report("apo_smollm2", lines, {"eval": res})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reuse", action="store_true", help="Keep runs and evals that already exist.")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=48, help="rollout.max_new_tokens (round 2: 28).")
    ap.add_argument("--temperature", type=float, default=TEMP, help="rollout and eval (round 2: 1.0).")
    ap.add_argument(
        "--smollm2", action="store_true", help="The real-model run instead (SmolLM2-135M-Instruct)."
    )
    args = ap.parse_args()
    if args.smollm2:
        return smollm2(args.reuse, args.steps)
    t, m = args.temperature, args.max_tokens
    sfx = "" if m == 48 else f"_t{m}"  # run, arm and report names of round 2
    train = level_mix_file("apo_hard", {4: 0.5, 5: 0.5}, 2000, "train")
    evalf = level_mix_file("apo_hard", {4: 0.5, 5: 0.5}, 200, "eval")
    sampled = [f"data.eval_temperature={t}", "data.eval_samples=4", "data.eval_size=200"]
    common = [
        f"data.train={train}",
        f"data.eval={evalf}",
        f"rollout.temperature={t}",
        f"rollout.max_new_tokens={m}",
        "algorithm.kl.coef=0.1",
        f"trainer.max_steps={args.steps}",
        "trainer.eval_every=10",
        "trainer.save_every=0",
        *sampled,
    ]
    arms = {
        f"grpo_kl{sfx}": ["algorithm.apo.dads=false", "algorithm.apo.stcr=false"],
        f"apo{sfx}": [],
        f"apo_base1.05{sfx}": ["algorithm.apo.stcr_base=1.05"],
    }
    if not sfx:  # round 1 only: does the KL bind?
        arms["grpo_nokl"] = ["algorithm.apo.dads=false", "algorithm.apo.stcr=false", "algorithm.kl.coef=0"]
    runs = run_arms("apo_tiny.yaml", arms, common, args.reuse)
    hard = eval_runs(
        "apo_tiny.yaml",
        runs,
        f"apo_hard{sfx}",
        [f"data.eval={evalf}", *sampled, f"rollout.max_new_tokens={m}"],
        args.reuse,
    )
    retention = eval_runs(
        "apo_tiny.yaml",
        runs,
        f"apo_retention{sfx}",
        [
            "data.eval=builtin:reversal-eval",
            "data.eval_temperature=1.0",
            "data.eval_samples=4",
            "data.eval_size=200",
        ],
        args.reuse,
    )
    curves = compare(
        runs,
        [
            "reward/correctness",
            "rollout/length_wrong",
            "loss/kl",
            "apo/dads_weight_mean",
            "apo/stcr_scaled",
            "apo/stcr_c_max",
            "eval/correctness",
            "eval/length_wrong",
        ],
        f"apo{sfx}_curves.png",
    )
    base_wrong = hard["base"].get("length_wrong", float("nan"))
    lw = per_arm(hard, arms, "length_wrong")
    acc = per_arm(hard, arms, "correctness")
    ret = per_arm(retention, arms, "correctness")
    lines = [
        "# APO (DADS + STCR) vs GRPO with the same KL",
        "",
        "Claims (APO): STCR shortens overly long wrong answers; DADS lets correct samples of hard groups move "
        "further from the reference while the KL keeps the rest (better accuracy, knowledge retained).",
        "",
        f"Task: arithmetic levels 4 and 5 only, rollout temperature {t}, max {m} new tokens"
        + (" (a level-5 trace never fits: it is cut off without an answer)" if sfx else "")
        + f", k3 KL in the loss coef 0.1, `builtin:tiny`, LoRA r 8, lr 5e-4, 16 prompts x 8, "
        f"{args.steps} steps, seeds 0 and 1. Eval: 200 prompts x 4 samples at temperature {t}; retention: "
        "200 string-reversal prompts (never trained on here) x 4 samples at temperature 1.",
        "",
        "Arms: GRPO + KL (coef 0.1), APO (authors' STCR base 1.00001), APO (base 1.05)"
        + (
            ""
            if sfx
            else ", and GRPO without KL: the KL binds where GRPO + KL differs from GRPO without it, and only "
            "there can DADS's relaxation matter"
        )
        + ".",
        "",
        (
            "Ceilings: accuracy 0.5 + 0.5 x the level-5 NoThinking guess accuracy (a level-5 trace never fits); "
            if sfx
            else "Ceilings: accuracy 1.0; "
        )
        + "the shortest wrong answer is a 3-token NoThinking guess, so STCR can cut the "
        f"wrong-answer length from the warm start's {base_wrong:.1f} tokens to 3 at most; retention's ceiling is "
        f"the warm start's own reversal accuracy ({retention['base']['correctness']:.3f}).",
        "",
        "## Levels 4-5 (trained)",
        "",
        *arm_table(
            hard,
            arms,
            [
                "correctness",
                "length",
                "length_wrong",
                "length_wrong/level_5",
                "nothink_rate/level_4",
                "nothink_rate/level_5",
                "correctness/level_4",
                "correctness/level_5",
            ],
        ),
        "",
        "## Retention: string reversal (not trained)",
        "",
        *arm_table(retention, arms, ["correctness", "length"]),
        "",
        f"![curves](apo{sfx}_curves.png)",
        "",
        f"![levels](apo_hard{sfx}/eval_levels.png)",
        "",
        "```",
        curves.strip(),
        "```",
    ]
    write_report(
        f"apo{sfx}",
        lines,
        {"hard": hard, "retention": retention, "length_wrong": lw, "accuracy": acc, "retention_acc": ret},
    )


if __name__ == "__main__":
    main()
