"""Faults injected into real runs (Ray, a vLLM rollout worker, two DeepSpeed learner ranks, reward
actors, the built-in tiny model): processes killed with SIGKILL, signals to the driver, a kill in the
middle of a checkpoint save, a size limit while saving. Every run is compared with one uninterrupted
run of the same config: the metrics of every step must be equal (max abs difference 0)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from align.config.loading import load_config
from align.runner.trainer import Trainer
from align.store.checkpoint import CheckpointError, list_checkpoints, verify
from tests.cluster import kept_actors
from tests.reliability.report import max_abs_diff, record

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ALIGN = str(Path(sys.executable).with_name("align"))
CONFIG = ROOT / "configs" / "grpo_tiny.yaml"
STEPS = 4
# small and fast; a checkpoint every 2 steps; no eval (the train metrics carry the comparison)
COMMON = [f"trainer.max_steps={STEPS}", "trainer.save_every=2", "data.eval=null", "data.prompts_per_step=8"]


def _config(out, *extra):
    return load_config(CONFIG, [f"trainer.output_dir={out}", *COMMON, *extra])


def _rows(run) -> list[dict]:
    return [
        json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def _corrupted(run) -> int:
    """Checkpoints --resume could choose (complete: with a manifest) whose files do not verify."""
    bad = 0
    for ckpt in list_checkpoints(Path(run) / "checkpoints"):
        try:
            verify(ckpt)
        except CheckpointError:
            bad += 1
    return bad


@pytest.fixture(scope="module", autouse=True)
def _kept_actors():
    """The module's in-process runs share one Ray cluster and take kept actors (a learner slot each:
    its numbers are those of a run on actors of its own), so each pays for its faults, not for a start;
    the runs of the command line start everything from nothing."""
    with kept_actors("faults"):
        yield


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The uninterrupted run every faulty run is compared with."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    Trainer(_config(out), str(CONFIG.parent)).run()
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    return rows


class FaultyTrainer(Trainer):
    """The real trainer; ``inject(trainer)`` runs once the actors are up, to arm the faults."""

    inject = None

    def _setup_actors(self) -> None:
        super()._setup_actors()
        type(self).inject(self)


def _on_step(trainer, step: int, fn) -> None:
    """Call ``fn()`` when ``trainer`` starts step index ``step`` (0-based)."""
    original = trainer._step

    def wrapped(s):
        if s == step:
            fn()
        return original(s)

    trainer._step = wrapped


def test_rollout_and_reward_workers_killed_mid_step(tmp_path, baseline):
    """A rollout worker killed while it generates (step 2) and a reward actor killed while it scores
    (step 3): Ray restarts the worker, it is served the current adapter version again and the call is
    repeated; the reward actor is replaced and the batch rescored. The run equals the baseline."""
    out, killed = tmp_path / "run", {}

    def inject(t):
        def kill_rollout():  # mid-generate: the call is in flight when the process dies
            killed["rollout"] = t.rollouts.pids[0]
            threading.Timer(0.5, _kill, (killed["rollout"],)).start()

        _on_step(t, 1, kill_rollout)
        submit = t.rewards.submit

        def submit_then_kill(*args, **kwargs):
            pending = submit(*args, **kwargs)
            if len(t.metrics.read(t.metrics.path)) == 2 and "reward" not in killed:  # step index 2, once
                killed["reward"] = t.rewards.pids[0]
                _kill(killed["reward"])
            return pending

        t.rewards.submit = submit_then_kill

    FaultyTrainer.inject = staticmethod(inject)
    trainer = FaultyTrainer(_config(out), str(CONFIG.parent))
    trainer.run()
    rows = _rows(out)
    diff = max_abs_diff(rows, baseline)
    last = rows[-1]
    restarted = trainer.rollouts.pids[0] != killed["rollout"] and trainer.rewards.pids[0] != killed["reward"]
    ok_rollout = last.get("faults/rollout_restarts") == 1 and restarted
    ok_reward = last.get("faults/reward_restarts") == 1
    record(
        "fault",
        "rollout worker SIGKILLed mid-generate (step 2)",
        ok_rollout and diff == 0,
        "Ray restarted it; adapter re-served; call repeated",
        max_abs_diff=diff,
        corrupted=_corrupted(out),
    )
    record(
        "fault",
        "reward actor SIGKILLed mid-scoring (step 3)",
        ok_reward and diff == 0,
        "replaced; batch rescored",
        max_abs_diff=diff,
    )
    record("resume", "rollout + reward actor killed vs uninterrupted", diff == 0, max_abs_diff=diff)
    assert ok_rollout and ok_reward, last
    assert diff == 0.0


ASYNC = "rollout.max_staleness=1"  # asynchronous: step t+1's batch is sampled while step t trains


@pytest.mark.parametrize("mode", ["lockstep", "async"])
def test_learner_rank_killed_restarts_the_group_from_the_last_checkpoint(tmp_path, request, mode):
    """Rank 1 of 2 killed at step 3 (rank 0 then blocks in its all-reduce): the trainer sees the loss
    at once, kills the group, starts it again from step_2 and recomputes steps 3 and 4. Async (K = 1):
    step_2's checkpoint names the batch in flight then (step 3's, version 1); it is sampled again from
    that version, and the run equals the asynchronous baseline."""
    out, killed = tmp_path / "run", []
    baseline = request.getfixturevalue("baseline" if mode == "lockstep" else "baseline_async")
    extra = [] if mode == "lockstep" else [ASYNC]

    def inject(t):
        train_step = t.learners.train_step

        def kill_then_train(*args, **kwargs):
            if not killed and len(t.metrics.read(t.metrics.path)) == 2:
                killed.append(t.learners.pids[1])
                _kill(killed[0])
            return train_step(*args, **kwargs)

        t.learners.train_step = kill_then_train

    FaultyTrainer.inject = staticmethod(inject)
    t0 = time.time()
    trainer = FaultyTrainer(_config(out, *extra), str(CONFIG.parent))
    trainer.run()
    rows = _rows(out)
    diff = max_abs_diff(rows, baseline)
    ok = (
        bool(killed)
        and rows[-1].get("faults/learner_restarts") == 1
        and killed[0] not in trainer.learners.pids
    )
    tag = "" if mode == "lockstep" else "async (K=1): "
    record(
        "fault",
        f"{tag}learner rank 1 of 2 SIGKILLed in a train step (step 3)",
        ok and diff == 0,
        f"group restarted from step_2 on its own; run took {time.time() - t0:.0f}s",
        max_abs_diff=diff,
        corrupted=_corrupted(out),
    )
    record("resume", f"{tag}learner restart from checkpoint vs uninterrupted", diff == 0, max_abs_diff=diff)
    assert ok, rows[-1]
    assert diff == 0.0


@pytest.fixture(scope="module")
def baseline_async(tmp_path_factory):
    """The uninterrupted asynchronous run (K = 1) the asynchronous faults are compared with."""
    out = tmp_path_factory.mktemp("baseline_async") / "run"
    Trainer(_config(out, ASYNC), str(CONFIG.parent)).run()
    rows = _rows(out)
    assert [r.get("rollout/staleness") for r in rows] == [0, 1, 1, 1]
    return rows


def test_async_rollout_worker_killed_with_a_batch_in_flight(tmp_path, baseline_async):
    """K = 1: the worker is killed 0.3 s after step 3's batch was sent to it (while step 2 trains):
    Ray restarts it, the call (which names its adapter version, 1) is repeated from that version when
    step 3 takes the batch, and the run equals the asynchronous baseline."""
    out, killed = tmp_path / "run", {}

    def inject(t):
        send = t.ctx.queue._send

        def send_then_kill(planned):
            planned = send(planned)
            if planned.step == 2 and "rollout" not in killed:  # sent at the start of step index 1
                killed["rollout"] = t.rollouts.pids[0]
                threading.Timer(0.3, _kill, (killed["rollout"],)).start()
            return planned

        t.ctx.queue._send = send_then_kill

    FaultyTrainer.inject = staticmethod(inject)
    trainer = FaultyTrainer(_config(out, ASYNC), str(CONFIG.parent))
    trainer.run()
    rows = _rows(out)
    diff = max_abs_diff(rows, baseline_async)
    ok = rows[-1].get("faults/rollout_restarts") == 1 and trainer.rollouts.pids[0] != killed["rollout"]
    record(
        "fault",
        "async (K=1): rollout worker SIGKILLed with a batch in flight",
        ok and diff == 0,
        "Ray restarted it; the call repeated from the version it names",
        max_abs_diff=diff,
        corrupted=_corrupted(out),
    )
    record("resume", "async: rollout worker killed vs uninterrupted", diff == 0, max_abs_diff=diff)
    assert ok, rows[-1]
    assert diff == 0.0


@pytest.mark.slow
def test_learner_restarts_are_bounded(tmp_path):
    """trainer.learner_restarts=0: a lost rank stops the run with a message naming the limit and the
    last checkpoint, instead of restarting."""
    out = tmp_path / "run"

    def inject(t):
        train_step = t.learners.train_step

        def kill_then_train(*args, **kwargs):
            if len(t.metrics.read(t.metrics.path)) == 2:
                _kill(t.learners.pids[0])
            return train_step(*args, **kwargs)

        t.learners.train_step = kill_then_train

    FaultyTrainer.inject = staticmethod(inject)
    with pytest.raises(RuntimeError) as err:
        FaultyTrainer(_config(out, "trainer.learner_restarts=0"), str(CONFIG.parent)).run()
    message = str(err.value)
    ok = (
        "learner rank" in message
        and "died" in message
        and "trainer.learner_restarts=0" in message
        and "step_2" in message
    )
    record(
        "fault", "learner rank killed with trainer.learner_restarts=0", ok, "the run stops: " + message[-160:]
    )
    assert ok, message


# SIGINT takes the same path as SIGTERM: make test-reliability only (CI budget)
@pytest.mark.parametrize(
    "sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_signal_to_the_driver_checkpoints_then_resume_is_exact(tmp_path, baseline, sig):
    out = tmp_path / "run"
    mlflow = "trainer.report_to=[tensorboard,mlflow]"  # its run ends KILLED, the resume continues it
    overrides = [a for o in [f"trainer.output_dir={out}", *COMMON, mlflow] for a in ("--set", o)]
    proc = subprocess.Popen(
        [ALIGN, "train", str(CONFIG), *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if f"step 1/{STEPS}" in line:
            t0 = time.time()
            proc.send_signal(sig)
            break
    rest = proc.communicate(timeout=300)[0]
    waited = time.time() - t0
    stop_timeout = load_config(CONFIG, []).trainer.stop_timeout
    ckpts = [p.name for p in list_checkpoints(out / "checkpoints")]
    # the signal lands in step 2 (or, racing the log line, just after step 1): one checkpoint, of that step
    clean = (
        proc.returncode == 130
        and "continue with --resume" in rest
        and ckpts in (["step_1"], ["step_2"])
        and waited < stop_timeout
    )
    assert clean, (proc.returncode, ckpts, waited, "".join(lines)[-2000:] + rest[-3000:])
    from tests.integration.tracker_files import mlflow_client

    client, run_id = mlflow_client(out)
    assert client.get_run(run_id).info.status == "KILLED"
    Trainer(_config(out, mlflow), str(CONFIG.parent), resume=True).run()
    assert mlflow_client(out)[1] == run_id and client.get_run(run_id).info.status == "FINISHED"
    diff = max_abs_diff(_rows(out), baseline)
    record(
        "fault",
        f"{sig.name} to the driver at step 2",
        clean,
        f"exit 130 after {waited:.1f}s (stated: within trainer.stop_timeout={stop_timeout:g}s); checkpoint {ckpts[0]}",
        corrupted=_corrupted(out),
    )
    record("resume", f"{sig.name} + --resume vs uninterrupted", diff == 0, max_abs_diff=diff)
    assert diff == 0.0


@pytest.mark.slow
def test_a_step_that_outlasts_stop_timeout_stops_without_a_new_checkpoint(tmp_path):
    """trainer.stop_timeout=1: the signal's step cannot finish in time, so the run stops at once and
    says the last good checkpoint (none yet) instead of writing one."""
    out = tmp_path / "run"
    slow = tmp_path / "slow.py"  # a reward that takes 4 s a batch: every step outlasts the 1 s allowed
    slow.write_text(
        "import time\n\ndef slow(prompts, completions, **kw):\n    time.sleep(4)\n    return [0.0] * len(completions)\n"
    )
    rewards = f"rewards=[{{fn: correctness}}, {{fn: '{slow}:slow', weight: 0.0}}]"
    overrides = [
        a
        for o in [
            f"trainer.output_dir={out}",
            *COMMON,
            "trainer.save_every=0",
            "trainer.stop_timeout=1",
            rewards,
        ]
        for a in ("--set", o)
    ]
    proc = subprocess.Popen(
        [ALIGN, "train", str(CONFIG), *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    for line in proc.stdout:
        if f"step 1/{STEPS}" in line:
            time.sleep(1.0)  # into step 2's reward wait
            t0 = time.time()
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=120)[0]
    waited = time.time() - t0
    ok = (
        proc.returncode == 130
        and "step did not finish within trainer.stop_timeout=1s" in rest
        and waited < 30
    )
    ok = ok and not list_checkpoints(out / "checkpoints")
    record(
        "fault",
        "SIGTERM with a step longer than trainer.stop_timeout=1",
        ok,
        f"exit 130 after {waited:.1f}s, no checkpoint written",
    )
    assert ok, (proc.returncode, waited, rest[-3000:])


KILL_IN_SAVE = textwrap.dedent("""
    import json, os, signal, sys
    import psutil
    import align.store.checkpoint as ck
    from align.runner.trainer import Trainer
    from align.config.loading import load_config

    real_replace = os.replace

    def replace(src, dst):  # the kill: step_2's files are written, the rename has not happened
        if str(dst).endswith("step_2"):
            children = [p.pid for p in psutil.Process().children(recursive=True)]
            with open(sys.argv[2], "w") as f:
                json.dump(children, f)  # the Ray processes this driver started, for the test to clean up
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    ck.os.replace = replace
    cfg = load_config(sys.argv[1], sys.argv[3:])
    Trainer(cfg, os.path.dirname(sys.argv[1])).run()
