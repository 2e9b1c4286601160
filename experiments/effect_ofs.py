"""OFS-DPO and COFS-DPO vs DPO, in the regimes the paper's arguments are about (issue 20).

    .venv/bin/python experiments/effect_ofs.py [--reuse] [--part ofs|cofs|both]

OFS-DPO's claim (Qi et al. 2024): once DPO's loss nears 0 its gradient vanishes and learning stalls;
a fast and a slow LoRA module chasing each other keep a useful gradient, so the policy keeps
improving. Earlier runs never left loss ~0.55. Here DPO trains on the built-in arithmetic pairs with
beta 0.5 and lr 1e-3 for 60 steps so that its loss falls below 0.05; arms: DPO, OFS (lr ratio 10, the
paper's, alpha 0.5), OFS (lr ratio 3); swap window 5. Metric: sampled (T = 1) correctness of the
served module's answers on 200 held-out prompts (4 samples each); ceiling 1.0.

COFS-DPO's claim: combining per-domain fast modules linearly keeps earlier domains that sequential
DPO forgets. Two conflicting, learnable domains: (1) level-1 prompts, chosen the NoThinking answer,
rejected the (correct) Thinking one; (2) levels 4-5, chosen the Thinking answer, rejected a
NoThinking guess. Sequential training on (2) pushes the first token toward thinking everywhere and so
undoes (1). Score per domain: ``mode_match`` (right answer in the domain's preferred mode), sampled;
ceiling 1.0 on both. Arms: sequential DPO, DPO + the same linear combination (isolates OFS's part),
COFS (OFS + combination). 30 steps per domain, two seeds each.
"""

from __future__ import annotations

import argparse
import json
import random

from effects import DATA, ROOT, arm_table, compare, eval_runs, metrics_rows, run_arms, write_report

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
            wrong = dict(row, answer=str(rng.choice([d for d in range(10) if str(d) != row["answer"]])))
            nothink = tasks.response(wrong, False)
        chosen, rejected = (think, nothink) if prefer_think else (nothink, think)
        rows.append({**row, "chosen": chosen, "rejected": rejected})
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"{name}-{split}.jsonl"
    if split == "eval":  # prompt rows: generation is scored with mode_match
        rows = [{k: r[k] for k in ("prompt", "answer", "level", "task")} for r in rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def ofs_part(reuse: bool) -> list[str]:
    common = [
        "algorithm.preference.beta=0.5",
        "learner.lr=1.0e-3",
        "trainer.max_steps=60",
        "trainer.eval_every=10",
        "trainer.save_every=0",
        "algorithm.preference.generate_eval=true",
        "data.eval_size=200",
        "algorithm.preference.eval_pairs=200",
        *SAMPLED,
    ]
    arms = {
        "dpo": [],
        "ofs_r10": ["algorithm.preference.ofs={enabled: true, lr_ratio: 10, alpha: 0.5, swap_window: 5}"],
        "ofs_r3": ["algorithm.preference.ofs={enabled: true, lr_ratio: 3, alpha: 0.5, swap_window: 5}"],
    }
    runs = run_arms("dpo_tiny.yaml", arms, common, reuse)
    res = eval_runs(
        "dpo_tiny.yaml",
        runs,
        "ofs_eval",
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
        "ofs_curves.png",
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
        "Built-in arithmetic pairs (chosen: right answer, rejected: a wrong one, same mode), beta 0.5, lr 1e-3, 32 "
        "pairs per step, 60 steps. Ceiling: correctness 1.0; held-out pair accuracy 1.0.",
        "",
        *arm_table(res, arms, ["correctness", "length", "nothink_rate"]),
        "",
        "| run | lowest train DPO loss | first step below 0.05 | role swaps |",
        "|---|---|---|---|",
        *lows,
        "",
        "![curves](ofs_curves.png)",
        "",
        "```",
        table.strip(),
        "```",
        "",
    ]


def cofs_part(reuse: bool) -> list[str]:
    easy = {
        s: mode_pairs("cofs_easy_nothink", (1,), False, n, s) for s, n in (("train", 2000), ("eval", 100))
    }
    hard = {s: mode_pairs("cofs_hard_think", (4, 5), True, n, s) for s, n in (("train", 2000), ("eval", 100))}
    domains = (
        "algorithm.preference.domains=["
        f"{{name: easy, train: {easy['train']}, eval: {easy['eval']}, steps: 30}}, "
        f"{{name: hard, train: {hard['train']}, eval: {hard['eval']}, steps: 30}}]"
    )
    common = [
        domains,
        f"rewards=[{{fn: '{FN}:mode_match', name: mode_match}}]",
        "algorithm.preference.cofs.score=mode_match",
        "algorithm.preference.cofs.heldout=32",
        "trainer.save_every=0",
        *SAMPLED,
    ]
    arms = {
        "sequential_dpo": [
            "algorithm.preference.ofs.enabled=false",
            "algorithm.preference.cofs.combine=false",
        ],
        "dpo_combined": ["algorithm.preference.ofs.enabled=false", "algorithm.preference.cofs.combine=true"],
        "cofs": ["algorithm.preference.ofs.enabled=true", "algorithm.preference.cofs.combine=true"],
    }
    runs = run_arms("cofs_dpo_tiny.yaml", arms, common, reuse)
    res: dict = {}
    for arm, dirs in runs.items():
        for i, d in enumerate(dirs):
            last = {}
            for r in metrics_rows(d):
                last.update({k: v for k, v in r.items() if k.startswith(("domain/", "cofs/lambda"))})
            res[f"{arm}_s{i}"] = last
    table = compare(runs, ["domain/easy", "domain/hard", "cofs/lambda", "dpo/loss"], "cofs_curves.png")
    return [
        "## COFS-DPO vs sequential DPO (two conflicting domains)",
        "",
        "Domain easy: level-1 prompts, chosen NoThinking, rejected Thinking (both right). Domain hard: levels 4-5, "
        "chosen Thinking, rejected a NoThinking wrong guess. 30 steps each, beta 0.1, lr 5e-4. Score: mode_match "
        "(right answer in the domain's preferred mode), 100 held-out prompts per domain x 4 samples at T = 1, after "
        "the last domain. Ceiling 1.0 on both; the warm start is below it on both (it picks modes at random).",
        "",
        *arm_table(res, arms, ["domain/easy", "domain/hard", "cofs/lambda"], base=False),
        "",
        "![curves](cofs_curves.png)",
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
    args = ap.parse_args()
    lines = ["# OFS-DPO and COFS-DPO vs DPO", ""]
    if args.part in ("ofs", "both"):
        lines += ofs_part(args.reuse)
    if args.part in ("cofs", "both"):
        lines += cofs_part(args.reuse)
    write_report(f"ofs_{args.part}" if args.part != "both" else "ofs", lines, {})


if __name__ == "__main__":
    main()
