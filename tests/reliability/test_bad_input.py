"""Bad input through the real command line (``align train`` / ``align eval``, in this process): each
case must end with exit code 2 and one line ``error: ...`` naming what to change (the field, the
file and line, the reward), no traceback, and no Ray actor started. Runtime reward failures (a
reward that raises, hangs, returns NaN, the wrong length or the wrong type) are in
test_bad_rewards.py; the loaders are fuzzed in test_fuzz.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml

from launch.cli import main
from tests.reliability.report import record

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "model": {"path": "builtin:tiny"},
    "algorithm": {"name": "grpo", "group_size": 4},
    "trainer": {"max_steps": 1},
    "data": {"train": "train.jsonl", "eval": None},
    "learner": {"num_ranks": 1},
    "rewards": [{"fn": "correctness"}],
}
GOOD_ROW = json.dumps({"prompt": "1+2=", "answer": "3"})
PLUGIN_OK = "def score(prompts, completions, **kw):\n    return [1.0] * len(completions)\n"


def _merge(base: dict, extra: dict) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def case(name, config=None, files=None, args=(), expect=(), raw=None, command="train", drop=()):
    """``config``: merged into BASE (``raw``: the YAML text itself); ``files``: written beside it;
    ``expect``: fragments the error line must hold."""
    return pytest.param(
        dict(
            config=config or {},
            files=files or {},
            args=list(args),
            expect=list(expect),
            raw=raw,
            command=command,
            drop=list(drop),
        ),
        id=name,
    )


def _adapter_checkpoint(directory: Path, shape_in: int) -> None:
    """A complete, valid checkpoint whose adapter was trained on a model of another width."""
    from align.store.checkpoint import save_checkpoint

    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    config = {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj"],
        "task_type": "CAUSAL_LM",
    }
    save_checkpoint(
        directory / "checkpoints", 1, {key: np.zeros((8, shape_in), np.float32)}, config, [], {"version": 1}
    )


CASES = [
    # -- configs
    case("unknown key", {"trainer": {"max_step": 3}}, expect=["trainer.max_step", "line", "max_steps"]),
    case("unknown section", {"trainr": {}}, expect=["trainr", "trainer"]),
    case("wrong type", {"trainer": {"max_steps": "ten"}}, expect=["trainer.max_steps", "ten"]),
    case("negative learning rate", {"learner": {"lr": -1}}, expect=["learner.lr"]),
    case(
        "group size 1 with GRPO",
        {"algorithm": {"group_size": 1}},
        expect=["algorithm.group_size", "2 or more"],
    ),
    case("group size 1 with RLOO", {"algorithm": {"name": "rloo", "group_size": 1}}, expect=["group_size"]),
    case("unknown algorithm", {"algorithm": {"name": "ppo2"}}, expect=["algorithm.name", "ppo2"]),
    case(
        "more learner ranks than CPUs",
        {"learner": {"num_ranks": 64, "num_cpus": 1}},
        expect=["learner.num_ranks", "CPU"],
    ),
    case(
        "missing model path",
        {"model": {"path": "/nonexistent/model"}},
        expect=["model.path", "/nonexistent/model"],
    ),
    case("YAML syntax error", raw="trainer: {max_steps: 3\n", expect=["config.yaml", "line"]),
    case("config file missing", args=["--missing-config"], expect=["nope.yaml"]),
    case(
        "override without '='", args=["--set", "trainer.max_steps"], expect=["trainer.max_steps", "KEY=VALUE"]
    ),
    case("override of an unknown key", args=["--set", "trainer.max_stpes=3"], expect=["trainer.max_stpes"]),
    case(
        "two rewards with one name",
        {"rewards": [{"fn": "correctness"}, {"fn": "correctness"}]},
        expect=["correctness"],
    ),
    case(
        "reward with fn and url",
        {"rewards": [{"fn": "correctness", "url": "http://127.0.0.1:1"}]},
        expect=["rewards"],
    ),
    case(
        "unknown on_failure policy",
        {"rewards": [{"fn": "correctness", "on_failure": "ignore"}]},
        expect=["on_failure", "ignore"],
    ),
    case(
        "objective naming no reward",
        {
            "objective": {
                "name": "lagrangian",
                "lagrangian": {"task": "correctness", "constraints": [{"name": "nope", "threshold": 0.1}]},
            }
        },
        expect=["nope"],
    ),
    case("top_p above 1", {"rollout": {"top_p": 1.5}}, expect=["rollout.top_p"]),
    # -- datasets
    case(
        "bad JSON line",
        files={"train.jsonl": GOOD_ROW + '\n{"prompt": "2+2=",\n'},
        expect=["train.jsonl:2", "invalid JSON"],
    ),
    case("row not an object", files={"train.jsonl": "[1, 2]\n"}, expect=["train.jsonl:1", "JSON object"]),
    case(
        "missing prompt field",
        files={"train.jsonl": json.dumps({"question": "1+2="}) + "\n"},
        expect=["train.jsonl:1", "'prompt'", "question"],
    ),
    case(
        "empty prompt",
        files={"train.jsonl": json.dumps({"prompt": "  "}) + "\n"},
        expect=["train.jsonl:1", "'prompt'"],
    ),
    case(
        "prompt of a wrong type",
        files={"train.jsonl": json.dumps({"prompt": 12}) + "\n"},
        expect=["train.jsonl:1", "'prompt'"],
    ),
    case(
        "chat message without role",
        files={"train.jsonl": json.dumps({"prompt": [{"content": "hi"}]}) + "\n"},
        expect=["train.jsonl:1", "role"],
    ),
    case(
        "chat message with an unknown role",
        files={"train.jsonl": json.dumps({"prompt": [{"role": "bot", "content": "hi"}]}) + "\n"},
        expect=["train.jsonl:1", "'bot'"],
    ),
    case(
        "prompt longer than data.max_prompt_tokens",
        files={"train.jsonl": json.dumps({"prompt": "1+" * 200 + "1="}) + "\n"},
        expect=["train.jsonl", "row 0", "data.max_prompt_tokens"],
    ),
    case(
        "prompt + completion longer than the model's context",
        {"data": {"max_prompt_tokens": 4000}},
        expect=["data.max_prompt_tokens", "rollout.max_new_tokens", "context"],
    ),
    case("empty dataset", files={"train.jsonl": "\n"}, expect=["train.jsonl", "no rows"]),
    case("dataset file missing", {"data": {"train": "missing.jsonl"}}, expect=["missing.jsonl", "not found"]),
    case(
        "preference pair with chosen == rejected",
        {"algorithm": {"name": "dpo"}},
        files={"train.jsonl": json.dumps({"prompt": "1+2=", "chosen": "3", "rejected": "3"}) + "\n"},
        expect=["train.jsonl:1", "identical"],
    ),
    case(
        "preference row without 'rejected'",
        {"algorithm": {"name": "dpo"}},
        files={"train.jsonl": json.dumps({"prompt": "1+2=", "chosen": "3"}) + "\n"},
        expect=["train.jsonl:1", "'rejected'"],
    ),
    # -- reward plug-ins (checked in the driver before any actor starts)
    case(
        "plug-in file that fails to import",
        {"rewards": [{"fn": "plug.py:score"}]},
        files={"plug.py": "import not_a_module_anywhere\n" + PLUGIN_OK},
        expect=["plug.py", "not_a_module_anywhere"],
    ),
    case(
        "plug-in without the named function",
        {"rewards": [{"fn": "plug.py:scroe"}]},
        files={"plug.py": PLUGIN_OK},
        expect=["plug.py", "scroe"],
    ),
    case("plug-in file missing", {"rewards": [{"fn": "nothere.py:score"}]}, expect=["nothere.py"]),
    case("unknown built-in reward", {"rewards": [{"fn": "correctnes"}]}, expect=["correctnes"]),
    case(
        "reward model folder without config.json",
        {"rewards": [{"model": "rm_dir"}]},
        files={"rm_dir/README": "x"},
        expect=["rm_dir", "config.json"],
    ),
    # -- models
    case(
        "model folder without config.json",
        {"model": {"path": "model_dir"}},
        files={"model_dir/README": "x"},
        expect=["model.path", "config.json"],
    ),
    case(
        "think token the tokenizer lacks (AdaptThink)",
        {
            "algorithm": {
                "name": "adaptthink",
                "group_size": 4,
                "adaptthink": {"end_think_token": "</reasoning>"},
            }
        },
        expect=["</reasoning>", "end_think_token"],
    ),
    case(
        "resume from an adapter of another base model",
        args=["--resume"],
        drop=["adapter_other_base"],
        expect=["q_proj", "lora_A", "shape"],
    ),
    case(
        "resume from a corrupted checkpoint",
        args=["--resume"],
        drop=["corrupted"],
        expect=["adapter_model.safetensors", "checksum"],
    ),
    case(
        "eval of an adapter of another base model",
        {"data": {"eval": "train.jsonl"}},
        command="eval",
        drop=["adapter_other_base_eval"],
        expect=["q_proj", "lora_A", "shape"],
    ),
    case(
        "--address where no cluster listens", args=["--address", "127.0.0.1:9"], expect=["127.0.0.1:9", "Ray"]
    ),
]


@pytest.mark.parametrize("spec", CASES)
def test_bad_input_is_refused_with_one_clear_line(spec, tmp_path, capsys, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_text(GOOD_ROW + "\n")
    for name, text in spec["files"].items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    config = tmp_path / "config.yaml"
    out = tmp_path / "run"
    config.write_text(
        spec["raw"]
        if spec["raw"] is not None
        else yaml.safe_dump(_merge(_merge(BASE, {"trainer": {"output_dir": str(out)}}), spec["config"]))
    )
    args = [a for a in spec["args"] if a != "--missing-config"]
    target = str(tmp_path / "nope.yaml") if "--missing-config" in spec["args"] else str(config)
    if "adapter_other_base" in spec["drop"]:
        _adapter_checkpoint(out, 3)
    if "corrupted" in spec["drop"]:
        _adapter_checkpoint(out, 3)
        f = out / "checkpoints" / "step_1" / "adapter" / "adapter_model.safetensors"
        f.write_bytes(f.read_bytes()[:-1] + b"\x01")
    if "adapter_other_base_eval" in spec["drop"]:
        _adapter_checkpoint(out, 3)
        args = ["--checkpoint", str(out / "checkpoints" / "step_1")]
    rc = main([spec["command"], target, *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    line = lines[0] if lines else ""
    clean = (
        rc == 2
        and len(lines) == 1
        and "Traceback" not in err
        and all(f in line for f in spec["expect"])
        and not ray.is_initialized()
    )
    record("bad_input", request.node.callspec.id, clean, line[:240])
    assert clean, (rc, err[-3000:], spec["expect"])
