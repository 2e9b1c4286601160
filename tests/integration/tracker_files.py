"""Read back what the trackers wrote, with the trackers' own formats: MLflow through its client, a W&B
offline run through its protobuf records (the ``.wandb`` file is a LevelDB-style log of
``wandb_internal_pb2.Record``; wandb 0.31 ships no Python reader for it)."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def mlflow_client(run_dir: Path):
    """The MLflow client of a run's store and its run id (from ``trackers.json``)."""
    from mlflow import MlflowClient

    state = json.loads((Path(run_dir) / "trackers.json").read_text())["mlflow"]
    return MlflowClient(tracking_uri=state["tracking_uri"]), state["run_id"]


def mlflow_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def mlflow_artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run (recursively)."""
    out = set()
    for info in client.list_artifacts(run_id, path):
        out |= mlflow_artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def wandb_records(run_dir: Path) -> list:
    """Every record of the W&B offline runs in ``run_dir/wandb`` (in order: header, run, history, ...)."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no W&B offline run in {run_dir}/wandb"
    records = []
    for path in files:
        data, block, pos, buf = path.read_bytes(), 32768, 7, b""
        assert data[:4] == b":W&B", data[:7]
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a record header is padding
                pos += block - pos % block
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            buf += data[pos + 7 : pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # FULL or LAST: a whole record
                rec = pb.Record()
                rec.ParseFromString(buf)
                records.append(rec)
                buf = b""
    return records


def wandb_history(records) -> dict[int, dict]:
    """step -> the values logged at it (``key -> value``), merged over the history records."""
    steps: dict[int, dict] = {}
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            steps.setdefault(items.pop("_step"), {}).update(items)
    return steps


def assert_trackers_hold(run: Path, rows: list[dict], first_part: dict) -> None:
    """MLflow (read with its own client) and W&B (its offline records) hold what the run directory
    holds: the resolved config as parameters, every numeric metric of every ``metrics.jsonl`` row at
    its step, the plots and the final adapter; a resumed run (``first_part``: ``trackers.json`` before
    the resume) continued the same MLflow run and W&B run id."""
    import pytest
    import yaml

    from align.reporting.trackers import MLflowTracker

    run = Path(run)
    last = max(r["step"] for r in rows)
    client, run_id = mlflow_client(run)
    assert run_id == first_part["mlflow"]["run_id"]
    info = client.get_run(run_id)
    assert info.info.status == "FINISHED" and info.info.run_name == run.name
    # the parameters are the first part's config; what the resume changed is tagged resumed.<key>
    config = MLflowTracker.param_values(yaml.safe_load((run / "config.yaml").read_text()))
    params, changed = (
        info.data.params,
        {k[8:]: v for k, v in info.data.tags.items() if k.startswith("resumed.")},
    )
    assert {**params, **changed} == config and changed == {"trainer.max_steps": str(last)}
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "step"})
    for key in keys:
        logged = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        history = mlflow_history(client, run_id, key)
        assert [s for s, _ in history] == [s for s, _ in logged], key
        assert [v for _, v in history] == pytest.approx([v for _, v in logged], rel=1e-6), key
    files = mlflow_artifacts(client, run_id)
    assert {
        "config.yaml",
        "metrics.jsonl",
        "plots/reward_curves.png",
        "adapter/adapter_model.safetensors",
    } <= files
    local = client.download_artifacts(run_id, "adapter/adapter_model.safetensors", str(run.parent))
    final = run / "checkpoints" / f"step_{last}" / "adapter" / "adapter_model.safetensors"
    assert Path(local).read_bytes() == final.read_bytes()
    # W&B offline: one local run per part of the run, the same id; every step's metrics
    records = wandb_records(run)
    parts = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert {p.run_id for p in parts} == {first_part["wandb"]["id"]} and parts[0].display_name == run.name
    history = wandb_history(records)
    for r in rows:
        values = {k: v for k, v in r.items() if isinstance(v, (int, float)) and k != "step"}
        assert {k: history[r["step"]][k] for k in values} == pytest.approx(values, rel=1e-6), r["step"]
    assert any(k.startswith("plots/reward_curves") for k in history[last])  # the plots, as images
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert {c.path for c in artifacts[-1].manifest.contents} >= {
        "adapter/adapter_model.safetensors",
        "config.yaml",
    }
