import os
from pathlib import Path

from tests.reliability import report

ROOT = Path(__file__).resolve().parents[2]


def pytest_sessionfinish(session, exitstatus):
    if report.RECORDS:
        out = report.write_report(os.environ.get("ALIGN_RELIABILITY_REPORT", ROOT / "runs" / "reliability" / "report.md"))
        print(f"\nreliability report: {out}")
