"""Trials of a sweep as adapters over one base (``align.runner.jobs``): one vLLM engine, one learner rank and
one reward pool serve several trials, and each trial's results equal its solo run's, key for key;
a trial that fails ends alone; a stopped job resumes every trial exactly."""

import json
from pathlib import Path

import pytest

from align.config.loading import load_config
from align.reporting.metrics import VOLATILE
from align.runner.jobs import TrialRun, run_trials, share_key
from align.runner.trainer import Trainer

# the solo runs start their own actors: the job is compared with runs as a user starts them
pytestmark = [pytest.mark.integration, pytest.mark.own_actors]
ROOT = Path(__file__).resolve().parents[2]
MULTI = ROOT / "configs" / "multi_objective_tiny.yaml"
SMALL = ["data.eval_size=24", "data.prompts_per_step=8", "trainer.save_every=0", "trainer.eval_every=1"]
TRIALS = {
    # different seeds (different LoRA initialisations and prompt orders), weights, objectives and lrs
    "a": ["rewards.0.weight=0.6", "rewards.1.weight=0.2", "rewards.2.weight=0.2", "objective.name=static"],
    "b": [
        "rewards.0.weight=0.2",
        "rewards.1.weight=0.6",
        "rewards.2.weight=0.2",
        "objective.name=hypervolume",
        "objective.hypervolume.every=1",
        "trainer.seed=1",
        "learner.lr=3e-4",
    ],
    # a user's mistake that only shows at its first step: no parameter matches the pattern
    "bad": ["objective.name=gradient", "objective.gradient.param_pattern=no_such_module"],
}


def _config(name: str, out: Path, steps: int):
    return load_config(
        MULTI, [*SMALL, *TRIALS[name], f"trainer.max_steps={steps}", f"trainer.output_dir={out}"]
    )


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(VOLATILE)}


def test_share_key_separates_what_the_actors_cannot_share():
    a, b = _config("a", Path("x"), 2), _config("b", Path("y"), 2)
    assert share_key(a) == share_key(b)  # seed, lr, weights, objective: the trial's own
    rank = load_config(MULTI, [*TRIALS["a"], "model.lora.r=4"])
    family = load_config(MULTI, [*TRIALS["a"], "algorithm.name=rloo"])
    engine = load_config(MULTI, [*TRIALS["a"], "rollout.max_new_tokens=32"])
    assert len({share_key(c) for c in (a, rank, family, engine)}) == 4


def test_trials_in_one_job_equal_their_solo_runs_fail_alone_and_resume(tmp_path):
    solo = {}
    for name in ("a", "b"):
        Trainer(_config(name, tmp_path / "solo" / name, 2), str(MULTI.parent)).run()
        solo[name] = _rows(tmp_path / "solo" / name)

    job = tmp_path / "job"
    # first part: one step each, then the job stops (a stopped sweep); the bad trial fails alone
    first = run_trials([TrialRun(n, _config(n, job / n, 1), str(MULTI.parent)) for n in ("a", "b", "bad")])
    assert isinstance(first["bad"], Exception) and "no_such_module" in str(first["bad"])
    assert not isinstance(first["a"], Exception) and not isinstance(first["b"], Exception)
    # second part: every trial resumes from its own checkpoint in one job
    second = run_trials(
        [TrialRun(n, _config(n, job / n, 2), str(MULTI.parent), resume=True) for n in ("a", "b")]
    )
    assert all(not isinstance(v, Exception) for v in second.values()), second
    for name in ("a", "b"):
        rows = _rows(job / name)
        assert [r["step"] for r in rows] == [r["step"] for r in solo[name]] == [0, 1, 2]
        for mine, theirs in zip(rows, solo[name]):
            assert _comparable(mine) == _comparable(theirs), (name, mine["step"])
    assert solo["a"][2]["loss/policy"] != solo["b"][2]["loss/policy"]  # two different trials, each exact
