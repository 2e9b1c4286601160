"""Experiment trackers (``trainer.report_to``): TensorBoard, MLflow, Weights & Biases.

Each gets the resolved config (as parameters), every step's metrics, and at the end the plots and the
final adapter as artifacts. ``metrics.jsonl`` stays the run's own record (resume reads it); the
trackers are copies for people. Policy: a tracker that raises (bad URI, server down, disk full)
warns once, naming itself and the error, and is switched off for the rest of the run; the run and the
other trackers go on. A resumed run (``--resume``) continues the same MLflow run and W&B run id, read
from ``trackers.json`` in the run directory.

Only the driver logs (the process that runs the loop; in ``align sweep`` the trial's Tune actor).
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import re
import time
from pathlib import Path

from align.reporting.metrics import write_text_atomic

log = logging.getLogger("align.reporting.trackers")

# status of a run as it ends -> MLflow's RunStatus name (W&B: exit code 0 or 1)
STATUSES = ("FINISHED", "FAILED", "KILLED")


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Nested config -> ``{"algorithm.kl.coef": 0.0, ...}``; lists of sections keep their index
    (``rewards.0.fn``), lists of values stay one value."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                out.update(flatten(v, f"{name}.{i}."))
        else:
            out[name] = value
    return out


def scalars(metrics: dict) -> dict[str, float]:
    """The numeric, finite values of a metrics row (a ``null`` NaN or a string is not a point)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, run_dir: Path, **_):
        self.run_dir = run_dir
        self.writer = None

    def rewind(self, step: int | None) -> None:
        """(Re)open the writer; steps after ``step`` (a resumed run recomputes them) are purged."""
        from torch.utils.tensorboard import SummaryWriter

        self.close()
        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=None if step is None else step + 1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def artifacts(self, files: dict[str, Path]) -> None:
        pass  # the plots are PNGs beside tb/ already

    def finish(self, status: str) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflowTracker:
    """One MLflow run through ``MlflowClient`` (not the fluent API: its active run is process-global,
    and the trials of a sweep job share a process). The default store is SQLite in ``mlruns/`` of
    the run directory: MLflow 3 refuses its old file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set."""

    name = "mlflow"
    MAX_BATCH = 1000  # metrics per log_batch call (MLflow's limit); params: 100
    # a server that is down must not stall each call for minutes (MLflow's default: 7 retries with
    # backoff, 120 s timeout); the user's own settings win
    HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

    def __init__(self, uri: str, project: str, run_name: str, tags: dict, params: dict, store: Path | None):
        """Start a run named ``run_name`` in experiment ``project`` at ``uri``; ``store``: the local
        folder of the default store (its artifacts go beside the database), None for a given URI."""
        from mlflow import MlflowClient
        from mlflow.entities import Param

        for key, value in self.HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(project)
        exp_id = (
            exp.experiment_id
            if exp is not None
            else self.client.create_experiment(
                project, artifact_location=store and (store / "artifacts").as_uri()
            )
        )
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        params = [Param(k, v) for k, v in self.param_values(params).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    @staticmethod
    def param_values(tree: dict) -> dict[str, str]:
        """Dotted key -> text (a string as is, anything else as JSON; MLflow's limit is 6000 characters)."""
        return {k: (v if isinstance(v, str) else json.dumps(v))[:6000] for k, v in flatten(tree).items()}

    def note_changes(self, tree: dict) -> None:
        """A resumed run whose config changed (a longer ``max_steps``): MLflow's parameters cannot
        change, so each changed value goes into a tag ``resumed.<key>``."""
        before = self.client.get_run(self.run_id).data.params
        for key, value in self.param_values(tree).items():
            if before.get(key) != value:
                self.client.set_tag(self.run_id, f"resumed.{key}", value)

    @classmethod
    def attach(cls, uri: str, run_id: str) -> "MLflowTracker":
        """Continue an existing run (a resumed run, a restored sweep)."""
        from mlflow import MlflowClient

        self = cls.__new__(cls)
        self.uri, self.run_id, self.client = uri, run_id, MlflowClient(tracking_uri=uri)
        self.client.update_run(run_id, status="RUNNING")
        return self

    @staticmethod
    def destination(tracking, run_dir: Path) -> tuple[str, Path | None]:
        """(URI, local store folder or None): ``tracking.mlflow_uri``, else MLFLOW_TRACKING_URI, else
        SQLite in ``run_dir/mlruns``."""
        given = tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if given:
            return given, None
        store = run_dir / "mlruns"
        store.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{store / 'mlflow.db'}", store

    @classmethod
    def for_run(cls, run_dir: Path, cfg, config_tree: dict, saved: dict | None, resume: bool):
        tr = cfg.trainer.tracking
        uri, store = cls.destination(tr, run_dir)
        if resume and saved and saved.get("tracking_uri") == uri:  # continue the run that was cut off
            self = cls.attach(uri, saved["run_id"])
            self.note_changes(config_tree)
            return self
        tags = {"align.run_dir": str(run_dir), "align.algorithm": cfg.algorithm.name}
        if tr.group:
            tags["group"] = tr.group
        if tr.mlflow_parent_run:
            tags["mlflow.parentRunId"] = tr.mlflow_parent_run
        return cls(uri, tr.project, tr.run_name or run_dir.name, tags, config_tree, store)

    def state(self) -> dict:
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def rewind(self, step: int | None) -> None:
        pass  # MLflow keeps every value logged; a recomputed step is logged again (history shows both)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(_mlflow_key(k), v, now, step) for k, v in metrics.items()]
        for i in range(0, len(rows), self.MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=rows[i : i + self.MAX_BATCH])

    def artifacts(self, files: dict[str, Path]) -> None:
        for dest, path in files.items():
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), dest)
            else:
                self.client.log_artifact(self.run_id, str(path), os.path.dirname(dest) or None)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)

    def close(self) -> None:
        pass


