"""The chat task, TRL's implicit-prompt preference rows, eval pairs and non-UTF-8 files (issue 17).

Implicit prompts are checked against TRL's own ``extract_prompt``; the real chat template
(SmolLM2's) is exercised in tests/integration/test_smollm2.py."""

import json
import re

import pytest
from trl import extract_prompt as trl_extract_prompt

from align.data.chat import LEVELS, chat_dataset, chat_preference_pairs, near_miss
from align.data.loading import DataError, extract_prompt, load_eval_rows, load_preferences, load_prompts
from align.models.tokenizer import build_tokenizer
from rewards import last_number, number_match

USER = {"role": "user", "content": "What is 2 + 2?"}


@pytest.mark.parametrize(
    "chosen,rejected",
    [
        ("The sky is blue.", "The sky is green."),  # TRL keeps the space with the completions
        ("Q: 2+2=4", "Q: 2+2=5"),
        ("abc", "abcd"),  # one a prefix of the other: TRL's split, kept
        ([USER, {"role": "assistant", "content": "4"}], [USER, {"role": "assistant", "content": "5"}]),
        (
            [{"role": "system", "content": "s"}, USER, {"role": "assistant", "content": "4"}],
            [{"role": "system", "content": "s"}, USER, {"role": "assistant", "content": "four"}],
        ),
    ],
)
def test_extract_prompt_equals_trl(chosen, rejected):
    want = trl_extract_prompt({"chosen": chosen, "rejected": rejected})
    assert extract_prompt(chosen, rejected) == (want["prompt"], want["chosen"], want["rejected"])


def _jsonl(path, rows):
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return str(path)


def test_implicit_rows_load_as_their_explicit_twins(tmp_path):
    tok = build_tokenizer()
    explicit = chat_preference_pairs(6, 0, "train")
    implicit = chat_preference_pairs(6, 0, "train", implicit=True)
    assert all("prompt" not in r for r in implicit)
    a = load_preferences(_jsonl(tmp_path / "e.jsonl", explicit), tok)
    b = load_preferences(_jsonl(tmp_path / "i.jsonl", implicit), tok)
    assert [(r["prompt"], r["chosen"], r["rejected"], r["prompt_messages"]) for r in a] == [
        (r["prompt"], r["chosen"], r["rejected"], r["prompt_messages"]) for r in b
    ]
    std = load_preferences(_jsonl(tmp_path / "s.jsonl", [{"chosen": "2+2=4", "rejected": "2+2=5"}]))
    assert (std[0]["prompt"], std[0]["chosen"], std[0]["rejected"]) == ("2+2=", "4", "5")


@pytest.mark.parametrize(
    "row,message",
    [
        ({"chosen": "yes", "rejected": "no"}, "share no prefix"),
        ({"chosen": [USER], "rejected": "no"}, "both be strings or both message lists"),
        ({"chosen": "same", "rejected": "same"}, "identical"),
        ({"chosen": "a ", "rejected": "a b"}, "empty after the shared prefix"),
    ],
)
def test_bad_implicit_rows_name_file_and_line(tmp_path, row, message):
    path = _jsonl(tmp_path / "bad.jsonl", [{"chosen": "a=1", "rejected": "a=2"}, row])
    with pytest.raises(DataError, match=re.escape("bad.jsonl:2: ") + ".*" + re.escape(message)):
        load_preferences(path, build_tokenizer())


def test_non_utf8_file_names_file_line_and_byte(tmp_path):
    path = _jsonl(
        tmp_path / "latin1.jsonl",
        [{"prompt": "ok"}, {"prompt": "ok"}, '{"prompt": "caf\xe9"}'.encode("latin-1")],
    )
    with pytest.raises(
        DataError, match=r"latin1\.jsonl:3: not UTF-8 text \(byte 0xe9 at byte 16 of the line\)"
    ):
        load_prompts(path)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "ok"}).encode() + b"\n")  # a BOM is accepted
    assert load_prompts(str(bom))[0]["prompt"] == "ok"


def test_eval_rows_of_either_type(tmp_path):
    tok = build_tokenizer()
    pairs = load_eval_rows(
        _jsonl(tmp_path / "p.jsonl", chat_preference_pairs(3, 0, "eval", implicit=True)), tok
    )
    assert all(
        isinstance(r[k], str) for r in pairs for k in ("prompt", "chosen", "rejected")
    )  # rendered, not messages
    prompts = load_eval_rows("builtin:chat-arithmetic-eval", tok)
    assert isinstance(prompts[0]["prompt"], str) and prompts[0]["prompt_messages"][0]["role"] == "user"


def test_chat_task_answers_levels_and_splits():
    rows = chat_dataset(300, 0, "train")
    assert rows == chat_dataset(300, 0, "train") and {r["level"] for r in rows} == set(LEVELS)
    for r in rows:
        expression = re.match(r"What is (.*)\? Reply with just the number\.$", r["prompt"][0]["content"])[1]
        assert str(eval(expression)) == r["answer"]  # noqa: S307 - our own "a + b" strings
    eval_questions = {r["prompt"][0]["content"] for r in chat_dataset(300, 0, "eval")}
    assert not eval_questions & {r["prompt"][0]["content"] for r in rows}
    import random

    rng = random.Random(0)
    assert all(near_miss(rng, a) != a and near_miss(rng, a) >= 0 for a in range(0, 120) for _ in range(5))


@pytest.mark.parametrize(
    "reply,answer,score",
    [
        ("17 + 25 = 42.", "42", 1.0),
        ("42", "42", 1.0),
        ("The answer is 1,042", "1042", 1.0),
        ("42, or maybe 43", "42", 0.0),  # the last number counts
        ("-7", "-7", 1.0),
        ("2.50", "2.5", 1.0),
        ("no number", "3", 0.0),
        ([{"role": "assistant", "content": "It is 9"}], "9", 1.0),  # TRL's conversational completion
    ],
)
def test_number_match(reply, answer, score):
    assert number_match(None, [reply], [answer]) == [score]


def test_number_match_needs_answers():
    assert number_match(None, ["4"], [None]) == [None]
    assert last_number("x 3 y 4.5") == 4.5 and last_number("none") is None
    with pytest.raises(ValueError, match="answer"):
        number_match(None, ["4"])


def test_shipped_jsonl_samples_are_the_builtin_rows():
    from pathlib import Path

    data = Path(__file__).resolve().parents[3] / "configs" / "data"
    want = {
        "chat_arithmetic.jsonl": chat_dataset(20, 0, "eval"),
        "chat_preference.jsonl": chat_preference_pairs(10, 0, "eval"),
        "chat_preference_implicit.jsonl": chat_preference_pairs(10, 0, "eval", implicit=True),
    }
    for name, rows in want.items():
        assert [json.loads(line) for line in (data / name).read_text().splitlines()] == rows, name
    tok = build_tokenizer()
    assert len(load_preferences(str(data / "chat_preference_implicit.jsonl"), tok)) == 10
