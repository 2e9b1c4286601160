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
    """The critic component of one learner rank: ``values`` (no gradient, or with one for the value
    loss), its saved state (LoRA tensors + head) and its engine's optimizer state. A learner holds
    one when its spec has ``critic``."""

    adapters = (CRITIC,)  # what it saves and loads as an adapter
    optimizer_prefix = "critic_optimizer"  # its optimizer state's keys in a rank's saved state
    seed_offset = 7919  # its LoRA initialisation differs from the policy's

    @classmethod
    def prepare(cls, learner) -> "Critic | None":
        """Before the policy's engine exists. On the policy's own base (the default): add LoRA module
        ``critic`` to the policy's PEFT model, drawn from its own seed (the active module stays the
        policy's); the policy's engine leaves it out (``modules``)."""
        spec = learner.spec.critic
        if spec is None:
            return None
        critic = cls(learner.seed + cls.seed_offset, learner.device, learner.spec)
        if not spec.model_path:
            torch.manual_seed(critic.seed)
            model = learner.model.module
            model.add_adapter(CRITIC, learner.model.peft_config)
            for n, p in model.named_parameters():
                if f".{CRITIC}." in n and "lora_" in n:
                    p.requires_grad_(True)
            critic.modules = (CRITIC,)
        return critic

    def __init__(self, seed: int, device: str, spec):
        self.seed, self.device, self.spec = seed, device, spec
        self.modules: tuple[str, ...] = ()

    def start(self, learner) -> None:
        """After the policy's engine exists: the value model (on the policy's base, or a separate base
        carrying LoRA module ``critic``) and its own engine."""
        from align.workers.learner.engine import start_engine

        spec, dtype = self.spec, getattr(torch, self.spec.dtype)
        body = learner.model.module
        if spec.critic.model_path:
            from peft import get_peft_model
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(
                spec.critic.model_path, dtype=dtype, trust_remote_code=spec.trust_remote_code
            )
            torch.manual_seed(self.seed)
            body = get_peft_model(base, learner.model.peft_config, adapter_name=CRITIC)
        self.peft_model = body
        torch.manual_seed(self.seed)
        self.module = ValueModel(body, dtype).to(self.device)
        self.params = [p for n, p in body.named_parameters() if f".{CRITIC}." in n and "lora_" in n] + list(
            self.module.v_head.parameters()
        )
        for p in self.params:
            p.requires_grad_(True)
        self.engine, self.optimizer = start_engine(self.module, self.params, spec, spec.critic.lr)

    def values(self, part: dict, grad: bool) -> torch.Tensor:
        """``(b, L - 1)``: column ``t`` is the value of the prefix that predicts token ``t + 1``."""
        with torch.enable_grad() if grad else torch.no_grad():
            v = self.engine(
                input_ids=part["input_ids"].to(self.device),
                attention_mask=part["attention_mask"].to(self.device),
            )
        return v[:, :-1]

    def adapter_state(self, name: str) -> dict[str, np.ndarray]:
        from peft import get_peft_model_state_dict

        out = get_peft_model_state_dict(self.peft_model, adapter_name=CRITIC)
        out.update({HEAD + k: v for k, v in self.module.v_head.state_dict().items()})
        return {k: v.detach().to("cpu", torch.float32, copy=True).numpy() for k, v in out.items()}

    def load_adapter(self, name: str, tensors: dict[str, np.ndarray], with_optimizer: bool) -> None:
        """The critic's weights in place (ZeRO's buffers stay the same tensors); without optimizer
        state to follow, ZeRO's fp32 masters are taken from them."""
        from peft import set_peft_model_state_dict

        from align.workers.learner.engine import refresh_masters

        lora = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items() if not k.startswith(HEAD)}
        set_peft_model_state_dict(self.peft_model, lora, adapter_name=CRITIC)
        with torch.no_grad():
            for key, p in self.module.v_head.named_parameters():
                p.copy_(torch.from_numpy(np.array(tensors[HEAD + key])))
        if not with_optimizer:
            refresh_masters(self.optimizer)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        from align.workers.learner.engine import optimizer_state

        return optimizer_state(self.optimizer, self.optimizer_prefix)

    def load_optimizer(self, flat: dict[str, np.ndarray], world_size: int) -> None:
        from align.workers.learner.engine import load_optimizer_state

        if not flat:
            raise ValueError("the checkpoint has no critic optimizer state (not a ppo run's checkpoint)")
        load_optimizer_state(self.optimizer, flat, self.spec.zero_stage, world_size)
