"""A Ray cluster joined with ``--address`` that goes away in the middle of a run: the driver must
stop with one clear error line (naming the address and the last checkpoint) within seconds, not hang
and not be killed by Ray a minute later. Slow (a cluster of its own): make test-reliability."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from align.workers.groups import free_port
from tests.reliability.report import record

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
ALIGN = str(Path(sys.executable).with_name("align"))
CONFIG = ROOT / "configs" / "grpo_tiny.yaml"


def _kill_cluster(temp_dir: str) -> None:
    """Every process of the cluster started with ``--temp-dir temp_dir`` (and only those); its
    workers exit on their own once their raylet is gone."""
    for p in psutil.process_iter(["cmdline"]):
        if temp_dir in " ".join(p.info["cmdline"] or []):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_a_joined_cluster_that_goes_away_is_a_clear_error_not_a_hang(tmp_path):
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix sockets live under it
    # Ray >= 2.59 starts clusters with token authentication; the driver must use the same mode
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    subprocess.run(
        [
            ray_bin,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={temp_dir}",
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    out = tmp_path / "run"
    try:
        proc = subprocess.Popen(
            [
                ALIGN,
                "train",
                str(CONFIG),
                "--address",
                f"127.0.0.1:{port}",
                "--set",
                f"trainer.output_dir={out}",
                "--set",
                "trainer.max_steps=50",
                "--set",
                "trainer.save_every=1",
                "--set",
                "data.eval=null",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=env,
        )
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "step 2/50" in line:
                break
        t0 = time.time()
        _kill_cluster(temp_dir)  # the whole cluster dies at once (as when its machine goes away)
        rest = proc.communicate(timeout=240)[0]
        waited = time.time() - t0
    finally:
        _kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    errors = [line for line in rest.splitlines() if line.startswith("error:")]
    ok = (
        proc.returncode == 1
        and len(errors) == 1
        and f"127.0.0.1:{port}" in errors[0]
        and "stopped answering" in errors[0]
        and "checkpoint" in errors[0]
        and waited < 60
    )
    record(
        "fault",
        "joined Ray cluster (--address) killed mid-run",
        ok,
        f"exit {proc.returncode} after {waited:.0f}s: {errors[0][:160] if errors else rest[-160:]}",
    )
    assert ok, (proc.returncode, waited, "".join(lines)[-1500:] + rest[-3000:])
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[:2] == [1, 2]
