"""OFS-DPO's fast-slow term and swap rule, COFS-DPO's LoRA combination, online DPO pairing.

Hand values: with F = S the fast-slow term is -log sigmoid(0) = log 2 and dL_FS/dF(y_w) = -beta/2
(a non-zero gradient while plain DPO's gradient at its optimum side can fade).
"""

import math

import numpy as np
import pytest
import torch

from align.algorithms.dpo import best_worst_pairs
from align.algorithms.ofs import Chase
from align.losses.preference import fast_slow_losses
from align.models.lora import combine_lora, delta_w, truncate_lora


def _logps(seed: int, n: int = 3) -> torch.Tensor:
    return -torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 10


def test_identical_modules_give_log2_and_a_fast_gradient():
    w, lo, rw, rl = _logps(0), _logps(1), _logps(2), _logps(3)
    fast_w, fast_l = w.clone().requires_grad_(), lo.clone().requires_grad_()
    slow_w, slow_l = w.clone().requires_grad_(), lo.clone().requires_grad_()
    total, parts = fast_slow_losses(fast_w, fast_l, slow_w, slow_l, rw, rl, beta=0.1, alpha=0.5)
    torch.testing.assert_close(
        parts["fs"], torch.full((3,), math.log(2), dtype=torch.float64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(
        parts["dpo_fast"], parts["dpo_slow"]
    )  # identical modules, identical DPO losses
    # gradient of the fast-slow term alone with respect to the fast module: -beta * sigmoid(0) = -0.05 on y_w
    fs_only, _ = fast_slow_losses(fast_w, fast_l, slow_w, slow_l, rw, rl, beta=0.1, alpha=1.0)
    dpo_f = fast_slow_losses(fast_w, fast_l, slow_w, slow_l, rw, rl, beta=0.1, alpha=0.0)[0]
    g_total = torch.autograd.grad(fs_only.sum(), fast_w, retain_graph=True)[0]
    g_dpo = torch.autograd.grad(dpo_f.sum(), fast_w)[0]
    torch.testing.assert_close(
        g_total - g_dpo, torch.full((3,), -0.05, dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_each_module_gets_only_its_own_terms():
    fw, fl, sw, sl = (_logps(i).requires_grad_() for i in range(4))
    rw, rl = _logps(5), _logps(6)
    beta, alpha = 0.2, 0.7
    total, _ = fast_slow_losses(fw, fl, sw, sl, rw, rl, beta=beta, alpha=alpha, slow_term="neg_fs")
    total.sum().backward()
    h_dpo_f = beta * ((fw - rw) - (fl - rl)).detach()
    h_fs = beta * ((fw - sw) - (fl - sl)).detach()
    h_dpo_s = beta * ((sw - rw) - (sl - rl)).detach()
    # fast: d/dfw [-logsig(h_dpo_f) - alpha logsig(h_fs)] = -beta sig(-h_dpo_f) - alpha beta sig(-h_fs)
    torch.testing.assert_close(fw.grad, -beta * torch.sigmoid(-h_dpo_f) - alpha * beta * torch.sigmoid(-h_fs))
    # slow (neg_fs): d/dsw [-logsig(h_dpo_s) + alpha logsig(h_fs)] = -beta sig(-h_dpo_s) - alpha beta sig(-h_fs)
    torch.testing.assert_close(sw.grad, -beta * torch.sigmoid(-h_dpo_s) - alpha * beta * torch.sigmoid(-h_fs))
    for x in (fw, fl, sw, sl):
        x.grad = None
    total, _ = fast_slow_losses(fw, fl, sw, sl, rw, rl, beta=beta, alpha=alpha, slow_term="sf")
    total.sum().backward()
    # slow (sf): DPO of S against F: h_sf = -h_fs, d/dsw -alpha logsig(-h_fs) = -alpha beta sig(h_fs)
    torch.testing.assert_close(sw.grad, -beta * torch.sigmoid(-h_dpo_s) - alpha * beta * torch.sigmoid(h_fs))
    with pytest.raises(ValueError, match="slow_term"):
        fast_slow_losses(fw, fl, sw, sl, rw, rl, slow_term="x")


def test_swap_fires_exactly_once():
    chase = Chase(window=3)
    # window 1: fast better (no swap); window 2: slow better (swap); window 3: the new fast (old slow) better
    history = [
        (0.60, 0.65),
        (0.58, 0.64),
        (0.57, 0.62),
        (0.60, 0.50),
        (0.61, 0.49),
        (0.59, 0.48),
        (0.45, 0.60),
        (0.44, 0.61),
        (0.43, 0.60),
    ]
    fired = [chase.update(f, s) for f, s in history]
    assert fired == [False] * 5 + [True] + [False] * 3
    assert chase.fast == 1 and chase.slow == 0 and chase.swaps == 1
    # the state round-trips, mid-window too
    chase.update(0.5, 0.4)
    again = Chase(3)
    again.load_state_dict(chase.state_dict())
    assert again.state_dict() == chase.state_dict()
    assert [again.update(0.5, 0.4), again.update(0.5, 0.4)] == [False, True] and again.fast == 0


def _adapter(seed: int, r: int = 4, alpha: float = 8.0, dims=((6, 5), (7, 6))):
    rng = np.random.default_rng(seed)
    t = {}
    for i, (out_f, in_f) in enumerate(dims):
        t[f"base_model.model.layers.{i}.proj.lora_A.weight"] = rng.standard_normal((r, in_f)).astype(
            np.float32
        )
        t[f"base_model.model.layers.{i}.proj.lora_B.weight"] = rng.standard_normal((out_f, r)).astype(
            np.float32
        )
    return t, {"r": r, "lora_alpha": alpha, "peft_type": "LORA"}


def test_combination_is_linear_in_delta_w():
    x, y = _adapter(0), _adapter(1, r=2, alpha=2.0)
    for lam in (0.0, 0.3, 1.0):
        tensors, config = combine_lora([x, y], [lam, 1 - lam])
        got, dx, dy = delta_w(tensors, config), delta_w(*x), delta_w(*y)
        for key in dx:
            np.testing.assert_allclose(got[key], lam * dx[key] + (1 - lam) * dy[key], atol=1e-5)
    tensors, config = combine_lora([x, y], [0.3, 0.7])
    assert config["r"] == 6  # ranks add up: the combination is exact
    with pytest.raises(ValueError, match="every coefficient is 0"):
        combine_lora([x, y], [0, 0])


def test_coefficient_one_reproduces_the_adapter_bit_for_bit():
    x, y = _adapter(0), _adapter(1)
    for adapters, coeffs in (([x], [1.0]), ([x, y], [1.0, 0.0])):
        tensors, config = combine_lora(adapters, coeffs)
        assert config == x[1]
        for k in x[0]:
            assert np.array_equal(tensors[k], x[0][k])


def test_combined_adapter_outputs_in_peft():
    """A combination loaded into a real peft model gives the outputs of the base weights plus the
    combined delta W (so LoRA's scale is right), and coefficient 1 gives the stored adapter's
    outputs exactly."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))

    def peft_with(tensors, config):
        model = get_peft_model(
            _clone(base),
            LoraConfig(
                r=config["r"],
                lora_alpha=config["lora_alpha"],
                target_modules=["0", "2"],
                init_lora_weights=False,
            ),
        )
        set_peft_model_state_dict(model, {k: torch.from_numpy(v) for k, v in tensors.items()})
        return model

    def random_adapter(seed):
        torch.manual_seed(seed)
        m = get_peft_model(
            _clone(base), LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"], init_lora_weights=False)
        )
        return {k: v.detach().numpy().copy() for k, v in get_peft_model_state_dict(m).items()}, {
            "r": 2,
            "lora_alpha": 4.0,
        }

    x, y = random_adapter(1), random_adapter(2)
    inp = torch.randn(4, 5)
    with torch.no_grad():
        ref = peft_with(*x)(inp)
        same = peft_with(*combine_lora([x, y], [1.0, 0.0]))(inp)
        assert torch.equal(ref, same)
        mixed = peft_with(*combine_lora([x, y], [0.25, 0.75]))(inp)
        merged = _clone(base)
        dx, dy = delta_w(*x), delta_w(*y)
        for name, layer in (("0", merged[0]), ("2", merged[2])):
            key = next(k for k in dx if k.endswith(f".{name}"))
            layer.weight += torch.from_numpy(0.25 * dx[key] + 0.75 * dy[key]).float()
        torch.testing.assert_close(mixed, merged(inp), atol=1e-5, rtol=1e-5)


def _clone(module):
    import copy

    return copy.deepcopy(module)


def test_truncation_is_exact_within_rank():
    x, y = _adapter(0, r=2, alpha=4.0), _adapter(1, r=2, alpha=4.0)
    combined = combine_lora([x, y], [0.5, 0.5])  # rank 4
    tensors, config, err = truncate_lora(*combined, rank=4, alpha=8.0)
    assert err < 1e-6 and config["r"] == 4
    for k, v in delta_w(*combined).items():
        np.testing.assert_allclose(delta_w(tensors, config)[k], v, atol=1e-4)
    _, _, err = truncate_lora(*combined, rank=1, alpha=2.0)
    assert 0 < err < 1


def test_online_pairs_best_versus_worst_ties_dropped():
    rewards = np.array([0.0, 1.0, 0.5, 0.0, 1.0, 1.0, 1.0, 1.0, np.nan, 0.2, 0.0, 0.0])
    valid = np.isfinite(rewards)
    valid[9] = False  # a skipped sample does not count: the third group is left with a tie at 0
    pairs, dropped = best_worst_pairs(rewards, valid, 4)
    assert pairs == [(1, 0)] and dropped == 2