def _mlflow_key(key: str) -> str:
    """MLflow metric names take letters, digits, ``_ - . / `` and spaces; anything else becomes ``_``."""
    return re.sub(r"[^\w\-. /]", "_", key)


def wandb_mode(setting: str) -> str | None:
    """``auto``: None when WANDB_MODE is set (wandb reads it), else online when an API key is found
    (WANDB_API_KEY, or ~/.netrc for the W&B host), else offline."""
    if setting != "auto":
        return setting
    if os.environ.get("WANDB_MODE"):
        return None
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = re.sub(r"^https?://", "", os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).rstrip("/")
    try:
        return "online" if netrc.netrc().authenticators(host) else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


class WandbTracker:
    """One W&B run (``reinit="create_new"``: the trials of a sweep job each hold their own run in one
    process). Files go to ``wandb/`` in the run directory; console capture is off (align logs itself)."""

    name = "wandb"

    def __init__(self, run_dir: Path, cfg, config_tree: dict, saved: dict | None, resume: bool):
        import wandb

        tr = cfg.trainer.tracking
        self.mode = wandb_mode(tr.wandb_mode)
        self.run = wandb.init(
            project=tr.project,
            entity=tr.wandb_entity,
            name=tr.run_name or run_dir.name,
            group=tr.group,
            config=config_tree,
            dir=str(run_dir),
            mode=self.mode,
            id=saved["id"] if resume and saved else None,
            resume="allow" if resume and saved else None,
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )

    def state(self) -> dict:
        return {"id": self.run.id, "mode": self.mode}

    def rewind(self, step: int | None) -> None:
        pass  # W&B drops values for a step below its last one (a recomputed step keeps the first)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def artifacts(self, files: dict[str, Path]) -> None:
        import wandb

        images = {f"plots/{p.stem}": wandb.Image(str(p)) for d, p in files.items() if p.suffix == ".png"}
        if images:
            self.run.log(images)
        rest = {d: p for d, p in files.items() if p.suffix != ".png"}
        if rest:
            art = wandb.Artifact(f"run-{self.run.id}", type="model")
            for dest, path in rest.items():
                (art.add_dir if path.is_dir() else art.add_file)(str(path), name=dest)
            self.run.log_artifact(art)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)

    def close(self) -> None:
        pass


