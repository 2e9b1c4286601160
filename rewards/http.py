"""Rewards over HTTP: the JSON protocol, and the client behind a reward entry of ``type: http``.

Protocol (served by ``align serve-reward``, see ``rewards.server``; any server that speaks it works):

``POST /score`` with ``Authorization: Bearer <token>`` when the server has a token::

    {"prompts": [str | messages, ...], "completions": [str | messages, ...],
     "columns": {"answer": [...], ...}}                     # optional, one value per completion

answers ``200`` with one list per objective, in order, one value per completion::

    {"objectives": {"correctness": [1.0, 0.0, null, "nan"], ...}}

where ``null`` is "not applicable" and a non-finite number is the string ``"nan"``, ``"inf"`` or
``"-inf"`` (JSON has no such numbers). Errors answer ``{"error": "..."}`` with ``400`` (malformed
request), ``401`` (missing or wrong token), ``413`` (body or batch over the server's limits),
``422`` (the reward raised or returned something unusable for this input). ``GET /info`` (token
required) answers ``{"rewards": [...], "max_batch": n, "max_bytes": n}``; ``GET /health`` answers
``{"status": "ok"}`` without a token.

The client sends batches of at most ``batch_size`` completions (and at most the server's
``max_batch``), each with a ``timeout``; a connection error, a timeout or a 502/503/504 is tried
again up to ``retries`` times with exponential backoff (``backoff * 2**k`` seconds); any other error
status is not (it would fail the same way). The last failure raises ``RewardError`` naming the URL.
"""

from __future__ import annotations

import json
import math
import os
import time

from rewards.scoring import RewardError

RETRY_STATUS = (502, 503, 504)
TOKEN_ENV = "ALIGN_REWARD_TOKEN"


def encode_value(v):
    """A score for JSON: None stays null, a non-finite float becomes "nan" / "inf" / "-inf"."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))


def decode_value(v):
    if v is None:
        return None
    if isinstance(v, str):
        if v not in ("nan", "inf", "-inf"):
            raise ValueError(f"expected a number, null, 'nan', 'inf' or '-inf', got {v!r}")
        return float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)


def _jsonable(x):
    if hasattr(x, "tolist"):  # numpy arrays and scalars, torch tensors
        return x.tolist()
    raise TypeError(f"cannot send a {type(x).__name__} as JSON")


class HttpReward:
    """Callable with TRL's reward signature that scores through a reward server."""

    def __init__(
        self,
        url: str,
        name: str = "http",
        token_env: str = TOKEN_ENV,
        timeout: float = 30.0,
        retries: int = 2,
        backoff: float = 0.5,
        batch_size: int = 256,
        transport=None,
    ):
        import httpx

        self.url, self.name = url.rstrip("/"), name
        self.retries, self.backoff, self.batch_size = retries, backoff, batch_size
        token = os.environ.get(token_env) if token_env else None
        self.token_env = token_env
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(timeout=timeout, headers=headers, trust_env=False, transport=transport)

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        import httpx

        url, last = f"{self.url}{path}", None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                if payload is None:
                    response = self.client.request(method, url)
                else:
                    body = json.dumps(payload, default=_jsonable)
                    response = self.client.request(
                        method, url, content=body, headers={"Content-Type": "application/json"}
                    )
            except httpx.TransportError as exc:  # refused, reset, timed out: the server may come back
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 200:
                try:
                    return response.json()
                except ValueError:
                    raise RewardError(
                        f"reward {self.name!r}: {url} answered 200 with a body that is not JSON"
                    ) from None
            detail = _detail(response)
            if response.status_code in RETRY_STATUS:
                last = f"HTTP {response.status_code}: {detail}"
                continue
            hint = ""
            if response.status_code == 401:
                hint = (
                    f" (set the server's token in ${self.token_env})"
                    if not os.environ.get(self.token_env or "")
                    else f" (the token in ${self.token_env} is not the server's)"
                )
            raise RewardError(
                f"reward {self.name!r}: {url} answered HTTP {response.status_code}: {detail}{hint}"
            )
        raise RewardError(f"reward {self.name!r}: {url} failed after {self.retries + 1} tries: {last}")

    def info(self) -> dict:
        """The server's ``/info``: its rewards and limits (checks the URL and the token)."""
        info = self._request("GET", "/info")
        self._max_batch = (
            int(info.get("max_batch", self.batch_size)) if isinstance(info, dict) else self.batch_size
        )
        return info

    def __call__(self, prompts, completions, **columns):
        n = len(completions)
        size = self.batch_size
        if not hasattr(self, "_max_batch"):
            self.info()
        size = max(1, min(size, self._max_batch))
        merged: dict[str, list] = {}
        for start in range(0, n, size):
            end = min(n, start + size)
            payload = {
                "prompts": list(prompts[start:end]),
                "completions": list(completions[start:end]),
                "columns": {k: list(v[start:end]) for k, v in columns.items()},
            }
            out = self._request("POST", "/score", payload)
            objectives = out.get("objectives") if isinstance(out, dict) else None
            if not isinstance(objectives, dict) or not objectives:
                raise RewardError(
                    f"reward {self.name!r}: {self.url}/score answered without 'objectives': {str(out)[:200]}"
                )
            if merged and list(objectives) != list(merged):
                raise RewardError(
                    f"reward {self.name!r}: {self.url}/score changed its objectives from {list(merged)} "
                    f"to {list(objectives)}"
                )
            for key, values in objectives.items():
                if not isinstance(values, list) or len(values) != end - start:
                    raise RewardError(
                        f"reward {self.name!r}: {self.url}/score objective {key!r}: expected {end - start} "
                        f"values, got {values if not isinstance(values, list) else len(values)}"
                    )
                try:
                    merged.setdefault(key, []).extend(decode_value(v) for v in values)
                except ValueError as exc:
                    raise RewardError(
                        f"reward {self.name!r}: {self.url}/score objective {key!r}: {exc}"
                    ) from None
        if not merged:  # an empty batch
            return []
        return (
            merged[next(iter(merged))] if len(merged) == 1 else merged
        )  # one objective: named by this entry


def _detail(response) -> str:
    try:
        body = response.json()
        return str(body.get("error", body))[:500] if isinstance(body, dict) else str(body)[:500]
    except ValueError:
        return response.text[:200] or response.reason_phrase
