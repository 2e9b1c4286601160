"""A real vLLM engine serves the built-in model: greedy tokens equal HF generate's, and vLLM's
sampling log-probs equal the HF model's log-softmax of the same tokens."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.losses import token_logprobs
from align.models.builtin import ensure_builtin

pytestmark = pytest.mark.integration

PROMPTS = ["3+4-2=<think>", "9-1-1-1+3=<think>", "rev:abcd=<think>"]


@pytest.fixture(scope="module")
def engine():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process inside pytest
    from vllm import LLM

    path = ensure_builtin("tiny")
    llm = LLM(
        model=str(path),
        dtype="float32",
        max_model_len=128,
        gpu_memory_utilization=0.15,
        enforce_eager=True,
        seed=0,
    )
    yield llm, path
    del llm


def test_greedy_matches_hf_and_logprobs_match(engine):
    from vllm import SamplingParams

    llm, path = engine
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=40, logprobs=0))
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    for prompt, out in zip(PROMPTS, outs):
        vllm_ids = list(out.outputs[0].token_ids)
        enc = tok(prompt, return_tensors="pt")
        hf = model.generate(
            **enc,
            max_new_tokens=40,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        assert vllm_ids == hf[0, enc.input_ids.shape[1] :].tolist()
        seq = torch.tensor([enc.input_ids[0].tolist() + vllm_ids])
        with torch.no_grad():
            logits = model(seq).logits[:, enc.input_ids.shape[1] - 1 : -1]
        hf_lp = token_logprobs(logits, seq[:, enc.input_ids.shape[1] :])[0]
        vllm_lp = torch.tensor([lp[t].logprob for lp, t in zip(out.outputs[0].logprobs, vllm_ids)])
        torch.testing.assert_close(vllm_lp, hf_lp, atol=1e-4, rtol=0)
