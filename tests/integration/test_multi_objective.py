"""Every objective behind the seam trains on the real stack, with the GRPO-family estimators; resume
is exact with objective state; ``align sweep --quick`` runs on Ray Tune and resumes."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from align.config.loading import load_config
from align.reporting.metrics import VOLATILE
from align.runner.trainer import Trainer
from tests.integration.tracker_files import assert_trackers_hold, wandb_records

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MULTI = ROOT / "configs" / "multi_objective_tiny.yaml"
CONSTRAINED = ROOT / "configs" / "constrained_tiny.yaml"
SMALL = ["data.eval_size=24", "data.prompts_per_step=8", "trainer.save_every=0"]

CASES = {
    "hv_meta-dr_grpo": (
        MULTI,
        [
            "objective.name=hypervolume",
            "objective.hypervolume.variant=meta_reward",
            "objective.hypervolume.every=1",
            "algorithm.name=dr_grpo",
        ],
    ),
    "hv_weights-grpo": (
        MULTI,
        [
            "objective.name=hypervolume",
            "objective.hypervolume.variant=weights",
            "objective.hypervolume.every=1",
            "algorithm.name=grpo",
        ],
    ),
    "gradient-rloo-2ranks": (
        MULTI,
        [
            "objective.name=gradient",
            "objective.gradient.normalize=grad_norm_sq",
            "objective.gradient.regularization=0.005",
            "algorithm.name=rloo",
            "learner.num_ranks=2",
        ],
    ),
    "lagrangian-reinforce_pp": (CONSTRAINED, ["algorithm.name=reinforce_pp"]),
    # PPO: the objectives shape the reward its critic and GAE work on (per-objective gradients for the
    # gradient objective from each reward's batch-whitened value: one critic, not one per objective)
    "gradient-ppo": (
        MULTI,
        [
            "objective.name=gradient",
            "algorithm.name=ppo",
            "algorithm.group_size=1",
            "data.prompts_per_step=32",
        ],
    ),
    "lagrangian-ppo": (CONSTRAINED, ["algorithm.name=ppo"]),
}


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# In `make test-all` only (CI budget): meta_reward is a no-op under std-normalised advantages, and
# the Lagrangian objective trains (and resumes exactly) in test_resume_is_exact_with_objective_state.
SLOW = {"hv_meta-dr_grpo", "lagrangian-reinforce_pp"}


def test_resume_is_exact_with_objective_state(tmp_path):
    """Lagrange multipliers, their momentum and the Nelder-Mead search all cross the checkpoint."""
    common = [
        *SMALL,
        "trainer.save_every=2",
        "objective.lagrangian.threshold_search.true_score=efficiency",
        "objective.lagrangian.threshold_search.steps_per_eval=2",
        "objective.lagrangian.threshold_search.check_every=1",
        "objective.lagrangian.threshold_search.max_evals=4",
    ]

    # the resumed run also reports to MLflow and W&B (offline): both continue across the resume
    trackers = ["trainer.report_to=[tensorboard,mlflow,wandb]", "trainer.tracking.wandb_mode=offline"]

    def train(out, steps, resume=False, extra=()):
        cfg = load_config(
            CONSTRAINED, [f"trainer.output_dir={out}", f"trainer.max_steps={steps}", *common, *extra]
        )
        Trainer(cfg, str(CONSTRAINED.parent), resume=resume).run()

    train(tmp_path / "a", 4)
    train(tmp_path / "b", 2, extra=trackers)
    first_part = json.loads((tmp_path / "b" / "trackers.json").read_text())
    train(tmp_path / "b", 4, resume=True, extra=trackers)
    assert_trackers_hold(tmp_path / "b", _rows(tmp_path / "b"), first_part)
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b):
        keys = {k for k in ra if not k.startswith(VOLATILE)}
        assert {k: ra[k] for k in keys} == {k: rb[k] for k in keys}, ra["step"]
    assert any("objective/nm/f" in r for r in a)  # the search told values within the run
    assert len({r["objective/threshold/brevity"] for r in a[1:]}) > 1  # and moved the threshold


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES])
def test_objective_trains(case, tmp_path):
    config, overrides = CASES[case]
    cfg = load_config(config, [f"trainer.output_dir={tmp_path}", "trainer.max_steps=2", *SMALL, *overrides])
    Trainer(cfg, str(config.parent)).run()
    rows = _rows(tmp_path)
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["loss/policy"]) for r in steps)
    if case.endswith("ppo"):  # the shaped reward reaches the critic's returns
        assert all(math.isfinite(r["critic/value_loss"]) and r["critic/returns"] != 0 for r in steps)
    if case.startswith(("hv", "gradient")):
        for r in steps:  # the weights are logged every step and stay on the simplex
            w = [r[f"objective/weight/{n}"] for n in ("correctness", "brevity", "shows_work")]
            assert sum(w) == pytest.approx(1.0) and min(w) > 0
    if case.startswith("hv"):
        assert all(
            "objective/hypervolume" in r and "eval/correctness" in r for r in steps
        )  # validated every step
        assert all("objective/hvc" in r for r in steps)
        if case == "hv_meta-dr_grpo":
            assert all(0.5 <= r["objective/meta_reward"] < 2.0 for r in steps)
            assert steps[-1]["objective/weight/correctness"] == 0.4  # fixed weights
        else:
            moved = [
                abs(steps[-1][f"objective/weight/{n}"] - w0)
                for n, w0 in (("correctness", 0.4), ("brevity", 0.3))
            ]
            assert max(moved) > 1e-3 or steps[-1]["objective/buffer_size"] == 0
    if case.startswith("gradient"):
        assert all(r["objective/grad_norm/correctness"] > 0 for r in steps)
        assert (
            steps[0]["objective/weight/correctness"] != 0.4
        )  # moved at the first step, from this batch's gradients
    if case.startswith("lagrangian"):
        for r in steps:
            assert {
                "objective/multiplier/brevity",
                "objective/threshold/brevity",
                "objective/violation/brevity",
            } <= set(r)
            assert r["objective/threshold/brevity"] == 0.6
        # one multiplier step on the batch mean: the violation's sign moves the multiplier
        s1, s2 = steps[0]["objective/multiplier/brevity"], steps[1]["objective/multiplier/brevity"]
        assert (s2 - s1) * steps[1]["objective/violation/brevity"] < 0


# the sweep runs in processes of its own (align sweep on Ray Tune): the kept actors are stopped first
@pytest.mark.own_actors
def test_quick_sweep_runs_on_tune_and_resumes(tmp_path):
    """Two trials as one job on Ray Tune; the front over steps; a second run restores, trains nothing."""
    out = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "launch.cli",
        "sweep",
        str(ROOT / "configs" / "sweep_tiny.yaml"),
        "--quick",
        "--set",
        f"output_dir={out}",
        "--set",
        "trials_per_job=0",  # both trials as one job on one set of actors (tests/integration/test_sweep_jobs.py)
        "--set",
        "front_every=1",
        "--set",  # the quick preset's overrides, and the trackers: each trial a run grouped under the sweep
        "quick.overrides=[data.eval_size=32, data.prompts_per_step=8, objective.hypervolume.every=1, "
        "'trainer.report_to=[tensorboard,mlflow,wandb]', trainer.tracking.wandb_mode=offline]",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    quick = out / "quick"
    with open(quick / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 2 and {t["method"] for t in trials} == {"static", "hv_weights"}
    for t in trials:
        assert 0.0 <= float(t["correctness"]) <= 1.0 and 0.0 <= float(t["brevity"]) <= 1.0
    summary = json.loads((quick / "summary.json").read_text())
    assert set(summary["hypervolume"]) == {"static", "hv_weights"} and all(
        v > 0 for v in summary["hypervolume"].values()
    )
    assert summary["reference"] == {"correctness": 0.0, "brevity": 0.0, "shows_work": 0.0}
    assert len(list((quick / "plots").glob("pareto_*.png"))) == 3  # pairwise projections of K = 3
    assert "hypervolume" in (quick / "report.md").read_text()
    assert summary["jobs"] == 1 and "2 trial(s) in 1 job(s)" in done.stderr
    # the front's evolution: every trial evaluated at steps 0 (before), 1 and 2
    assert list(summary["hypervolume_by_step"]["all"]) == ["0", "1", "2"]
    assert summary["hypervolume_by_step"]["all"]["2"] == pytest.approx(summary["hypervolume_all"])
    assert (quick / "plots" / "hypervolume_by_step.png").stat().st_size > 10_000
    parent, children = _sweep_runs(quick)
    assert parent.info.run_name == "sweep_tiny-quick" and parent.info.status == "FINISHED"
    assert {c.info.run_name for c in children} == {t["trial"] for t in trials}
    assert all(c.info.status == "FINISHED" and c.data.tags["group"] == "sweep_tiny-quick" for c in children)
    assert {f"hypervolume/{m}": v for m, v in summary["hypervolume"].items()} == pytest.approx(
        {
            k: v
            for k, v in parent.data.metrics.items()
            if k.startswith("hypervolume/") and k != "hypervolume/all"
        }
    )
    assert parent.data.params["objectives.brevity"] == "max" and parent.data.params["steps"] == "12"
    for t in trials:  # each trial's W&B offline run is in the sweep's group
        runs = [r.run for r in wandb_records(Path(t["run_dir"])) if r.WhichOneof("record_type") == "run"]
        assert [(r.display_name, r.run_group) for r in runs] == [(t["trial"], "sweep_tiny-quick")]
    # run again: Tune restores the finished sweep; no trial trains again, the analysis is the same
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming the sweep" in again.stderr
    assert json.loads((quick / "summary.json").read_text())["hypervolume"] == summary["hypervolume"]
    again_parent, again_children = _sweep_runs(quick)  # the restored sweep continued its run
    assert again_parent.info.run_id == parent.info.run_id and len(again_children) == 2


def _sweep_runs(sweep_dir: Path):
    """The sweep's MLflow run and the trial runs nested under it (its store: mlruns/ of the sweep)."""
    from mlflow import MlflowClient

    state = json.loads((sweep_dir / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(state["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("align").experiment_id])
    parent = next(r for r in runs if r.info.run_id == state["run_id"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == state["run_id"]]
    assert len(runs) == 1 + len(children)
    return parent, children
