"""OFS-DPO and COFS-DPO vs DPO, in the regimes the paper's arguments are about (issue 20).

    .venv/bin/python experiments/effect_ofs.py [--reuse] [--part ofs|cofs|both]

OFS-DPO's claim (Qi et al. 2024): once DPO's loss nears 0 its gradient vanishes and learning stalls;
a fast and a slow LoRA module chasing each other keep a useful gradient, so the policy keeps
improving. Earlier runs never left loss ~0.55. Here DPO trains on arithmetic pairs in Thinking mode
(rejected: the trace's result replaced by another digit) with beta 2 and lr 1e-3 for 100 steps so
that its loss falls below 0.05; arms: DPO, OFS (lr ratio 10, the
paper's, alpha 0.5), OFS (lr ratio 3); swap window 5. Metric: sampled (T = 1) correctness of the
served module's answers on 200 held-out prompts (4 samples each); ceiling 1.0.

COFS-DPO's claim: combining per-domain fast modules linearly keeps earlier domains that sequential
DPO forgets. Two conflicting, learnable domains: (1) level-1 prompts, chosen the NoThinking answer,
rejected the (correct) Thinking one; (2) levels 4-5, chosen the Thinking answer, rejected a
NoThinking guess. Sequential training on (2) pushes the first token toward thinking everywhere and so
undoes (1). Score per domain: ``mode_match`` (right answer in the domain's preferred mode), sampled;
ceiling 1.0 on both. Arms: sequential DPO, DPO + the same linear combination (isolates OFS's part),
COFS (OFS + combination). 60 steps per domain at lr 2e-3 (30 at 5e-4 did not learn the second
domain), two seeds each.
"""

from __future__ import annotations

import argparse
import random

from effects import ROOT, arm_table, compare, eval_runs, metrics_rows, run_arms, write_jsonl, write_report

from align.data import tasks

SAMPLED = ["data.eval_temperature=1.0", "data.eval_samples=4"]
FN = ROOT / "experiments" / "task_rewards.py"


def mode_pairs(name: str, levels: tuple[int, ...], prefer_think: bool, n: int, split: str) -> str:
    rng = random.Random(f"{name}/{split}")
    rows = []
    for _ in range(n):
        row = tasks.arithmetic_row(rng, rng.choice(levels), split)
        think, nothink = tasks.response(row, True), tasks.response(row, False)
        if prefer_think:  # the NoThinking answer on hard prompts is a guess: make it a wrong one
            nothink = tasks.response(dict(row, answer=tasks._wrong_answer(rng, row)), False)
        chosen, rejected = (think, nothink) if prefer_think else (nothink, think)
        rows.append({**row, "chosen": chosen, "rejected": rejected})
    if split == "eval":  # prompt rows: generation is scored with mode_match
        rows = [{k: r[k] for k in ("prompt", "answer", "level", "task")} for r in rows]
    return str(write_jsonl(f"{name}-{split}", rows))


def thinking_pairs(split: str, n: int) -> str:
    """Arithmetic pairs in Thinking mode only: chosen ends with the trace's own result, rejected with
    another digit. Separable from the trace alone, so DPO can drive its loss to ~0 (on the built-in
    pairs half are NoThinking guesses, which only memorising the sums separates: the loss stalled at
    0.3 after 113 steps at lr 2e-3)."""
    rng = random.Random(f"thinking_pairs/{split}")
    rows = []
    for row in tasks.arithmetic_dataset(n, 0, split):
        wrong = dict(row, answer=tasks._wrong_answer(rng, row))
        rows.append({**row, "chosen": tasks.response(row, True), "rejected": tasks.response(wrong, True)})
    return str(write_jsonl(f"thinking_pairs-{split}", rows))


def ofs_part(reuse: bool, steps: int, lr: float) -> list[str]:
    common = [
        f"data.train={thinking_pairs('train', 4000)}",
        f"data.eval={thinking_pairs('eval', 200)}",
        "algorithm.preference.beta=2.0",
        f"learner.lr={lr}",
        f"trainer.max_steps={steps}",
        f"trainer.eval_every={steps // 5}",
        "trainer.save_every=0",
        "algorithm.preference.generate_eval=true",
        "data.eval_size=200",
        "algorithm.preference.eval_pairs=200",
        *SAMPLED,
    ]
    arms = {
        f"dpo_{steps}": [],
        f"ofs_r10_{steps}": [
            "algorithm.preference.ofs={enabled: true, lr_ratio: 10, alpha: 0.5, swap_window: 5}"
        ],
        f"ofs_r3_{steps}": [
            "algorithm.preference.ofs={enabled: true, lr_ratio: 3, alpha: 0.5, swap_window: 5}"
        ],
    }
    runs = run_arms("dpo_tiny.yaml", arms, common, reuse)
    res = eval_runs(
        "dpo_tiny.yaml",
        runs,
        f"ofs_eval_{steps}",
        [*SAMPLED, "data.eval_size=200", "algorithm.preference.generate_eval=true"],
        reuse,
    )
    table = compare(
        runs,
        [
            "dpo/loss",
            "ofs/dpo_slow",
            "ofs/swaps",
            "eval/pairs_loss",
            "eval/pairs_accuracy",
            "eval/correctness",
        ],
        f"ofs_curves_{steps}.png",
    )
    lows = []
    for arm, dirs in runs.items():
        for i, d in enumerate(dirs):
            rows = metrics_rows(d)
            losses = [r["dpo/loss"] for r in rows if "dpo/loss" in r]
            first = next((r["step"] for r in rows if r.get("dpo/loss", 1) < 0.05), None)
            lows.append(
                f"| {arm}_s{i} | {min(losses):.4f} | {first if first is not None else '-'} | "
                f"{int(rows[-1].get('ofs/swaps', 0)) if 'ofs/swaps' in rows[-1] else '-'} |"
            )
    return [
        "## OFS-DPO vs DPO (one domain, loss driven toward 0)",
        "",
        f"Arithmetic pairs in Thinking mode (chosen: the trace's result, rejected: another digit), beta 2, lr {lr:g}, 32 "
        f"pairs per step, {steps} steps. Ceiling: correctness 1.0; held-out pair accuracy 1.0.",
        "",
        *arm_table(res, arms, ["correctness", "length", "nothink_rate"]),
        "",
        "| run | lowest train DPO loss | first step below 0.05 | role swaps |",
        "|---|---|---|---|",
        *lows,
        "",
        f"![curves](ofs_curves_{steps}.png)",
        "",
        "```",
        table.strip(),
        "```",
        "",
    ]


