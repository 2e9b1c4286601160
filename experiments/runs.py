"""Shared by the experiment scripts: where results go, and one training run through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results"
RUNS = OUT / "runs"
ALIGN = [sys.executable, "-m", "launch.cli"]


def train(config: str, label: str, sets: list[str], reuse: bool) -> Path:
    """``align train configs/<config> --set trainer.output_dir=RUNS/<label> --set ...``; with
    ``reuse``, a run that already has a checkpoint is not repeated."""
    out = RUNS / label
    if reuse and list((out / "checkpoints").glob("step_*")):
        return out
    cmd = [
        *ALIGN,
        "train",
        str(ROOT / "configs" / config),
        "--set",
        f"trainer.output_dir={out}",
        *[a for s in sets for a in ("--set", s)],
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out


def evaluate(config: str, out: Path, checkpoints: dict[str, Path], sets: list[str]) -> dict:
    """``align eval configs/<config>`` of each labelled checkpoint (and the base model) into ``out``;
    returns its ``eval.json`` (``{label: metrics}``)."""
    cmd = [*ALIGN, "eval", str(ROOT / "configs" / config), "--set", f"trainer.output_dir={out}"]
    cmd += [a for s in sets for a in ("--set", s)]
    for label, run in checkpoints.items():
        cmd += ["--checkpoint", str(run), "--label", label]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads((out / "eval.json").read_text())
