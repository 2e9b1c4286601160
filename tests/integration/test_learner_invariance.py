"""Invariant: one optimizer step on a batch is the same whether the batch sits on one learner rank
in one micro-batch or is split over two DeepSpeed ranks and several micro-batches, for every
loss aggregation (no hidden accumulation or data-parallel scaling), and for the pair losses (DPO
family, reward models) on the same groups, put back to their first state."""

import numpy as np
import pytest
import torch

from align.algorithms.dpo import pack_pairs
from align.losses import AGG_MODES
from align.models.builtin import ensure_builtin
from align.rollout.batch import pack
from align.workers.groups import LearnerGroup
from tests.cluster import ensure_ray, kill

pytestmark = pytest.mark.integration


def policy_cfg(agg: str) -> dict:
    """A policy loss config of the learner (no KL, clip 0.2) with aggregation ``agg``."""
    return dict(
        temperature=1.0,
        clip_low=0.2,
        clip_high=0.2,
        agg=agg,
        kl_coef=0.0,
        kl_in_loss=True,
        kl_estimator="k3",
        max_len=24,
    )


def tiny_learners(micro_batch_sizes: dict[str, tuple], critic: dict | None = None):
    """The tiny model's tokenizer and learner groups (name -> (ranks, micro_batch_size[, critic model
    path])) with the same LoRA initialisation, in the package's Ray cluster; with ``critic`` (its lr)
    every group holds PPO's critic (on its own base where a path is given); ``kill`` them when done."""
    from transformers import AutoTokenizer

    path = str(ensure_builtin("tiny"))
    ensure_ray()
    spec = dict(
        model_path=path,
        device="cpu",
        dtype="float32",
        lora=dict(r=8, alpha=16, dropout=0.0, target_modules="all-linear"),
        zero_stage=2,
        lr=1e-3,
        grad_clip=0.0,
        keep_fresh=True,  # (the pair tests put the groups back to their first state)
    )
    cpus = 2.0 / sum(ranks for ranks, *_ in micro_batch_sizes.values())
    groups = {
        name: LearnerGroup(
            {
                **spec,
                "micro_batch_size": mbs,
                "critic": {**critic, "model_path": rest[0] if rest else None} if critic else None,
            },
            ranks,
            cpus,
            0,
            seed=0,
        )
        for name, (ranks, mbs, *rest) in micro_batch_sizes.items()
    }
    return AutoTokenizer.from_pretrained(path), groups


@pytest.fixture(scope="module")
def groups():
    # two: 8 rows per rank -> 3 micro-batches; every group holds PPO's critic (on the policy's base;
    # "separate": on a second copy of the base), which must not change the policy's step
    tok, g = tiny_learners(
        {"one": (1, 16), "two": (2, 3), "separate": (1, 5, str(ensure_builtin("tiny")))}, critic={"lr": 1e-3}
    )
    rng = np.random.default_rng(0)
    samples = []
    for i in range(16):  # different prompt and completion lengths, so padding and token counts differ
        q = "+".join(str(rng.integers(10)) for _ in range(rng.integers(1, 4))) + "=<think>"
        a = "1+2=3," * int(rng.integers(0, 3)) + f"</think>{rng.integers(10)}<eos>"
        samples.append(
            {
                "prompt_ids": tok(q)["input_ids"],
                "completion_ids": tok(a, add_special_tokens=False)["input_ids"],
            }
        )
    yield g["one"], g["two"], pack(samples, tok.pad_token_id), g["separate"]
    kill(*g.values())


def test_one_rank_equals_two_ranks_for_every_aggregation(groups):
    one, two, batch, _ = groups
    for step, agg in enumerate(AGG_MODES):
        cfg = policy_cfg(agg)
        stats = []
        for group in (one, two):
            b = dict(batch)
            b.update(group.compute_logprobs(batch, 1.0, reference=False))
            b["advantages"] = torch.linspace(-1.0, 1.0, 16) * (step + 1)
            stats.append(group.train_step(b, cfg))
        assert stats[0]["loss/policy"] == pytest.approx(stats[1]["loss/policy"], abs=1e-6), agg
        assert stats[0]["loss/grad_norm"] == pytest.approx(stats[1]["loss/grad_norm"], rel=1e-5), agg
        a, b2 = one.adapter()[0], two.adapter()[0]
        worst = max(float(np.abs(a[k] - b2[k]).max()) for k in a)
        assert worst < 1e-5, (agg, worst)
    ranks = two.all_adapters()
    assert all(np.array_equal(ranks[0][k], ranks[1][k]) for k in ranks[0])


