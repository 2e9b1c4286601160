"""Shared by the method-effect experiments (issue 20): task files with a chosen level mix, arms x
seeds through ``align train``, sampled evaluation through ``align eval``, mean and spread per arm.

Each experiment script (``experiments/effect_<method>.py``) builds its task here, trains every arm
with at least two seeds, evaluates the checkpoints with ``align eval`` at temperature 1 (several
samples per prompt: greedy accuracy saturates on these tasks), plots with ``align compare`` and
``align eval``'s per-level plot, and writes ``experiments/results/effects/<method>.md`` and ``.json``.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
from pathlib import Path

from align.data import tasks
from runs import ALIGN, OUT, ROOT, train  # experiments/runs.py  # noqa: F401 (ROOT re-exported)

EFFECTS = OUT / "effects"
DATA = EFFECTS / "data"
SEEDS = (0, 1)


def level_mix_file(name: str, shares: dict[int, float], n: int, split: str, seed: int = 0) -> Path:
    """A JSONL task file of ``n`` arithmetic rows whose levels follow ``shares`` exactly (rounded),
    shuffled; train and eval splits stay disjoint (``align.data.tasks``)."""
    rng = random.Random(f"{name}/{split}/{seed}")
    counts = {lv: round(n * s) for lv, s in shares.items()}
    rows = [tasks.arithmetic_row(rng, lv, split) for lv, k in counts.items() for _ in range(k)]
    rng.shuffle(rows)
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"{name}-{split}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_arms(
    config: str, arms: dict[str, list[str]], common: list[str], reuse: bool, seeds=SEEDS
) -> dict[str, list[Path]]:
    """``{arm: [run dir per seed]}``; run dirs are ``results/runs/effects/<arm>_s<seed>``."""
    out: dict[str, list[Path]] = {}
    for arm, sets in arms.items():
        out[arm] = [
            train(config, f"effects/{arm}_s{seed}", [*common, *sets, f"trainer.seed={seed}"], reuse)
            for seed in seeds
        ]
    return out


def eval_runs(config: str, runs: dict[str, list[Path]], name: str, sets: list[str], reuse: bool) -> dict:
    """``align eval`` of every run's last checkpoint (and the base model) with ``sets``; the result
    ``{label: metrics}`` with labels ``<arm>_s<seed>``, kept in ``effects/<name>/eval.json``."""
    out = EFFECTS / name
    if reuse and (out / "eval.json").exists():
        have = json.loads((out / "eval.json").read_text())
        if all(f"{a}_s{i}" in have for a, dirs in runs.items() for i in range(len(dirs))):
            return have
    cmd = [*ALIGN, "eval", str(ROOT / "configs" / config), "--set", f"trainer.output_dir={out}"]
    cmd += [a for s in sets for a in ("--set", s)]
    for arm, dirs in runs.items():
        for i, d in enumerate(dirs):
            cmd += ["--checkpoint", str(d), "--label", f"{arm}_s{i}"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads((out / "eval.json").read_text())


def compare(runs: dict[str, list[Path]], metrics: list[str], png: str) -> str:
    """``align compare`` of every run (seed 0 and 1 as separate curves); returns its table."""
    cmd = [*ALIGN, "compare"]
    labels = []
    for arm, dirs in runs.items():
        for i, d in enumerate(dirs):
            cmd.append(str(d))
            labels += ["--label", f"{arm}_s{i}"]
    cmd += labels + [a for m in metrics for a in ("--metric", m)] + ["-o", str(EFFECTS / png)]
    return subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout


def per_arm(results: dict, arms, metric: str) -> dict[str, tuple[float, float, list[float]]]:
    """``{arm: (mean, spread, values)}`` over seeds; spread = max - min (two seeds: their distance)."""
    out = {}
    for arm in arms:
        vals = [v[metric] for k, v in results.items() if k.rsplit("_s", 1)[0] == arm and metric in v]
        if vals:
            out[arm] = (statistics.fmean(vals), max(vals) - min(vals), vals)
    return out


def arm_table(results: dict, arms, metrics: list[str], base: bool = True) -> list[str]:
    """Markdown rows: arm, then ``mean ± half-spread`` per metric (seeds' values in brackets)."""
    head = "| arm | " + " | ".join(metrics) + " |"
    lines = [head, "|" + "---|" * (len(metrics) + 1)]
    if base and "base" in results:
        lines.append(
            "| base (warm start) | " + " | ".join(_cell(results["base"].get(m)) for m in metrics) + " |"
        )
    for arm in arms:
        cells = []
        for m in metrics:
            stats = per_arm(results, [arm], m).get(arm)
            cells.append("-" if stats is None else f"{stats[0]:.3f} ± {stats[1] / 2:.3f}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _cell(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def metrics_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def write_report(name: str, lines: list[str], data: dict) -> None:
    EFFECTS.mkdir(parents=True, exist_ok=True)
    (EFFECTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (EFFECTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    print("\n".join(lines))
