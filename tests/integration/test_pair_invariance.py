"""Invariant of the pair losses (DPO family, reward models): one optimizer step on a batch of pairs is
the same on one learner rank in one micro-batch, on two DeepSpeed ranks, and on one rank in several
micro-batches with gradient accumulation (the same accumulation loop as the policy losses)."""

import numpy as np
import pytest

from align.algorithms.dpo import pack_pairs
from tests.cluster import kill
from tests.integration.test_learner_invariance import tiny_learners

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def groups():
    # one: 8 pairs in one micro-batch; two: 4 pairs per rank, one pair per micro-batch; acc: 8 pairs,
    # 4 micro-batches of 2 pairs
    tok, g = tiny_learners({"one": (1, 32), "two": (2, 3), "acc": (1, 4)})
    one, two, acc = g["one"], g["two"], g["acc"]
    rng = np.random.default_rng(1)
    pairs = []
    for _ in range(8):  # prompts and responses of different lengths: padding and counts differ per pair
        q = "+".join(str(rng.integers(10)) for _ in range(rng.integers(1, 4))) + "=<think>"
        good = "1+2=3," * int(rng.integers(0, 3)) + f"</think>{rng.integers(10)}<eos>"
        bad = "9+9=1," * int(rng.integers(0, 2)) + f"</think>{rng.integers(10)}<eos>"
        p = tok(q)["input_ids"]
        pairs.append(
            {
                "prompt_ids": p,
                "chosen_ids": tok(good, add_special_tokens=False)["input_ids"],
                "rejected_ids": tok(bad, add_special_tokens=False)["input_ids"],
            }
        )
    yield (one, two, acc), pack_pairs(pairs, tok.pad_token_id)
    kill(one, two, acc)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "simpo"])
def test_pair_step_is_the_same_on_one_rank_two_ranks_and_accumulated(groups, loss):
    (one, two, acc), batch = groups
    cfg = {
        "kind": "pair",
        "loss": loss,
        "beta": 2.0 if loss == "simpo" else 0.1,
        "gamma": 0.5,
        "label_smoothing": 0.0,
        "fast": 0,
        "fast_slow": None,
    }
    stats = [g.train_step(dict(batch), cfg) for g in (one, two, acc)]
    for s in stats[1:]:
        assert s["pairs"] == 8.0
        assert s["loss"] == pytest.approx(stats[0]["loss"], rel=1e-6, abs=1e-6), (
            loss
        )  # float32 sums of 8 pairs
        assert s["accuracy"] == stats[0]["accuracy"]
        assert s["grad_norm"] == pytest.approx(stats[0]["grad_norm"], rel=1e-5), loss
    adapters = [g.adapter()[0] for g in (one, two, acc)]
    for a in adapters[1:]:
        worst = max(float(np.abs(a[k] - adapters[0][k]).max()) for k in a)
        assert worst < 1e-5, (loss, worst)
    ranks = two.all_adapters()
    assert all(np.array_equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
