"""Metrics: one JSON object per step in ``metrics.jsonl``, the same scalars in TensorBoard, and a
reward-curve PNG. Keys are namespaced (``reward/...``, ``loss/...``, ``timing/...``,
``rollout/...``, ``eval/...``)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path


class StartupClock:
    """Times the start-up phases of a run: one log line per phase as it ends (``start-up: learners
    12.3s``) and the seconds as ``startup/<phase>`` (``startup.json`` in the run directory and
    TensorBoard), so a slow start says where it went."""

    def __init__(self, logger):
        self.log = logger
        self.seconds: dict[str, float] = {}
        self.t0 = time.time()

    @contextlib.contextmanager
    def phase(self, name: str, detail: str = ""):
        t = time.time()
        yield
        self.record(name, time.time() - t, detail)

    def record(self, name: str, seconds: float, detail: str = "") -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.log.info("start-up: %s %.1fs%s", name, seconds, f" ({detail})" if detail else "")

    def metrics(self) -> dict[str, float]:
        key = lambda n: "startup/" + n.replace(" ", "_")  # noqa: E731
        return {**{key(n): v for n, v in self.seconds.items()}, "startup/total": time.time() - self.t0}


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a reader (or a
    resumed run) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


class MetricsLog:
    """``metrics.jsonl`` (the run's record, read back by resume and the tools) and the run's trackers
    (``align.reporting.trackers.Trackers``: TensorBoard, MLflow, W&B), which get the same rows."""

    def __init__(self, run_dir: str | Path, trackers, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rows = self.read(self.path) if self.path.exists() else []
        if resume_step is not None:
            # Steps after the checkpoint are recomputed by the resumed run: drop them.
            rows = [r for r in rows if r.get("step", -1) <= resume_step]
        elif rows:
            rows = []  # a fresh run in an old directory starts a fresh log
        # rewritten whole, then renamed: never half a log
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        self.trackers = trackers
        trackers.rewind(resume_step)

    @staticmethod
    def read(path: str | Path) -> list[dict]:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {
            "step": step,
            **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.trackers.log(step, metrics)

    def log_startup(self, seconds: dict[str, float]) -> None:
        """Start-up phase times: ``startup.json`` (temp file + rename; a resumed run writes its own)
        and the trackers at step 0. Not a ``metrics.jsonl`` row: that log keeps one row per step."""
        write_text_atomic(self.run_dir / "startup.json", json.dumps(seconds, indent=1) + "\n")
        self.trackers.log(0, seconds)

    def close(self) -> None:
        self.trackers.close()


# metrics that differ between two runs of the same config (wall times, start-up, memory, faults
# recovered): left out when runs are compared for equality (resume, sharing, rank invariance)
VOLATILE = ("timing/", "startup/", "faults/", "memory/")


PANELS = (
    ("train reward", lambda k: k.startswith("reward/") and "/skipped/" not in k and "/retries/" not in k),
    (
        "eval",
        lambda k: k.startswith("eval/") and "/level_" not in k and not k.startswith("eval/length"),
    ),
    (
        "length (tokens)",
        lambda k: k in ("rollout/length", "eval/length", "rollout/length_wrong", "eval/length_wrong"),
    ),
    ("policy entropy (nats/token)", lambda k: k == "policy/entropy"),
)


OBJECTIVE_PANELS = (
    ("reward weights", lambda k: k.startswith("objective/weight/")),
    ("Lagrange multipliers s(lambda)", lambda k: k.startswith("objective/multiplier/")),
    ("constraint thresholds", lambda k: k.startswith("objective/threshold/")),
    ("hypervolume", lambda k: k in ("objective/hypervolume", "objective/hvc", "objective/meta_reward")),
)


def _plot_steps(ax, rows: list[dict], key: str, label: str, dots_below: int) -> None:
    """One metric over the steps of a log (rows where it is a number), dotted when the points are few."""
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    ax.plot(
        [x for x, _ in pts],
        [y for _, y in pts],
        marker="o" if len(pts) < dots_below else None,
        ms=3,
        label=label,
    )


def plot_curves(metrics_path: str | Path, out_png: str | Path, panels_spec=PANELS) -> Path | None:
    """Curves against step as a PNG, one panel per group of metrics that the run logged (default:
    train rewards, eval objectives (overall), lengths; ``OBJECTIVE_PANELS``: the objective's state)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = MetricsLog.read(metrics_path)
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "step"})
    panels = [(title, [k for k in keys if pick(k)]) for title, pick in panels_spec]
    panels = [(t, ks) for t, ks in panels if ks]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, ks) in zip(axes[0], panels):
        for key in ks:
            _plot_steps(ax, rows, key, key, dots_below=30)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out_png)


