"""AdaptThink pieces by hand: the reward, the split, the forced first token's old log-prob, and
the reference-accuracy cache (ALGORITHMS.md section 3)."""

import json
import math

import numpy as np
import pytest
import torch

from align.algorithms.adaptthink import ReferenceAccuracy, adaptthink_advantages, nothink_count
from align.losses import with_behaviour_logps
from align.rollout.batch import pack


def test_reward_acc_1_ref_075():
    # acc 1, ref 0.75: NoThinking 1 - 0.75 + 0.05 = 0.30, Thinking 0.25; a wrong NoThinking -0.70
    adv = adaptthink_advantages(
        np.array([1.0, 1.0, 0.0]), np.array([0.75, 0.75, 0.75]), np.array([True, False, True]), 0.05
    )
    np.testing.assert_allclose(adv, [0.30, 0.25, -0.70], atol=1e-12)


def test_no_group_normalisation():
    # the same rewards in a group of all-correct answers keep their (non-zero) advantages
    adv = adaptthink_advantages(np.ones(4), np.full(4, 0.5), np.array([1, 1, 0, 0], dtype=bool), 0.1)
    np.testing.assert_allclose(adv, [0.6, 0.6, 0.5, 0.5])


@pytest.mark.parametrize("n,ratio,want", [(16, 0.5, 8), (8, 0.5, 4), (8, 0.25, 2), (6, 0.0, 0), (6, 1.0, 6)])
def test_nothink_count(n, ratio, want):
    assert nothink_count(n, ratio) == want


def test_forced_first_token_takes_its_proposal_logprob_as_old():
    """pack marks each forced sample's first completion column; the loss's old log-probs take the
    proposal log-prob there, every other entry unchanged."""
    samples = [
        {"prompt_ids": [1, 2, 3], "completion_ids": [4, 5], "first_logp": math.log(0.5)},
        {"prompt_ids": [1, 2], "completion_ids": [4, 5, 6, 7], "first_logp": -2.0},
        {"prompt_ids": [1, 2, 3, 4], "completion_ids": [5, 6]},
    ]
    batch = pack(samples, 0)
    old = torch.full((3, 5), -1.0)
    out = with_behaviour_logps(old, batch["behaviour_logps"], batch["behaviour_mask"])
    want = old.clone()
    want[0, 2], want[1, 1] = math.log(0.5), -2.0
    torch.testing.assert_close(out, want)
    assert old.eq(-1.0).all()  # the input is not modified
    assert "behaviour_mask" not in pack(samples[2:], 0)  # nothing forced: nothing added


def test_reference_cache_computes_missing_reuses_and_refuses_other_settings(tmp_path):
    calls = []

    def compute(prompts):
        calls.append(list(prompts))
        return [len(p) / 10 for p in prompts]

    path = tmp_path / "ref.json"
    meta = {"model": "m", "K": 4}
    ref = ReferenceAccuracy(path, meta, compute)
    np.testing.assert_allclose(ref.get(["ab", "abc", "ab"]), [0.2, 0.3, 0.2])
    assert calls == [["ab", "abc"]]  # each prompt once
    again = ReferenceAccuracy(path, meta, compute)  # a new run reads the file
    np.testing.assert_allclose(
        again.get(["abc", "abcd"]), [0.3, 0.4]
    )  # a missing prompt is computed, not an error
    assert calls[-1] == ["abcd"]
    assert json.loads(path.read_text())["values"] == {"ab": 0.2, "abc": 0.3, "abcd": 0.4}
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temporary file, then renamed
    with pytest.raises(ValueError, match="other settings"):
        ReferenceAccuracy(path, {"model": "m", "K": 16}, compute)


def test_reference_cache_chunks_save_as_they_go(tmp_path):
    seen = []

    def compute(prompts):
        if len(seen) == 1:
            raise RuntimeError("cut off")
        seen.append(prompts)
        return [0.5] * len(prompts)

    ref = ReferenceAccuracy(tmp_path / "r.json", {}, compute)
    with pytest.raises(RuntimeError):
        ref.ensure(["a", "b", "c", "d"], chunk=2)
    # the first chunk survived the failure of the second
    assert json.loads((tmp_path / "r.json").read_text())["values"] == {"a": 0.5, "b": 0.5}


def test_default_path_depends_on_settings():
    a = ReferenceAccuracy.default_path({"K": 4})
    assert a == ReferenceAccuracy.default_path({"K": 4}) and a != ReferenceAccuracy.default_path({"K": 16})
