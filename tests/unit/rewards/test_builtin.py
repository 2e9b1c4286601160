"""Built-in rewards, table-driven."""

import pytest

from rewards import correctness, length, no_thinking, think_format

CASES = [
    # completion, answer, correctness, think_format, no_thinking
    ("2+3=5</think>5", "5", 1.0, 1.0, 0.0),
    ("</think>5", "5", 1.0, 1.0, 1.0),
    ("</think> 5 ", "5", 1.0, 1.0, 1.0),
    ("</think>4", "5", 0.0, 1.0, 1.0),
    ("2+3=5", "5", 0.0, 0.0, 0.0),  # never closes thinking: the whole text is not an answer
    ("2+3=5</think>5</think>5", "5", 1.0, 0.0, 0.0),
    ("<think>x</think>5", "5", 1.0, 0.0, 0.0),
    ("1+1=2</think>", "2", 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("completion,answer,acc,fmt,nothink", CASES)
def test_table(completion, answer, acc, fmt, nothink):
    assert correctness(["p"], [completion], answer=[answer]) == [acc]
    assert think_format(["p"], [completion]) == [fmt]
    assert no_thinking(["p"], [completion]) == [nothink]


def test_conversational_completions():
    comp = [[{"role": "assistant", "content": "</think>7"}]]
    assert correctness(["p"], comp, answer=["7"]) == [1.0]
    assert no_thinking(["p"], comp) == [1.0]


def test_correctness_none_answer_is_not_applicable():
    assert correctness(["p", "q"], ["</think>1", "</think>2"], answer=[None, "2"]) == [None, 1.0]


def test_correctness_needs_answer_column():
    with pytest.raises(ValueError, match="needs an 'answer' column"):
        correctness(["p"], ["</think>1"])


def test_length_in_tokens_or_characters():
    assert length(["p"], ["abcd"]) == [4.0]
    assert length(["p"], ["abcd"], completion_ids=[[1, 2]]) == [2.0]
