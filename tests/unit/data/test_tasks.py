"""Built-in tasks: answers are right, levels are what they say, splits are disjoint."""

import pytest

from align.data import tasks
from align.models.tokenizer import END_THINK, THINK


def test_arithmetic_rows_are_correct_and_leveled():
    for row in tasks.arithmetic_dataset(300, seed=3):
        question = row["prompt"].removesuffix(THINK)
        assert row["prompt"].endswith(THINK) and question.endswith("=")
        assert str(eval(question[:-1])) == row["answer"]  # noqa: S307 (our own generated digits)
        assert question.count("+") + question.count("-") == row["level"]
        steps = row["thinking"].split(",")
        assert len(steps) == row["level"] and steps[-1].endswith("=" + row["answer"])
        assert all(0 <= int(s.split("=")[1]) <= 9 for s in steps)


def test_modes_differ_in_first_token():
    row = tasks.arithmetic_dataset(1, seed=0)[0]
    assert tasks.response(row, thinking=False) == END_THINK + row["answer"]
    assert tasks.response(row, thinking=True).startswith(row["thinking"])


def test_splits_are_disjoint_and_deterministic():
    train = {r["prompt"] for r in tasks.arithmetic_dataset(2000, 0, "train")}
    ev = {r["prompt"] for r in tasks.arithmetic_dataset(500, 0, "eval")}
    assert not train & ev
    assert tasks.arithmetic_dataset(50, 9) == tasks.arithmetic_dataset(50, 9)
    assert tasks.reversal_dataset(50, 9) != tasks.reversal_dataset(50, 10)


@pytest.mark.parametrize("domain", ["arithmetic", "reversal"])
def test_preference_pairs(domain):
    pairs = tasks.preference_pairs(domain, 200, seed=0)
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    assert all(p["chosen"].rsplit(END_THINK, 1)[1] == p["answer"] for p in pairs)
    assert all(p["rejected"].rsplit(END_THINK, 1)[1] != p["answer"] for p in pairs)
    assert {p["task"] for p in pairs} == {domain}
    with pytest.raises(ValueError, match="unknown preference domain"):
        tasks.preference_pairs("poetry", 1, 0)
