"""The reward server's HTTP contract (``rewards.server``), exercised through FastAPI's in-process
client: authentication, size limits, malformed requests, a raising reward, NaN/None encoding."""

import json
import math

import pytest
from fastapi.testclient import TestClient

from rewards import Reward, correctness
from rewards.http import decode_value, encode_value
from rewards.server import create_app, is_loopback

AUTH = {"Authorization": "Bearer s3cret"}
BODY = {
    "prompts": ["1+1=", "2+2=", "x"],
    "completions": ["</think>2", "</think>5", "</think>?"],
    "columns": {"answer": ["2", "4", None]},
}


def _client(*rewards, token="s3cret", **limits):
    return TestClient(
        create_app(list(rewards) or [Reward("correctness", correctness)], token=token, **limits)
    )


def test_scores_a_batch_with_null_for_not_applicable():
    r = _client().post("/score", json=BODY, headers=AUTH)
    assert r.status_code == 200
    assert r.json() == {"objectives": {"correctness": [1.0, 0.0, None]}}


def test_token_is_required_and_compared():
    client = _client()
    assert client.post("/score", json=BODY).status_code == 401
    wrong = client.post("/score", json=BODY, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.get("/info").status_code == 401
    assert client.get("/health").json() == {"status": "ok"}  # liveness needs no token
    assert client.get("/info", headers=AUTH).json()["rewards"] == ["correctness"]


def test_no_token_configured_means_open_on_loopback():
    assert _client(token=None).post("/score", json=BODY).status_code == 200


def test_size_limits_answer_413_before_scoring():
    calls = []

    def counting(prompts, completions, **k):
        calls.append(len(completions))
        return [1.0] * len(completions)

    client = _client(Reward("c", counting), max_batch=2, max_bytes=10_000)
    assert client.post("/score", json=BODY, headers=AUTH).status_code == 413  # 3 completions > 2
    big = {"prompts": ["p"], "completions": ["x" * 20_000]}
    r = client.post("/score", json=big, headers=AUTH)
    assert r.status_code == 413 and "10000" in r.json()["error"]
    assert calls == []


@pytest.mark.parametrize(
    "body,fragment",
    [
        (b"{not json", "not JSON"),
        (json.dumps({"prompts": ["a"], "completions": ["b", "c"]}).encode(), "same length"),
        (
            json.dumps({"prompts": ["a"], "completions": ["b"], "columns": {"answer": []}}).encode(),
            "one value per completion",
        ),
    ],
)
def test_malformed_requests_answer_400(body, fragment):
    r = _client().post("/score", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and fragment in r.json()["error"]


def test_a_raising_reward_answers_422_naming_it():
    def broken(prompts, completions, **k):
        raise ZeroDivisionError("boom")

    r = _client(Reward("broken", broken)).post("/score", json=BODY, headers=AUTH)
    assert r.status_code == 422
    assert "'broken'" in r.json()["error"] and "ZeroDivisionError: boom" in r.json()["error"]


def test_non_finite_values_travel_as_strings_and_come_back():
    def odd(prompts, completions, **k):
        return {"a": [math.nan, math.inf, -1.5], "b": [None, -math.inf, 0.0]}

    out = _client(Reward("odd", odd)).post("/score", json=BODY, headers=AUTH).json()["objectives"]
    assert out == {"a": ["nan", "inf", -1.5], "b": [None, "-inf", 0.0]}
    back = [decode_value(v) for v in out["a"]]
    assert math.isnan(back[0]) and back[1] == math.inf and back[2] == -1.5
    assert [encode_value(v) for v in (None, 2, math.nan)] == [None, 2.0, "nan"]
    with pytest.raises(ValueError):
        decode_value("high")


def test_loopback_detection():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.1.2.3", "example.org", "::"))
