"""Invariant: one optimizer step on a batch is the same whether the batch sits on one learner rank
in one micro-batch or is split over two DeepSpeed ranks and several micro-batches, for every
loss aggregation (no hidden accumulation or data-parallel scaling)."""

import numpy as np
import pytest
import ray
import torch

from align.batch import pack
from align.losses import AGG_MODES
from align.models.builtin import ensure_builtin
from align.workers.groups import LearnerGroup

pytestmark = pytest.mark.integration


def tiny_learners(micro_batch_sizes: dict[str, tuple[int, int]]):
    """A Ray cluster of 2 CPUs, the tiny model's tokenizer and learner groups (name -> (ranks,
    micro_batch_size)) with the same LoRA initialisation; shut Ray down when done."""
    from transformers import AutoTokenizer

    path = str(ensure_builtin("tiny"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    spec = dict(
        model_path=path,
        device="cpu",
        dtype="float32",
        lora=dict(r=8, alpha=16, dropout=0.0, target_modules="all-linear"),
        zero_stage=2,
        lr=1e-3,
        grad_clip=0.0,
    )
    cpus = 2.0 / sum(ranks for ranks, _ in micro_batch_sizes.values())
    groups = {
        name: LearnerGroup({**spec, "micro_batch_size": mbs}, ranks, cpus, 0, seed=0)
        for name, (ranks, mbs) in micro_batch_sizes.items()
    }
    return AutoTokenizer.from_pretrained(path), groups


@pytest.fixture(scope="module")
def groups():
    tok, g = tiny_learners({"one": (1, 16), "two": (2, 3)})  # two: 8 rows per rank -> 3 micro-batches
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
    yield g["one"], g["two"], pack(samples, tok.pad_token_id)
    ray.shutdown()


def test_one_rank_equals_two_ranks_for_every_aggregation(groups):
    one, two, batch = groups
    for step, agg in enumerate(AGG_MODES):
        cfg = dict(
            temperature=1.0,
            clip_low=0.2,
            clip_high=0.2,
            agg=agg,
            kl_coef=0.0,
            kl_in_loss=True,
            kl_estimator="k3",
            max_len=24,
        )
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
    one, two, batch = groups
    cfg = dict(
        temperature=1.0,
        clip_low=0.2,
        clip_high=0.2,
        agg="seq_mean_token_mean",
        kl_coef=0.0,
        kl_in_loss=True,
        kl_estimator="k3",
        max_len=24,
    )
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
