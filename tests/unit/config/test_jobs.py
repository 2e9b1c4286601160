"""How a sweep's trials are grouped into jobs, and how a job's trials take turns."""

import threading
import time
from pathlib import Path

from align.runner.jobs import Turns
from launch.sweep import plan_sweep

SWEEP = str(Path(__file__).resolve().parents[3] / "configs" / "sweep_tiny.yaml")


def _sizes(overrides):
    return [len(j["trials"]) for j in plan_sweep(SWEEP, overrides)[4]]


def test_trials_per_job_groups_the_trials_that_can_share():
    assert _sizes(["trials_per_job=1"]) == [1] * 12  # a job per trial
    assert _sizes([]) == [12]  # the file's trials_per_job: 0
    assert _sizes(["trials_per_job=5"]) == [5, 5, 2]
    # a method whose LoRA rank differs cannot share the others' learners and engine: a job of its own
    sizes = _sizes(["trials_per_job=0", "methods.r4=[model.lora.r=4]"])
    assert sorted(sizes) == [4, 12]
    jobs = plan_sweep(SWEEP, ["trials_per_job=0", "methods.r4=[model.lora.r=4]"])[4]
    assert {t["method"] for t in jobs[1]["trials"]} == {"r4"}
    # every trial knows its job (align sweep --dry-run prints it)
    assert all(t["job"] == j["name"] for j in jobs for t in j["trials"])


def test_turns_are_first_come_first_served():
    """Three trials asking for turns in order a, b, c advance together (round robin), none twice in a row."""
    turns, order = Turns(1), []

    def trial(name):
        for _ in range(3):
            with turns:
                order.append(name)
                time.sleep(0.01)

    turns.__enter__()  # hold the turn until every trial is queued
    threads = []
    for name in "abc":
        threads.append(threading.Thread(target=trial, args=(name,)))
        threads[-1].start()
        while len(turns._queue) < len(threads):
            time.sleep(0.001)
    turns.__exit__()
    for t in threads:
        t.join()
    assert "".join(order) == "abcabcabc"


def test_turns_width_bounds_the_trials_stepping_at_once():
    turns, lock, now, peak = Turns(2), threading.Lock(), [0], [0]

    def trial():
        for _ in range(3):
            with turns:
                with lock:
                    now[0] += 1
                    peak[0] = max(peak[0], now[0])
                time.sleep(0.01)
                with lock:
                    now[0] -= 1

    threads = [threading.Thread(target=trial) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2
