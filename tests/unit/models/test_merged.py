"""The merge arithmetic of rollout.lora_mode=merged (the engine side is tests/integration/test_merged_rollout.py)."""

import math

import numpy as np
import pytest
import torch

from align.workers.merged import MergeError, lora_factors, lora_scale
from align.workers.rollout import resolve_lora_mode


def test_scale_is_peft_scaling():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    for rslora in (False, True):
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=32,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=1,
            )
        )
        peft = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=12, use_rslora=rslora, target_modules=["q_proj"])
        )
        layer = peft.base_model.model.model.layers[0].self_attn.q_proj
        assert lora_scale(peft.peft_config["default"].to_dict()) == pytest.approx(layer.scaling["default"])
    assert lora_scale({"r": 4, "lora_alpha": 12, "use_rslora": True}) == pytest.approx(12 / math.sqrt(4))
    with pytest.raises(MergeError, match="rank_pattern"):
        lora_scale({"r": 4, "lora_alpha": 8, "rank_pattern": {"q_proj": 2}})


def test_factors_by_module_and_bad_names():
    a, b = np.zeros((2, 3), np.float32), np.zeros((5, 2), np.float32)
    got = lora_factors(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": a,
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": b,
        }
    )
    assert list(got) == ["model.layers.0.self_attn.q_proj"] and got["model.layers.0.self_attn.q_proj"][1] is b
    with pytest.raises(MergeError, match="not a LoRA factor"):
        lora_factors({"base_model.model.score.weight": a})
    with pytest.raises(MergeError, match="lora_A without lora_B"):
        lora_factors({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": a})


def test_merged_weight_equals_the_peft_forward():
    """W + scale * B @ A, as MergedLoRA.load computes it, gives peft's output for the same input."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(6, 5, bias=False))
    peft = get_peft_model(lin, LoraConfig(r=2, lora_alpha=4, target_modules=["0"]))
    layer = peft.base_model.model[0]
    layer.lora_B["default"].weight.data.normal_()
    x = torch.randn(3, 6)
    w = layer.base_layer.weight.detach().clone()
    w.addmm_(
        layer.lora_B["default"].weight.detach(),
        layer.lora_A["default"].weight.detach(),
        alpha=lora_scale({"r": 2, "lora_alpha": 4}),
    )
    torch.testing.assert_close(x @ w.T, peft(x), rtol=0, atol=1e-6)


def test_auto_mode_is_merged_on_cpu_and_adapter_on_gpu():
    assert resolve_lora_mode("auto", "cpu") == "merged" and resolve_lora_mode("auto", "cuda") == "adapter"
    assert resolve_lora_mode("adapter", "cpu") == "adapter"
    assert resolve_lora_mode("auto", "auto") == ("adapter" if torch.cuda.is_available() else "merged")