def _save(fig, out_png: str | Path) -> Path:
    """Lay out, write and close a figure; returns its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


LEVEL_METRICS = ("correctness", "length", "nothink_rate")


def plot_levels(
    results: dict[str, dict[str, float]], out_png: str | Path, metrics=LEVEL_METRICS, title: str = ""
) -> Path | None:
    """Per-difficulty-level eval metrics of several models side by side (one panel per metric, one
    line per model, the overall value in the legend): ``results`` maps a label to an eval result
    with ``<metric>/level_<N>`` keys (``align.eval.loop.evaluate``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def levels_of(res: dict, m: str) -> list[tuple[int, float]]:
        return sorted((int(k.rsplit("_", 1)[1]), v) for k, v in res.items() if k.startswith(f"{m}/level_"))

    metrics = [m for m in metrics if any(levels_of(r, m) for r in results.values())]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for label, res in results.items():
            pts = levels_of(res, m)
            if pts:
                overall = f" (all {res[m]:.3g})" if m in res else ""
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{label}{overall}")
        ax.set_xlabel("difficulty level")
        ax.set_title(m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_png)


def plot_domains(runs: dict[str, str | Path] | str | Path, out_png: str | Path) -> Path | None:
    """Continual training over domains: for each run (label -> its ``domains.json``), the score on
    every domain after training on each domain (one panel per run, grouped bars), and, where a
    combination coefficient was chosen, the held-out score over the lambda grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(runs, dict):
        runs = {Path(runs).parent.name: runs}
    data = {label: json.loads(Path(p).read_text()) for label, p in runs.items()}
    data = {k: v for k, v in data.items() if v.get("results")}
    if not data:
        return None
    grids = {k: v for k, v in data.items() if any(r["grid"] for r in v["results"])}
    fig, axes = plt.subplots(
        1, len(data) + bool(grids), figsize=(4.8 * (len(data) + bool(grids)), 3.8), squeeze=False
    )
    for ax, (label, d) in zip(axes[0], data.items()):
        results = d["results"]
        domains = list(results[0]["scores"])
        width = 0.8 / len(domains)
        for j, dom in enumerate(domains):
            xs = [i + (j - (len(domains) - 1) / 2) * width for i in range(len(results))]
            ys = [r["scores"][dom] for r in results]
            bars = ax.bar(xs, ys, width, label=f"score on {dom}")
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(
            range(len(results)),
            [
                f"after {r['after']}" + (f"\nlambda={r['lambda']:.1f}" if r["lambda"] is not None else "")
                for r in results
            ],
        )
        ax.set_ylim(0, 1.1)
        ax.set_title(f"{label} ({d['score']})")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    if grids:
        ax = axes[0][-1]
        for label, d in grids.items():
            for r in d["results"]:
                if r["grid"]:
                    pts = sorted((float(k), v) for k, v in r["grid"].items())
                    ax.plot(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        marker="o",
                        label=f"{label}: after {r['after']}",
                    )
        ax.set_xlabel("lambda (weight of the earlier adapter)")
        ax.set_title("held-out score, all domains so far")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out_png)


COMPARE_METRICS = (
    "reward/correctness",
    "eval/correctness",
    "rollout/length",
    "rollout/length_wrong",
    "policy/entropy",
    "eval/nothink_rate",
)


def compare_runs(runs: list[str], out_png: str | Path, labels: list[str] | None = None, metrics=None) -> str:
    """Plot ``metrics`` against step for several runs (one panel per metric, one line per run) and
    write a JSON table beside the PNG: per run, each metric's last value, the mean of its last
    quarter of steps (train metrics are noisy) and the final eval per level. Returns the table as text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels or [Path(r).name for r in runs])
    if len(labels) != len(runs):
        raise ValueError(f"--label given {len(labels)} times for {len(runs)} runs")
    logs = {}
    for label, run in zip(labels, runs):
        path = Path(run) / "metrics.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{run}: no metrics.jsonl (not a run directory)")
        logs[label] = MetricsLog.read(path)
    metrics = list(metrics or COMPARE_METRICS)
    metrics = [m for m in metrics if any(m in r for rows in logs.values() for r in rows)]
    if not metrics:
        raise ValueError("none of the metrics was logged by these runs")
    table: dict[str, dict] = {}
    for label, rows in logs.items():
        entry = {}
        for m in metrics:
            pts = [r[m] for r in rows if isinstance(r.get(m), (int, float))]
            if pts:
                tail = pts[-max(1, len(pts) // 4) :]
                entry[m] = {"last": pts[-1], "last_quarter_mean": sum(tail) / len(tail)}
        last_eval = next((r for r in reversed(rows) if any(k.startswith("eval/") for k in r)), {})
        entry["final_eval"] = {k[5:]: v for k, v in last_eval.items() if k.startswith("eval/")}
        table[label] = entry
    cols = min(3, len(metrics))
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        for label, rows in logs.items():
            _plot_steps(ax, rows, m, label, dots_below=15)
        ax.set_title(m)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    out = _save(fig, out_png)
    out.with_suffix(".json").write_text(json.dumps(table, indent=2))
    width = max(len(m) for m in metrics) + 2
    cw = max(10, *(len(lb) + 2 for lb in labels))
    lines = [f"{'metric (last-quarter mean)':<{width}}" + "".join(f"{lb:>{cw}}" for lb in labels)]
    for m in metrics:
        cells = "".join(
            f"{table[lb][m]['last_quarter_mean']:>{cw}.4f}" if m in table[lb] else f"{'-':>{cw}}"
            for lb in labels
        )
        lines.append(f"{m:<{width}}{cells}")
    lines.append(f"plot: {out}")
    return "\n".join(lines)
