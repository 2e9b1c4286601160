"""The real `align` console script: help, validation and clear errors without tracebacks."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ALIGN = str(Path(sys.executable).with_name("align"))


def run(*args, cwd=ROOT):
    return subprocess.run([ALIGN, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_lists_commands_and_config_keys():
    top = run("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in ("train", "eval", "sweep", "model"))
    train = run("train", "--help")
    assert "trainer.max_steps  (int, default 20)" in train.stdout and "--resume" in train.stdout


def test_dry_run_prints_resolved_config():
    out = run("train", "configs/grpo_tiny.yaml", "--dry-run", "--set", "algorithm.name=dapo")
    assert out.returncode == 0, out.stderr
    assert "clip_high: 0.28" in out.stdout and "name: dapo" in out.stdout


def test_bad_config_is_one_clear_error_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_step: 3\n")
    out = run("train", str(bad))
    assert out.returncode == 2
    assert f"unknown key 'trainer.max_step'; did you mean 'trainer.max_steps'? ({bad}, line 2)" in out.stderr
    assert "Traceback" not in out.stderr
    debug = run("--debug", "train", str(bad))
    assert "Traceback" in debug.stderr
