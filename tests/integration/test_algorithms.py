"""Every GRPO-family algorithm runs on the real stack, with the options that change its step."""

import json
import math
import shutil
from pathlib import Path

import pytest

from align.config.loading import load_config
from align.models.builtin import ensure_builtin
from align.runner.trainer import Trainer

pytestmark = pytest.mark.integration
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "grpo_tiny.yaml"

CASES = {
    # DAPO: clip-higher, token-level loss, dynamic sampling (refills dropped groups), overlong filter
    "dapo": ["algorithm.name=dapo", "rollout.max_new_tokens=12"],
    # Dr.GRPO with k1 KL in the reward (needs learner and reference log-probs before advantages),
    # one learner rank, from a plain local model directory (any HF causal LM)
    "dr_grpo": [
        "algorithm.name=dr_grpo",
        "algorithm.kl.coef=0.05",
        "algorithm.kl.where=reward",
        "learner.num_ranks=1",
    ],
    # RLOO off-policy: two epochs x two minibatches, so the ratio moves away from 1; with APO's DADS
    # (per-sample KL weights into the learner loss) and STCR (a base that matters at our lengths)
    "rloo": [
        "algorithm.name=rloo",
        "algorithm.ppo_epochs=2",
        "algorithm.num_minibatches=2",
        "learner.lr=0.005",
        "algorithm.kl.coef=0.01",
        "algorithm.apo.dads=true",
        "algorithm.apo.stcr=true",
        "algorithm.apo.stcr_base=1.05",
    ],
    # GSPO off-policy (4 minibatches): after the first update the sequence ratios leave its narrow
    # clip range (3e-4 / 4e-4), so clipping acts
    "gspo": [
        "algorithm.name=gspo",
        "algorithm.num_minibatches=4",
        "data.prompts_per_step=8",
        "learner.lr=0.005",
    ],
    # CISPO off-policy: weights away from 1, every token keeps its gradient
    "cispo": [
        "algorithm.name=cispo",
        "algorithm.num_minibatches=2",
        "data.prompts_per_step=8",
        "learner.lr=0.005",
    ],
    # GDPO-style advantages with token-level mismatch correction (vLLM log-probs for every sample)
    "gdpo_tis": ["objective.name=gdpo", "algorithm.mismatch.level=token", "data.prompts_per_step=8"],
}
# REINFORCE++ runs in tests/integration/test_multi_objective.py (with the Lagrangian objective).


# All three run in `make test-all` only (CI budget, 45 minutes): their estimators, losses, clipping,
# aggregation and group filtering are unit-tested; these runs add dynamic sampling's refill rounds
# (dapo), KL in the reward (dr_grpo) and off-policy epochs with APO (rloo) on the real stack.
SLOW = {"dapo", "dr_grpo", "rloo"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASES])
def test_algorithm_runs(name, tmp_path):
    overrides = list(CASES[name])
    if name == "dr_grpo":
        local = tmp_path / "my-local-model"
        shutil.copytree(ensure_builtin("tiny"), local)
        overrides.append(f"model.path={local}")
    cfg = load_config(
        CONFIG,
        [f"trainer.output_dir={tmp_path / 'run'}", "trainer.max_steps=2", "data.eval=null", *overrides],
    )
    Trainer(cfg, str(CONFIG.parent)).run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss/policy"]) for r in rows)
    if name == "dapo":
        assert cfg.algorithm.clip_high == 0.28 and cfg.algorithm.loss_agg == "token_mean"
        # truncated completions (12 tokens is short for thinking) are masked; uninformative groups are
        # dropped and refilled in further rounds, up to max_sampling_rounds
        assert all(r["rollout/truncated"] > 0 for r in rows)
        assert any(r["rollout/groups_dropped"] > 0 for r in rows)
        assert all(r["rollout/rounds"] > 1 or r["rollout/prompts"] == 16 for r in rows)
    if name == "dr_grpo":
        assert all("kl/mean" in r for r in rows) and rows[1]["kl/mean"] != 0
    if name == "gspo":
        assert (cfg.algorithm.loss, cfg.algorithm.clip_low, cfg.algorithm.clip_high) == (
            "clip_sequence_mean",
            3e-4,
            4e-4,
        )
        assert all(r["loss/clip_frac"] > 0 for r in rows)
    if name == "cispo":
        assert cfg.algorithm.loss == "cispo" and all(r["loss/ratio_mean"] != 1.0 for r in rows)
    if name == "gdpo_tis":
        # the learner and vLLM agree to float precision, so the weights stay near 1 and none is truncated
        assert all(abs(r["mismatch/ratio_mean"] - 1) < 1e-2 and r["mismatch/outside"] == 0 for r in rows)
        assert all("objective/weight/correctness" in r for r in rows)
    if name == "rloo":
        assert rows[1]["loss/ratio_mean"] != 1.0 and rows[1]["loss/kl"] > 0
        assert all(
            0 < r["apo/dads_weight_mean"] <= 1 and r["apo/stcr_c_max"] >= 1 and r["policy/entropy"] > 0
            for r in rows
        )
        assert any(r["apo/dads_relaxed"] > 0 for r in rows)  # some positive samples of mixed groups got w < 1
