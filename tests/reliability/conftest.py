import os
from pathlib import Path

from tests.reliability import report as rel

ROOT = Path(__file__).resolve().parents[2]


def pytest_runtest_logreport(report):
    """A reliability test that failed counts in the report even if it failed before recording."""
    if report.failed and "tests/reliability/" in report.nodeid.replace("\\", "/"):
        rel.FAILED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if rel.RECORDS or rel.FAILED:
        out = rel.write_report(
            os.environ.get("ALIGN_RELIABILITY_REPORT", ROOT / "runs" / "reliability" / "report.md")
        )
        print(f"\nreliability report: {out}")
