"""Pure packages stay import-light: no ray, vllm or deepspeed (STYLE.md point 3)."""

import subprocess
import sys


def test_pure_packages_do_not_import_heavy_runtime():
    code = (
        "import sys, align.losses, align.objectives, align.objectives.pareto, align.objectives.simplex, "
        "align.objectives.multipliers, align.data.tasks, align.data.loading, rewards, align.config.loading, align.config;"
        "heavy = [m for m in ('ray', 'vllm', 'deepspeed') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
