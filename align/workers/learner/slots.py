"""Trial slots: several trials of a sweep job sharing one learner rank (``align sweep`` with
``trials_per_job > 1``; the driver side is ``align.workers.shared``).

The live adapter, fp32 master partition, optimizer state (moments, step counts), learning rate and
RNG belong to one trial at a time; ``use`` swaps them in place, keeping the others by copy (only this
rank's partition: each rank swaps its own). A slot seen for the first time starts as a fresh learner
of its seed would. A learner holds this component when its spec has ``slot_seeds``.
"""

from __future__ import annotations

import torch

from align.workers.learner.engine import base_optimizer, masters, refresh_masters


class SlotStore:
    adapters: tuple[str, ...] = ()  # it saves no adapter of its own: a checkpoint is one trial's
    modules: tuple[str, ...] = ()
    optimizer_prefix = None

    @classmethod
    def prepare(cls, learner) -> "SlotStore | None":
        """Initial LoRA tensors of a learner seeded with each of ``slot_seeds``: peft's ``add_adapter``
        after ``torch.manual_seed(s)`` draws what ``get_peft_model`` drew for ``s`` (same layers, same
        order), checked against this learner's own module. Made before DeepSpeed wraps the model
        (adding and deleting modules there would touch the parameters ZeRO hooks)."""
        from peft import get_peft_model_state_dict

        seeds, model = learner.spec.slot_seeds, learner.model
        if not seeds:
            return None
        if model.full:
            raise ValueError("trials sharing a learner train LoRA adapters, not every weight")
        module, own_name = model.module, learner.spec.lora_modules[0]
        inits: dict[int, dict] = {}
        for s in sorted(set(seeds)):
            torch.manual_seed(s)
            module.add_adapter("_slot_init", model.peft_config)
            inits[s] = {
                k: v.detach().clone()
                for k, v in get_peft_model_state_dict(module, adapter_name="_slot_init").items()
            }
            module.delete_adapter("_slot_init")
        if learner.seed in inits:
            own = get_peft_model_state_dict(module, adapter_name=own_name)
            if any(not torch.equal(own[k], inits[learner.seed][k]) for k in own):
                raise RuntimeError(
                    "peft's add_adapter no longer draws the initialisation get_peft_model draws for the same "
                    "seed: trials sharing a learner would not start where their solo runs start"
                )
        for name, p in module.named_parameters():
            if "lora_" in name and f".{own_name}." in name and not p.requires_grad:
                raise RuntimeError(f"{name}: no longer trainable after the slot initialisations")
        return cls(inits)

    def __init__(self, inits: dict[int, dict]):
        self.inits = inits
        self.live: str | None = None
        self.kept: dict[str, dict] = {}

    def start(self, learner) -> None:
        """After the policy's engine exists: what a fresh optimizer's parameter groups hold."""
        self.learner = learner
        opt = base_optimizer(learner.optimizer)
        self.fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]

    def use(self, slot: str, seed: int, lr: float) -> str | None:
        """Make trial ``slot`` the live one (a slot seen for the first time starts as a fresh learner of
        ``seed``: its LoRA initialisation, no optimizer state, RNG at ``manual_seed(seed)``). Tensors
        are copied in place: DeepSpeed's buffers and hooks keep pointing at the same parameters.
        Returns the slot that was live before."""
        from peft import set_peft_model_state_dict

        before, learner = self.live, self.learner
        if slot == before:
            return before
        opt, ms = base_optimizer(learner.optimizer), masters(learner.optimizer)
        params = [p for g in opt.param_groups for p in g["params"]]
        if before is not None:
            index = {id(p): i for i, p in enumerate(params)}
            self.kept[before] = {
                "weights": [p.detach().clone() for p in learner.train_params],
                "masters": [m.detach().clone() for m in ms],
                # the optimizer's own state dicts, taken over: opt.state is cleared below, so
                # nothing else holds them (the weights and masters stay live: those are copied)
                "state": {index[id(p)]: st for p, st in opt.state.items()},
                "groups": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
                "rng": torch.get_rng_state(),
            }
        saved = self.kept.pop(slot, None)
        opt.state.clear()
        with torch.no_grad():
            if saved is None:
                if seed not in self.inits:
                    raise ValueError(f"slot {slot!r}: seed {seed} was not among the learner's slot_seeds")
                name = learner.spec.lora_modules[0]
                set_peft_model_state_dict(learner.model.module, self.inits[seed], adapter_name=name)
                if ms:
                    refresh_masters(learner.optimizer)  # the fp32 master from the weights
                for g, fresh in zip(opt.param_groups, self.fresh_groups):
                    g.update(fresh)
                torch.manual_seed(seed)
            else:
                for p, w in zip(learner.train_params, saved["weights"]):
                    p.copy_(w)
                for m, w in zip(ms, saved["masters"]):
                    m.copy_(w)
                for i, st in saved["state"].items():
                    opt.state[params[i]] = st
                for g, kept in zip(opt.param_groups, saved["groups"]):
                    g.update(kept)
                torch.set_rng_state(saved["rng"])
        for g in opt.param_groups:
            g["lr"] = lr
        self.live = slot
        return before

    def drop(self, slot: str) -> None:
        """Forget a trial's kept state (it ended)."""
        self.kept.pop(slot, None)
        if self.live == slot:
            self.live = None
