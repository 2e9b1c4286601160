"""Security: the reward server binds loopback, wants a token elsewhere, refuses requests without it
and bodies over the limit (a real ``align serve-reward`` process); nothing in the code unpickles
(checked on the source); Ray never starts its dashboard; plug-in code is loaded only from the config."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from rewards.process import RewardServer
from tests.reliability.report import record

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("align", "rewards", "launch", "bench") for p in (ROOT / d).rglob("*.py"))


def _calls(name_test) -> list[tuple[str, int, ast.Call]]:
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name_test(name):
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", name, node))
    return found


def _kw(call: ast.Call, key: str):
    for k in call.keywords:
        if k.arg == key:
            return ast.literal_eval(k.value) if isinstance(k.value, ast.Constant) else ast.unparse(k.value)
    return None


def test_reward_server_binds_loopback_and_wants_a_token_elsewhere(tmp_path):
    server = RewardServer("correctness", token="s3cret", extra=("--max-bytes", "4096"))
    try:
        body = {"prompts": ["1+1="], "completions": ["</think>2"], "columns": {"answer": ["2"]}}
        no_token = httpx.post(f"{server.url}/score", json=body, timeout=10).status_code
        wrong = httpx.post(
            f"{server.url}/score", json=body, headers={"Authorization": "Bearer nope"}, timeout=10
        ).status_code
        good = httpx.post(
            f"{server.url}/score", json=body, headers={"Authorization": "Bearer s3cret"}, timeout=10
        )
        big = httpx.post(
            f"{server.url}/score",
            json={"prompts": ["p"], "completions": ["x" * 10_000]},
            headers={"Authorization": "Bearer s3cret"},
            timeout=10,
        ).status_code
        log = server.output()
    finally:
        server.kill()
    loopback = "on http://127.0.0.1:" in log
    record(
        "security",
        "serve-reward binds 127.0.0.1 by default",
        loopback,
        log.strip().splitlines()[-1][-120:] if log else "",
    )
    record(
        "security",
        "request without (or with a wrong) token: 401",
        no_token == 401 and wrong == 401,
        f"{no_token}, {wrong}",
    )
    record("security", "request body over --max-bytes: 413", big == 413, f"{big}")
    assert loopback and no_token == wrong == 401 and big == 413
    assert good.status_code == 200 and good.json()["objectives"]["correctness"] == [1.0]


def test_binding_elsewhere_without_a_token_is_refused_before_anything_loads():
    env = {k: v for k, v in __import__("os").environ.items() if k != "ALIGN_REWARD_TOKEN"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.cli",
            "serve-reward",
            "correctness",
            "--host",
            "0.0.0.0",
            "--port",
            "9",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    ok = (
        done.returncode == 2
        and "0.0.0.0" in done.stderr
        and "token" in done.stderr
        and "Traceback" not in done.stderr
    )
    record("security", "serve-reward --host 0.0.0.0 without a token: refused", ok, done.stderr.strip()[-160:])
    assert ok, done.stderr


def test_nothing_unpickles():
    """No pickle/joblib/dill loads, ``torch.load`` only with ``weights_only=True``, ``np.load`` never
    with ``allow_pickle=True``, YAML only through ``safe_load``: checked on every source file."""
    bad = []
    for where, name, call in _calls(lambda n: n.split(".")[-1] in ("load", "loads", "Unpickler")):
        base = name.rsplit(".", 1)[0] if "." in name else ""
        if base in ("pickle", "cPickle", "dill", "joblib", "cloudpickle") or name.endswith("Unpickler"):
            bad.append((where, name))
        elif base == "torch" and _kw(call, "weights_only") is not True:
            bad.append((where, name))
        elif base in ("np", "numpy") and _kw(call, "allow_pickle") not in (None, False):
            bad.append((where, name))
        elif base == "yaml":
            bad.append((where, name))  # yaml.load may build objects: safe_load only
    record(
        "security",
        "no unpickling in the code (pickle, torch.load without weights_only, np.load allow_pickle, yaml.load)",
        not bad,
        f"{len(SOURCES)} files scanned; found {bad}",
    )
    assert not bad, bad


def test_ray_never_starts_its_dashboard():
    """Every ``ray.init`` that starts a cluster passes ``include_dashboard=False`` (joining one by
    ``--address`` starts nothing)."""
    calls = _calls(lambda n: n == "ray.init")
    bad = [
        w
        for w, _, c in calls
        if _kw(c, "address") in (None, "local") and _kw(c, "include_dashboard") is not False
    ]
    record(
        "security",
        "no Ray dashboard (every local ray.init: include_dashboard=False)",
        bool(calls) and not bad,
        f"{len(calls)} ray.init calls; {bad}",
    )
    assert calls and not bad, bad


def test_plugin_code_is_loaded_only_from_the_config():
    """``rewards.loading.load`` / ``rewards.build`` (which import user code) are called only where a config's
    reward entry (or serve-reward's TARGET) is turned into a reward: never from a dataset row or a
    checkpoint file (checkpoints are safetensors + JSON state without code references). The reward
    entry classes (``rewards/config.py``: ``build`` and ``precheck``) are where an entry becomes a
    reward; the reward actor and the trainer's pre-check call those methods."""
    allowed = {
        "rewards/config.py",
        "launch/cli.py",
        "bench/remote_reward.py",
    }
    users = set()
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        names = {
            a.asname or a.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module in ("rewards", "rewards.loading")
            for a in node.names
            if a.name in ("load", "build")
        }
        if any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names
            for n in ast.walk(tree)
        ):
            users.add(str(path.relative_to(ROOT)))
    unexpected = sorted(users - allowed)
    record(
        "security",
        "plug-in code imported only from config entries",
        bool(users) and not unexpected,
        f"call sites: {sorted(users)}",
    )
    assert users and not unexpected, unexpected


@pytest.mark.parametrize("doc", ["docs/rewards.md"])
def test_docs_say_a_plugin_is_code_you_chose_to_run(doc):
    text = (ROOT / doc).read_text()
    ok = "code you chose to run" in text
    record("security", f"{doc}: a reward plug-in path is code you chose to run", ok)
    assert ok