def cofs_part(reuse: bool, steps: int, lr: float, hard_steps: int) -> list[str]:
    easy = {
        s: mode_pairs("cofs_easy_nothink", (1,), False, n, s) for s, n in (("train", 2000), ("eval", 100))
    }
    hard = {s: mode_pairs("cofs_hard_think", (4, 5), True, n, s) for s, n in (("train", 2000), ("eval", 100))}
    domains = (
        "algorithm.preference.domains=["
        f"{{name: easy, train: {easy['train']}, eval: {easy['eval']}, steps: {steps}}}, "
        f"{{name: hard, train: {hard['train']}, eval: {hard['eval']}, steps: {hard_steps}}}]"
    )
    tag = f"{steps}" if hard_steps == steps else f"{steps}_{hard_steps}"
    common = [
        domains,
        f"rewards=[{{fn: '{FN}:mode_match', name: mode_match}}]",
        "algorithm.preference.cofs.score=mode_match",
        "algorithm.preference.cofs.heldout=32",
        f"learner.lr={lr}",
        "trainer.save_every=0",
        *SAMPLED,
    ]
    arms = {
        f"sequential_dpo_{tag}": [
            "algorithm.preference.ofs.enabled=false",
            "algorithm.preference.cofs.combine=false",
        ],
        f"dpo_combined_{tag}": [
            "algorithm.preference.ofs.enabled=false",
            "algorithm.preference.cofs.combine=true",
        ],
        f"cofs_{tag}": ["algorithm.preference.ofs.enabled=true", "algorithm.preference.cofs.combine=true"],
    }
    runs = run_arms("cofs_dpo_tiny.yaml", arms, common, reuse)
    res: dict = {}
    for arm, dirs in runs.items():
        for i, d in enumerate(dirs):
            last = {}
            for r in metrics_rows(d):
                if "domain/easy" in r and "easy after domain 1" not in last:
                    last["easy after domain 1"] = r["domain/easy"]
                last.update({k: v for k, v in r.items() if k.startswith(("domain/", "cofs/lambda"))})
            res[f"{arm}_s{i}"] = last
    table = compare(runs, ["domain/easy", "domain/hard", "cofs/lambda", "dpo/loss"], f"cofs_curves_{tag}.png")
    return [
        "## COFS-DPO vs sequential DPO (two conflicting domains)",
        "",
        "Domain easy: level-1 prompts, chosen NoThinking, rejected Thinking (both right). Domain hard: levels 4-5, "
        f"chosen Thinking, rejected a NoThinking wrong guess. {steps} + {hard_steps} steps, beta 0.1, lr {lr:g}. Score: mode_match "
        "(right answer in the domain's preferred mode), 100 held-out prompts per domain x 4 samples at T = 1, after "
        "the last domain. Ceiling 1.0 on both; the warm start is below it on both (it picks modes at random).",
        "",
        *arm_table(
            res, arms, ["easy after domain 1", "domain/easy", "domain/hard", "cofs/lambda"], base=False
        ),
        "",
        f"![curves](cofs_curves_{tag}.png)",
        "",
        "```",
        table.strip(),
        "```",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reuse", action="store_true", help="Keep runs and evals that already exist.")
    ap.add_argument("--part", choices=("ofs", "cofs", "both"), default="both")
    ap.add_argument(
        "--ofs-steps", type=int, default=100, help="Long enough for DPO's loss to fall below 0.05."
    )
    ap.add_argument("--ofs-lr", type=float, default=1e-3)
    ap.add_argument(
        "--cofs-steps", type=int, default=60, help="Steps per domain (30 at lr 5e-4 did not learn domain 2)."
    )
    ap.add_argument("--cofs-lr", type=float, default=2e-3)
    ap.add_argument(
        "--cofs-hard-steps", type=int, default=0, help="Steps on the second domain (0: --cofs-steps)."
    )
    args = ap.parse_args()
    lines = ["# OFS-DPO and COFS-DPO vs DPO", ""]
    if args.part in ("ofs", "both"):
        lines += ofs_part(args.reuse, args.ofs_steps, args.ofs_lr)
    if args.part in ("cofs", "both"):
        lines += cofs_part(args.reuse, args.cofs_steps, args.cofs_lr, args.cofs_hard_steps or args.cofs_steps)
    write_report(f"ofs_{args.part}" if args.part != "both" else "ofs", lines, {})


if __name__ == "__main__":
    main()
