"""``align serve-reward`` in a process of its own, started and waited for from Python (a benchmark,
a notebook, a test): ``RewardServer(target)`` starts it on a free loopback port and returns once
``/health`` answers; ``kill()`` stops it. The server runs the command line in a subprocess, so this
module imports nothing of the trainer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from rewards.http import TOKEN_ENV


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RewardServer:
    """A reward server for ``target`` (a config file or a reward, as ``align serve-reward`` takes it)
    on ``127.0.0.1``; ``token`` (or none) becomes its bearer token, ``extra`` more command-line flags."""

    def __init__(self, target: str, token: str | None = None, extra: tuple = (), timeout: float = 120.0):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ}
        env.pop(TOKEN_ENV, None)
        if token:
            env[TOKEN_ENV] = token
        self.log = open(Path(tempfile.gettempdir()) / f"serve-reward-{self.port}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", "serve-reward", target, "--port", str(self.port), *extra],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve-reward exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"serve-reward did not come up in {timeout:g} s: {self.output()}")

    def output(self) -> str:
        """The last 3000 characters the server printed."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