def test_objective_gradient_gram_is_the_same_on_one_and_two_ranks(groups):
    """The per-objective gradients are all-reduced across ranks: the Gram matrix of the whole
    batch does not depend on the split (and taking it moves no weight)."""
    one, two, batch, _ = groups
    cfg = policy_cfg("seq_mean_token_mean")
    adv = np.stack(
        [np.linspace(-1.0, 1.0, 16), np.where(np.arange(16) % 2 == 0, 1.0, -1.0), np.ones(16) * 0.5]
    )
    before = two.adapter()[0]
    grams = [g.objective_gradients(batch, adv, cfg, None, None) for g in (one, two)]
    np.testing.assert_allclose(grams[0], grams[1], rtol=1e-4, atol=1e-10)
    assert grams[0].shape == (3, 3) and np.all(np.diag(grams[0]) > 0)
    np.testing.assert_allclose(grams[0], grams[0].T, rtol=1e-6)
    after = two.adapter()[0]
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # a parameter subset and clipping: each g_k clipped to norm 1e-4 gives diagonal (1e-4)^2
    clipped = two.objective_gradients(batch, adv, cfg, r"lora_A", 1e-4)
    np.testing.assert_allclose(np.diag(clipped), 1e-8, rtol=1e-3)
    with pytest.raises(Exception, match="matches no trainable parameter"):
        two.objective_gradients(batch, adv, cfg, r"no_such_param", None)


def test_ppo_critic_is_rank_invariant_and_separate_from_the_policy(groups):
    """The critic's values and its clipped value-loss step are the same on one rank or two (with
    micro-batches), and the same whether it sits on the policy's own base or on a second copy; a
    critic step leaves the policy untouched and a policy step leaves the critic untouched."""
    one, two, batch, separate = groups
    value_cfg = {"kind": "value", "value_clip": 0.2, "agg": "token_mean"}
    policy_before = [g.adapter()[0] for g in (one, two, separate)]
    values = [g.compute_values(batch) for g in (one, two, separate)]
    m = batch["completion_mask"] > 0
    assert float(values[0][m].abs().max()) == 0.0  # the value head starts at zero
    returns = torch.where(m, torch.linspace(-1.0, 1.0, 16)[:, None].expand_as(m), torch.zeros_like(values[0]))
    stats = []
    for _ in range(2):  # the second step starts from values that differ from the first's
        step_stats = []
        for g in (one, two, separate):
            vals = g.compute_values(batch)
            step_stats.append(g.train_step({**batch, "old_values": vals, "returns": returns}, value_cfg))
        stats.append(step_stats)
    for step_stats in stats:
        a, b, c = step_stats
        assert a["critic/value_loss"] > 0
        for other in (b, c):
            assert other["critic/value_loss"] == pytest.approx(a["critic/value_loss"], rel=1e-5)
            assert other["critic/grad_norm"] == pytest.approx(a["critic/grad_norm"], rel=1e-4)
    after = [g.compute_values(batch) for g in (one, two, separate)]
    assert float((after[0][m] - values[0][m]).abs().max()) > 1e-3  # the critic moved
    for other in after[1:]:
        assert float((other[m] - after[0][m]).abs().max()) < 1e-5
    crit = [g.adapter("critic")[0] for g in (one, two, separate)]
    assert {"v_head.weight", "v_head.bias"} <= set(crit[0])
    for other in crit[1:]:
        assert max(float(np.abs(crit[0][k] - other[k]).max()) for k in crit[0]) < 1e-5
    for g, before in zip((one, two, separate), policy_before):  # the critic's steps left the policy alone
        now = g.adapter()[0]
        assert all(np.array_equal(before[k], now[k]) for k in before)
    # a policy step leaves the critic alone
    b = {
        **batch,
        **one.compute_logprobs(batch, 1.0, reference=False),
        "advantages": torch.linspace(-1, 1, 16),
    }
    one.train_step(b, policy_cfg("token_mean"))
    assert all(np.array_equal(crit[0][k], one.adapter("critic")[0][k]) for k in crit[0])
    # one row over two ranks (PPO's group of 1: the parity check's single row): one rank's share is empty
    row = {k: v[:1] for k, v in batch.items()}
    assert two.compute_logprobs(row, 1.0, reference=True)["old_logps"].shape == (
        1,
        batch["input_ids"].shape[1] - 1,
    )
    torch.testing.assert_close(two.compute_values(row), after[1][:1], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def pair_groups(groups):
    """The module's groups put back to their first state (``Learner.reset``), as pair learners: one
    (8 pairs in one micro-batch of 16 sequences), two (4 pairs per rank, one pair per micro-batch of 3
    sequences), acc (8 pairs, 4 micro-batches of 2 pairs: 5 sequences per micro-batch hold 2 pairs).
    The critic each holds does not change the policy's step (test_ppo_critic_is_rank_invariant...)."""
    from transformers import AutoTokenizer

    one, two, _, acc = groups
    for g in (one, two, acc):
        g.reset()
    tok = AutoTokenizer.from_pretrained(str(ensure_builtin("tiny")))
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
    return (one, two, acc), pack_pairs(pairs, tok.pad_token_id)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "simpo"])
def test_pair_step_is_the_same_on_one_rank_two_ranks_and_accumulated(pair_groups, loss):
    """The pair losses (DPO family, reward models) run the same accumulation loop as the policy losses:
    one optimizer step on a batch of pairs is the same on one rank in one micro-batch, on two ranks,
    and on one rank in several micro-batches."""
    (one, two, acc), batch = pair_groups
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
