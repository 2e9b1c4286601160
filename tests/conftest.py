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


TIERS = ("unit", "integration", "reliability")


def pytest_collection_modifyitems(config, items):
    """Every test carries its tier as a marker, from its folder (tests/<tier>/...): ``make test-unit``,
    ``test-integration``, ``test-reliability`` select them; ``slow`` is set by the test itself."""
    import pytest

    for item in items:
        parts = item.nodeid.replace("\\", "/").split("/")
        tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else None
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
