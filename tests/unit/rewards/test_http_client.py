"""The http reward's client (``rewards.http.HttpReward``): which failures it retries, its backoff,
batching to the server's limit, and the error naming the URL. The server side is an httpx
transport here; the real ``align serve-reward`` is exercised in tests/integration/test_reward_pool.py."""

import json
import math

import httpx
import pytest

from rewards import RewardError
from rewards.http import HttpReward

URL = "http://rewards.test:8000"


def _server(answers: list, seen: list, max_batch: int = 100):
    """Answers /info, then each /score with the next entry of ``answers`` (a status, an exception,
    or None for a good answer: the completion lengths)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(200, json={"rewards": ["len"], "max_batch": max_batch})
        body = json.loads(request.content)
        seen.append((request.headers.get("authorization"), len(body["completions"])))
        answer = answers.pop(0) if answers else None
        if isinstance(answer, Exception):
            raise answer
        if answer is not None:
            return httpx.Response(answer, json={"error": f"status {answer}"})
        return httpx.Response(
            200, json={"objectives": {"len": [float(len(c)) for c in body["completions"]][:-1] + ["nan"]}}
        )

    return httpx.MockTransport(handle)


def _client(answers, seen, monkeypatch, **kw):
    monkeypatch.setenv("ALIGN_REWARD_TOKEN", "tok")
    return HttpReward(
        URL, "remote", backoff=0.0, transport=_server(answers, seen, kw.pop("max_batch", 100)), **kw
    )


def test_retries_connection_errors_and_503_then_succeeds(monkeypatch):
    seen = []
    out = _client([httpx.ConnectError("refused"), 503], seen, monkeypatch, retries=2)(
        ["p", "q"], ["ab", "abc"]
    )
    assert out[0] == 2.0 and math.isnan(out[1])  # one objective: a list; "nan" decoded
    assert len(seen) == 3 and all(auth == "Bearer tok" for auth, _ in seen)


def test_gives_up_after_the_last_try_naming_the_url(monkeypatch):
    seen = []
    with pytest.raises(
        RewardError, match=rf"reward 'remote': {URL}/score failed after 3 tries: HTTP 504: status 504"
    ):
        _client([502, 503, 504, None], seen, monkeypatch, retries=2)(["p"], ["a"])
    assert len(seen) == 3


@pytest.mark.parametrize("status", [400, 401, 413, 422])
def test_client_errors_are_not_retried(monkeypatch, status):
    seen = []
    with pytest.raises(RewardError, match=f"answered HTTP {status}"):
        _client([status, None], seen, monkeypatch, retries=3)(["p"], ["a"])
    assert len(seen) == 1


def test_batches_to_the_servers_limit(monkeypatch):
    seen = []
    out = _client([], seen, monkeypatch, batch_size=4, max_batch=3)(["p"] * 7, ["a" * i for i in range(1, 8)])
    assert [n for _, n in seen] == [3, 3, 1] and len(out) == 7
