"""A Pareto sweep run with different ``trials_per_job`` (1: every trial starts its own actors, as
before; N: N trials as adapters over one base on one set of actors): wall time, peak memory and
whether every trial's results equal across the arms.

    .venv/bin/python bench/sweep_jobs.py --sweep configs/sweep_tiny.yaml --n 1 0 --tag tiny
    .venv/bin/python bench/sweep_jobs.py --sweep configs/sweep_smollm2.yaml --n 1 2 4 --tag smollm2-135m

Each arm is ``align sweep`` in its own process (Ray started by it, so every actor is a descendant).
Memory is sampled once a second: the proportional set size (PSS: shared pages split between the
processes that map them) summed over the sweep's process tree, and the machine's used memory above
what it was before the arm. Equality: every trial's ``metrics.jsonl`` rows (timing and start-up keys
left out) compared with the first arm's, key for key. Writes bench/results/sweep_jobs_<tag>.md and
.json, and the last arm's plots/hypervolume_by_step.png as sweep_jobs_<tag>_front.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from align.reporting.metrics import VOLATILE

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


class MemorySampler:
    """Peak PSS of a process tree and peak machine-used memory above a baseline, sampled every ``every`` s."""

    def __init__(self, pid: int, every: float = 1.0):
        self.root, self.every = psutil.Process(pid), every
        self.base_used = psutil.virtual_memory().used
        self.peak_pss = self.peak_used = 0
        self.processes_at_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                continue
            pss = 0
            for p in procs:
                try:
                    pss += p.memory_full_info().pss
                except psutil.Error:
                    pass
            if pss > self.peak_pss:
                self.peak_pss, self.processes_at_peak = pss, len(procs)
            self.peak_used = max(self.peak_used, psutil.virtual_memory().used - self.base_used)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {
            "peak_pss_gb": self.peak_pss / 2**30,
            "peak_used_gb": self.peak_used / 2**30,
            "processes_at_peak": self.processes_at_peak,
        }


def run_arm(sweep: str, n: int, sets: list[str], out: Path, log: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "launch.cli",
        "sweep",
        sweep,
        "--set",
        f"output_dir={out}",
        "--set",
        f"trials_per_job={n}",
        *[x for s in sets for x in ("--set", s)],
    ]
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        sampler = MemorySampler(proc.pid)
        rc = proc.wait()
    wall = time.time() - t0
    mem = sampler.stop()
    with open(out / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    summary = json.loads((out / "summary.json").read_text())
    return {
        "n": n,
        "rc": rc,
        "wall_s": wall,
        **mem,
        "jobs": summary.get("jobs"),
        "trials": trials,
        "hypervolume": summary["hypervolume"],
        "hypervolume_all": summary["hypervolume_all"],
        "failed": summary.get("failed", []),
        "out": str(out),
    }


def rows_of(out: str, trial: str) -> list[dict]:
    path = Path(out) / "trials" / trial / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def compare(first: dict, other: dict) -> dict:
    """Trials whose every metrics row equals the first arm's, and the largest objective difference."""
    names = [t["trial"] for t in first["trials"]]
    equal = [n for n in names if rows_of(first["out"], n) == rows_of(other["out"], n)]
    objectives = [
        k for k in first["trials"][0] if k not in ("trial", "method", "seed", "nondominated", "run_dir")
    ]
    objectives = [k for k in objectives if not k.startswith("w/")]
    by_name = {t["trial"]: t for t in other["trials"]}
    diff = max(
        (abs(float(t[k]) - float(by_name[t["trial"]][k])) for t in first["trials"] for k in objectives),
        default=0.0,
    )
    return {"equal_trials": len(equal), "trials": len(names), "max_objective_diff": diff}


def report(tag: str, sweep: str, sets: list[str], arms: list[dict]) -> str:
    first = arms[0]
    lines = [
        f"# Sweep as adapters over one base: `{sweep}` ({tag})",
        "",
        f"`align sweep {sweep}` {' '.join('--set ' + s for s in sets)} with `trials_per_job` N; each arm in its "
        f"own process on this machine (2 cores, 24 GiB), one after the other. {len(first['trials'])} trials. "
        "Peak PSS: summed over the sweep's process tree (driver, Ray, every actor); used: the machine's "
        "used memory above its level before the arm. Equal trials: every `metrics.jsonl` row (timing and "
        "start-up keys left out) equal to the first arm's, key for key.",
        "",
        "| trials_per_job | jobs | wall (s) | speed-up | peak PSS (GiB) | peak used (GiB) | equal trials | max objective diff | hypervolume (all) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in arms:
        cmp = arm.get("compare") or {
            "equal_trials": len(arm["trials"]),
            "trials": len(arm["trials"]),
            "max_objective_diff": 0.0,
        }
        lines.append(
            f"| {arm['n'] or 'all'} | {arm['jobs']} | {arm['wall_s']:.0f} | {first['wall_s'] / arm['wall_s']:.2f}x | "
            f"{arm['peak_pss_gb']:.2f} | {arm['peak_used_gb']:.2f} | {cmp['equal_trials']}/{cmp['trials']} | "
            f"{cmp['max_objective_diff']:.3g} | {arm['hypervolume_all']:.4f} |"
        )
    lines += ["", "Final objective vectors (first arm):", ""]
    keys = [k for k in first["trials"][0] if k not in ("nondominated", "run_dir", "seed")]
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for t in first["trials"]:
        lines.append("| " + " | ".join(str(t[k]) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", default="configs/sweep_tiny.yaml")
    ap.add_argument("--n", type=int, nargs="+", default=[1, 0], help="trials_per_job of each arm (0: all)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra sweep --set")
    ap.add_argument("--tag", default="tiny")
    ap.add_argument("--keep", help="keep the arms' sweep directories under this folder")
    args = ap.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="align-sweep-jobs-"))
    arms = []
    for n in args.n:
        out = base / f"n{n}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        print(f"arm trials_per_job={n} ...", flush=True)
        arm = run_arm(args.sweep, n, args.sets, out, base / f"n{n}.log")
        if arms:
            arm["compare"] = compare(arms[0], arm)
        arms.append(arm)
        print(json.dumps({k: v for k, v in arm.items() if k != "trials"}), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"sweep_jobs_{args.tag}.json").write_text(
        json.dumps({"sweep": args.sweep, "sets": args.sets, "arms": arms}, indent=2)
    )
    (RESULTS / f"sweep_jobs_{args.tag}.md").write_text(report(args.tag, args.sweep, args.sets, arms))
    front = Path(arms[-1]["out"]) / "plots" / "hypervolume_by_step.png"
    if front.exists():
        shutil.copy(front, RESULTS / f"sweep_jobs_{args.tag}_front.png")
    print((RESULTS / f"sweep_jobs_{args.tag}.md").read_text())


if __name__ == "__main__":
    main()