""")


def test_a_kill_during_a_checkpoint_save_never_leaves_a_checkpoint_resume_would_choose(tmp_path, baseline):
    """SIGKILL between writing step_2's files and renaming the folder into place: --resume must
    choose step_1 (verified) and continue as the uninterrupted run did."""
    out = tmp_path / "run"
    script, children = tmp_path / "kill_in_save.py", tmp_path / "children.json"
    script.write_text(KILL_IN_SAVE)
    two_steps = ["trainer.max_steps=2", "trainer.save_every=1"]
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            str(CONFIG),
            str(children),
            f"trainer.output_dir={out}",
            *COMMON,
            *two_steps,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    _kill_all(json.loads(children.read_text()) if children.exists() else [])
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    chosen = [p.name for p in list_checkpoints(out / "checkpoints")]
    ok = done.returncode == -signal.SIGKILL and chosen == ["step_1"] and bool(leftovers)
    assert ok, (done.returncode, chosen, leftovers, done.stderr[-3000:])
    verify(out / "checkpoints" / "step_1")
    Trainer(_config(out, *two_steps), str(CONFIG.parent), resume=True).run()
    diff = max_abs_diff(_rows(out), [r for r in baseline if r["step"] <= 2])
    record(
        "checkpoint",
        "SIGKILL between writing step_2 and its rename",
        ok,
        f"half-written {leftovers[0]} ignored; --resume chose step_1",
        corrupted=_corrupted(out),
    )
    record("resume", "kill during save + --resume vs uninterrupted", diff == 0, max_abs_diff=diff)
    assert diff == 0.0


def _kill_all(pids: list[int]) -> None:
    import psutil

    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


# make test-reliability only (CI budget): the same write path is checked without a run in
# tests/unit/checkpoint/test_checkpoint.py (a size limit while saving)
@pytest.mark.slow
def test_disk_full_while_saving_is_a_clear_error_and_the_previous_checkpoint_survives(tmp_path):
    """A file-size limit (RLIMIT_FSIZE, what a full disk looks like to a writer: the write fails)
    set while step 2's checkpoint is written; step 1's must stay whole."""
    out = tmp_path / "run"

    def inject(t):
        save = t._save

        def limited_save(step):
            if step != 2:
                return save(step)
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
            try:
                return save(step)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

        t._save = limited_save

    FaultyTrainer.inject = staticmethod(inject)
    with pytest.raises(CheckpointError) as err:
        FaultyTrainer(_config(out, "trainer.max_steps=2", "trainer.save_every=1"), str(CONFIG.parent)).run()
    message = str(err.value)
    chosen = [p.name for p in list_checkpoints(out / "checkpoints")]
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    verify(out / "checkpoints" / "step_1")
    ok = (
        "could not write checkpoint" in message
        and "File too large" in message
        and "step_1 is intact" in message
        and chosen == ["step_1"]
        and not leftovers
    )
    record(
        "checkpoint",
        "size limit hit while saving step_2",
        ok,
        message.split(";")[0][-120:],
        corrupted=_corrupted(out),
    )
    assert ok, (message, chosen, leftovers)
