"""Asynchronous training's throughput and what staleness costs: GRPO runs of the same settings at
``rollout.max_staleness`` K = 0 (lockstep), 1 and 2, each in its own process, on this machine.

    .venv/bin/python bench/async_overlap.py --part speed [--model builtin:smollm2-135m] [--steps 8]
    .venv/bin/python bench/async_overlap.py --part curves [--steps 40] [--seeds 0 1]

``speed``: each arm's steady steps (after the first K + 1, whose batches fill the pipeline), from
the run's own metrics: step time, samples and completion tokens per second; the rollout phase R
(the engine's time for one batch) and the learner phase L (the rest of the step: rewards, log-probs,
update, sync). Lockstep gives every phase all cores (rollout.threads 0, learner.threads 0); the
async arms split them (``--split``: engine threads + learner threads; default 1 + 1, and the 2 + 2
oversubscribed split is measured too). Overlap achieved: (R + L - T) / min(R, L), the share of the
shorter phase hidden (1: the step takes max(R, L), the ideal; 0: no overlap).

``curves``: the training reward (sampled at the run's temperature) of K = 0, 1, 2 on the same seeds,
with the final sampled evaluation; writes a PNG of the curves.

Writes bench/results/async_<model>.md, async_curves.md and async_curves.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.sides import emit, run_side, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
CONFIGS = {"builtin:tiny": "grpo_tiny.yaml", "builtin:smollm2-135m": "grpo_smollm2.yaml"}


def arm_overrides(k: int, split: str | None) -> list[str]:
    """K and the core split: lockstep phases take every core; async ones ``engine+learner`` threads."""
    if k == 0 and split is None:
        return ["rollout.max_staleness=0", "rollout.threads=0", "learner.threads=0"]
    r, lt = split.split("+")
    return [f"rollout.max_staleness={k}", f"rollout.threads={r}", f"learner.threads={lt}"]


def side(args) -> None:
    """One run in this process; emits its metrics rows and wall time."""
    import logging

    from align.config.loading import load_config
    from align.runner.trainer import Trainer

    logging.basicConfig(level=logging.WARNING)
    out = Path(tempfile.mkdtemp(prefix="align-async-")) / "run"
    overrides = [f"trainer.output_dir={out}", *json.loads(args.overrides)]
    cfg = load_config(ROOT / "configs" / CONFIGS[args.model], overrides)
    t0 = time.time()
    summary = Trainer(cfg, str(ROOT / "configs")).run()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    emit({"rows": rows, "wall": time.time() - t0, "after": summary.get("after")})


def steady(rows: list[dict], k: int) -> list[dict]:
    return [r for r in rows if r["step"] > k + 1 and "timing/step" in r]


def phase_figures(rows: list[dict], k: int, samples: int) -> dict:
    import numpy as np

    rs = steady(rows, k)
    t = float(np.mean([r["timing/step"] for r in rs]))
    r_phase = float(np.mean([r["timing/rollout"] for r in rs]))
    if k == 0:
        l_phase = t - r_phase
    else:  # the learners' busy time: the step less the wait for the batch
        l_phase = t - float(np.mean([r.get("timing/rollout_wait", 0.0) for r in rs]))
    tokens = float(np.mean([r["rollout/length"] for r in rs])) * samples
    hidden = (r_phase + l_phase - t) / min(r_phase, l_phase) if k else 0.0
    return {
        "T": t,
        "R": r_phase,
        "L": l_phase,
        "samples_s": samples / t,
        "tokens_s": tokens / t,
        "overlap": hidden,
        "ideal": max(r_phase, l_phase),
        "wait": float(np.mean([r.get("timing/rollout_wait", 0.0) for r in rs])),
        "idle": float(np.mean([r.get("timing/rollout_idle", 0.0) for r in rs])),
        "staleness": float(np.mean([r.get("rollout/staleness", 0.0) for r in rs])),
        "clip": float(np.mean([r.get("loss/clip_frac", 0.0) for r in rs])),
        "steps": len(rs),
    }


def part_speed(args) -> None:
    common = [
        f"trainer.max_steps={args.steps}",
        "trainer.save_every=0",
        "trainer.eval_every=0",
        "data.eval=null",
        "learner.num_ranks=1",
    ]
    arms = [("K=0 lockstep, all cores each phase", 0, None)]
    for split in args.split:
        arms += [(f"K=1, {split} threads", 1, split)]
    arms += [(f"K=2, {args.split[0]} threads", 2, args.split[0])]
    from align.config.loading import load_config

    cfg = load_config(ROOT / "configs" / CONFIGS[args.model], common)
    samples = cfg.data.prompts_per_step * cfg.algorithm.group_size
    figures = {"_run": {"steps": args.steps, "date": time.strftime("%Y-%m-%d"), "cpu": _cpu()}}
    for name, k, split in arms:
        print(f"-- {name}", flush=True)
        res = run_side(
            __file__,
            "run",
            ["--model", args.model, "--overrides", json.dumps([*common, *arm_overrides(k, split)])],
        )
        figures[name] = {"K": k, "split": split, **phase_figures(res["rows"], k, samples)}
        print(json.dumps(figures[name]), flush=True)
    (RESULTS / f"async_{args.model.split(':')[-1]}.json").write_text(json.dumps(figures, indent=1) + "\n")
    render_speed(args)


def render_speed(args) -> None:
    """``async_<model>.md`` from ``async_<model>.json`` (``--part report`` redraws it alone)."""
    from align.config.loading import load_config

    name = args.model.split(":")[-1]
    figures = json.loads((RESULTS / f"async_{name}.json").read_text())
    run = figures.pop("_run", {})
    cfg = load_config(ROOT / "configs" / CONFIGS[args.model], [])
    samples = cfg.data.prompts_per_step * cfg.algorithm.group_size
    base = next(f for f in figures.values() if f["K"] == 0)
    lines = [
        f"# Asynchronous training: throughput of K = 0, 1, 2 on {args.model}",
        "",
        f"`bench/async_overlap.py --part speed --model {args.model} --steps {run.get('steps', '?')} --split "
        f"{' '.join(sorted({f['split'] for f in figures.values() if f['split']}))}`, {run.get('date', '?')}, "
        f"this machine ({run.get('cpu', _cpu())}). GRPO, {cfg.data.prompts_per_step} prompts x "
        f"G {cfg.algorithm.group_size} = {samples} samples per step, up to {cfg.rollout.max_new_tokens} new tokens, "
        f"temperature {cfg.rollout.temperature}, LoRA r {cfg.model.lora.r}, one learner rank, one vLLM engine "
        f"(merged LoRA), no eval or checkpoints in the timed steps. Steady steps only (after the first K + 1).",
        "",
        "R: the engine's time for one batch; L: the learners' busy time per step (rewards, log-probs, update, "
        "sync; async: the step less its wait for the batch); T: the step. Achieved T / (R + L) against the ideal "
        "max(R, L) / (R + L) of the same arm (perfect overlap); hidden: (R + L - T) / min(R, L), the share of "
        "the shorter phase hidden.",
        "",
        "| arm | steps | T (s) | R (s) | L (s) | T / (R + L) | ideal max(R, L) / (R + L) | hidden | samples/s | "
        "tokens/s | vs K=0 | learner wait (s) | engine idle (s) | staleness | clip frac |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, f in figures.items():
        rl = f["R"] + f["L"]
        lines.append(
            f"| {arm} | {f['steps']} | {f['T']:.2f} | {f['R']:.2f} | {f['L']:.2f} | {f['T'] / rl:.2f} | "
            f"{max(f['R'], f['L']) / rl:.2f} | {f['overlap']:.2f} | {f['samples_s']:.2f} | {f['tokens_s']:.1f} | "
            f"{base['T'] / f['T']:.2f}x | {f['wait']:.2f} | {f['idle']:.2f} | {f['staleness']:.1f} | {f['clip']:.4f} |"
        )
    r2, l2 = base["R"], base["L"]
    one = next((f for f in figures.values() if f["K"] == 1 and f["split"] == "1+1"), None)
    lines += [
        "",
        f"Lockstep with every core per phase: R = {r2:.2f} s, L = {l2:.2f} s, so perfect overlap at those phase "
        f"times would take max(R, L) / (R + L) = {max(r2, l2) / (r2 + l2):.2f} of the lockstep step "
        f"({(r2 + l2) / max(r2, l2):.2f}x). On 2 cores the two sides must share them: each phase on one core "
        "is slower than on two, so the async gain is bounded by how far each phase is from scaling linearly "
        "with cores"
        + (
            f": from two cores to one the rollout went {r2:.2f} -> {one['R']:.2f} s ({one['R'] / r2:.2f}x) and the "
            f"learner {l2:.2f} -> {one['L']:.2f} s ({one['L'] / l2:.2f}x), so the async step max(R, L) on one core "
            f"each is {one['T']:.2f} s against lockstep's {base['T']:.2f} s."
            if one
            else "."
        ),
    ]
    write_report("\n".join(lines) + "\n", RESULTS / f"async_{name}.md")


def part_model(args) -> None:
    """The speed-up of asynchronous training on a GPU cluster, on paper, from the phase times measured
    here (``--part speed`` on the same model first)."""
    name = args.model.split(":")[-1]
    figures = json.loads((RESULTS / f"async_{name}.json").read_text())
    base = next(f for n, f in figures.items() if n != "_run" and f["K"] == 0)
    r, l_ = base["R"], base["L"]
    rhos = [1, 1.5, 2, 3, 5, 10]
    lines = [
        f"# Asynchronous training on a GPU cluster: a model from the phase times measured on {args.model}",
        "",
        f"`bench/async_overlap.py --part model --model {args.model}`. Measured here (lockstep, every core per "
        f"phase, `async_{name}.md`): rollout R = {r:.2f} s, learner L = {l_:.2f} s per step, rho = R / L = "
        f"{r / l_:.2f} (short replies: this run is learner-bound). Long reasoning traces make the rollout the "
        "bottleneck (rho > 1: decoding is memory-bound and a batch lasts as long as its longest trace), so "
        "rho is the axis below; the rows are what each design can reach.",
        "",
        "Setting: rollout engines and learners on separate GPUs (the cluster form; here they share 2 cores). "
        "Per step, lockstep takes R + L (each side idles while the other runs); asynchronous with K >= 1 "
        "takes max(R, L) once phase times are steady, so:",
        "",
        "    speed-up(K >= 1) = (R + L) / max(R, L) = 1 + 1 / rho   (rho >= 1)",
        "",
        "It peaks at 2x when the phases are equal (rho = 1) and saturates toward 1x as rollouts dominate: "
        "overlap can only hide the shorter phase. K = 1 reaches it when phase times are steady; a larger K "
        "only absorbs step-to-step jitter (with each phase varying by +-j, K = 1 pays E[max(R_t, L_t)], "
        "up to j more than max(R, L); K = 2 lets the engine run a batch ahead through a slow learner step).",
        "",
        "Against *colocated* lockstep (every GPU runs both phases: the baseline of verl's 2.35-2.67x and "
        "AReaL's 2.77x), overlap alone gains nothing if both sides scale linearly with GPUs: moving GPUs to "
        "the bottleneck side balances the two pools at max(R N / N_r, L N / N_l) = R + L. The reported "
        "gains come from what lockstep wastes besides the other phase: the long tail (a lockstep batch runs "
        "its engines nearly empty while the last traces finish: the engine's utilisation u = mean / max "
        "trace length) and the switch S between phases (weights offloaded and resharded). Asynchronous "
        "engines that keep sampling into the tail (partial rollouts: a trace continues under the next "
        "version) reach T = R + L against T0 = R / u + L + S:",
        "",
        "    speed-up(partial rollouts, balanced pools) = (R / u + L + S) / (R + L)",
        "",
        "| rho = R / L | overlap only, K >= 1: vs lockstep on the same separate pools | partial rollouts, "
        "balanced pools, u = 0.5, S = 0.1 (R + L): vs colocated lockstep | the same, u = 0.35 |",
        "|---:|---:|---:|---:|",
    ]
    for rho in rhos:
        R, L = rho, 1.0
        lines.append(
            f"| {rho:g} | {1 + min(rho, 1 / rho):.2f}x | {(R / 0.5 + L + 0.1 * (R + L)) / (R + L):.2f}x | "
            f"{(R / 0.35 + L + 0.1 * (R + L)) / (R + L):.2f}x |"
        )
    lines += [
        "",
        f"Where this run sits: rho = {r / l_:.2f}, so overlap alone on separate devices would give "
        f"{(r + l_) / max(r, l_):.2f}x; on this machine the two sides share 2 cores, and each phase on one core "
        f"is slower than lockstep's two-core phases (see `async_{name}.md`), which is why the measured "
        "ratio is below 1 here. align's asynchronous mode samples whole batches per call (no partial "
        "rollouts, see docs/async.md), so its cluster gain is the overlap column, at most 2x at rho = 1.",
    ]
    write_report("\n".join(lines) + "\n", RESULTS / f"async_model_{name}.md")


def part_curves(args) -> None:
    import numpy as np

    common = [
        f"trainer.max_steps={args.steps}",
        "trainer.save_every=0",
        "trainer.eval_every=0",
        "data.eval_temperature=1.0",
        f"data.eval_samples={args.eval_samples}",
        f"data.eval_size={args.eval_size}",
        "learner.num_ranks=1",
    ]
    from align.config.loading import load_config

    reward = load_config(ROOT / "configs" / CONFIGS[args.model], []).rewards[0].name  # the task's score
    curves: dict[int, list[list[float]]] = {}
    finals: dict[int, list[float]] = {}
    befores: dict[int, list[float]] = {}  # the step-0 eval, same settings as the final one
    if args.from_runs:  # redraw from finished runs (their config.yaml and metrics.jsonl)
        results = [_finished_run(Path(d)) for d in args.from_runs]
        args.ks = sorted({k for k, _, _, _ in results})
        args.seeds = sorted({seed for _, seed, _, _ in results})
    else:
        results = []
        for k in args.ks:
            for seed in args.seeds:
                print(f"-- K={k} seed {seed}", flush=True)
                overrides = [*common, f"trainer.seed={seed}", *arm_overrides(k, None if k == 0 else "1+1")]
                res = run_side(__file__, "run", ["--model", args.model, "--overrides", json.dumps(overrides)])
                results.append((k, seed, res["rows"], res["after"]))
    for k, _, rows, after in sorted(results, key=lambda r: r[:2]):
        befores.setdefault(k, []).extend(r[f"eval/{reward}"] for r in rows if r["step"] == 0)
        rows = [r for r in rows if r["step"] > 0 and f"reward/{reward}" in r]
        curves.setdefault(k, []).append([r[f"reward/{reward}"] for r in rows])
        finals.setdefault(k, []).append(after[reward])
    name = "" if args.model == "builtin:tiny" else "_" + args.model.split(":")[-1]
    _plot(curves, RESULTS / f"async_curves{name}.png", args, reward)
    w = args.window
    lines = [
        f"# Asynchronous training: does staleness cost learning? ({args.model})",
        "",
        f"`bench/async_overlap.py --part curves --model {args.model} --steps {args.steps} --seeds "
        f"{' '.join(map(str, args.seeds))} --ks {' '.join(map(str, args.ks))} --window {w} --eval-size "
        f"{args.eval_size} --eval-samples {args.eval_samples}`, {time.strftime('%Y-%m-%d')}. GRPO, the config's "
        "settings; K = 0 (lockstep, every core per phase) and K > 0 (engine 1 thread + learner 1) on the same "
        f"seeds (same prompts, same sampling seeds per step). Train reward: {reward} of the step's samples (at "
        f"the config's temperature); final eval: {reward} of {args.eval_samples} samples per held-out prompt "
        f"({args.eval_size} prompts) at temperature 1 (sampled: greedy saturates on the tiny task). Ceiling of "
        "both: 1.0. Mean ± half the spread of the seeds.",
        "",
        f"| K | train reward, first {w} steps | train reward, last {w} steps | eval before (sampled) | "
        "final eval (sampled) |",
        "|---|---|---|---|---|",
    ]
    for k in args.ks:
        c = np.array(curves[k])
        first, last = c[:, :w].mean(axis=1), c[:, -w:].mean(axis=1)
        f = np.array(finals[k])
        lines.append(f"| {k} | {_pm(first)} | {_pm(last)} | {_pm(befores[k])} | {_pm(f)} |")
    lines += ["", f"![reward curves](async_curves{name}.png)"]
    write_report("\n".join(lines) + "\n", RESULTS / f"async_curves{name}.md")


def _finished_run(run: Path) -> tuple[int, int, list[dict], dict]:
    """(K, seed, metrics rows, final eval) of a finished run directory."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    after = {k[5:]: v for k, v in rows[-1].items() if k.startswith("eval/")}
    return cfg["rollout"]["max_staleness"], cfg["trainer"]["seed"], rows, after


