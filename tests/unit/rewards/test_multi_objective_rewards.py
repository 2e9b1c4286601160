import pytest

from rewards.builtin import brevity, efficiency, shows_work


def test_brevity():
    assert brevity(None, ["a", "b", "c"], completion_ids=[[1] * 12, [], [1] * 100], max_tokens=48) == [
        0.75,
        1.0,
        0.0,
    ]
    with pytest.raises(ValueError, match="max_tokens"):
        brevity(None, ["a"], max_tokens=0)


def test_shows_work_counts_true_well_formed_steps():
    c = ["2+5=7,7-3=4</think>4", "</think>4", "2+5=8,7-3=4</think>4", "2+5=7", "abc,3*4=12</think>12"]
    assert shows_work(None, c) == [1.0, 0.0, 0.5, 0.0, 0.5]


def test_efficiency_charges_thinking():
    c = ["2+5=7</think>7", "</think>7", "</think>8"]
    assert efficiency(None, c, answer=["7", "7", "7"], think_cost=0.25) == [0.75, 1.0, 0.0]
    assert efficiency(None, c[:1], answer=[None]) == [None]
