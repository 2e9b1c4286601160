"""Asynchronous training (rollout.max_staleness) on the real stack (Ray, a vLLM rollout worker, two
DeepSpeed learner ranks, the built-in tiny model): the schedule's staleness, the behaviour policy's
log-probs, and a run stopped with batches in flight that resumes to the uninterrupted run's metrics
(faults in async mode: tests/reliability/test_faults.py)."""

import json
import signal
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from align.config.loading import load_config
from align.reporting.metrics import VOLATILE
from align.runner.interrupts import StopRequested
from align.runner.trainer import Trainer
from align.store.checkpoint import list_checkpoints

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "grpo_tiny.yaml"
COMMON = ["trainer.max_steps=5", "trainer.save_every=0", "data.eval=null", "data.prompts_per_step=8"]


def _config(out, *extra):
    return load_config(CONFIG, [f"trainer.output_dir={out}", *COMMON, *extra])


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


class StopAfter(Trainer):
    """Stops as a SIGTERM would, after step ``stop_after`` (a checkpoint, then StopRequested)."""

    stop_after = 2

    def _step(self, step: int) -> dict:
        metrics = super()._step(step)
        if step + 1 == self.stop_after:
            self._stop_signal = signal.SIGTERM
        return metrics


def test_async_k2_stopped_with_batches_in_flight_resumes_exactly(tmp_path):
    """K = 2 over 5 steps: step t's batch comes from adapter version max(0, t - 2), so the staleness is
    0, 1, 2, 2, 2; the learners' ratio is taken against that version (its log-probs match vLLM's for
    the sampled tokens as closely as in lockstep, and the ratio moves off 1 once the batch is stale).
    A run stopped after step 2, with the batches of steps 3 and 4 sent to the rollout worker, keeps
    them in its checkpoint (rows, versions 0 and 1) and, resumed, equals the uninterrupted run."""
    k = "rollout.max_staleness=2"
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    Trainer(_config(whole, k), str(CONFIG.parent)).run()
    with pytest.raises(StopRequested):
        StopAfter(_config(stopped, k), str(CONFIG.parent)).run()
    ckpt = list_checkpoints(stopped / "checkpoints")[-1]
    state = json.loads((ckpt / "state.json").read_text())
    assert ckpt.name == "step_2"
    in_flight = [(b["step"], b["version"], len(b["rows"]), b["position"]) for b in state["in_flight"]]
    assert in_flight == [(2, 0, 8, 16), (3, 1, 8, 24)]  # drawn in step order, 8 prompts a step
    assert sorted(p.name for p in (ckpt / "adapters").iterdir()) == ["version_0", "version_1"]
    v0 = load_file(str(ckpt / "adapters" / "version_0" / "adapter_model.safetensors"))
    assert all(not v.any() for k_, v in v0.items() if "lora_B" in k_)  # version 0: peft's initial B = 0
    Trainer(_config(stopped, k), str(CONFIG.parent), resume=True).run()

    a, b = _rows(whole), _rows(stopped)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b):
        keys = {key for key in ra if not key.startswith(VOLATILE)}
        assert {key: ra[key] for key in keys} == {key: rb[key] for key in keys}, ra["step"]
    assert [r["rollout/staleness"] for r in a] == [0, 1, 2, 2, 2]
    assert all(r["rollout/logprob_abs_diff"] < 1e-4 for r in a), [r["rollout/logprob_abs_diff"] for r in a]
    # stale batches: the first update's ratio is pi_theta / pi_version, no longer exactly 1
    assert all(abs(r["loss/ratio_mean"] - 1) > 1e-6 for r in a[2:]), [r["loss/ratio_mean"] for r in a]
    assert all(r["timing/rollout_wait"] >= 0 and "timing/rollout_idle" in r for r in a)


def test_async_dapo_mixed_versions_vllm_behaviour_logps_and_online_dpo(tmp_path):
    """DAPO's dynamic sampling with K = 1: round 0 of a step's batch was sampled ahead (version t - 1),
    the refill rounds now (version t), so one batch mixes versions; each row's ratio is taken against
    its own version (the parity with vLLM holds row by row). Online DPO with K = 1 trains on pairs
    sampled one version back (its loss needs no sampling log-probs). GRPO with the behaviour log-probs
    taken from vLLM instead of recomputed by the learners."""
    dapo = tmp_path / "dapo"
    Trainer(
        _config(
            dapo,
            "algorithm.name=dapo",
            "rollout.max_staleness=1",
            "trainer.max_steps=4",
            "algorithm.max_sampling_rounds=3",
        ),
        str(CONFIG.parent),
    ).run()
    rows = _rows(dapo)
    # steps 3 and 4 refilled: their batches mix version t - 1 (round 0) and version t (measured: 0.625, 0.375)
    mixed = [r["step"] for r in rows if 0 < r["rollout/staleness"] < 1]
    assert mixed, [(r["rollout/rounds"], r["rollout/staleness"]) for r in rows]
    assert all(r["rollout/logprob_abs_diff"] < 1e-4 for r in rows)
    assert max(r["rollout/staleness_max"] for r in rows) == 1

    # the behaviour log-probs from vLLM (rollout.behaviour_logps: rollout): every sample returns them, no
    # learner pass; the learner's recomputation under the sampling version still matches on the check rows
    vllm = tmp_path / "vllm"
    Trainer(
        _config(vllm, "rollout.max_staleness=1", "rollout.behaviour_logps=rollout", "trainer.max_steps=3"),
        str(CONFIG.parent),
    ).run()
    rows = _rows(vllm)
    assert [r["rollout/staleness"] for r in rows] == [0, 1, 1]
    assert all(r["rollout/logprob_abs_diff"] < 1e-4 for r in rows)
    assert all(abs(r["loss/ratio_mean"] - 1) > 1e-6 for r in rows[1:]), [r["loss/ratio_mean"] for r in rows]

    dpo = tmp_path / "dpo"
    cfg = load_config(
        ROOT / "configs" / "dpo_tiny.yaml",
        [
            f"trainer.output_dir={dpo}",
            "algorithm.preference.online=true",
            "data.train=builtin:arithmetic",
            "data.eval=null",
            "data.prompts_per_step=8",
            "trainer.max_steps=3",
            "trainer.save_every=0",
            "rollout.max_staleness=1",
        ],
    )
    Trainer(cfg, str(ROOT / "configs")).run()
    rows = _rows(dpo)
    assert [r["rollout/staleness"] for r in rows] == [0, 1, 1]
    assert all(r["online/pairs"] + r["online/groups_dropped"] == 8 for r in rows)
    assert all(r["dpo/loss"] > 0 for r in rows if r["online/pairs"])