def _warn_off(name: str, doing: str, exc: Exception, consequence: str) -> None:
    """The policy's one warning: which tracker, doing what, the error's first line, what follows."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    log.warning(
        "tracker %s failed while %s (%s: %s); %s", name, doing, type(exc).__name__, first, consequence
    )


# name -> what starts the tracker for a run: (run_dir, cfg=, config_tree=, saved=, resume=)
KINDS = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker.for_run, "wandb": WandbTracker}


class Trackers:
    """The run's trackers, called together; one that raises is switched off with one warning."""

    STATE = "trackers.json"

    def __init__(self, cfg, run_dir: str | Path, resume: bool = False):
        self.run_dir = Path(run_dir)
        saved = self._saved() if resume else {}
        tree = cfg.model_dump(mode="json")
        self.active: list = []
        for name in cfg.trainer.report_to:
            self._guard(
                name,
                "starting",
                lambda: self.active.append(
                    KINDS[name](self.run_dir, cfg=cfg, config_tree=tree, saved=saved.get(name), resume=resume)
                ),
            )
        state = {t.name: t.state() for t in self.active if hasattr(t, "state")}
        if state:
            write_text_atomic(self.run_dir / self.STATE, json.dumps(state, indent=1) + "\n")

    def _saved(self) -> dict:
        path = self.run_dir / self.STATE
        try:
            return json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable (%s): the trackers start new runs", path, exc)
            return {}

    def _guard(self, name: str, doing: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the stated policy: warn once, switch it off, go on
            _warn_off(
                name,
                doing,
                exc,
                "it is off for the rest of this run (metrics.jsonl and the other trackers go on)",
            )
            self.active = [t for t in self.active if t.name != name]

    def _each(self, doing: str, method: str, *args) -> None:
        for t in list(self.active):
            self._guard(t.name, doing, lambda t=t: getattr(t, method)(*args))

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.active]

    def rewind(self, step: int | None) -> None:
        """Before logging resumes after ``step`` (None: a fresh start)."""
        self._each("opening", "rewind", step)

    def log(self, step: int, metrics: dict) -> None:
        values = scalars(metrics)
        if values:
            self._each(f"logging step {step}", "log", step, values)

    def artifacts(self, files: dict[str, Path]) -> None:
        """``files``: artifact path -> local file or folder (plots/x.png, adapter, config.yaml)."""
        files = {d: Path(p) for d, p in files.items() if p is not None and Path(p).exists()}
        self._each("uploading artifacts", "artifacts", files)

    def close(self) -> None:
        """Close the writers that a rewind reopens (TensorBoard); the runs stay open."""
        self._each("closing", "close")

    def finish(self, status: str) -> None:
        """End every run with ``status`` (FINISHED, FAILED, KILLED); once."""
        assert status in STATUSES, status
        self._each("finishing", "finish", status)
        self.active = []


class SweepRun:
    """``align sweep``'s own tracking: an MLflow run for the sweep (its parameters, the hypervolume per
    method and per step, the report, CSVs and plots) that every trial's run is nested under, and the
    W&B group every trial joins. ``overrides`` are the ``--set``s that put a trial there; a restored
    sweep continues its run (``trackers.json`` in the sweep directory)."""

    def __init__(self, trial_cfg, out_dir: Path, name: str, sweep_tree: dict):
        self.out_dir, self.mlflow = Path(out_dir), None
        tracking = trial_cfg.trainer.tracking
        self.overrides = [f"trainer.tracking.group={json.dumps(tracking.group or name)}"]
        if "mlflow" not in trial_cfg.trainer.report_to:
            return
        path = self.out_dir / Trackers.STATE
        try:
            uri, store = MLflowTracker.destination(tracking, self.out_dir)
            saved = json.loads(path.read_text()).get("mlflow", {}) if path.exists() else {}
            if saved.get("tracking_uri") == uri:
                self.mlflow = MLflowTracker.attach(uri, saved["run_id"])
            else:
                self.mlflow = MLflowTracker(
                    uri, tracking.project, name, {"align.sweep": str(out_dir)}, sweep_tree, store
                )
            write_text_atomic(path, json.dumps({"mlflow": self.mlflow.state()}, indent=1) + "\n")
        except Exception as exc:  # noqa: BLE001 - the trackers' policy: warn once, go on without
            _warn_off("mlflow", "starting the sweep's run", exc, "the trials log ungrouped")
            self.mlflow = None
            return
        self.overrides += [
            f"trainer.tracking.mlflow_uri={json.dumps(uri)}",
            f"trainer.tracking.mlflow_parent_run={json.dumps(self.mlflow.run_id)}",
        ]

    def finish(self, summary: dict | None, files: dict[str, Path], status: str = "FINISHED") -> None:
        """The sweep's results (hypervolume of each method's set, of all trials, and per step) and
        files into its run, which ends with ``status``."""
        if self.mlflow is None:
            return
        try:
            if summary:
                self.mlflow.log(0, {f"hypervolume/{m}": v for m, v in summary["hypervolume"].items()})
                self.mlflow.log(
                    0, {"hypervolume/all": summary["hypervolume_all"], "trials": summary["trials"]}
                )
                steps: dict[int, dict] = {}  # step -> every set's hypervolume at it: one call a step
                for set_name, by_step in summary.get("hypervolume_by_step", {}).items():
                    for step, hv in by_step.items():
                        steps.setdefault(int(step), {})[f"front/hypervolume/{set_name}"] = hv
                for step, values in sorted(steps.items()):
                    self.mlflow.log(step, values)
            self.mlflow.artifacts({d: Path(p) for d, p in files.items() if Path(p).exists()})
            self.mlflow.finish(status)
        except Exception as exc:  # noqa: BLE001
            _warn_off("mlflow", "finishing the sweep's run", exc, "the sweep's files are in its directory")
