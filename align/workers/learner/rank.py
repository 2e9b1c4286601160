"""``Learner``: one DeepSpeed data-parallel rank (a Ray actor), composed of what it holds:

- ``model`` (``PolicyModel``): the base model and its LoRA modules, and the forward passes;
- the policy's engine (``engine`` / ``optimizer``) over the modules' parameters;
- optional components, asked for by the spec: ``Critic`` (PPO's value model with its own engine),
  ``SlotStore`` (trials of a sweep job sharing the rank);
- the loss kinds (``kinds.KINDS``), each run by the one accumulation loop (``loop.accumulate``).

A method that needs new learner state adds a component (``prepare`` before the policy's engine
exists, ``start`` after; ``adapters`` it saves and loads, ``optimizer_state``) and, if it trains
it, a loss kind whose ``target`` names it.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from align.rollout.batch import select
from align.workers.learner import engine as eng
from align.workers.learner.critic import Critic
from align.workers.learner.fresh import FreshState
from align.workers.learner.kinds import KINDS, PolicyLossConfig, loss_config
from align.workers.learner.loop import accumulate, objective_gram
from align.workers.learner.model import PolicyModel
from align.workers.learner.slots import SlotStore
from align.workers.learner.spec import LearnerSpec

# Optional parts of a rank, made when the spec asks for them (each ``prepare`` returns None otherwise),
# in this order. A component has ``prepare(learner)`` (before the policy's engine exists: it may add
# LoRA modules to the model, listed in ``modules``), ``start(learner)`` (after), the ``adapters`` it
# saves and loads (``adapter_state`` / ``load_adapter``) and, when it has its own engine, its
# ``optimizer_prefix`` (``optimizer_state`` / ``load_optimizer``); a loss kind whose ``target`` is
# its name trains its ``engine`` over its ``params``.
COMPONENTS = {"slots": SlotStore, "critic": Critic, "fresh": FreshState}


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _skip_shm_comm_op() -> None:
    """DeepSpeed's CPU backend builds a C++ shared-memory all-reduce on its first start (about a minute
    of compiling on a fresh machine, then a load and a probe of every op in each rank) that only its
    inference all-reduce (tensor-parallel inference) calls; training reduces through gloo. Its
    compatibility table, read only there, marks the op unavailable, so it is neither built nor loaded."""
    import deepspeed.ops

    vars(deepspeed.ops).setdefault("__compatible_ops__", {})["deepspeed_shm_comm"] = False


def _no_rows(batch: dict) -> torch.Tensor:
    """A per-token result ``(0, L - 1)`` for a share of no rows."""
    return torch.zeros(0, max(batch["input_ids"].shape[1] - 1, 0))


class Learner:
    """One rank. ``spec`` holds plain values (``LearnerSpec``); ``seed`` draws the LoRA
    initialisation (identical on every rank)."""

    def __init__(self, spec: LearnerSpec | dict, rank: int, world_size: int, master_port: int, seed: int = 0):
        import deepspeed

        spec = LearnerSpec.of(spec)
        self.spec, self.rank, self.world_size, self.seed = spec, rank, world_size, seed
        self.device = _device(spec.device)
        if self.device == "cpu":
            # Rollout and learning phases do not overlap, so each rank may use its share of all cores.
            torch.set_num_threads(max(1, int(spec.threads or (os.cpu_count() or 1) // world_size)))
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            _skip_shm_comm_op()
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
        self.model = PolicyModel.build(spec, self.device, seed)
        made = {name: cls.prepare(self) for name, cls in COMPONENTS.items()}
        self.components = {name: c for name, c in made.items() if c is not None}
        # LoRA modules the components added to the policy's base: the policy's engine leaves them out
        self.foreign = tuple(m for c in self.components.values() for m in c.modules)
        self.model.train_modules()  # (a component adding a module may have frozen another, as peft does)
        groups = spec.lora_modules if len(spec.lora_modules) > 1 and not self.model.full else None
        trainable = (
            [{"params": self.model.module_params(m), "lr": spec.lr} for m in groups]
            if groups
            else [p for _, p in self.model.trainable(self.foreign)]
        )
        self.engine, self.optimizer = eng.start_engine(self.model.module, trainable, spec, spec.lr)
        self.model.engine = self.engine
        self.train_params = [p for _, p in self.model.trainable(self.foreign)]  # what the policy engine steps
        for c in self.components.values():
            c.start(self)
        if spec.head == "lm":
            self.model.warm_up(self.train_params)
        torch.manual_seed(seed)  # the RNG (LoRA dropout) starts where a slot of this seed starts

    @property
    def slots(self) -> SlotStore | None:
        return self.components.get("slots")

    def _owner(self, name: str):
        """The component holding adapter ``name`` (None: a LoRA module of the policy model)."""
        return next((c for c in self.components.values() if name in c.adapters), None)

    # ----------------------------------------------------------------- one optimizer step
    def train_step(self, batch: dict, cfg, normalizers: dict, num_micro: int) -> dict[str, float]:
        """One optimizer step of loss kind ``cfg.kind`` over this rank's share (``kinds``,
        ``loop.accumulate``): every loss is normalised by the global counts in ``normalizers``, so the
        step is that of the whole batch on any split. Returns the micro-batches' summed statistics."""
        cfg = loss_config(cfg)
        kind = KINDS[cfg.kind]
        if kind.target == "policy":
            engine, params = self.engine, self.train_params
        else:  # a component with its own engine (PPO's critic)
            engine, params = self.components[kind.target].engine, self.components[kind.target].params
        stats = accumulate(
            engine,
            params,
            batch,
            kind.unit,
            num_micro,
            self.world_size,
            lambda part: kind.loss(self, part, cfg, normalizers),
        )
        stats.update(self.memory())
        return stats

    @staticmethod
    def memory() -> dict[str, float]:
        """This rank's memory after a step, in GiB: PSS (its share of physical memory: pages it shares,
        such as a frozen base mapped from the same file twice, count once) and RSS (every page it maps)."""
        import psutil

        info = psutil.Process().memory_full_info()
        return {"memory/learner_pss_gib": info.pss / 2**30, "memory/learner_rss_gib": info.rss / 2**30}

    def objective_gradients(
        self,
        batch: dict,
        advantages: torch.Tensor,
        cfg,
        normalizers: dict,
        num_micro: int,
        param_pattern: str | None = None,
        clip: float | None = None,
    ) -> np.ndarray:
        """Gram matrix ``(K, K)`` of the per-objective gradients of the policy loss over the adapter
        (``loop.objective_gram``; the same on every rank)."""
        cfg: PolicyLossConfig = loss_config(cfg)
        kind = KINDS["policy"]
        self.engine.train()
        return objective_gram(
            self.model.trainable(self.foreign),
            batch,
            advantages,
            num_micro,
            self.world_size,
            lambda part: self.model.logps(part, cfg.temperature, grad=True, plain=True),
            lambda part, logps: kind.loss(self, part, cfg, normalizers, logps=logps)[0],
            param_pattern,
            clip,
        )

    # ----------------------------------------------------------------- no-gradient passes
    def _parts(self, batch: dict):
        """Micro-batches of ``batch`` in row order, each as wide as the batch."""
        mbs, n = self.spec.micro_batch_size, batch["input_ids"].shape[0]
        for start in range(0, n, mbs):
            yield {k: v[start : start + mbs] for k, v in batch.items()}

    def compute_logprobs(
        self,
        batch: dict,
        temperature: float = 1.0,
        reference: bool = True,
        policy: bool = True,
        adapter: dict[str, np.ndarray] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Policy (``old_logps``, if ``policy``) and reference (adapters off, if ``reference``)
        log-probs, each ``(b, L-1)``. The policy is the current adapter, or ``adapter`` (LoRA tensors
        of an earlier version: asynchronous training's behaviour policy)."""
        self.engine.eval()
        olds, refs = [], []
        name = self.spec.lora_modules[0]
        with self.model.adapter_weights(adapter if policy else None, name):  # (the reference has no adapter)
            for part in self._parts(batch):
                if policy:
                    olds.append(self.model.logps(part, temperature, grad=False).cpu())
                if reference:
                    with self.model.adapters_off():
                        refs.append(self.model.logps(part, temperature, grad=False).cpu())
        out = {}
        if policy:
            out["old_logps"] = torch.cat(olds) if olds else _no_rows(batch)  # a rank's share may be empty
        if reference:
            out["ref_logps"] = torch.cat(refs) if refs else _no_rows(batch)
        return out

    def per_token(self, component: str, method: str, batch: dict) -> torch.Tensor:
        """Component ``component``'s ``method(part, grad=False)`` over the batch's micro-batches
        (e.g. the critic's values), ``(b, L - 1)``, no gradient."""
        c = self.components[component]
        c.engine.eval()
        parts = [getattr(c, method)(part, grad=False).cpu() for part in self._parts(batch)]
        return torch.cat(parts) if parts else _no_rows(batch)

    def sequence_logps(self, batch: dict, which: list[str]) -> dict[str, torch.Tensor]:
        """Per-row completion log-prob sums ``(b,)`` for each entry of ``which``: ``reference`` or a
        LoRA module's name; ``score`` for a reward model's score. No gradient."""
        self.engine.eval()
        n = batch["input_ids"].shape[0]
        out = {w: torch.zeros(n) for w in which}
        # rows of similar length share a micro-batch, trimmed to its longest row (less padding);
        # results go back in row order
        order = torch.argsort(batch["attention_mask"].sum(dim=1), stable=True)
        mbs = self.spec.micro_batch_size
        for start in range(0, n, mbs):
            idx = order[start : start + mbs]
            part = select(batch, idx)
            for w in which:
                if w == "score":
                    value = self.model.scores(part, False)
                else:
                    value = self.model.seq_logps(part, False, None if w == "reference" else w)
                out[w][idx] = value.cpu().float()
        return out

    # ----------------------------------------------------------------- modules and trial slots
    def set_lrs(self, lrs: list[float]) -> list[float]:
        """The learning rate of each LoRA module's parameter group (``spec.lora_modules`` order)."""
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        return [group["lr"] for group in self.optimizer.param_groups]

    def reset(self) -> None:
        """Back to the rank's first state (``FreshState``): a later run starts as on a fresh rank."""
        if "fresh" not in self.components:
            raise ValueError("this learner keeps no first state (its spec has no keep_fresh)")
        self.components["fresh"].reset(self)

    def use_slot(self, slot: str, seed: int, lr: float) -> str | None:
        """Make trial ``slot``'s state the live one (``SlotStore.use``)."""
        if self.slots is None:
            raise ValueError("this learner holds no trial slots (its spec has no slot_seeds)")
        return self.slots.use(slot, seed, lr)

    def drop_slot(self, slot: str) -> None:
        if self.slots is not None:
            self.slots.drop(slot)

    # ----------------------------------------------------------------- adapters and state
    def adapter_state(self, name: str = "default") -> dict[str, np.ndarray]:
        """Adapter ``name``'s tensors (peft's saved names; a component's, e.g. the critic's LoRA module
        and value head), as numpy arrays: what moves to rollout workers and into checkpoints."""
        owner = self._owner(name)
        return owner.adapter_state(name) if owner is not None else self.model.adapter_state(name)

    def peft_config_dict(self) -> dict:
        return self.model.peft_config_dict()

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """This rank's optimizer state (the components' included, each under its prefix) as flat
        named arrays, for safetensors checkpoints."""
        out = eng.optimizer_state(self.optimizer)
        for c in self.components.values():
            if c.optimizer_prefix:
                out.update(c.optimizer_state())
        return out

    def load_state(
        self, adapter: dict[str, np.ndarray], optimizer: dict[str, np.ndarray] | None, name: str = "default"
    ) -> None:
        """Restore adapter ``name``'s weights and, if given, this rank's optimizer state (the
        components' included)."""
        owner = self._owner(name)
        if owner is not None:
            owner.load_adapter(name, adapter, with_optimizer=optimizer is not None)
        else:
            self.model.load_adapter(name, adapter)
            if optimizer is None:
                eng.refresh_masters(self.optimizer)  # ZeRO's fp32 master copy, from the weights
        if optimizer is None:
            return
        prefixes = {c.optimizer_prefix + ".": c for c in self.components.values() if c.optimizer_prefix}
        known = tuple(f"{cls.optimizer_prefix}." for cls in COMPONENTS.values() if cls.optimizer_prefix)
        own = {
            k: v for k, v in optimizer.items() if not k.startswith(known)
        }  # a component's: not the policy's
        eng.load_optimizer_state(self.optimizer, own, self.spec.zero_stage, self.world_size)
        for prefix, c in prefixes.items():
            c.load_optimizer(
                {k[len(prefix) :]: v for k, v in optimizer.items() if k.startswith(prefix)}, self.world_size
            )

    def ping(self) -> int:
        """This rank's process id (the group waits on it: the engine is ready)."""
        return os.getpid()
