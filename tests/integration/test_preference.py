"""The DPO family on the real stack (Ray, DeepSpeed ZeRO-2 learner ranks, vLLM rollout worker, reward
worker) on the built-in tiny model: offline OFS-DPO learns on two ranks and resumes exactly; online
DPO with OFS over two domains combines adapters (COFS-DPO)."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from align.config.loading import load_config
from align.runner.trainer import Trainer

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _train(config, out, *overrides, resume=False):
    cfg = load_config(ROOT / "configs" / config, [f"trainer.output_dir={out}", *overrides])
    return Trainer(cfg, str(ROOT / "configs"), resume=resume).run()


def _rows(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def _tensors(ckpt, name):
    return load_file(str(Path(ckpt) / "adapters" / name / "adapter_model.safetensors"))


OFFLINE = (
    "algorithm.preference.ofs.enabled=true",
    "algorithm.preference.ofs.swap_window=2",
    "learner.num_ranks=2",
    "learner.micro_batch_size=8",
    "algorithm.preference.pairs_per_step=24",
    "algorithm.preference.eval_pairs=96",
    "trainer.save_every=3",
    "trainer.eval_every=0",
)


def test_offline_ofs_dpo_learns_on_two_ranks_and_resumes_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    summary = _train("dpo_tiny.yaml", full, "trainer.max_steps=6", *OFFLINE)
    before, after = summary["before"], summary["after"]
    print(
        f"held-out pairs: loss {before['pairs_loss']:.4f} -> {after['pairs_loss']:.4f}, "
        f"accuracy {before['pairs_accuracy']:.3f} -> {after['pairs_accuracy']:.3f}"
    )
    assert before["pairs_loss"] == pytest.approx(
        np.log(2), abs=1e-6
    )  # LoRA B starts at 0: policy = reference
    assert after["pairs_loss"] < before["pairs_loss"] - 0.002 and after["pairs_accuracy"] > 0.6
    assert summary["rank_max_abs_diff"] == 0.0
    rows = [r for r in _rows(full) if r["step"] > 0]
    assert all(r["dpo/pairs"] == 24 for r in rows)
    assert {"ofs/dpo_fast", "ofs/dpo_slow", "ofs/fs", "ofs/swaps", "dpo/margin", "dpo/rewards_chosen"} <= set(
        rows[-1]
    )
    assert rows[0]["ofs/fs"] == pytest.approx(np.log(2), abs=1e-6)  # identical modules at the first step
    ckpt = full / "checkpoints" / "step_6"
    fast, slow = _tensors(ckpt, "default"), _tensors(ckpt, "second")
    assert any(not np.array_equal(fast[k], slow[k]) for k in fast)  # the modules moved apart
    assert (full / "plots" / "reward_curves.png").stat().st_size > 10_000
    # interrupted after step 3, resumed: the same steps 4-6 and the same two modules, bit for bit
    _train("dpo_tiny.yaml", part, "trainer.max_steps=3", *OFFLINE)
    _train("dpo_tiny.yaml", part, "trainer.max_steps=6", *OFFLINE, resume=True)
    for name in ("default", "second"):
        got, want = _tensors(part / "checkpoints" / "step_6", name), _tensors(ckpt, name)
        assert all(np.array_equal(got[k], want[k]) for k in want), name
    resumed = {r["step"]: r for r in _rows(part)}
    for r in rows[3:]:
        assert (
            resumed[r["step"]]["dpo/loss"] == r["dpo/loss"]
            and resumed[r["step"]]["ofs/swaps"] == r["ofs/swaps"]
        )


# make test-all only (CI budget, 45 minutes): COFS's combination math is unit-tested (tests/unit/algorithms/test_ofs.py)
@pytest.mark.slow
def test_online_ofs_over_two_domains_combines_adapters_and_resumes_at_the_boundary(tmp_path, monkeypatch):
    import signal

    from align.runner.interrupts import StopRequested
    from align.runner.trainer import Trainer as PreferenceTrainer

    out = tmp_path / "cofs"
    two = (
        "[{name: arithmetic, train: builtin:arithmetic, eval: builtin:preference-arithmetic-eval, steps: 2}, "
        "{name: reversal, train: builtin:reversal, eval: builtin:preference-reversal-eval, steps: 2}]"
    )
    sets = (
        f"algorithm.preference.domains={two}",
        "algorithm.preference.online=true",
        "algorithm.preference.num_completions=4",
        "data.prompts_per_step=8",
        "algorithm.preference.cofs.grid=[0.0, 0.5, 1.0]",
        "algorithm.preference.cofs.heldout=8",
        "data.eval_size=24",
        "trainer.save_every=0",
    )
    step = PreferenceTrainer._step

    def stop_after_domain_one(self, i):  # as SIGTERM arriving during step 2: finish it, checkpoint, stop
        m = step(self, i)
        if i + 1 == 2:
            self._stop_signal = signal.SIGTERM
        return m

    monkeypatch.setattr(PreferenceTrainer, "_step", stop_after_domain_one)
    with pytest.raises(StopRequested):
        _train("cofs_dpo_tiny.yaml", out, *sets)
    monkeypatch.setattr(PreferenceTrainer, "_step", step)
    first = json.loads((out / "domains.json").read_text())["results"]
    assert [r["after"] for r in first] == ["arithmetic"] and (out / "checkpoints" / "step_2").is_dir()
    _train("cofs_dpo_tiny.yaml", out, *sets, resume=True)
    rows = [r for r in _rows(out) if r["step"] > 0]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(
        r["online/pairs"] + r["online/groups_dropped"] == 8 for r in rows
    )
    assert sum(r["online/pairs"] for r in rows) > 0 and all("reward/correctness" in r for r in rows)
    result = json.loads((out / "domains.json").read_text())["results"]
    assert result[0] == first[0]  # the first domain's results came back with the checkpoint
    assert [r["after"] for r in result] == ["arithmetic", "reversal"]
    assert result[0]["lambda"] is None and result[1]["lambda"] in (0.0, 0.5, 1.0)
    assert set(result[1]["grid"]) == {"0.0", "0.5", "1.0"} and set(result[1]["scores"]) == {
        "arithmetic",
        "reversal",
    }
    assert rows[-1]["cofs/lambda"] == result[1]["lambda"]
    assert rows[-1]["domain/arithmetic"] == result[1]["scores"]["arithmetic"]
    assert "eval/arithmetic/correctness" in rows[-1] and "eval/reversal/correctness" in rows[-1]
    # the stored fast modules and the served adapter: rank 16 when both terms are kept
    served = json.loads(
        (out / "domains" / "1_reversal" / "served_adapter" / "adapter_config.json").read_text()
    )
    assert served["r"] == (16 if result[1]["lambda"] == 0.5 else 8)
    assert (out / "domains" / "0_arithmetic" / "fast_adapter" / "adapter_model.safetensors").exists()
    ckpt_cfg = json.loads((out / "checkpoints" / "step_4" / "adapter" / "adapter_config.json").read_text())
    assert ckpt_cfg["r"] == served["r"] and (out / "checkpoints" / "step_4" / "adapters" / "second").is_dir()
    assert (out / "plots" / "domains.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "loss_type", ["sigmoid", pytest.param("ipo", marks=pytest.mark.slow)]
)  # ipo: make test-all
def test_dpo_loss_matches_trl_step_by_step(loss_type):
    """Same pairs, same initial adapter, same optimizer: align's DPO losses equal TRL DPOTrainer's
    (bench/dpo_vs_trl.py measures the same on the small model over 30 steps)."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("dpo_vs_trl", ROOT / "bench" / "dpo_vs_trl.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(
        model="builtin:tiny",
        steps=4,
        pairs=16,
        lora_r=8,
        lr=5e-3,
        beta=0.1,
        micro_batch=8,
        loss_type=loss_type,
    )
    ours, trl = bench.run_align(args, "on_the_fly"), bench.run_trl(args, False)
    print("align", ours["losses"], "\nTRL  ", trl["losses"])
    assert len(ours["losses"]) == len(trl["losses"]) == 4
    # at the start policy = reference: sigmoid log 2; IPO (1 / (2 beta))^2 = 25
    assert ours["losses"][0] == pytest.approx(np.log(2) if loss_type == "sigmoid" else 25.0, abs=1e-5)
    np.testing.assert_allclose(ours["losses"], trl["losses"], atol=2e-5, rtol=2e-6)
    assert abs(ours["losses"][-1] - ours["losses"][0]) > 1e-3  # the steps did move the adapter
