"""The learner's model: the base (a causal LM, or a sequence classifier for a reward model) with its
LoRA modules, and the forward passes every loss kind reads (token log-probs, sequence log-prob sums
through a module or the reference, reward-model scores).

The reference policy is the same model with every LoRA layer bypassed (no second copy). Modules are
switched by the layers' own flags, never by peft's ``set_adapter`` / ``disable_adapter``, which flip
``requires_grad`` (see ``adapters_off`` and ``activate``).
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch

from align.losses import token_logprobs
from align.workers.learner.spec import LearnerSpec


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis, in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def to_numpy(state: dict) -> dict[str, np.ndarray]:
    """Tensors as float32 numpy copies. ``copy=True``: for float32 CPU tensors ``.float().cpu()`` is
    the live parameter, and a numpy view of it would change under the caller's feet at the next
    optimizer step."""
    return {k: v.detach().to("cpu", torch.float32, copy=True).numpy() for k, v in state.items()}


class PolicyModel:
    """The base model and its LoRA modules on one rank. ``engine`` is set once DeepSpeed wraps
    ``module`` (forwards that train run through it)."""

    def __init__(self, module, peft_config, spec: LearnerSpec, device: str):
        self.module, self.peft_config, self.spec, self.device = module, peft_config, spec, device
        self.engine = None
        self.full = spec.finetune == "full"
        self._active = spec.lora_modules[0]

    @classmethod
    def build(cls, spec: LearnerSpec, device: str, seed: int) -> "PolicyModel":
        """The base model with LoRA module ``spec.lora_modules[0]`` drawn after ``manual_seed(seed)``
        (identical on every rank), each further module drawn from the same seed (identical to the
        first at the start), every module's parameters trainable. ``finetune: full`` keeps the bare
        model."""
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        torch.manual_seed(seed)
        score = spec.head == "score"
        auto = AutoModelForSequenceClassification if score else AutoModelForCausalLM
        model = auto.from_pretrained(
            spec.model_path,
            dtype=getattr(torch, spec.dtype),
            trust_remote_code=spec.trust_remote_code,
            **({"num_labels": 1} if score else {}),
        )
        if score and model.config.pad_token_id is None:
            model.config.pad_token_id = spec.pad_token_id
        lora = spec.lora
        peft_config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"],
            task_type="SEQ_CLS" if score else "CAUSAL_LM",
        )
        if spec.finetune != "full":
            model = get_peft_model(model, peft_config, adapter_name=spec.lora_modules[0])
            for name in spec.lora_modules[1:]:  # e.g. OFS-DPO's second module: identical at the start
                torch.manual_seed(seed)
                model.add_adapter(name, peft_config)
        policy = cls(model, peft_config, spec, device)
        policy.train_modules()
        return policy

    def train_modules(self) -> None:
        """Every one of the spec's LoRA modules trainable (peft leaves an added module frozen, and
        adding another module freezes all but the active one)."""
        names = self.spec.lora_modules
        if self.full or len(names) < 2:
            return
        for n, p in self.module.named_parameters():
            if "lora_" in n and any(f".{m}." in n for m in names):
                p.requires_grad_(True)
        empty = [m for m in names if not self.module_params(m)]
        if empty:
            raise RuntimeError(f"LoRA module(s) {empty} have no trainable parameters")

    def module_params(self, name: str) -> list[torch.nn.Parameter]:
        """Trainable parameters of LoRA module ``name``."""
        return [p for n, p in self.module.named_parameters() if p.requires_grad and f".{name}." in n]

    def trainable(self, exclude: tuple[str, ...] = ()) -> list[tuple[str, torch.nn.Parameter]]:
        """Trainable parameters, those of the LoRA modules in ``exclude`` (held by other engines) left out."""
        return [
            (n, p)
            for n, p in self.module.named_parameters()
            if p.requires_grad and not any(f".{x}." in n for x in exclude)
        ]

    # ----------------------------------------------------------------- which module runs
    @contextlib.contextmanager
    def adapters_off(self):
        """The reference policy: every LoRA layer bypassed. Not peft's ``disable_adapter``: on exit it
        re-runs ``set_adapter``, which switches the inactive module's requires_grad off (OFS-DPO's
        second module would stop training), and flipping requires_grad under ZeRO-2 made two-rank
        runs non-deterministic; here only the layers' bypass flag changes."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.module.modules() if isinstance(m, BaseTunerLayer)]
        for m in layers:
            m._disable_adapters = True
        try:
            yield
        finally:
            for m in layers:
                m._disable_adapters = False

    def activate(self, name: str) -> None:
        """Run forwards through module ``name``. Not peft's ``set_adapter``: it flips requires_grad
        of the other module, and a parameter whose requires_grad is switched off and on gets a new
        gradient accumulator node, so ZeRO-2's reduction hook (registered on the old one at start-up)
        may no longer fire for it; the modules' parameters stay trainable throughout."""
        if self._active == name:
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        for m in self.module.modules():
            if isinstance(m, BaseTunerLayer):
                m._active_adapter = name
        self._active = name

    # ----------------------------------------------------------------- forward passes
    @functools.cached_property
    def _keeps_logits(self) -> bool:
        import inspect

        base = self.module.get_base_model() if hasattr(self.module, "get_base_model") else self.module
        return "logits_to_keep" in inspect.signature(base.forward).parameters

    def _autocast(self):
        if self.spec.autocast != "bf16":
            return contextlib.nullcontext()
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        return torch.autocast(device_type=kind, dtype=torch.bfloat16)

    def forward_logits(self, part: dict, plain: bool, first: int = 0) -> torch.Tensor:
        """Logits ``(b, L - first, vocab)`` for positions ``first..L-1``: the output head runs only
        where a completion token is predicted (HF's ``logits_to_keep``; on SmolLM2's 49k vocabulary
        the head over every prompt position cost a third of the learner's step). With
        ``learner.autocast: bf16`` the forward runs under CPU/CUDA bf16 autocast (the loss stays float32)."""
        ids = part["input_ids"].to(self.device)
        kw = {"logits_to_keep": ids.shape[1] - first} if first > 0 and self._keeps_logits else {}
        with self._autocast():
            logits = (self.module if plain else self.engine)(
                input_ids=ids, attention_mask=part["attention_mask"].to(self.device), **kw
            ).logits
        return logits if kw or not first else logits[:, first:]

    def logps(
        self, part: dict, temperature: float, grad: bool, plain: bool = False, with_entropy: bool = False
    ):
        """Token log-probs ``(b, L-1)`` (and, with ``with_entropy``, the detached per-token entropy of
        the policy ``(b, L-1)``); columns before the micro-batch's first completion token are 0 (no
        logits are computed there). ``plain`` runs the module without the engine's wrapper: the
        engine's forward hooks its outputs so that any backward through them runs ZeRO's gradient
        reduction epilogue, which a bare ``torch.autograd.grad`` must not trigger."""
        ids = part["input_ids"].to(self.device)
        cmask = part.get("completion_mask")
        # first column whose target is a completion token (the whole row when there is no mask)
        rows = cmask.any(dim=1) if cmask is not None and cmask.numel() else None
        first = int(cmask[rows].float().argmax(dim=1).min().item()) if rows is not None and rows.any() else 0
        with torch.enable_grad() if grad else torch.no_grad():
            logits = self.forward_logits(part, plain, first)
            z = logits[:, :-1] / temperature  # columns first..L-2
            lp = token_logprobs(z, ids[:, first + 1 :])
            if first:
                lp = torch.cat([lp.new_zeros(lp.shape[0], first), lp], dim=1)
            if not with_entropy:
                return lp
            with torch.no_grad():  # row by row: a (b, t, vocab) float copy can be large for real vocabularies
                ent = (
                    torch.stack([entropy(row) for row in z.detach()])
                    if z.shape[0]
                    else z.new_zeros(z.shape[:2])
                )
                if first:
                    ent = torch.cat([ent.new_zeros(ent.shape[0], first), ent], dim=1)
            return lp, ent

    def seq_logps(self, part: dict, grad: bool, adapter: str | None = None) -> torch.Tensor:
        """Sum of completion log-probs per row ``(b,)`` through module ``adapter`` (None: the
        reference, adapters off)."""
        if adapter is None:
            with self.adapters_off():
                lp = self.logps(part, 1.0, grad=False)
        else:
            self.activate(adapter)
            lp = self.logps(part, 1.0, grad=grad)
        return (lp * part["completion_mask"].to(lp.device)).sum(dim=1)

    def scores(self, part: dict, grad: bool) -> torch.Tensor:
        """Reward-model scores ``(b,)``: the model's output at each row's last token (HF's pooling)."""
        with torch.enable_grad() if grad else torch.no_grad():
            out = self.engine(
                input_ids=part["input_ids"].to(self.device),
                attention_mask=part["attention_mask"].to(self.device),
            )
        return out.logits[:, 0].float()

    def warm_up(self, params: list[torch.nn.Parameter]) -> None:
        """One forward and backward on a dummy micro-batch, gradients discarded: the first real step
        no longer pays the one-off costs of the kernels and allocator (measured on SmolLM2-135M, 2
        cores: first step 15.9 s, the next ones 10.8-12.8 s), and they are paid while the rollout
        engine is still loading (the trainer starts both at once). ``torch.autograd.grad`` on the
        module itself: no optimizer step, no ZeRO reduction, the engine's gradient buffers untouched."""
        mbs = self.spec.micro_batch_size
        ids = torch.randint(0, int(self.module.config.vocab_size), (mbs, 64), device=self.device)
        part = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "completion_mask": torch.cat(
                [torch.zeros(ids.shape[0], 31), torch.ones(ids.shape[0], 32)], dim=1
            ),
        }
        self.module.train()
        lp = self.logps(part, 1.0, grad=True, plain=True)
        torch.autograd.grad(lp.sum(), params, allow_unused=True)

    # ----------------------------------------------------------------- weights in and out
    def adapter_state(self, name: str) -> dict[str, np.ndarray]:
        """Module ``name``'s LoRA tensors (peft's saved names); full fine-tuning: every weight."""
        from peft import get_peft_model_state_dict

        if self.full:
            return to_numpy(self.module.state_dict())
        return to_numpy(get_peft_model_state_dict(self.module, adapter_name=name))

    def load_adapter(self, name: str, tensors: dict[str, np.ndarray]) -> None:
        """Module ``name``'s weights in place (DeepSpeed's buffers and hooks stay on the same tensors)."""
        from peft import set_peft_model_state_dict

        own = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
        if self.full:
            current = self.module.state_dict()
            self.module.load_state_dict({k: t.to(current[k].dtype) for k, t in own.items()})
        else:
            set_peft_model_state_dict(self.module, own, adapter_name=name)

    @contextlib.contextmanager
    def adapter_weights(self, tensors: dict[str, np.ndarray] | None, name: str):
        """Run with module ``name`` holding ``tensors`` (None: as it is), then put its own weights
        back, bit for bit."""
        if tensors is None:
            yield
            return
        own = self.adapter_state(name)
        self.load_adapter(name, tensors)
        try:
            yield
        finally:
            self.load_adapter(name, own)

    def peft_config_dict(self) -> dict:
        """The LoRA config as peft writes it (``adapter_config.json``), sets as sorted lists."""
        cfg = self.peft_config.to_dict()
        cfg["base_model_name_or_path"] = self.spec.model_path
        if isinstance(cfg["target_modules"], (set, list)):
            cfg["target_modules"] = sorted(cfg["target_modules"])
        return {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
