"""PPO with a learned critic on the real stack (Ray, vLLM, two DeepSpeed ZeRO-2 learner ranks holding
the policy and the critic on one base): critic warm-up, off-policy epochs with a per-token KL reward,
the critic learning, its checkpoint (LoRA module, value head, optimizer state), and an exact resume.
Rank invariance and the shared-vs-separate base: tests/integration/test_learner_invariance.py."""

import json
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from align.config.loading import load_config
from align.runner.trainer import Trainer
from tests.integration.test_train_grpo import assert_resumed_equal

pytestmark = pytest.mark.integration
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ppo_tiny.yaml"
COMMON = [
    "trainer.save_every=2",
    "data.eval_size=40",
    "data.prompts_per_step=8",
    "algorithm.ppo_epochs=2",
    "algorithm.kl.coef=0.05",
    "algorithm.ppo.critic_warmup=1",
]


def _train(out, *overrides, resume=False):
    cfg = load_config(CONFIG, [f"trainer.output_dir={out}", *COMMON, *overrides])
    return Trainer(cfg, str(CONFIG.parent), resume=resume).run()


def _rows(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_ppo_trains_its_critic_and_resumes_exactly(tmp_path):
    summary = _train(tmp_path / "a", "trainer.max_steps=4")
    rows = [r for r in _rows(tmp_path / "a") if r["step"] > 0]
    first, last = rows[0], rows[-1]
    # step 1 is the critic's warm-up: the critic steps (2 epochs x 2 minibatches), the policy does not
    assert "critic/value_loss" in first and "loss/policy" not in first
    assert all("loss/policy" in r for r in rows[1:])
    # the value head starts at zero: V = 0, explained variance exactly 0, advantages = the returns
    assert first["critic/values"] == 0.0 and first["critic/explained_variance"] == 0.0
    # the critic learns: its values move toward the returns (their explained variance stays below 0 over
    # 4 steps: the mean is learnt first)
    assert abs(last["critic/values"] - last["critic/returns"]) < abs(
        first["critic/values"] - first["critic/returns"]
    )
    assert last["critic/value_loss"] < first["critic/value_loss"]
    # off-policy epochs against pi_old, the KL penalty per token in the reward
    assert rows[-1]["loss/ratio_mean"] != 1.0 and rows[-1]["kl/mean"] != 0 and "kl/reward_penalty" in rows[-1]
    assert summary["rank_max_abs_diff"] == 0.0
    ckpt = tmp_path / "a" / "checkpoints" / "step_4"
    critic = load_file(str(ckpt / "adapters" / "critic" / "adapter_model.safetensors"))
    assert {"v_head.weight", "v_head.bias"} <= set(critic) and any("lora_B" in k for k in critic)
    opt = load_file(str(ckpt / "optimizer_rank1.safetensors"))
    assert any(k.startswith("critic_optimizer.") for k in opt) and any(
        k.startswith("base_optimizer") for k in opt
    )
    assert (tmp_path / "a" / "plots" / "reward_curves.png").stat().st_size > 10_000
    # stop after step 2, resume: every logged value of steps 3 and 4 is the same
    _train(tmp_path / "b", "trainer.max_steps=2")
    _train(tmp_path / "b", "trainer.max_steps=4", resume=True)
    assert_resumed_equal(_rows(tmp_path / "a"), _rows(tmp_path / "b"), stop=2, steps=4)
