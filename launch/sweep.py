"""``align sweep``: a multi-objective Pareto sweep on Ray Tune.

A sweep file names a training config (``base``), the objectives (eval metrics, each maximised or
minimised), a set of weight vectors on the simplex (a grid or random draws), the methods (each a
list of ``--set`` overrides, e.g. ``objective.name=hypervolume``) and the seeds. Every
(method, weights, seed) is one Tune trial: a real training run with those weights as its starting
weights, evaluated on the eval split. Afterwards the sweep writes

- ``trials.csv``: every trial's weights and final objective vector;
- ``pareto.csv``: the non-dominated trials, overall and per method;
- ``report.md``: the hypervolume of each method's set (moocore, with the stated reference point),
  its non-dominated trials and the plots;
- ``plots/pareto_<a>_vs_<b>.png``: the front in every pair of objectives.

Trials run under Tune with a placement group sized from the trial's own config (rollout workers,
learner ranks), so Ray runs as many at once as the cluster holds. ``--address`` joins an existing
cluster; an interrupted sweep resumes with Tune's own restore (finished trials are kept; a trial
that was cut off continues from its last checkpoint, since its output directory is fixed by its
name).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import os
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from align.config import Section
from align.config.loading import ConfigError, load_config

log = logging.getLogger("align.sweep")


class WeightsSection(Section):
    kind: Literal["grid", "random", "list"] = Field(
        "grid",
        description="grid: every point of the simplex lattice with "
        "step 1/divisions; random: num Dirichlet(1) draws; list: the vectors in values.",
    )
    divisions: int = Field(
        2, ge=1, description="grid: lattice step 1/divisions (K=3, 2 divisions: 6 vectors)."
    )
    num: int = Field(6, ge=1, description="random: how many vectors.")
    seed: int = Field(0, description="random: the draws' seed.")
    values: list[list[float]] = Field(
        default_factory=list, description="list: explicit weight vectors (normalised to sum 1)."
    )
    min_weight: float = Field(
        0.05,
        ge=0,
        description="Mix every vector toward the centre so each weight is at least this: "
        "dynamic methods treat weight 0 as 'monitored only', so they need interior starting points.",
    )


class QuickSection(Section):
    steps: int = Field(2, ge=1, description="--quick: training steps per trial.")
    weights: WeightsSection = Field(
        default_factory=lambda: WeightsSection(kind="grid", divisions=1),
        description="--quick: the weight vectors.",
    )
    methods: Optional[list[str]] = Field(None, description="--quick: the subset of methods (default: all).")
    seeds: list[int] = Field(default_factory=lambda: [0], description="--quick: seeds.")
    overrides: list[str] = Field(
        default_factory=list, description="--quick: extra --set overrides for every trial."
    )


class SweepConfig(Section):
    base: str = Field(description="The training config every trial starts from (path relative to this file).")
    objectives: dict[str, Literal["max", "min"]] = Field(
        description="Eval metrics forming the objective vector, each maximised or minimised. Those that are reward names "
        "take the swept weights (in this order)."
    )
    reference: Optional[dict[str, float]] = Field(
        None,
        description="Hypervolume reference point per objective (must be dominated by the points that count); "
        "default: 0 for each maximised objective (rewards in [0, 1]); minimised objectives need a value.",
    )
    weights: WeightsSection = Field(
        default_factory=WeightsSection, description="The weight vectors on the simplex."
    )
    methods: dict[str, list[str]] = Field(
        default_factory=lambda: {"static": ["objective.name=static"]},
        description="Method name -> --set overrides selecting it (e.g. hv_weights: [objective.name=hypervolume, "
        "objective.hypervolume.variant=weights]).",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0], description="Training seeds; each (method, weights) runs once per seed."
    )
    steps: int = Field(
        20, ge=1, description="Training steps per trial (the same for every method: equal budgets)."
    )
    overrides: list[str] = Field(default_factory=list, description="Extra --set overrides for every trial.")
    output_dir: str = Field(
        "runs/sweep", description="Sweep directory: Tune state, trial runs, CSVs, plots, report."
    )
    max_concurrent: int = Field(0, ge=0, description="Jobs at once (0: as many as the cluster's CPUs hold).")
    trials_per_job: int = Field(
        1,
        ge=0,
        description="Trials run as one job on one set of actors (one vLLM engine group serving every trial's "
        "adapter, one learner group holding every trial's adapter and optimizer state over one base model, one "
        "reward pool); 1: each trial starts its own actors; 0: every trial that can share. Trials whose actors "
        "would differ (model, LoRA, engine settings, reward definitions, method family) go to separate jobs.",
    )
    job_concurrency: int = Field(
        1,
        ge=1,
        description="Trials of a job that run a step at once. 1: they take turns, first come first served, each "
        "step using every core; more lets one trial's batch generate while another's trains (worth it when "
        "rollout.threads / learner.threads split the cores, or on GPUs).",
    )
    front_every: int = Field(
        0,
        ge=0,
        description="Evaluate every trial every this many steps (trainer.eval_every) so that the front's "
        "hypervolume can be followed over steps (plots/hypervolume_by_step.png); 0: before and after only.",
    )
    quick: QuickSection = Field(default_factory=QuickSection, description="The --quick preset (CI).")

    @model_validator(mode="after")
    def _check(self):
        if len(self.objectives) < 2:
            raise ValueError("objectives: a Pareto sweep needs at least two objectives")
        ref = self.reference or {}
        unknown = [k for k in ref if k not in self.objectives]
        if unknown:
            raise ValueError(f"reference: {unknown} are not in objectives ({', '.join(self.objectives)})")
        missing = [k for k, d in self.objectives.items() if d == "min" and k not in ref]
        if missing:
            raise ValueError(
                f"reference: give a value for the minimised objectives {missing} (no natural default)"
            )
        if self.quick.methods:
            bad = [m for m in self.quick.methods if m not in self.methods]
            if bad:
                raise ValueError(f"quick.methods: {bad} are not methods ({', '.join(self.methods)})")
        return self

    def reference_point(self) -> np.ndarray:
        ref = self.reference or {}
        return np.array([ref.get(k, 0.0) for k in self.objectives], dtype=np.float64)

    def maximize(self) -> list[bool]:
        return [d == "max" for d in self.objectives.values()]


# ---------------------------------------------------------------------------------- weights
def simplex_grid(k: int, divisions: int) -> list[list[float]]:
    """Every vector of k non-negative multiples of 1/divisions summing to 1 (lexicographic order)."""
    out = []
    for combo in itertools.product(range(divisions + 1), repeat=k):
        if sum(combo) == divisions:
            out.append([c / divisions for c in combo])
    return sorted(out, reverse=True)


def weight_vectors(spec: WeightsSection, k: int) -> list[list[float]]:
    if spec.kind == "grid":
        vectors = simplex_grid(k, spec.divisions)
    elif spec.kind == "random":
        vectors = np.random.default_rng(spec.seed).dirichlet(np.ones(k), spec.num).tolist()
    else:
        if not spec.values:
            raise ConfigError("weights.values: kind 'list' needs at least one vector")
        bad = [v for v in spec.values if len(v) != k or min(v) < 0 or sum(v) <= 0]
        if bad:
            raise ConfigError(
                f"weights.values: each vector needs {k} non-negative entries with a positive sum, got {bad[0]}"
            )
        vectors = [[x / sum(v) for x in v] for v in spec.values]
    if spec.min_weight * k >= 1:
        raise ConfigError(f"weights.min_weight {spec.min_weight} x {k} objectives must stay below 1")
    m = spec.min_weight
    return [[round((1 - k * m) * x + m, 6) for x in v] for v in vectors]


# ---------------------------------------------------------------------------------- trials
def trial_specs(sweep: SweepConfig, quick: bool, reward_names: list[str]) -> list[dict]:
    """One dict per trial: method, weights (over the weighted objectives), seed, overrides."""
    weighted = [n for n in sweep.objectives if n in reward_names]
    if len(weighted) < 2:
        raise ConfigError(
            f"objectives: at least two must be reward names of {sweep.base} to sweep weights over "
            f"(rewards: {', '.join(reward_names)})"
        )
    spec = sweep.quick.weights if quick else sweep.weights
    methods = (sweep.quick.methods or list(sweep.methods)) if quick else list(sweep.methods)
    seeds = sweep.quick.seeds if quick else sweep.seeds
    steps = sweep.quick.steps if quick else sweep.steps
    out = []
    for method, w, seed in itertools.product(methods, weight_vectors(spec, len(weighted)), seeds):
        name = f"{method}-" + "-".join(f"{x:.3f}" for x in w) + f"-s{seed}"
        sets = [f"rewards.{reward_names.index(n)}.weight={x}" for n, x in zip(weighted, w)]
        sets += [
            *sweep.overrides,
            *sweep.methods[method],
            *(sweep.quick.overrides if quick else []),
            f"trainer.seed={seed}",
            f"trainer.max_steps={steps}",
            *([f"trainer.eval_every={sweep.front_every}"] if sweep.front_every else []),
        ]
        out.append(
            {
                "name": name,
                "method": method,
                "weights": dict(zip(weighted, w)),
                "seed": seed,
                "overrides": sets,
            }
        )
    return out


def trial_resources(config) -> list[dict]:
    """Placement-group bundles of one trial: the trial driver, then one bundle for every actor it
    starts (rollout workers, learner ranks; the reward worker needs none). One bundle, not one per
    actor: Ray places a captured child in any bundle with room, so per-actor bundles of different
    sizes can strand an actor (a 0.5-CPU learner taking the rollout worker's 1-CPU bundle)."""
    import torch

    gpu = (
        1
        if config.model.device == "cuda" or (config.model.device == "auto" and torch.cuda.is_available())
        else 0
    )
    cpus = (
        config.rollout.num_cpus * config.rollout.num_workers
        + config.learner.num_cpus * config.learner.num_ranks
    )
    actors = {"CPU": max(cpus, 0.01)}
    if gpu:
        actors["GPU"] = float(config.rollout.num_workers + config.learner.num_ranks)
    return [{"CPU": 0.01}, actors]


def trial_dir(output_dir: str | Path, name: str) -> Path:
    return Path(output_dir) / "trials" / name


def read_result(output_dir: str | Path, name: str) -> dict | None:
    """A trial's ``result.json`` (its final objective vector, or the error it ended with), if written."""
    path = trial_dir(output_dir, name) / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_result(output_dir: str | Path, name: str, result: dict) -> None:
    from align.reporting.metrics import write_text_atomic

    # atomic: a stopped sweep never leaves half a result
    write_text_atomic(trial_dir(output_dir, name) / "result.json", json.dumps(result, indent=2))


def _objective_vector(summary: dict, objectives: list[str]) -> dict:
    final = summary["after"] or {}
    missing = [k for k in objectives if k not in final]
    if missing:
        raise KeyError(
            f"objectives {missing} are not eval metrics of the trial (have: {', '.join(sorted(final))})"
        )
    return {
        "objectives": {k: float(final[k]) for k in objectives},
        "before": {k: float((summary["before"] or {}).get(k, math.nan)) for k in objectives},
    }


def run_job(params: dict) -> None:
    """The Tune trainable: one job of one or more trials (``trials_per_job``). A trial with a result
    is skipped (a restored sweep runs only what did not finish); one with checkpoints resumes from the
    newest. One trial runs on actors of its own; several share one set (``align.runner.jobs``). Each trial's
    result (its final eval as the objective vector, or its error) goes to ``trials/<name>/result.json``;
    a job with a failed trial ends in error, so that Tune's restore runs it again (the finished trials
    are skipped then)."""
    from ray import tune

    from align.runner.jobs import TrialRun, run_trials
    from align.runner.trainer import Trainer

    base, objectives, out = params["base"], params["objectives"], params["output_dir"]
    todo = []
    for spec in params["job"]["trials"]:
        done = read_result(out, spec["name"])
        if done and "objectives" in done:
            continue
        run_dir = trial_dir(out, spec["name"])
        tracking = [*params.get("tracking", []), f"trainer.tracking.run_name={json.dumps(spec['name'])}"]
        cfg = load_config(base, [*spec["overrides"], f"trainer.output_dir={run_dir}", *tracking])
        resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step_*"))
        todo.append(TrialRun(spec["name"], cfg, str(Path(base).parent), resume))
    if len(todo) == 1:
        try:
            t = todo[0]
            results = {t.name: Trainer(t.config, t.config_dir, resume=t.resume).run()}
        except Exception as exc:
            results = {todo[0].name: exc}
    elif todo:
        results = run_trials(todo, concurrency=params.get("concurrency", 1))
    else:
        results = {}
    failed = []
    for name, res in results.items():
        if not isinstance(res, BaseException):
            try:
                res = {**_objective_vector(res, objectives), "run_dir": str(trial_dir(out, name))}
            except KeyError as exc:
                res = exc
        if isinstance(res, BaseException):
            failed.append(f"{name}: {type(res).__name__}: {res}")
            res = {"error": f"{type(res).__name__}: {res}", "run_dir": str(trial_dir(out, name))}
        write_result(out, name, res)
    tune.report({"trials": len(params["job"]["trials"]), "ran": len(results), "failed": len(failed)})
    if failed:
        raise RuntimeError(f"{len(failed)} trial(s) of {params['job']['name']} failed: " + "; ".join(failed))


def plan_jobs(trials: list[dict], configs: list, per_job: int) -> list[dict]:
    """Trials grouped into jobs: those whose actors would be the same (``align.runner.jobs.share_key`` of
    each trial's validated config) in order, at most ``per_job`` (0: all) to a job."""
    from align.runner.jobs import share_key

    groups: dict[str, list[dict]] = {}
    for t, cfg in zip(trials, configs):
        groups.setdefault(share_key(cfg), []).append(t)
    jobs = []
    for members in groups.values():
        size = per_job or len(members)
        for start in range(0, len(members), size):
            jobs.append({"name": f"job-{len(jobs)}", "trials": members[start : start + size]})
    return jobs


# ---------------------------------------------------------------------------------- analysis
def nondominated(points: np.ndarray, maximize: list[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows (moocore)."""
    import moocore

    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(
        moocore.is_nondominated(np.asarray(points, dtype=np.float64), maximise=maximize), dtype=bool
    )


def analyse(rows: list[dict], sweep: SweepConfig, out_dir: Path, extra: dict | None = None) -> dict:
    """CSV files, per-method hypervolume, pairwise Pareto plots and the markdown report; ``extra``
    entries join the summary."""
    from align.objectives.pareto import hypervolume

    names = list(sweep.objectives)
    maximize, ref = sweep.maximize(), sweep.reference_point()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["method"], r["name"]))
    pts = np.array([[r[f"obj/{n}"] for n in names] for r in rows], dtype=np.float64).reshape(-1, len(names))
    overall = nondominated(pts, maximize)
    per_method: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        idx = [i for i, r in enumerate(rows) if r["method"] == method]
        mask = nondominated(pts[idx], maximize)
        per_method[method] = {
            "trials": len(idx),
            "hypervolume": hypervolume(pts[idx], ref, maximize),
            "nondominated": [rows[i]["name"] for i, m in zip(idx, mask) if m],
        }
    weight_keys = list(dict.fromkeys(k for r in rows for k in r["weights"]))
    with open(out_dir / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["trial", "method", "seed", *[f"w/{k}" for k in weight_keys], *names, "nondominated", "run_dir"]
        )
        for r, nd in zip(rows, overall):
            w.writerow(
                [
                    r["name"],
                    r["method"],
                    r["seed"],
                    *[r["weights"].get(k, "") for k in weight_keys],
                    *[r[f"obj/{n}"] for n in names],
                    int(nd),
                    r.get("run_dir", ""),
                ]
            )
    with open(out_dir / "pareto.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "trial", *names])
        for i in np.flatnonzero(overall):
            w.writerow(["all", rows[i]["name"], *pts[i]])
        for method, info in per_method.items():
            for name in info["nondominated"]:
                i = next(j for j, r in enumerate(rows) if r["name"] == name)
                w.writerow([method, name, *pts[i]])
    plots = plot_fronts(rows, pts, names, maximize, out_dir / "plots")
    by_step = front_by_step(rows, names, maximize, ref)
    with open(out_dir / "front_by_step.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "step", "hypervolume"])
        for set_name, values in by_step.items():
            for step, hv in values.items():
                w.writerow([set_name, step, hv])
    if any(len(v) > 1 for v in by_step.values()):
        plots.append(plot_front_by_step(by_step, out_dir / "plots" / "hypervolume_by_step.png"))
    summary = {
        "reference": dict(zip(names, ref.tolist())),
        "maximize": dict(zip(names, maximize)),
        "hypervolume": {m: i["hypervolume"] for m, i in per_method.items()},
        "hypervolume_all": hypervolume(pts, ref, maximize) if len(pts) else 0.0,
        "methods": per_method,
        "nondominated": [rows[i]["name"] for i in np.flatnonzero(overall)],
        "trials": len(rows),
        "hypervolume_by_step": {k: {str(st): hv for st, hv in v.items()} for k, v in by_step.items()},
        "plots": [str(p) for p in plots],
    }
    summary.update(extra or {})
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(summary, rows, pts, names, out_dir / "report.md")
    return summary


def front_by_step(rows: list[dict], names: list[str], maximize, ref) -> dict[str, dict[int, float]]:
    """The hypervolume of each set (every method's trials, and all trials) at each step where every
    trial of the set was evaluated (step 0: before training; ``front_every``; the last step), from
    the trials' ``metrics.jsonl``."""
    from align.objectives.pareto import hypervolume

    evals: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        path = Path(r.get("run_dir", "")) / "metrics.jsonl"
        by_step: dict[int, list[float]] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if all(f"eval/{n}" in row for n in names):  # a resumed run's repeated row: the last wins
                    by_step[int(row["step"])] = [float(row[f"eval/{n}"]) for n in names]
        evals[r["name"]] = by_step
    sets = {m: [r for r in rows if r["method"] == m] for m in dict.fromkeys(r["method"] for r in rows)}
    sets["all"] = rows
    out: dict[str, dict[int, float]] = {}
    for set_name, members in sets.items():
        steps = set.intersection(*(set(evals[r["name"]]) for r in members)) if members else set()
        out[set_name] = {
            st: hypervolume(np.array([evals[r["name"]][st] for r in members]), ref, maximize)
            for st in sorted(steps)
        }
    return out


def plot_front_by_step(by_step: dict[str, dict[int, float]], path: Path) -> Path:
    """Hypervolume against training step, one line per method and one for all trials together."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.get_cmap("tab10")
    for c, (set_name, values) in enumerate(by_step.items()):
        steps = list(values)
        ax.plot(
            steps,
            [values[st] for st in steps],
            marker="o",
            color="black" if set_name == "all" else colours(c),
            lw=2.5 if set_name == "all" else 1.5,
            label=set_name,
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("hypervolume of the front")
    ax.set_title("The front's evolution: hypervolume per step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fronts(rows, pts, names, maximize, out_dir: Path) -> list[Path]:
    """One PNG per pair of objectives: every trial by method, each method's 2-D front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = plt.get_cmap("tab10")
    paths = []
    for a, b in itertools.combinations(range(len(names)), 2):
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        for c, method in enumerate(methods):
            idx = [i for i, r in enumerate(rows) if r["method"] == method]
            p = pts[idx][:, [a, b]]
            ax.scatter(p[:, 0], p[:, 1], color=colours(c), alpha=0.6, label=method)
            front = p[nondominated(p, [maximize[a], maximize[b]])]
            front = front[np.argsort(front[:, 0])]
            ax.plot(front[:, 0], front[:, 1], color=colours(c), lw=1.5)
        ax.set_xlabel(f"{names[a]} ({'max' if maximize[a] else 'min'})")
        ax.set_ylabel(f"{names[b]} ({'max' if maximize[b] else 'min'})")
        ax.set_title(f"Pareto front: {names[a]} vs {names[b]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = out_dir / f"pareto_{names[a]}_vs_{names[b]}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(summary: dict, rows, pts, names, path: Path) -> None:
    ref = ", ".join(f"{k} {v:g}" for k, v in summary["reference"].items())
    lines = [
        "# Pareto sweep",
        "",
        f"{summary['trials']} trials. Objectives: "
        + ", ".join(f"{k} ({'max' if m else 'min'})" for k, m in summary["maximize"].items())
        + ".",
        f"Hypervolume (moocore, exact) with reference point ({ref}).",
        "",
        "| method | trials | hypervolume | non-dominated trials |",
        "|---|---:|---:|---|",
    ]
    for m, info in summary["methods"].items():
        lines.append(
            f"| {m} | {info['trials']} | {info['hypervolume']:.4f} | {', '.join(info['nondominated'])} |"
        )
    lines += [
        "",
        f"All trials together: hypervolume {summary['hypervolume_all']:.4f}; non-dominated: "
        + ", ".join(summary["nondominated"]),
        "",
        "## Trials",
        "",
        "| trial | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for r, p in zip(rows, pts):
        lines.append(f"| {r['name']} | " + " | ".join(f"{x:.4f}" for x in p) + " |")
    by_step = summary.get("hypervolume_by_step") or {}
    steps = sorted({int(st) for v in by_step.values() for st in v})
    if len(steps) > 1:
        lines += [
            "",
            "## The front over steps (hypervolume)",
            "",
            "| set | " + " | ".join(f"step {st}" for st in steps) + " |",
            "|---|" + "---:|" * len(steps),
        ]
        for set_name, values in by_step.items():
            lines.append(
                f"| {set_name} | "
                + " | ".join(f"{values[str(st)]:.4f}" if str(st) in values else "-" for st in steps)
                + " |"
            )
    lines += ["", "## Plots", ""] + [f"![{Path(p).stem}](plots/{Path(p).name})" for p in summary["plots"]]
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------- driver
def plan_sweep(path: str, overrides: list[str] | None = None, quick: bool = False):
    """The validated sweep, its base config (path and Config), its trials, their jobs and their
    validated configs; every trial's config is validated here, before anything starts."""
    sweep = load_config(path, overrides or [], model=SweepConfig)
    base = str((Path(path).resolve().parent / sweep.base).resolve())
    base_cfg = load_config(base, sweep.overrides)
    trials = trial_specs(sweep, quick, [r.name for r in base_cfg.rewards])
    configs = []
    for t in trials:
        try:
            configs.append(load_config(base, t["overrides"]))
        except ConfigError as exc:
            raise ConfigError(f"sweep {path}: trial {t['name']}: {exc}") from None
    if base_cfg.data.eval is None:
        raise ConfigError(
            f"sweep {path}: the base config {sweep.base} has no data.eval; trials are compared on it"
        )
    jobs = plan_jobs(trials, configs, sweep.trials_per_job)
    for job in jobs:
        for t in job["trials"]:
            t["job"] = job["name"]
    return sweep, base, base_cfg, trials, jobs, configs


def run_sweep(
    path: str, overrides: list[str] | None = None, quick: bool = False, address: str | None = None
) -> dict:
    """Validate the sweep and every trial's config, run the trials on Ray Tune, analyse."""
    import ray
    from ray import tune

    from align.reporting.trackers import SweepRun

    sweep, base, base_cfg, trials, jobs, configs = plan_sweep(path, overrides, quick)
    out_dir = Path(sweep.output_dir)
    if not out_dir.is_absolute():
        out_dir = Path.cwd() / out_dir
    out_dir = out_dir / "quick" if quick else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    # the trackers group every trial under the sweep (an MLflow parent run, a W&B group)
    tracking = SweepRun(
        configs[0], out_dir, Path(path).stem + ("-quick" if quick else ""), sweep.model_dump(mode="json")
    )
    (out_dir / "sweep.json").write_text(
        json.dumps(
            {"sweep": sweep.model_dump(mode="json"), "quick": quick, "trials": trials, "jobs": jobs}, indent=2
        )
    )
    owns = not ray.is_initialized()
    if owns:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                address="local",
                num_cpus=max(2, os.cpu_count() or 2),
                include_dashboard=False,
                log_to_driver=False,
            )
    try:
        bundles = trial_resources(base_cfg)
        resources = tune.PlacementGroupFactory(bundles, strategy="PACK")
        need = sum(b["CPU"] for b in bundles)
        have = ray.cluster_resources().get("CPU", 0.0)
        if need > have + 1e-9:
            raise ValueError(
                f"one trial needs {need:g} Ray CPUs (rollout workers, learner ranks and the trial driver) but the "
                f"cluster has {have:g}: lower the base config's num_cpus / num_workers / num_ranks"
            )
        trainable = tune.with_resources(run_job, resources)
        param_space = {
            "job": tune.grid_search(jobs),
            "base": base,
            "objectives": list(sweep.objectives),
            "output_dir": str(out_dir),
            "concurrency": sweep.job_concurrency,
            "tracking": tracking.overrides,
        }
        log.info("%d trial(s) in %d job(s) (trials_per_job=%d)", len(trials), len(jobs), sweep.trials_per_job)
        storage, name = str(out_dir), "tune"
        concurrent = sweep.max_concurrent or None
        if tune.Tuner.can_restore(os.path.join(storage, name)):
            log.info("resuming the sweep in %s (Tune restore)", os.path.join(storage, name))
            tuner = tune.Tuner.restore(
                os.path.join(storage, name),
                trainable,
                resume_errored=True,
                restart_errored=False,
                param_space=param_space,
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=False),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=storage,
                    verbose=1,
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
        results = tuner.fit()
        errors = {r.config["job"]["name"]: r.error for r in results if r.error is not None}
        rows, failed = [], []
        for spec in trials:
            res = read_result(out_dir, spec["name"])
            if res is None or "objectives" not in res:
                why = res["error"] if res else f"no result ({errors.get(spec['job'], 'the job did not run')})"
                failed.append(f"{spec['name']}: {why}")
                continue
            rows.append(
                {
                    **spec,
                    **{f"obj/{k}": v for k, v in res["objectives"].items()},
                    **{f"before/{k}": v for k, v in res["before"].items()},
                    "run_dir": res["run_dir"],
                }
            )
        if failed:
            log.error("%d trial(s) failed:\n  %s", len(failed), "\n  ".join(failed))
        if not rows:
            raise RuntimeError(
                "every trial failed; see the errors above and the trial logs under " + str(out_dir / name)
            )
        summary = analyse(rows, sweep, out_dir, {"failed": failed, "jobs": len(jobs)})
        files = {n: out_dir / n for n in ("report.md", "trials.csv", "pareto.csv", "front_by_step.csv")}
        tracking.finish(summary, {**files, **{f"plots/{Path(p).name}": Path(p) for p in summary["plots"]}})
        log.info(
            "sweep done: %d trials, hypervolume %s; report %s",
            len(rows),
            ", ".join(f"{m} {v:.4f}" for m, v in summary["hypervolume"].items()),
            out_dir / "report.md",
        )
        return summary
    except BaseException as exc:
        tracking.finish(None, {}, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        if owns:
            ray.shutdown()