def _pm(x) -> str:
    import numpy as np

    x = np.asarray(x, dtype=float)
    return f"{x.mean():.3f} ± {(x.max() - x.min()) / 2:.3f}"


def _plot(curves: dict, path: Path, args, reward: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, runs in curves.items():
        c = np.array(runs)
        steps = np.arange(1, c.shape[1] + 1)
        # a moving mean of the seeds' mean over args.window steps (one step's samples are noisy)
        w = args.window
        m = np.convolve(c.mean(axis=0), np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], m, label=f"K={k} ({len(runs)} seeds)")
        ax.fill_between(steps, c.min(axis=0), c.max(axis=0), alpha=0.12)
    ax.set_xlabel("step")
    ax.set_ylabel(f"train reward ({reward}, sampled)")
    ax.set_title(
        f"GRPO on {args.model}: lockstep vs async\n({args.window}-step mean; band: seed range)", fontsize=10
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _cpu() -> str:
    import os

    try:
        name = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{os.cpu_count()} cores, {name}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["speed", "curves", "model", "report"], default="speed")
    ap.add_argument("--model", default="builtin:tiny", choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--split", nargs="+", default=["1+1", "2+2"], help="async arms: engine+learner threads")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2], help="curves: the K of each arm")
    ap.add_argument("--window", type=int, default=5, help="curves: steps averaged at each end")
    ap.add_argument("--eval-size", type=int, default=200)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--from-runs", nargs="+", help="curves: redraw from these finished run directories")
    ap.add_argument("--overrides", help=argparse.SUPPRESS)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        side(args)
    elif args.part == "speed":
        part_speed(args)
    elif args.part == "model":
        part_model(args)
    elif args.part == "report":
        render_speed(args)
    else:
        part_curves(args)


if __name__ == "__main__":
    main()
