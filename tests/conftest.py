import os

# Nothing is ever downloaded: the built-in models and data are made locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The rollout engines' KV cache on CPU: 2 GiB (vLLM's size otherwise: rollout.gpu_memory_utilization of
# the machine's RAM, 3.6 GiB here). The test models need megabytes (the real one's runs, a few hundred),
# so every sequence still runs at once and the samples are the same; the actors kept between runs
# (tests/integration/conftest.py) hold less memory, and with the size given vLLM skips its warm-up pass.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def pytest_runtest_logreport(report):
    """With ALIGN_TEST_TIMES=<file>: append each test's wall time as it finishes (a live --durations)."""
    path = os.environ.get("ALIGN_TEST_TIMES")
    if path and report.when == "call":
        with open(path, "a") as f:
            f.write(f"{report.duration:8.1f}  {report.outcome:7}  {report.nodeid}\n")


TIERS = ("unit", "integration", "reliability")


def _tier(item) -> str | None:
    """The folder under tests/ a test sits in (its tier), or None."""
    parts = item.nodeid.replace("\\", "/").split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "tests" else None


def pytest_collection_modifyitems(config, items):
    """Every test carries its tier as a marker, from its folder (tests/<tier>/...): ``make test-unit``,
    ``test-integration``, ``test-reliability`` select them; ``slow`` is set by the test itself. The
    tiers run in ``TIERS`` order (the seconds-long unit tests first), the integration modules in
    ``tests.cluster.ORDER``."""
    import pytest

    from tests.cluster import ORDER

    def rank(item):
        tier, module = _tier(item), item.path.stem
        return (
            TIERS.index(tier) if tier in TIERS else len(TIERS),
            ORDER.index(module) if module in ORDER else len(ORDER),
        )

    for item in items:
        if _tier(item) in TIERS:
            item.add_marker(getattr(pytest.mark, _tier(item)))
    items.sort(key=rank)  # stable: the order inside a module stays


def pytest_runtest_setup(item):
    """The integration package's shared cluster (``tests/integration/conftest.py``, session-scoped: a
    folder without ``__init__.py`` has no package scope) is stopped before any test outside it."""
    if _tier(item) != "integration":
        from tests.cluster import stop_kept_actors

        stop_kept_actors("integration")
