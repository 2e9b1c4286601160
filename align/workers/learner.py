"""Learner: one DeepSpeed data-parallel rank holding the base model with a peft LoRA adapter.

The reference policy is the same model with the adapter disabled (no second copy). Loss terms are
normalised by global counts computed by the controller (see ``align.losses.aggregation``), so the
gradient of one optimizer step is exactly the gradient of the whole batch's loss, whatever the
split across ranks and micro-batches: each backward is scaled by the world size to undo
DeepSpeed's data-parallel mean, and accumulation scaling is switched off.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from align.batch import select
from align.losses import (
    POLICY_LOSSES,
    aggregate,
    kl_penalty,
    policy_loss_name,
    token_logprobs,
    with_behaviour_logps,
)
from align.workers.spec import Spec

log = logging.getLogger(__name__)
CRITIC_OPTIMIZER = "critic_optimizer"  # prefix of the critic's optimizer state in a rank's saved state


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _no_rows(batch: dict) -> torch.Tensor:
    """A per-token result ``(0, L - 1)`` for a share of no rows."""
    return torch.zeros(0, max(batch["input_ids"].shape[1] - 1, 0))


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis, in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


@dataclass
class LearnerSpec(Spec):
    """What a learner rank needs, as plain values (sent to the Ray actor); ``from_config`` builds it
    from a run config, algorithms add their parts (``task``, ``ofs``)."""

    model_path: str
    lora: dict
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    micro_batch_size: int = 16
    zero_stage: int = 2
    lr: float = 1e-4
    grad_clip: float = 1.0
    threads: int = 0
    autocast: str = "off"
    task: str = "causal_lm"  # or reward_model: a sequence-classification model with one score
    finetune: str = "lora"  # reward_model: lora or full
    pad_token_id: int | None = None
    ofs: dict | None = None  # OFS-DPO: a second LoRA module ({lr_ratio, ...})
    # PPO: a critic (LoRA module "critic" + value head) with its own engine: {lr, model_path (None:
    # on this learner's own base)}
    critic: dict | None = None
    # trials sharing this learner (``align sweep`` with trials_per_job > 1): their seeds, whose LoRA
    # initialisations are made at start-up exactly as a learner of that seed makes its own
    slot_seeds: list[int] | None = None
    master_addr: str = "127.0.0.1"

    @classmethod
    def from_config(cls, c, model_path: str) -> "LearnerSpec":
        return cls(
            model_path=model_path,
            device=c.model.device,
            dtype=c.model.dtype,
            trust_remote_code=c.model.trust_remote_code,
            lora=c.model.lora.model_dump(),
            micro_batch_size=c.learner.micro_batch_size,
            zero_stage=c.learner.zero_stage,
            lr=c.learner.lr,
            grad_clip=c.learner.grad_clip,
            threads=c.learner.threads,
            autocast=c.learner.autocast,
        )


class Learner:
    """One rank. ``spec`` holds plain values: model path/dtype/device, LoRA, learner and loss settings."""

    def __init__(self, spec: LearnerSpec | dict, rank: int, world_size: int, master_port: int, seed: int = 0):
        import deepspeed
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        spec = LearnerSpec.of(spec)
        self.spec, self.rank, self.world_size = spec, rank, world_size
        self.device = _device(spec.device)
        if self.device == "cpu":
            # Rollout and learning phases do not overlap, so each rank may use its share of all cores.
            torch.set_num_threads(max(1, int(spec.threads or (os.cpu_count() or 1) // world_size)))
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK="0" if self.device == "cpu" else str(rank),
            WORLD_SIZE=str(world_size),
            MASTER_ADDR=spec.master_addr,
            MASTER_PORT=str(master_port),
        )
        deepspeed.init_distributed(
            dist_backend="gloo" if self.device == "cpu" else "nccl", auto_mpi_discovery=False
        )
        dtype = getattr(torch, spec.dtype)
        torch.manual_seed(seed)  # identical LoRA initialisation on every rank
        # task "reward_model": a sequence-classification model (one score, read at the last token),
        # trained through LoRA (the new score head fully, peft's modules_to_save) or fully
        self.reward_model = spec.task == "reward_model"
        self.full = self.reward_model and spec.finetune == "full"
        auto = AutoModelForSequenceClassification if self.reward_model else AutoModelForCausalLM
        extra = {"num_labels": 1} if self.reward_model else {}
        model = auto.from_pretrained(
            spec.model_path, dtype=dtype, trust_remote_code=spec.trust_remote_code, **extra
        )
        if self.reward_model and model.config.pad_token_id is None:
            model.config.pad_token_id = spec.pad_token_id
        lora = spec.lora
        self.peft_config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"],
            task_type="SEQ_CLS" if self.reward_model else "CAUSAL_LM",
        )
        self._init_adapters: dict[int, dict] = {}
        if not self.full:
            model = get_peft_model(model, self.peft_config)
            self._init_adapters = self._slot_initialisations(
                model, self.peft_config, spec.slot_seeds or [], seed
            )
        critic_seed = seed + 7919  # the critic's LoRA initialisation differs from the policy's
        if spec.critic and not spec.critic.get("model_path"):  # PPO: the critic on this same base
            from align.workers.critic import Critic

            Critic.inject(model, self.peft_config, critic_seed)
        # OFS-DPO: a second, identical module on the same base ("default" and "second"), each in its
        # own optimizer parameter group so the fast and slow learning rates can swap.
        self.ofs = spec.ofs
        self.adapter_names = ["default"]
        if self.ofs:
            torch.manual_seed(seed)
            model.add_adapter("second", self.peft_config)
            self.adapter_names.append("second")
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.requires_grad_(True)
        if self.ofs:
            trainable = [
                {
                    "params": [p for n, p in model.named_parameters() if p.requires_grad and f".{a}." in n],
                    "lr": spec.lr,
                }
                for a in self.adapter_names
            ]
        else:
            trainable = [p for _, p in self._policy_named(model)]
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=trainable, config=self._ds_config(spec.lr)
        )
        self.model = self.engine.module
        self._train_params = [p for _, p in self._policy_named()]  # what the policy's engine steps
        self.critic = None
        if spec.critic:
            from align.workers.critic import Critic

            body = (
                Critic.separate(
                    spec.critic["model_path"], self.peft_config, dtype, spec.trust_remote_code, critic_seed
                )
                if spec.critic.get("model_path")
                else self.model
            )
            self.critic = Critic(body, dtype, self._ds_config(spec.critic["lr"]), critic_seed, self.device)
        if self.ofs:
            self.set_fast(0)
        if not self.reward_model:
            self._warm_up()
        # trials sharing this learner: the live adapter, optimizer state and RNG belong to one slot
        self._slot: str | None = None
        self._slots: dict[str, dict] = {}
        self._fresh_groups = [
            {k: v for k, v in g.items() if k != "params"} for g in self._base_optimizer().param_groups
        ]
        torch.manual_seed(seed)  # the RNG (LoRA dropout) starts where a slot of this seed starts

    def _ds_config(self, lr: float) -> dict:
        spec = self.spec
        return {
            "train_micro_batch_size_per_gpu": spec.micro_batch_size,
            "gradient_accumulation_steps": 1,  # we mark accumulation boundaries ourselves
            "zero_optimization": {"stage": spec.zero_stage},
            "optimizer": {
                "type": "AdamW",
                "params": {
                    "lr": lr,
                    "betas": [0.9, 0.999],
                    "eps": 1e-8,
                    "weight_decay": 0.0,
                    "torch_adam": True,
                },
            },
            "gradient_clipping": spec.grad_clip,
            "bf16": {"enabled": spec.dtype == "bfloat16"},
            "fp16": {"enabled": spec.dtype == "float16"},
            "steps_per_print": 2**31 - 1,
        }

    def _policy_named(self, model=None) -> list[tuple[str, torch.nn.Parameter]]:
        """The policy's trainable parameters (PPO's critic module, trained by its own engine, left out)."""
        from align.workers.critic import CRITIC

        model = self.model if model is None else model
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad and f".{CRITIC}." not in n]

    def _warm_up(self) -> None:
        """One forward and backward on a dummy micro-batch, gradients discarded: the first real step
        no longer pays the one-off costs of the kernels and allocator (measured on SmolLM2-135M, 2
        cores: first step 15.9 s, the next ones 10.8-12.8 s), and they are paid while the rollout
        engine is still loading (the trainer starts both at once). ``torch.autograd.grad`` on the
        module itself: no optimizer step, no ZeRO reduction, the engine's gradient buffers untouched."""
        params = self._train_params
        ids = torch.randint(
            0, int(self.model.config.vocab_size), (self.spec.micro_batch_size, 64), device=self.device
        )
        part = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "completion_mask": torch.cat(
                [torch.zeros(ids.shape[0], 31), torch.ones(ids.shape[0], 32)], dim=1
            ),
        }
        self.model.train()
        lp = self._logps(part, 1.0, grad=True, plain=True)
        torch.autograd.grad(lp.sum(), params, allow_unused=True)

    # ----------------------------------------------------------------- trials sharing one learner
    @staticmethod
    def _slot_initialisations(model, peft_config, seeds: list[int], own_seed: int) -> dict[int, dict]:
        """Initial LoRA tensors of a learner seeded with each of ``seeds``: peft's ``add_adapter``
        after ``torch.manual_seed(s)`` draws what ``get_peft_model`` drew for ``s`` (same layers, same
        order), checked against this learner's own module. Made before DeepSpeed wraps the model
        (adding and deleting modules there would touch the parameters ZeRO hooks)."""
        from peft import get_peft_model_state_dict

        out: dict[int, dict] = {}
        for s in sorted(set(seeds)):
            torch.manual_seed(s)
            model.add_adapter("_slot_init", peft_config)
            out[s] = {
                k: v.detach().clone()
                for k, v in get_peft_model_state_dict(model, adapter_name="_slot_init").items()
            }
            model.delete_adapter("_slot_init")
        if own_seed in out:
            own = get_peft_model_state_dict(model, adapter_name="default")
            if any(not torch.equal(own[k], out[own_seed][k]) for k in own):
                raise RuntimeError(
                    "peft's add_adapter no longer draws the initialisation get_peft_model draws for the same "
                    "seed: trials sharing a learner would not start where their solo runs start"
                )
        for name, p in model.named_parameters():
            if "lora_" in name and ".default." in name and not p.requires_grad:
                raise RuntimeError(f"{name}: no longer trainable after the slot initialisations")
        return out

    def _base_optimizer(self):
        """The torch optimizer stepping the fp32 weights (ZeRO's inner one, or the engine's own)."""
        inner = getattr(self.optimizer, "optimizer", None)
        return inner if isinstance(inner, torch.optim.Optimizer) else self.optimizer

    def _masters(self) -> list[torch.Tensor]:
        """ZeRO's fp32 master partitions of this rank (none without ZeRO)."""
        if hasattr(self.optimizer, "single_partition_of_fp32_groups"):
            return list(self.optimizer.single_partition_of_fp32_groups)
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise ValueError(
                f"trials sharing a learner need learner.zero_stage 1 or 2, or a float32 stage-0 engine "
                f"(this engine's optimizer is {type(self.optimizer).__name__})"
            )
        return []

    def use_slot(self, slot: str, seed: int, lr: float) -> str | None:
        """Make trial ``slot`` the live one: its LoRA weights, fp32 master partition, optimizer state
        (moments, step counts), learning rate and RNG, kept by copy while other trials train (only
        this rank's partition: each rank swaps its own). A slot seen for the first time starts as a
        fresh learner of ``seed`` would (its LoRA initialisation, no optimizer state, RNG at
        ``manual_seed(seed)``). Tensors are copied in place: DeepSpeed's buffers and hooks keep
        pointing at the same parameters. Returns the slot that was live before."""
        from peft import set_peft_model_state_dict

        before = self._slot
        if slot == before:
            return before
        opt, masters = self._base_optimizer(), self._masters()
        params = [p for g in opt.param_groups for p in g["params"]]
        if before is not None:
            index = {id(p): i for i, p in enumerate(params)}
            self._slots[before] = {
                "weights": [p.detach().clone() for p in self._train_params],
                "masters": [m.detach().clone() for m in masters],
                # the optimizer's own state dicts, taken over: opt.state is cleared below, so
                # nothing else holds them (the weights and masters stay live: those are copied)
                "state": {index[id(p)]: st for p, st in opt.state.items()},
                "groups": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
                "rng": torch.get_rng_state(),
            }
        saved = self._slots.pop(slot, None)
        opt.state.clear()
        with torch.no_grad():
            if saved is None:
                if seed not in self._init_adapters:
                    raise ValueError(f"slot {slot!r}: seed {seed} was not among the learner's slot_seeds")
                set_peft_model_state_dict(self.model, self._init_adapters[seed], adapter_name="default")
                if masters:
                    self.optimizer._restore_from_bit16_weights()  # the fp32 master from the weights
                for g, fresh in zip(opt.param_groups, self._fresh_groups):
                    g.update(fresh)
                torch.manual_seed(seed)
            else:
                for p, w in zip(self._train_params, saved["weights"]):
                    p.copy_(w)
                for m, w in zip(masters, saved["masters"]):
                    m.copy_(w)
                for i, st in saved["state"].items():
                    opt.state[params[i]] = st
                for g, kept in zip(opt.param_groups, saved["groups"]):
                    g.update(kept)
                torch.set_rng_state(saved["rng"])
        for g in opt.param_groups:
            g["lr"] = lr
        self._slot = slot
        return before

    def drop_slot(self, slot: str) -> None:
        """Forget a trial's kept state (it ended)."""
        self._slots.pop(slot, None)
        if self._slot == slot:
            self._slot = None

    # ----------------------------------------------------------------- OFS-DPO modules
    def set_fast(self, index: int) -> list[float]:
        """Module ``index`` gets learner.lr, the other learner.lr / lr_ratio; returns the group lrs."""
        for g, group in enumerate(self.optimizer.param_groups):
            group["lr"] = self.spec.lr if g == index else self.spec.lr / self.ofs["lr_ratio"]
        return [group["lr"] for group in self.optimizer.param_groups]

    @contextlib.contextmanager
    def _adapters_off(self):
        """The reference policy: every LoRA layer bypassed. Not peft's ``disable_adapter``: on exit it
        re-runs ``set_adapter``, which switches the inactive module's requires_grad off (OFS-DPO's
        second module would stop training), and flipping requires_grad under ZeRO-2 made two-rank
        runs non-deterministic; here only the layers' bypass flag changes."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        for m in layers:
            m._disable_adapters = True
        try:
            yield
        finally:
            for m in layers:
                m._disable_adapters = False

    def _activate(self, name: str) -> None:
        """Run forwards through adapter ``name``. Not peft's ``set_adapter``: it flips requires_grad
        of the other module, and a parameter whose requires_grad is switched off and on gets a new
        gradient accumulator node, so ZeRO-2's reduction hook (registered on the old one at start-up)
        may no longer fire for it; the modules' parameters stay trainable throughout."""
        if getattr(self, "_active", "default") == name:
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer):
                module._active_adapter = name
        self._active = name

    # ----------------------------------------------------------------- forward passes
    def _forward_logits(self, part: dict, plain: bool, first: int = 0) -> torch.Tensor:
        """Logits ``(b, L - first, vocab)`` for positions ``first..L-1``: the output head runs only
        where a completion token is predicted (HF's ``logits_to_keep``; on SmolLM2's 49k vocabulary
        the head over every prompt position cost a third of the learner's step). With
        ``learner.autocast: bf16`` the forward runs under CPU/CUDA bf16 autocast (the loss stays float32)."""
        ids = part["input_ids"].to(self.device)
        kw = {"logits_to_keep": ids.shape[1] - first} if first > 0 and self._keeps_logits else {}
        autocast = (
            torch.autocast(
                device_type="cuda" if self.device.startswith("cuda") else "cpu", dtype=torch.bfloat16
            )
            if self.spec.autocast == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            logits = (self.model if plain else self.engine)(
                input_ids=ids, attention_mask=part["attention_mask"].to(self.device), **kw
            ).logits
        return logits if kw or not first else logits[:, first:]

    @functools.cached_property
    def _keeps_logits(self) -> bool:
        import inspect

        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return "logits_to_keep" in inspect.signature(base.forward).parameters

    def _logps(self, part: dict, temperature: float, grad: bool, plain: bool = False, entropy: bool = False):
        """Token log-probs ``(b, L-1)`` (and, with ``entropy``, the detached per-token entropy of the
        policy ``(b, L-1)``); columns before the micro-batch's first completion token are 0 (no
        logits are computed there). ``plain`` runs the module without the engine's wrapper: the
        engine's forward hooks its outputs so that any backward through them runs ZeRO's gradient
        reduction epilogue, which a bare ``torch.autograd.grad`` must not trigger."""
        ids = part["input_ids"].to(self.device)
        cmask = part.get("completion_mask")
        # first column whose target is a completion token (the whole row when there is no mask)
        rows = cmask.any(dim=1) if cmask is not None and cmask.numel() else None
        first = int(cmask[rows].float().argmax(dim=1).min().item()) if rows is not None and rows.any() else 0
        with torch.enable_grad() if grad else torch.no_grad():
            logits = self._forward_logits(part, plain, first)
            z = logits[:, :-1] / temperature  # columns first..L-2
            lp = token_logprobs(z, ids[:, first + 1 :])
            if first:
                lp = torch.cat([lp.new_zeros(lp.shape[0], first), lp], dim=1)
            if not entropy:
                return lp
            with torch.no_grad():  # row by row: a (b, t, vocab) float copy can be large for real vocabularies
                ent = (
                    torch.stack([_entropy(row) for row in z.detach()])
                    if z.shape[0]
                    else z.new_zeros(z.shape[:2])
                )
                if first:
                    ent = torch.cat([ent.new_zeros(ent.shape[0], first), ent], dim=1)
            return lp, ent

    @contextlib.contextmanager
    def _adapter_weights(self, tensors: dict[str, np.ndarray] | None, name: str = "default"):
        """Run with adapter ``name`` holding ``tensors`` (peft's saved names; None: as it is), then put
        its own weights back, bit for bit (in place: DeepSpeed's buffers and hooks are untouched)."""
        if tensors is None:
            yield
            return
        from peft import set_peft_model_state_dict

        own = {k: torch.from_numpy(v) for k, v in self.adapter_state(name).items()}
        set_peft_model_state_dict(
            self.model, {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, adapter_name=name
        )
        try:
            yield
        finally:
            set_peft_model_state_dict(self.model, own, adapter_name=name)

    def compute_logprobs(
        self,
        batch: dict,
        temperature: float = 1.0,
        reference: bool = True,
        policy: bool = True,
        adapter: dict[str, np.ndarray] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Policy (``old_logps``, if ``policy``) and reference (adapter off, if ``reference``)
        log-probs, each ``(b, L-1)``. The policy is the current adapter, or ``adapter`` (LoRA tensors
        of an earlier version: asynchronous training's behaviour policy)."""
        self.engine.eval()
        mbs = self.spec.micro_batch_size
        olds, refs = [], []
        n = batch["input_ids"].shape[0]
        with self._adapter_weights(adapter if policy else None):  # (the reference pass has no adapter)
            for start in range(0, n, mbs):
                part = {k: v[start : start + mbs] for k, v in batch.items()}
                if policy:
                    olds.append(self._logps(part, temperature, grad=False).cpu())
                if reference:
                    with self._adapters_off():
                        refs.append(self._logps(part, temperature, grad=False).cpu())
        out = {}
        empty = _no_rows(batch)  # a rank's share may be empty
        if policy:
            out["old_logps"] = torch.cat(olds) if olds else empty
        if reference:
            out["ref_logps"] = torch.cat(refs) if refs else empty
        return out

    # ----------------------------------------------------------------- DPO family
    def _seq_logps(self, part: dict, grad: bool, adapter: str | None = None) -> torch.Tensor:
        """Sum of completion log-probs per row ``(b,)`` through ``adapter`` (None: the reference,
        adapter off)."""
        if adapter is None:
            with self._adapters_off():
                lp = self._logps(part, 1.0, grad=False)
        else:
            self._activate(adapter)
            lp = self._logps(part, 1.0, grad=grad)
        return (lp * part["completion_mask"].to(lp.device)).sum(dim=1)

    def _rm_scores(self, part: dict, grad: bool) -> torch.Tensor:
        """Reward-model scores ``(b,)``: the model's output at each row's last token (HF's pooling)."""
        with torch.enable_grad() if grad else torch.no_grad():
            out = self.engine(
                input_ids=part["input_ids"].to(self.device),
                attention_mask=part["attention_mask"].to(self.device),
            )
        return out.logits[:, 0].float()

    def sequence_logps(self, batch: dict, which: list[str]) -> dict[str, torch.Tensor]:
        """Per-row completion log-prob sums ``(b,)`` for each entry of ``which``: ``reference`` or an
        adapter name (``default``, ``second``); ``score`` for a reward model's score. No gradient."""
        self.engine.eval()
        mbs = self.spec.micro_batch_size
        n = batch["input_ids"].shape[0]
        out = {w: torch.zeros(n) for w in which}
        # rows of similar length share a micro-batch (less padding); results go back in row order
        order = torch.argsort(batch["attention_mask"].sum(dim=1), stable=True)
        for start in range(0, n, mbs):
            idx = order[start : start + mbs]
            part = select(batch, idx)
            for w in which:
                out[w][idx] = (
                    (
                        self._rm_scores(part, False)
                        if w == "score"
                        else self._seq_logps(part, False, None if w == "reference" else w)
                    )
                    .cpu()
                    .float()
                )
        return out

    def _pair_loss(self, part: dict, cfg: dict, normalizers: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one micro-batch of pairs (rows 2i chosen, 2i+1 rejected), normalised by the global
        pair count, and its summed statistics. ``cfg["loss"]`` names a row of ``PAIR_LOSSES``; with
        ``cfg["fast_slow"]`` (two LoRA modules, OFS-DPO) the fast-slow term joins it."""
        from align.losses.preference import PAIR_LOSSES, fast_slow_losses

        spec = PAIR_LOSSES[cfg["loss"]]
        counts = part["completion_mask"].sum(dim=1).clamp(min=1)

        def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = x / counts.to(x.device) if spec.average else x
            return x[0::2], x[1::2]

        stats: dict[str, float] = {}
        rc = rrj = None
        if spec.reference:
            ref = part["ref_seq_logps"] if "ref_seq_logps" in part else self._seq_logps(part, False, None)
            rc, rrj = split(ref.to(self.device))
        margin = part["margin"][0::2].to(self.device) if "margin" in part else None
        if spec.scores:  # the model's scalar score (a reward model) instead of log-probs
            scores = self._rm_scores(part, True)
            c, r = scores[0::2], scores[1::2]
            losses, cr, rr = spec.fn(c, r, rc, rrj, cfg, margin)
        elif cfg.get("fast_slow"):
            fast, slow = self.adapter_names[cfg["fast"]], self.adapter_names[1 - cfg["fast"]]
            c, r = split(self._seq_logps(part, True, fast))
            sc, sr = split(self._seq_logps(part, True, slow))
            fs = cfg["fast_slow"]
            losses, parts = fast_slow_losses(
                c,
                r,
                sc,
                sr,
                rc,
                rrj,
                cfg["beta"],
                fs["alpha"],
                fs["slow_term"],
                cfg["loss"],
                cfg.get("label_smoothing", 0.0),
            )
            cr, rr = parts["chosen_rewards"], parts["rejected_rewards"]
            stats = {
                "dpo_fast": parts["dpo_fast"].sum().item(),
                "dpo_slow": parts["dpo_slow"].sum().item(),
                "fs": parts["fs"].sum().item(),
                "slow_accuracy": float(((sc - rc) > (sr - rrj)).float().sum().item()),
            }
        else:
            c, r = split(self._seq_logps(part, True, "default"))
            losses, cr, rr = spec.fn(c, r, rc, rrj, cfg, margin)
        loss = losses.sum() / normalizers["num_pairs"]
        stats.update(
            {
                "loss": losses.detach().sum().item(),
                "chosen_rewards": cr.sum().item(),
                "rejected_rewards": rr.sum().item(),
                "accuracy": float((cr > rr).float().sum().item()),
                "margin": (cr - rr).sum().item(),
                "chosen_logps": c.detach().sum().item(),
                "rejected_logps": r.detach().sum().item(),
                "pairs": float(c.shape[0]),
            }
        )
        return loss, stats

    def _policy_loss(
        self, part: dict, loss_cfg: dict, normalizers: dict, logps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The full actor loss of one micro-batch (the policy loss ``loss_cfg["loss"]`` of
        ``POLICY_LOSSES`` + KL term), globally normalised; ``logps`` (with grad) when the caller
        already ran the forward pass. Optional ``is_weights`` ``(b, t)`` (train/inference mismatch
        correction) multiply the per-token terms."""
        ent = None
        if logps is None:
            logps, ent = self._logps(part, loss_cfg["temperature"], grad=True, entropy=True)
        mask = part["completion_mask"].to(logps.device)
        # Without old_logps the update is on-policy (one epoch, one minibatch): pi_old = pi, and
        # the ratio is exactly 1 with the same gradient, so no extra forward pass is spent.
        old = part["old_logps"].to(logps.device) if "old_logps" in part else logps.detach()
        # tokens drawn from another distribution than pi_old (AdaptThink's forced first token)
        if "behaviour_mask" in part:
            old = with_behaviour_logps(
                old, part["behaviour_logps"].to(logps.device), part["behaviour_mask"].to(logps.device)
            )
        fn = POLICY_LOSSES[policy_loss_name(loss_cfg)]
        weights = part["is_weights"].to(logps.device) if "is_weights" in part else None
        loss, stats = fn(
            logps,
            old,
            part["advantages"].to(logps.device),
            mask,
            clip_low=loss_cfg["clip_low"],
            clip_high=loss_cfg["clip_high"],
            agg=loss_cfg["agg"],
            weights=weights,
            **normalizers,
        )
        tokens = mask.sum().item()
        terms = {
            "loss/policy": loss.item(),
            "loss/kl": 0.0,
            "clip_tokens": stats["clip_frac"].item() * tokens,
            "ratio_sum": stats["ratio_mean"].item() * tokens,
            "tokens": tokens,
            "entropy_sum": float((ent * mask).sum().item()) if ent is not None else 0.0,
        }
        if loss_cfg["kl_coef"] > 0 and loss_cfg["kl_in_loss"]:
            per_tok = kl_penalty(logps, part["ref_logps"].to(logps.device), loss_cfg["kl_estimator"])
            if "kl_weight" in part:  # per-sample KL weights (e.g. APO's DADS)
                per_tok = per_tok * part["kl_weight"].to(logps.device).unsqueeze(1)
            kl = aggregate(per_tok, mask, loss_cfg["agg"], **normalizers)
            terms["loss/kl"] = kl.item()
            loss = loss + loss_cfg["kl_coef"] * kl
        return loss, terms

    def _value_loss(self, part: dict, cfg: dict, normalizers: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """PPO's clipped value loss of one micro-batch, normalised by the global token count."""
        from align.losses import value_loss

        values = self.critic.values(part, grad=True)
        mask = part["completion_mask"].to(values.device)
        loss, st = value_loss(
            values,
            part["old_values"].to(values.device),
            part["returns"].to(values.device),
            mask,
            cfg["value_clip"],
            "token_mean",
            num_tokens=normalizers["num_tokens"],
        )
        tokens = mask.sum().item()
        return loss, {
            "critic/value_loss": loss.item(),
            "clip_tokens": st["clip_frac"].item() * tokens,
            "tokens": tokens,
        }

    def compute_values(self, batch: dict) -> torch.Tensor:
        """The critic's values ``(b, L - 1)`` of a batch, no gradient."""
        self.critic.engine.eval()
        mbs = self.spec.micro_batch_size
        n = batch["input_ids"].shape[0]
        parts = [
            self.critic.values({k: v[s : s + mbs] for k, v in batch.items()}, grad=False).cpu()
            for s in range(0, n, mbs)
        ]
        return torch.cat(parts) if parts else _no_rows(batch)

    # ----------------------------------------------------------------- one optimizer step
    def train_step(self, batch: dict, loss_cfg: dict, normalizers: dict, num_micro: int) -> dict[str, float]:
        """Accumulate gradients over this rank's share in ``num_micro`` micro-batches (the same count on
        every rank: ranks with fewer rows run empty, zero-loss micro-batches) and take one step.

        The one accumulation loop of every loss: ``loss_cfg["kind"]`` is ``policy`` (rows are
        samples: input_ids, attention_mask, completion_mask, advantages, optional old_logps,
        ref_logps, kl_weight, is_weights), ``pair`` (rows 2i and 2i+1 are a pair's chosen and
        rejected responses; a pair never straddles micro-batches) or ``value`` (PPO's critic, its own
        engine: rows are samples with old_values and returns). Every loss is normalised by the
        global counts in ``normalizers`` (num_tokens / num_seqs / max_len, or num_pairs), and each
        backward is scaled by the world size to undo DeepSpeed's data-parallel mean, so the step is
        that of the whole batch on any split. Returns the micro-batches' summed statistics.
        """
        kind = loss_cfg.get("kind", "policy")
        if kind == "value":
            engine, params, loss_fn = self.critic.engine, self.critic.params, self._value_loss
        else:
            engine, params = self.engine, self._train_params
            loss_fn = self._pair_loss if kind == "pair" else self._policy_loss
        engine.train()
        unit = 2 if kind == "pair" else 1
        n = batch["input_ids"].shape[0] // unit
        size = max(1, math.ceil(n / num_micro))
        # Units of similar lengths pad less; the order does not change the (globally normalised)
        # sum of their losses.
        lengths = batch["attention_mask"].sum(dim=1).view(-1, unit).max(dim=1).values
        by_length = torch.argsort(lengths, stable=True).tolist()
        totals: dict[str, float] = {}
        t0 = time.time()
        for m in range(num_micro):
            units = by_length[m * size : (m + 1) * size]
            engine.set_gradient_accumulation_boundary(m == num_micro - 1)
            if units:
                loss, stats = loss_fn(
                    select(batch, [u * unit + j for u in units for j in range(unit)]), loss_cfg, normalizers
                )
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
            else:  # an empty share still joins the gradient reduction
                loss = sum(p.sum() for p in params) * 0.0
            engine.backward(loss * self.world_size, scale_wrt_gas=False)
            engine.step()
        grad_norm = engine.get_global_grad_norm()
        totals["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        totals["seconds"] = time.time() - t0
        totals.update(self.memory())
        return totals

    @staticmethod
    def memory() -> dict[str, float]:
        """This rank's memory after a step, in GiB: PSS (its share of physical memory: pages it shares,
        such as a frozen base mapped from the same file twice, count once) and RSS (every page it maps)."""
        import psutil

        info = psutil.Process().memory_full_info()
        return {"memory/learner_pss_gib": info.pss / 2**30, "memory/learner_rss_gib": info.rss / 2**30}

    # ----------------------------------------------------------------- per-objective gradients
    def objective_gradients(
        self,
        batch: dict,
        advantages: torch.Tensor,
        loss_cfg: dict,
        normalizers: dict,
        num_micro: int,
        param_pattern: str | None = None,
        clip: float | None = None,
    ) -> np.ndarray:
        """Gram matrix ``S = G G^T`` ``(K, K)`` of the per-objective gradients of the full actor loss.

        For each objective k the loss is built with ``advantages[k]`` (this rank's rows) and
        differentiated with ``torch.autograd.grad`` over the trainable parameters whose name matches
        ``param_pattern`` (all of the adapter by default); no optimizer step, and the engine's
        gradient buffers are not touched. The gradients are summed over ranks (all-reduce, the
        parameters are replicated: the LoRA adapter), so every rank returns the same matrix; each
        g_k is clipped to ``clip`` in norm first, as the authors' code does before reading it.
        """
        import re

        import torch.distributed as dist

        self.engine.train()
        named = self._policy_named()
        if param_pattern:
            named = [(n, p) for n, p in named if re.search(param_pattern, n)]
            if not named:
                raise ValueError(f"objective.param_pattern {param_pattern!r} matches no trainable parameter")
        params = [p for _, p in named]
        n = batch["input_ids"].shape[0]
        size = max(1, math.ceil(n / num_micro))
        num_obj = advantages.shape[0]
        g = torch.zeros(
            num_obj, sum(p.numel() for p in params), dtype=torch.float32
        )  # (K, P): this rank's share
        for m in range(num_micro):
            idx = list(range(m * size, min(n, (m + 1) * size)))
            if not idx:
                continue
            part = select(batch, idx)
            # one forward pass per micro-batch; the K losses differ only in their advantages
            logps = self._logps(part, loss_cfg["temperature"], grad=True, plain=True)
            for k in range(num_obj):
                loss, _ = self._policy_loss(
                    {**part, "advantages": advantages[k, idx]}, loss_cfg, normalizers, logps=logps
                )
                grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=k < num_obj - 1)
                g[k] += torch.cat(
                    [
                        (gr if gr is not None else torch.zeros_like(p)).reshape(-1).float().cpu()
                        for gr, p in zip(grads, params)
                    ]
                )
        if self.world_size > 1:
            dist.all_reduce(g, op=dist.ReduceOp.SUM)
        if clip:
            norms = g.norm(dim=1, keepdim=True)
            g = g * torch.clamp(clip / (norms + 1e-6), max=1.0)
        g = g.double()
        return (g @ g.T).numpy()

    # ----------------------------------------------------------------- adapter and state
    def adapter_state(self, name: str = "default") -> dict[str, np.ndarray]:
        """The LoRA tensors only (peft's saved names), as numpy arrays: what moves to rollout workers."""
        from peft import get_peft_model_state_dict

        from align.workers.critic import CRITIC

        if name == CRITIC and self.critic is not None:  # PPO: LoRA module and value head
            return self.critic.state()
        if self.full:  # full fine-tuning: every weight is "the adapter"
            return {
                k: v.detach().to("cpu", torch.float32, copy=True).numpy()
                for k, v in self.model.state_dict().items()
            }
        # copy=True: for float32 CPU tensors .float().cpu() is the live parameter, and a numpy view
        # of it would change under the caller's feet at the next optimizer step.
        state = get_peft_model_state_dict(self.model, adapter_name=name)
        return {k: v.detach().to("cpu", torch.float32, copy=True).numpy() for k, v in state.items()}

    def peft_config_dict(self) -> dict:
        cfg = self.peft_config.to_dict()
        cfg["base_model_name_or_path"] = self.spec.model_path
        cfg["target_modules"] = (
            sorted(cfg["target_modules"])
            if isinstance(cfg["target_modules"], (set, list))
            else cfg["target_modules"]
        )
        return {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """This rank's optimizer state as flat named arrays (for safetensors checkpoints)."""
        from align.checkpoint import flatten_state

        out = flatten_state(self.optimizer.state_dict())
        if self.critic is not None:  # PPO: the critic's own optimizer, in the same file
            out.update(flatten_state(self.critic.optimizer.state_dict(), CRITIC_OPTIMIZER))
        return out

    def load_state(
        self, adapter: dict[str, np.ndarray], optimizer: dict[str, np.ndarray] | None, name: str = "default"
    ) -> None:
        """Restore adapter ``name``'s weights (PPO's ``critic``: its LoRA module and value head) and, if
        given, this rank's optimizer state (the critic's included)."""
        from peft import set_peft_model_state_dict

        from align.workers.critic import CRITIC

        if name == CRITIC and self.critic is not None:
            self.critic.load(adapter)
            if optimizer is None and hasattr(self.critic.optimizer, "_restore_from_bit16_weights"):
                self.critic.optimizer._restore_from_bit16_weights()
        else:
            tensors = {k: torch.from_numpy(v.copy()) for k, v in adapter.items()}
            if self.full:
                current = self.model.state_dict()
                self.model.load_state_dict({k: t.to(current[k].dtype) for k, t in tensors.items()})
            else:
                set_peft_model_state_dict(self.model, tensors, adapter_name=name)
            if optimizer is None and hasattr(self.optimizer, "_restore_from_bit16_weights"):
                self.optimizer._restore_from_bit16_weights()  # ZeRO keeps an fp32 master copy: refresh it from the weights
        if optimizer is not None:
            prefix = CRITIC_OPTIMIZER + "."
            own = {k: v for k, v in optimizer.items() if not k.startswith(prefix)}
            self._load_optimizer(self.optimizer, own)
            if self.critic is not None:
                critic = {k[len(prefix) :]: v for k, v in optimizer.items() if k.startswith(prefix)}
                if not critic:
                    raise ValueError(
                        "the checkpoint has no critic optimizer state (not a ppo run's checkpoint)"
                    )
                self._load_optimizer(self.critic.optimizer, critic)

    def _load_optimizer(self, optimizer, flat: dict[str, np.ndarray]) -> None:
        from align.checkpoint import unflatten_state

        state = unflatten_state(optimizer.state_dict(), flat)
        if self.spec.zero_stage > 0:
            # ZeRO reads entry [dp_rank] of a per-rank list; the fp32 master partition is restored
            # from the saved one (not re-derived from the weights) so the resume is bit-exact.
            optimizer.load_state_dict([state] * self.world_size, load_from_fp32_weights=True)
        else:
            optimizer.load_state_dict(state)

    def ping(self) -> int:
        """This rank's process id (the group waits on it: the engine is ready)."""
        return os.getpid()
