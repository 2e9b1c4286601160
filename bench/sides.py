"""Shared by the side-by-side benchmarks: each side runs in its own process (``--side NAME``) and
prints one ``RESULT {json}`` line; the parent collects them and writes the markdown report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def emit(result: dict) -> None:
    """In a side's process: hand the result to the parent."""
    print("RESULT " + json.dumps(result), flush=True)


def run_side(script: str, side: str, argv: list[str]) -> dict:
    """Run ``script --side side *argv`` in a fresh process; its result, or exit with its stderr tail."""
    out = subprocess.run([sys.executable, script, "--side", side, *argv], capture_output=True, text=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not line:
        raise SystemExit(f"{side} failed:\n{out.stderr[-4000:]}")
    return json.loads(line[-1][len("RESULT ") :])


def write_report(report: str, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
