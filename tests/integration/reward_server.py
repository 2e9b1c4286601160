"""Start ``align serve-reward`` in its own process for a test, and stop (or kill) it."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from align.workers.groups import free_port

ROOT = Path(__file__).resolve().parents[2]


class RewardServer:
    def __init__(self, target: str, token: str | None = None, extra: tuple = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ}
        env.pop("ALIGN_REWARD_TOKEN", None)
        if token:
            env["ALIGN_REWARD_TOKEN"] = token
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-reward-{self.port}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", "serve-reward", target, "--port", str(self.port), *extra],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve-reward exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"serve-reward did not come up in 120 s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
