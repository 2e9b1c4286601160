"""``align serve-reward``: any reward (function or model) over HTTP (protocol: ``rewards.http``).

FastAPI on uvicorn. It binds 127.0.0.1 unless told otherwise; bound to any other address it
refuses to start without a token (``$ALIGN_REWARD_TOKEN`` or ``--token-file``), and with a token
every request but ``/health`` must carry it (``Authorization: Bearer``, compared in constant time).
A body over ``max_bytes`` (checked while it is read, not only from Content-Length) or a batch over
``max_batch`` completions is refused with 413 before any reward runs. Requests are scored one at a
time (a lock), so a model is never run from two threads at once.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import threading
import time

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from rewards.http import TOKEN_ENV, encode_value
from rewards.scoring import Reward, RewardError, evaluate_reward

LOOPBACK = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token."""
    if not is_loopback(host) and not token:
        raise ValueError(
            f"serve-reward: --host {host} is reachable from other machines; set a token "
            f"(${TOKEN_ENV} or --token-file) or bind 127.0.0.1"
        )


def create_app(
    rewards: list[Reward], token: str | None = None, max_batch: int = 1024, max_bytes: int = 16 * 2**20
):
    app = FastAPI(title="align reward server", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()
    stats = {"requests": 0, "samples": 0, "seconds": 0.0}

    def error(status: int, message: str) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/info")
    def info(request: Request):
        if not authorized(request):
            return error(401, "missing or wrong bearer token")
        return {"rewards": [r.name for r in rewards], "max_batch": max_batch, "max_bytes": max_bytes, **stats}

    def score(prompts, completions, columns) -> dict:
        out: dict[str, list] = {}
        with lock:
            t0 = time.time()
            for reward in rewards:
                values = evaluate_reward(reward, prompts, completions, columns)
                for k, name in enumerate(values.names):
                    if name in out:
                        raise RewardError(f"objective {name!r} is given by two served rewards")
                    out[name] = [
                        encode_value(v) if a else None
                        for v, a in zip(values.values[:, k], values.applicable[:, k])
                    ]
            stats["requests"] += 1
            stats["samples"] += len(completions)
            stats["seconds"] += time.time() - t0
        return out

    @app.post("/score")
    async def score_endpoint(request: Request):
        if not authorized(request):
            return error(401, "missing or wrong bearer token")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return error(413, f"request body of {declared} bytes is over the server's limit of {max_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                return error(413, f"request body is over the server's limit of {max_bytes} bytes")
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return error(400, f"body is not JSON: {exc}")
        if not isinstance(payload, dict):
            return error(400, "body must be a JSON object with 'prompts' and 'completions'")
        prompts, completions, columns = (
            payload.get("prompts"),
            payload.get("completions"),
            payload.get("columns") or {},
        )
        if (
            not isinstance(prompts, list)
            or not isinstance(completions, list)
            or len(prompts) != len(completions)
        ):
            return error(400, "'prompts' and 'completions' must be lists of the same length")
        if not isinstance(columns, dict) or any(
            not isinstance(v, list) or len(v) != len(completions) for v in columns.values()
        ):
            return error(400, "'columns' must map names to lists with one value per completion")
        if len(completions) > max_batch:
            return error(
                413, f"batch of {len(completions)} completions is over the server's limit of {max_batch}"
            )
        try:
            objectives = await run_in_threadpool(score, prompts, completions, columns)
        except RewardError as exc:
            return error(422, str(exc))
        return {"objectives": objectives}

    return app


def serve(
    rewards: list[Reward],
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_batch: int = 1024,
    max_bytes: int = 16 * 2**20,
) -> None:
    """Run the server until interrupted. Refuses a non-loopback address without a token."""
    import uvicorn

    check_bind(host, token)
    uvicorn.run(create_app(rewards, token, max_batch, max_bytes), host=host, port=port, log_level="warning")
