import os

# Nothing is ever downloaded: the built-in models and data are made locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_runtest_logreport(report):
    """With ALIGN_TEST_TIMES=<file>: append each test's wall time as it finishes (a live --durations)."""
    path = os.environ.get("ALIGN_TEST_TIMES")
    if path and report.when == "call":
        with open(path, "a") as f:
            f.write(f"{report.duration:8.1f}  {report.outcome:7}  {report.nodeid}\n")
