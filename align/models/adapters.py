"""Does a LoRA adapter fit a base model? Checked in the driver before any actor starts (``--resume``,
``align eval --checkpoint``), so an adapter trained on another base model is one clear line, not a
shape error deep inside a learner or vLLM."""

from __future__ import annotations

import numpy as np


def _linear_shapes(model_path: str, trust_remote_code: bool = False) -> dict[str, tuple[int, int]]:
    """``{module name: (in_features, out_features)}`` of the model's linear layers (built on the meta
    device: no weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return {
        name: (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


def check_adapter(
    tensors: dict[str, np.ndarray], model_path: str, where: str, trust_remote_code: bool = False
) -> None:
    """Raise ValueError naming the first LoRA tensor whose module is missing from the model at
    ``model_path`` or whose shape does not fit it."""
    shapes = _linear_shapes(model_path, trust_remote_code)
    for key, value in tensors.items():
        for part, axis in ((".lora_A.", 1), (".lora_B.", 0)):
            if part not in key:
                continue
            module = key.split(part)[0].removeprefix("base_model.model.")
            if module not in shapes:
                raise ValueError(
                    f"{where}: adapter tensor {key} adapts {module!r}, which the model {model_path} does not have "
                    f"(the adapter was trained on another base model)"
                )
            want = shapes[module][0 if axis == 1 else 1]
            if np.shape(value)[axis] != want:
                raise ValueError(
                    f"{where}: adapter tensor {key} has shape {tuple(np.shape(value))}, but {module} of the model "
                    f"{model_path} has {want} {'inputs' if axis == 1 else 'outputs'} (the adapter was trained on "
                    f"another base model)"
                )
