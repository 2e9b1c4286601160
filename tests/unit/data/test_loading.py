"""Data loading in TRL's formats; bad rows fail with file and line."""

import json

import pytest

from align.data.loading import DataError, load_preferences, load_prompts
from align.models.tokenizer import build_tokenizer


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_prompt_only_keeps_columns(tmp_path):
    rows = load_prompts(
        str(
            _jsonl(
                tmp_path / "p.jsonl",
                [{"prompt": "1+1=", "answer": "2", "level": 1}, "", {"prompt": "x", "answer": "y"}],
            )
        )
    )
    assert rows == [{"prompt": "1+1=", "answer": "2", "level": 1}, {"prompt": "x", "answer": "y"}]


def test_conversational_prompt_is_rendered_with_chat_template(tmp_path):
    f = _jsonl(tmp_path / "c.jsonl", [{"prompt": [{"role": "user", "content": "2+2="}], "answer": "4"}])
    rows = load_prompts(str(f), tokenizer=build_tokenizer())
    assert rows[0]["prompt"] == "<|user|>2+2=<|end|><|assistant|>" and rows[0]["answer"] == "4"


def test_preference_standard_and_conversational(tmp_path):
    f = _jsonl(
        tmp_path / "pref.jsonl",
        [
            {"prompt": "q", "chosen": "good", "rejected": "bad"},
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "good"}],
                "rejected": [{"role": "assistant", "content": "bad"}],
            },
        ],
    )
    rows = load_preferences(str(f), tokenizer=build_tokenizer())
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("good", "bad")
    assert rows[1]["prompt"] == "<|user|>q<|end|><|assistant|>"
    assert (rows[1]["chosen"], rows[1]["rejected"]) == ("good<|end|>", "bad<|end|>")


@pytest.mark.parametrize(
    "lines,message",
    [
        (
            ['{"prompt": "a"}', '{"prompt": "b",}'],
            r"p.jsonl:2: invalid JSON: Expecting property name .*\(column 16\)",
        ),
        (
            ['{"prompt": "a"}', "", '{"question": "b"}'],
            r"p.jsonl:3: missing field 'prompt' \(row has: question\)",
        ),
        (['{"prompt": "  "}'], r"p.jsonl:1: field 'prompt' is empty"),
        (["[1, 2]"], r"p.jsonl:1: expected a JSON object, got list"),
        (
            ['{"prompt": [{"role": "user"}]}'],
            r"p.jsonl:1: field 'prompt': message 0 must be an object with 'role' and 'content'",
        ),
        (
            ['{"prompt": [{"role": "robot", "content": "x"}]}'],
            r"p.jsonl:1: field 'prompt': message 0 has role 'robot'",
        ),
        (['{"prompt": 5}'], r"p.jsonl:1: field 'prompt' must be a non-empty string or a list of messages"),
    ],
)
def test_bad_prompt_rows(tmp_path, lines, message):
    f = _jsonl(tmp_path / "p.jsonl", lines)
    with pytest.raises(DataError, match=message):
        load_prompts(str(f), tokenizer=build_tokenizer())


@pytest.mark.parametrize(
    "row,message",
    [
        ({"prompt": "q", "chosen": "a"}, r"pref.jsonl:1: missing field 'rejected'"),
        (
            {"prompt": "q", "chosen": "a", "rejected": "a"},
            r"pref.jsonl:1: 'chosen' and 'rejected' are identical",
        ),
        ({"prompt": "q", "chosen": "", "rejected": "a"}, r"pref.jsonl:1: field 'chosen' is empty"),
        (
            {"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"},
            r"'chosen' is a message list but the prompt is a string",
        ),
    ],
)
def test_bad_preference_rows(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        load_preferences(str(_jsonl(tmp_path / "pref.jsonl", [row])), tokenizer=build_tokenizer())


def test_local_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    datasets.Dataset.from_list(
        [{"prompt": "1+2=", "answer": "3"}, {"prompt": "", "answer": "0"}]
    ).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"ds\[row 1\]: field 'prompt' is empty"):
        load_prompts(str(tmp_path / "ds"))


def test_local_hf_dataset_folder_of_jsonl(tmp_path):
    (tmp_path / "folder").mkdir()
    _jsonl(tmp_path / "folder" / "train.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    assert load_preferences(str(tmp_path / "folder"))[0]["chosen"] == "b"


def test_builtins_and_missing_sources():
    rows = load_prompts("builtin:arithmetic-eval")
    assert len(rows) == 500 and {"prompt", "answer", "level"} <= set(rows[0])
    assert load_preferences("builtin:preference-reversal")[0]["task"] == "reversal"
    with pytest.raises(DataError, match="unknown built-in dataset 'builtin:nope'"):
        load_prompts("builtin:nope")
    with pytest.raises(DataError, match="dataset 'missing.jsonl' not found"):
        load_prompts("missing.jsonl")


def test_bad_preference_rows_skipped_and_counted(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "a", "rejected": "b"},
        {"prompt": "q2", "chosen": "a"},  # missing field
        {"prompt": "q3", "chosen": "  ", "rejected": "b"},  # empty response
        {"prompt": "q4", "chosen": "same", "rejected": "same"},  # identical pair
        {"prompt": "q5", "chosen": "c", "rejected": "d"},
    ]
    path = str(_jsonl(tmp_path / "pref.jsonl", rows))
    skipped: dict[str, int] = {}
    kept = load_preferences(path, tokenizer=build_tokenizer(), on_bad="skip", skipped=skipped)
    assert [r["prompt"] for r in kept] == ["q1", "q5"]
    assert skipped == {"missing_field": 1, "empty_field": 1, "identical_pair": 1}
    with pytest.raises(DataError, match=r"pref.jsonl:2: missing field 'rejected'"):
        load_preferences(path, tokenizer=build_tokenizer())  # the default policy stops at the first bad row
    with pytest.raises(DataError, match=r"no usable rows \(skipped: \{'missing_field': 1\}\)"):
        load_preferences(str(_jsonl(tmp_path / "bad.jsonl", [rows[1]])), on_bad="skip", skipped={})
