"""Several trials on one set of actors (``align sweep`` with ``trials_per_job > 1``).

The policies of a sweep differ only in their LoRA adapters, so N trials can share one base model:
one group of vLLM rollout workers, one group of DeepSpeed learner ranks, one reward pool. Each trial
(a ``Trainer`` in a thread of the job's driver) sees the groups through a view bound to its slot:

- ``LearnerSlot``: every call first makes the trial's slot live on the ranks (``Learner.use_slot``:
  its adapter, optimizer state, learning rate and RNG swapped in place), then runs, under one lock:
  the ranks run one trial's call at a time, in the order the driver sent them (a collective of two
  ranks never sees two trials' calls interleaved).
- ``RolloutSlot``: every generate call names the trial's adapter version, numbered apart from the
  other trials' (slot index x ``VERSION_STRIDE`` + version), and carries its tensors; an engine
  serving another adapter loads that one first (merged mode: merged from the base weights again,
  so the order of trials changes nothing). Loading is lazy: a sync only records the version.

A trial's samples, losses and updates are those of its solo run: the engines take its calls one
at a time with the same prompts and seeds, and the learners hold its state bit for bit
(``tests/integration/test_sweep_jobs.py``).
"""

from __future__ import annotations

import threading

VERSION_STRIDE = 1_000_000  # adapter versions of slot i are i * VERSION_STRIDE + step


class SharedLearners:
    """One ``LearnerGroup`` serving several trials' slots, one call at a time."""

    def __init__(self, group):
        self.group = group
        self.lock = threading.RLock()
        self.active: str | None = None
        self.generation = 0  # restarts of the group (a lost rank ends every trial's live state)

    def view(self, slot: str, seed: int, lr: float) -> "LearnerSlot":
        return LearnerSlot(self, slot, seed, lr)

    def activate(self, slot: str, seed: int, lr: float) -> None:
        if self.active != slot:
            self.group.use_slot(slot, seed, lr)
            self.active = slot

    def drop(self, slot: str) -> None:
        """A trial ended: the ranks forget its kept state."""
        with self.lock:
            self.group.drop_slot(slot)
            if self.active == slot:
                self.active = None


class LearnerSlot:
    """A trial's ``LearnerGroup``: the group's methods, each run with the trial's slot live."""

    def __init__(self, shared: SharedLearners, slot: str, seed: int, lr: float):
        self._shared, self.slot, self.seed, self.lr = shared, slot, seed, lr
        self._generation = shared.generation

    def __getattr__(self, name: str):
        attr = getattr(self._shared.group, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args, **kwargs):
            with self._shared.lock:
                self._generation = self._shared.generation
                self._shared.activate(self.slot, self.seed, self.lr)
                return attr(*args, **kwargs)

        return call

    def restart(self) -> None:
        """A rank was lost: the first trial to notice restarts the group (every slot's live state is
        gone then; each trial restores its own last checkpoint, ``Trainer._recover_learners``)."""
        with self._shared.lock:
            if self._generation == self._shared.generation:
                self._shared.group.restart()
                self._shared.generation += 1
                self._shared.active = None
            self._generation = self._shared.generation


class RolloutSlot:
    """A trial's ``RolloutGroup``: its adapter versions, numbered apart, carried by every call."""

    def __init__(self, group, index: int):
        self._group, self.index = group, index
        self._adapter: tuple | None = None

    def __getattr__(self, name: str):  # lora_mode, workers, restarts, pids, start_seconds
        return getattr(self._group, name)

    def _key(self, adapter: tuple) -> tuple:
        return (self.index * VERSION_STRIDE + adapter[0], *adapter[1:])

    def load_adapter(self, version: int, tensors_ref, adapter_config: dict) -> float:
        """Recorded, not loaded: the next call of this trial carries it (another trial may use the
        engines first); the load's time is then part of that call."""
        self._adapter = self._key((version, tensors_ref, adapter_config))
        return 0.0

    def set_adapter(self, version: int, tensors_ref, adapter_config: dict) -> None:
        self.load_adapter(version, tensors_ref, adapter_config)

    def generate(
        self, prompts: list[str], seeds: list[int], logprobs_for=None, forced: bool = False, **sampling
    ):
        return self.submit(prompts, seeds, logprobs_for, forced, **sampling).result()[0]

    def submit(
        self,
        prompts: list[str],
        seeds: list[int],
        logprobs_for=None,
        forced: bool = False,
        adapter: tuple | None = None,
        **sampling,
    ):
        adapter = self._key(adapter) if adapter is not None else self._adapter
        return self._group.submit(prompts, seeds, logprobs_for, forced, adapter=adapter, **sampling)
