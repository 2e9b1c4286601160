"""AdaptThink on the real stack: forced-mode rollouts in vLLM (with the adapter machinery on), and a
short training run with the reference-accuracy cache, per-level evaluation and the comparison
commands."""

import json
import math
from pathlib import Path

import pytest
import torch

from align.config.loading import load_config
from align.models.builtin import ensure_builtin
from align.runner.trainer import Trainer
from tests.cluster import ensure_ray, kill

pytestmark = pytest.mark.integration
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "adaptthink_tiny.yaml"
PROMPTS = ["2+5-3+4=<think>", "1+1=<think>"]


@pytest.fixture
def engine():
    """A rollout worker as the trainer runs it: a Ray actor (its process, and its KV cache, go at the
    end; an in-process engine would keep its memory and starve the next engine of this pytest run)."""
    import ray

    from align.workers.rollout import RolloutEngine

    path = str(ensure_builtin("tiny"))
    ensure_ray()
    actor = None
    try:
        actor = (
            ray.remote(RolloutEngine)
            .options(num_cpus=1)
            .remote(
                {
                    "model_path": path,
                    "dtype": "float32",
                    "max_model_len": 128,
                    "gpu_memory_utilization": 0.15,
                    "lora_rank": 8,
                }
            )
        )
        yield actor, path
    finally:
        kill(actor)


def test_forced_split_counts_first_tokens_and_proposal_logprobs(engine):
    import ray
    from transformers import AutoModelForCausalLM, AutoTokenizer

    actor, path = engine
    tok = AutoTokenizer.from_pretrained(path)
    eot = tok.convert_tokens_to_ids("</think>")
    groups = ray.get(
        actor.generate_forced.remote(
            PROMPTS,
            n=16,
            n_nothink=8,
            max_tokens=30,
            nothink_max_tokens=4,
            temperature=1.0,
            top_p=1.0,
            seeds=[1, 2],
            end_think_id=eot,
            think_id=None,
            use_adapter=False,
        )
    )
    model = AutoModelForCausalLM.from_pretrained(path)
    for prompt, group in zip(PROMPTS, groups):
        assert len(group) == 16
        nothink, think = group[:8], group[8:]
        assert all(s["forced"] == "nothink" and s["completion_ids"][0] == eot for s in nothink)
        assert all(s["forced"] == "think" and s["completion_ids"][0] != eot for s in think)
        assert all(len(s["completion_ids"]) <= 4 for s in nothink) and all(
            len(s["completion_ids"]) <= 30 for s in think
        )
        assert all(s["text"].startswith("</think>") for s in nothink)
        assert all(s["first_logp"] == pytest.approx(math.log(0.5)) for s in nothink)
        # Thinking opener sampled with </think> banned: pi_IS(w) = 0.5 * pi(w) / (1 - pi(</think>))
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1], -1)
        for s in think:
            w = s["completion_ids"][0]
            want = math.log(0.5) + (lp[w] - torch.log1p(-lp[eot].exp())).item()
            assert s["first_logp"] == pytest.approx(want, abs=1e-4)
    # a fixed opener (the authors' "Alright"): every Thinking sample starts with it; with 1 of 4 forced
    # into NoThinking the proposal is pi_IS(</think>) = 0.25, pi_IS(opener) = 0.75 (the authors'
    # log(ratio) and log(1 - ratio); log 0.5 for both was right only at ratio 0.5)
    opener = tok.convert_tokens_to_ids("7")
    fixed = ray.get(
        actor.generate_forced.remote(
            PROMPTS[:1],
            n=4,
            n_nothink=1,
            max_tokens=20,
            nothink_max_tokens=20,
            temperature=1.0,
            top_p=1.0,
            seeds=[3],
            end_think_id=eot,
            think_id=opener,
        )
    )[0]
    assert [s["completion_ids"][0] for s in fixed] == [eot, opener, opener, opener]
    assert [s["first_logp"] for s in fixed] == pytest.approx([math.log(0.25)] + [math.log(0.75)] * 3)


# make test-all only (CI budget, 45 minutes): the AdaptThink math is unit-tested; the forced split runs above
@pytest.mark.slow
def test_adaptthink_trains_with_cached_reference_and_reports_levels(tmp_path):
    from align.eval.checkpoints import run_eval
    from align.reporting.metrics import compare_runs

    run, cache = tmp_path / "run", tmp_path / "ref.json"
    cfg = load_config(
        CONFIG,
        [
            f"trainer.output_dir={run}",
            "trainer.max_steps=2",
            "trainer.save_every=1",
            "trainer.eval_every=0",
            "data.prompts_per_step=8",
            "data.eval_size=40",
            "algorithm.adaptthink.ref_samples=4",
            f"algorithm.adaptthink.ref_cache={cache}",
        ],
    )
    Trainer(cfg, str(CONFIG.parent)).run()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0]
    assert len(steps) == 2
    for r in steps:
        assert r["adaptthink/nothink_share"] == 0.5  # 4 of each group of 8 forced into NoThinking
        assert (
            0.0 <= r["adaptthink/ref"] <= 1.0 and math.isfinite(r["loss/policy"]) and r["policy/entropy"] > 0
        )
        assert r["loss/ratio_mean"] != 1.0  # the forced first token's proposal log-prob differs from pi_old
    cached = json.loads(cache.read_text())["values"]
    assert len(cached) >= 16 and all(0.0 <= v <= 1.0 for v in cached.values())  # every prompt the run drew
    last = rows[-1]
    for lv in range(1, 6):
        assert (
            f"eval/nothink_rate/level_{lv}" in last
            and f"eval/length/level_{lv}" in last
            and f"eval/correctness/level_{lv}" in last
        )
    assert (run / "plots" / "levels.png").stat().st_size > 0
    # comparison commands: two checkpoints side by side (per-level plot), and two runs' curves
    cfg_eval = load_config(CONFIG, [f"trainer.output_dir={tmp_path / 'eval'}", "data.eval_size=20"])
    results = run_eval(
        cfg_eval, str(CONFIG.parent), [str(run / "checkpoints" / "step_1"), str(run)], labels=["one", "two"]
    ).results
    assert set(results) == {"base", "one", "two"} and "nothink_rate/level_1" in results["two"]
    assert (tmp_path / "eval" / "eval_levels.png").stat().st_size > 0
    text = compare_runs([str(run), str(run)], tmp_path / "cmp.png", labels=["a", "b"])
    assert "policy/entropy" in text and (tmp_path / "cmp.json").exists()
