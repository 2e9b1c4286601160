"""PPO's critic inside a learner rank: LoRA module ``critic`` and a linear value head over a causal
LM's backbone, trained by its own DeepSpeed engine (its own AdamW state, learning rate, clipping).

Shared base (the default): the ``critic`` module is a second LoRA adapter injected into the policy's
own PEFT model, so the frozen base weights exist once per rank; a forward through the critic
switches every LoRA layer to ``critic`` for its duration (and back), and runs the backbone only (no
output head over the vocabulary). ``critic.model_path`` loads a separate base for it instead (a
second copy, as OpenRLHF, verl or TRL hold their critic).

The two engines never see each other's parameters: each optimizer covers its own LoRA module (and
the head), so ZeRO's gradient hooks of one never fire in the other's backward.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

CRITIC = "critic"  # the LoRA module's name
HEAD = "v_head."  # prefix of the value head's tensors in the critic's saved state


class ValueModel(torch.nn.Module):
    """``V(s_t)`` for every position: backbone hidden states (through LoRA module ``critic``) -> a
    linear head. Output ``(b, L)`` in float32."""

    def __init__(self, peft_model, dtype: torch.dtype):
        super().__init__()
        base = peft_model.get_base_model()
        self.backbone = getattr(base, base.base_model_prefix)  # e.g. LlamaModel: no output head
        hidden = int(base.config.hidden_size)
        self.v_head = torch.nn.Linear(hidden, 1, dtype=dtype)
        # a zero head: V = 0 at the start, the first advantages are the returns themselves
        torch.nn.init.zeros_(self.v_head.weight)
        torch.nn.init.zeros_(self.v_head.bias)
        from peft.tuners.tuners_utils import BaseTunerLayer

        # (a plain list: not registered again as submodules)
        self._layers = [m for m in self.backbone.modules() if isinstance(m, BaseTunerLayer)]

    @contextlib.contextmanager
    def _critic_active(self):
        before = [m._active_adapter for m in self._layers]
        for m in self._layers:
            m._active_adapter = CRITIC
        try:
            yield
        finally:
            for m, a in zip(self._layers, before):
                m._active_adapter = a

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self._critic_active():
            h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.v_head(h).squeeze(-1).float()


class Critic:
    """The critic of one learner rank: ``values`` (no gradient, or with one for the loss), its saved
    state (LoRA tensors + head) and optimizer state."""

    def __init__(self, peft_model, dtype, ds_config: dict, seed: int, device: str):
        import deepspeed

        self.peft_model, self.device = peft_model, device
        torch.manual_seed(seed)
        self.module = ValueModel(peft_model, dtype).to(device)
        self.params = [
            p for n, p in peft_model.named_parameters() if f".{CRITIC}." in n and "lora_" in n
        ] + list(self.module.v_head.parameters())
        for p in self.params:
            p.requires_grad_(True)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=self.module, model_parameters=self.params, config=ds_config
        )

    @staticmethod
    def inject(peft_model, peft_config, seed: int) -> None:
        """Add LoRA module ``critic`` to the policy's PEFT model (before DeepSpeed wraps it), drawn
        from its own seed; the active module stays the policy's."""
        torch.manual_seed(seed)
        peft_model.add_adapter(CRITIC, peft_config)
        for n, p in peft_model.named_parameters():
            if f".{CRITIC}." in n and "lora_" in n:
                p.requires_grad_(True)

    @staticmethod
    def separate(model_path: str, peft_config, dtype, trust_remote_code: bool, seed: int):
        """A second base model carrying LoRA module ``critic`` (``ppo.critic_model``)."""
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=dtype, trust_remote_code=trust_remote_code
        )
        torch.manual_seed(seed)
        return get_peft_model(model, peft_config, adapter_name=CRITIC)

    def values(self, part: dict, grad: bool) -> torch.Tensor:
        """``(b, L - 1)``: column ``t`` is the value of the prefix that predicts token ``t + 1``."""
        with torch.enable_grad() if grad else torch.no_grad():
            v = self.engine(
                input_ids=part["input_ids"].to(self.device),
                attention_mask=part["attention_mask"].to(self.device),
            )
        return v[:, :-1]

    def state(self) -> dict[str, np.ndarray]:
        from peft import get_peft_model_state_dict

        out = get_peft_model_state_dict(self.peft_model, adapter_name=CRITIC)
        out.update({HEAD + k: v for k, v in self.module.v_head.state_dict().items()})
        return {k: v.detach().to("cpu", torch.float32, copy=True).numpy() for k, v in out.items()}

    def load(self, tensors: dict[str, np.ndarray]) -> None:
        """The critic's weights in place (ZeRO's buffers stay the same tensors)."""
        from peft import set_peft_model_state_dict

        lora = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items() if not k.startswith(HEAD)}
        set_peft_model_state_dict(self.peft_model, lora, adapter_name=CRITIC)
        with torch.no_grad():
            for name, p in self.module.v_head.named_parameters():
                p.copy_(torch.from_numpy(np.array(tensors[HEAD + name])))
