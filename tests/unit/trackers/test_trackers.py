"""The trackers' policy without a training run: real MLflow (a SQLite store in a temp folder, a
server that is not there), real TensorBoard files; one tracker that raises mid-run."""

import logging
import socket
import time

import pytest

from align.config.loading import ConfigError, load_config
from align.reporting.trackers import (
    KINDS,
    MLflowTracker,
    TensorBoardTracker,
    Trackers,
    flatten,
    scalars,
    wandb_mode,
)


def _cfg(tmp_path, *overrides):
    return load_config(None, [f"trainer.output_dir={tmp_path}", *overrides])


def _tb_steps(run_dir, key):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, round(e.value, 6)) for e in acc.Scalars(key)]


def test_flatten_and_scalars():
    tree = {"a": {"b": 1, "c": [1, 2]}, "rewards": [{"fn": "x"}, {"fn": "y", "w": 0.5}], "e": None}
    assert flatten(tree) == {
        "a.b": 1,
        "a.c": [1, 2],
        "rewards.0.fn": "x",
        "rewards.1.fn": "y",
        "rewards.1.w": 0.5,
        "e": None,
    }
    row = {"x": 1, "y": 0.5, "n": None, "nan": float("nan"), "inf": float("inf"), "s": "text", "b": True}
    assert scalars(row) == {"x": 1.0, "y": 0.5, "b": 1.0}  # a flag is a 0/1 point, as TensorBoard took it


def test_report_to_is_checked_before_anything_starts(tmp_path):
    assert _cfg(tmp_path).trainer.report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match="trainer.report_to.*named twice"):
        _cfg(tmp_path, "trainer.report_to=[mlflow,mlflow]")
    with pytest.raises(ConfigError, match="trainer.report_to"):
        _cfg(tmp_path, "trainer.report_to=[comet]")
    with pytest.raises(ConfigError, match="trainer.tracking.wandb_mode"):
        _cfg(tmp_path, "trainer.tracking.wandb_mode=cloud")


def test_mlflow_run_holds_config_and_steps(tmp_path):
    cfg = _cfg(
        tmp_path, "trainer.report_to=[mlflow]", "trainer.tracking.project=demo", "trainer.tracking.group=g1"
    )
    trackers = Trackers(cfg, tmp_path)
    trackers.log(1, {"reward/correctness": 0.25, "loss/policy": -0.1, "eval/x": None})
    trackers.log(2, {"reward/correctness": 0.5, "odd:key": 1.0})
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "p.png").write_bytes(b"png")
    trackers.artifacts({"plots/p.png": tmp_path / "plots" / "p.png", "missing": tmp_path / "nope"})
    trackers.finish("FINISHED")
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    assert run.data.params["trainer.max_steps"] == "20" and run.data.params["rewards.0.fn"] == "correctness"
    assert run.data.tags["group"] == "g1"
    hist = client.get_metric_history(run.info.run_id, "reward/correctness")
    assert [(m.step, m.value) for m in hist] == [(1, 0.25), (2, 0.5)]
    assert run.data.metrics["odd_key"] == 1.0  # a character MLflow refuses becomes _
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/p.png"]
    assert (
        tmp_path / "mlruns" / "artifacts"
    ).is_dir()  # the default store keeps artifacts beside its database


def test_a_tracker_whose_server_is_down_warns_once_and_the_others_go_on(tmp_path, caplog):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _cfg(
        tmp_path,
        "trainer.report_to=[tensorboard,mlflow]",
        f"trainer.tracking.mlflow_uri=http://127.0.0.1:{port}",
    )
    t0 = time.time()
    with caplog.at_level(logging.WARNING, logger="align.reporting.trackers"):
        trackers = Trackers(cfg, tmp_path)
        trackers.rewind(None)
        for step in (1, 2, 3):
            trackers.log(step, {"reward/x": step / 10})
        trackers.finish("FINISHED")
    warnings = [r.getMessage() for r in caplog.records if r.name == "align.reporting.trackers"]
    assert len(warnings) == 1 and "tracker mlflow failed while starting" in warnings[0], warnings
    assert time.time() - t0 < 60  # a refused connection is not retried for minutes
    assert _tb_steps(tmp_path, "reward/x") == [(1, 0.1), (2, 0.2), (3, 0.3)]


def test_a_tracker_that_fails_mid_run_is_switched_off_after_one_warning(tmp_path, caplog, monkeypatch):
    class FailsAtStep2(TensorBoardTracker):
        name = "mlflow"
        calls = []

        def log(self, step, metrics):
            FailsAtStep2.calls.append(step)
            if step == 2:
                raise ConnectionError("server went away")

    monkeypatch.setitem(KINDS, "mlflow", FailsAtStep2)
    cfg = _cfg(tmp_path, "trainer.report_to=[mlflow,tensorboard]")
    with caplog.at_level(logging.WARNING, logger="align.reporting.trackers"):
        trackers = Trackers(cfg, tmp_path)
        trackers.rewind(None)
        for step in (1, 2, 3, 4):
            trackers.log(step, {"reward/x": float(step)})
        trackers.artifacts({})
        trackers.finish("FINISHED")
    warnings = [r.getMessage() for r in caplog.records if r.name == "align.reporting.trackers"]
    assert len(warnings) == 1 and "logging step 2 (ConnectionError: server went away)" in warnings[0]
    assert FailsAtStep2.calls == [1, 2]  # off after the failure
    assert _tb_steps(tmp_path, "reward/x") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]


def test_tensorboard_rewind_purges_the_recomputed_steps(tmp_path):
    trackers = Trackers(_cfg(tmp_path), tmp_path)  # the default: report_to [tensorboard]
    trackers.rewind(None)
    for step in (1, 2, 3):
        trackers.log(step, {"m": step})
    trackers.close()
    trackers.rewind(1)  # resumed from the checkpoint of step 1: steps 2 and 3 are done again
    for step in (2, 3):
        trackers.log(step, {"m": 10 * step})
    trackers.finish("FINISHED")
    assert _tb_steps(tmp_path, "m") == [(1, 1.0), (2, 20.0), (3, 30.0)]


def test_wandb_mode_auto(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode("auto") == "offline"  # not logged in
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode("auto") == "online"  # `wandb login` writes this
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") is None  # wandb reads WANDB_MODE itself
    assert wandb_mode("offline") == "offline"


def test_mlflow_destination(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = _cfg(tmp_path).trainer.tracking
    assert MLflowTracker.destination(tracking, tmp_path) == (
        f"sqlite:///{tmp_path}/mlruns/mlflow.db",
        tmp_path / "mlruns",
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert MLflowTracker.destination(tracking, tmp_path) == ("http://tracking:5000", None)
    given = _cfg(tmp_path, "trainer.tracking.mlflow_uri=sqlite:////data/m.db").trainer.tracking
    assert MLflowTracker.destination(given, tmp_path) == ("sqlite:////data/m.db", None)
