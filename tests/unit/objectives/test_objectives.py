"""The objectives behind the seam, driven with hand-made scores, advantages and Gram matrices."""

import logging

import numpy as np
import pytest

from align.algorithms.grpo import compute_advantages
from align.config import Config
from align.objectives import build_objective

NAMES = ["correctness", "brevity", "shows_work"]


def config(objective: dict, algorithm: str = "dr_grpo", rewards=None) -> Config:
    rewards = rewards or [
        {"fn": "correctness", "weight": 0.5},
        {"fn": "brevity", "weight": 0.3},
        {"fn": "shows_work", "weight": 0.2},
    ]
    return Config.model_validate(
        {"algorithm": {"name": algorithm}, "rewards": rewards, "objective": objective}
    )


def build(cfg: Config):
    return build_objective(
        cfg.objective.name, [r.name for r in cfg.rewards], {r.name: r.weight for r in cfg.rewards}, cfg
    )


def ctx(G=2, estimator="group_none", **extra):
    def advantages(r):
        r = np.asarray(r, dtype=np.float64)
        cols = r[:, None] if r.ndim == 1 else r
        out = np.stack([compute_advantages(estimator, c, G) for c in cols.T], axis=1)
        return out[:, 0] if r.ndim == 1 else out

    return {"group_size": G, "advantages": advantages, "kl_reward": None, **extra}


SCORES = np.array([[1.0, 0.2, 1.0], [0.0, 0.9, 0.0], [1.0, 0.5, 0.5], [1.0, 0.6, 0.0]])


# ---------------------------------------------------------------- static
def test_static_is_the_weighted_sum_and_logs_weights():
    obj = build(config({"name": "static"}))
    np.testing.assert_allclose(obj.shape(SCORES, ctx()).rewards, SCORES @ [0.5, 0.3, 0.2])
    assert obj.state_metrics()["objective/weight/brevity"] == 0.3


# ---------------------------------------------------------------- hypervolume
def test_hypervolume_meta_reward_scales_by_hvc_against_the_initial_point():
    obj = build(config({"name": "hypervolume", "hypervolume": {"every": 2}}))
    assert obj.wants_eval(2) and not obj.wants_eval(3)
    obj.observe_eval(0, {"correctness": 0.5, "brevity": 0.5, "shows_work": 0.5})
    np.testing.assert_allclose(
        obj.shape(SCORES, ctx()).rewards, SCORES @ [0.5, 0.3, 0.2]
    )  # meta 1 before any HVC
    out = obj.observe_eval(2, {"correctness": 0.7, "brevity": 0.6, "shows_work": 0.5 + 1e-9})
    hvc = 0.2 * 0.1 * 1e-9
    assert out["objective/hvc"] == pytest.approx(hvc, rel=1e-6)
    assert obj.meta == pytest.approx(0.5 + 1.5 * np.tanh(hvc))
    # a point that regresses on one metric adds no volume: the meta reward drops to 0.5
    obj.observe_eval(4, {"correctness": 0.9, "brevity": 0.4, "shows_work": 0.6})
    assert obj.meta == 0.5
    np.testing.assert_allclose(obj.shape(SCORES, ctx()).rewards, 0.5 * SCORES @ [0.5, 0.3, 0.2])
    assert obj.state_metrics()["objective/buffer_size"] == 1.0


def test_hypervolume_meta_reward_warns_under_std_normalised_advantages(caplog):
    with caplog.at_level(logging.WARNING):
        build(config({"name": "hypervolume"}, algorithm="grpo"))
    assert "changes nothing" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build(config({"name": "hypervolume"}, algorithm="dr_grpo"))
        build(config({"name": "hypervolume", "hypervolume": {"variant": "weights"}}, algorithm="grpo"))
    assert "changes nothing" not in caplog.text


def test_hypervolume_weights_move_toward_the_lagging_objective():
    cfg = config(
        {
            "name": "hypervolume",
            "hypervolume": {"variant": "weights", "metrics": {"correctness": "max", "brevity": "max"}},
        },
        rewards=[{"fn": "correctness", "weight": 0.5}, {"fn": "brevity", "weight": 0.5}],
    )
    obj = build(cfg)
    obj.observe_eval(0, {"correctness": 0.5, "brevity": 0.5})
    # correctness improved by 40% of its start, brevity by 10%: a unit of brevity adds more volume
    out = obj.observe_eval(1, {"correctness": 0.7, "brevity": 0.55})
    w = obj.state_metrics()
    assert w["objective/weight/brevity"] > 0.5 > w["objective/weight/correctness"]
    assert w["objective/weight/brevity"] + w["objective/weight/correctness"] == pytest.approx(1.0)
    # the relative point is z = (0.4, 0.1), reference (-1, -1): HV = (1.4)(1.1), linear in each
    # coordinate, so the forward difference is exact: dHV/dz_c = 1.1, dHV/dz_b = 1.4
    assert out["objective/hv_gradient/correctness"] == pytest.approx(1.1, abs=1e-9)
    assert out["objective/hv_gradient/brevity"] == pytest.approx(1.4, abs=1e-9)
    g = np.array([1.1, 1.4]) / 2.5
    expect = np.exp(np.log([0.5, 0.5]) + g)
    np.testing.assert_allclose(obj.w, expect / expect.sum())


def test_hypervolume_state_round_trips():
    obj = build(config({"name": "hypervolume"}))
    obj.observe_eval(0, {"correctness": 0.5, "brevity": 0.5, "shows_work": 0.5})
    obj.observe_eval(1, {"correctness": 0.6, "brevity": 0.6, "shows_work": 0.6})
    other = build(config({"name": "hypervolume"}))
    other.load_state_dict(obj.state_dict())
    assert other.state_dict() == obj.state_dict()
    assert other.state_metrics() == obj.state_metrics()


# ---------------------------------------------------------------- gradient
def test_gradient_weighting_equal_influence_changes_nothing():
    obj = build(config({"name": "gradient"}))
    obj.before_update(SCORES, ctx(gradient_gram=lambda adv, pattern, clip: np.ones((3, 3))))
    np.testing.assert_allclose(obj.w, [0.5, 0.3, 0.2])


def test_gradient_weighting_step_is_exact():
    cfg = config(
        {"name": "gradient", "gradient": {"regularization": 0.01}}
    )  # step = lr / mu = 1e-4 / 0.01 = 0.01
    obj = build(cfg)
    seen = {}

    def gram(adv, pattern, clip):
        seen["adv"], seen["clip"] = adv, clip
        return np.array([[4.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])

    out = obj.before_update(SCORES, ctx(gradient_gram=gram))
    # influence I = S 1 = (5, 2, 2); w ratio correctness/brevity moves by exp(0.01 * 3)
    assert out["objective/influence/correctness"] == 5.0
    assert (obj.w[0] / obj.w[1]) / (0.5 / 0.3) == pytest.approx(np.exp(0.01 * 3))
    assert obj.w.sum() == pytest.approx(1.0)
    # per-objective advantages of each reward column alone, this batch's group advantages
    np.testing.assert_allclose(seen["adv"][1], compute_advantages("group_none", SCORES[:, 1], 2))
    assert seen["clip"] == 1.0 and out["objective/grad_norm/correctness"] == 2.0


def test_gradient_weighting_default_step_is_the_authors_effective_step():
    """Default: eta = 0.1 (the authors' lr 1e-6 / regularization 1e-5), whatever learner.lr is (it
    was lr / 1e-5 = 10 at the LoRA lr 1e-4, which collapses the weights)."""
    obj = build(config({"name": "gradient"}))
    gram = np.array([[4.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    obj.before_update(SCORES, ctx(gradient_gram=lambda *a: gram))
    assert (obj.w[0] / obj.w[1]) / (0.5 / 0.3) == pytest.approx(np.exp(0.1 * 3))


@pytest.mark.parametrize(
    "normalize,scale", [("grad_norm", (2.0 + 1.0 + 2**0.5) / 3), ("grad_norm_sq", (4.0 + 1.0 + 2.0) / 3)]
)
def test_gradient_weighting_normalisations(normalize, scale):
    """grad_norm divides the influence by the mean gradient norm (the authors' commented-out code),
    grad_norm_sq by the mean squared norm."""
    obj = build(config({"name": "gradient", "gradient": {"normalize": normalize}}))
    gram = np.array([[4.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    out = obj.before_update(SCORES, ctx(gradient_gram=lambda *a: gram))
    assert out["objective/influence/correctness"] == pytest.approx(5.0 / scale)


def test_gradient_weighting_accumulates_before_stepping():
    obj = build(config({"name": "gradient", "gradient": {"accumulation_steps": 2, "regularization": 0.01}}))
    grams = iter([np.diag([3.0, 1.0, 1.0]), np.diag([1.0, 1.0, 1.0])])
    obj.before_update(SCORES, ctx(gradient_gram=lambda *a: next(grams)))
    np.testing.assert_allclose(obj.w, [0.5, 0.3, 0.2])
    obj.before_update(SCORES, ctx(gradient_gram=lambda *a: next(grams)))
    assert (obj.w[0] / obj.w[1]) / (0.5 / 0.3) == pytest.approx(np.exp(0.01 * 1.0))  # mean I = (2, 1, 1)


def test_weight_zero_objective_is_monitored_not_weighted():
    cfg = config(
        {"name": "gradient"},
        rewards=[
            {"fn": "correctness", "weight": 1.0},
            {"fn": "brevity", "weight": 1.0},
            {"fn": "efficiency", "weight": 0.0},
        ],
    )
    obj = build(cfg)
    seen = {}
    obj.before_update(
        SCORES, ctx(gradient_gram=lambda adv, *a: seen.setdefault("k", adv.shape[0]) and np.eye(2))
    )
    assert seen["k"] == 2 and obj.w[2] == 0.0
    with pytest.raises(ValueError, match="negative weights"):
        build(config({"name": "gradient"}, rewards=[{"fn": "correctness"}, {"fn": "length", "weight": -0.1}]))


# ---------------------------------------------------------------- lagrangian
def lagrangian(kind="equal", **extra):
    return build(
        config(
            {
                "name": "lagrangian",
                "lagrangian": {
                    "task": "correctness",
                    "init_std": 0.0,
                    "lr": 1.0,
                    "momentum": 0.0,
                    "constraints": [{"name": "brevity", "threshold": 0.5, "kind": kind}],
                    **extra,
                },
            }
        )
    )


def test_lagrangian_mixed_advantage_from_per_objective_group_advantages():
    obj = lagrangian()
    obj.multipliers.raw = np.array([np.arctanh(0.25)])
    out = obj.shape(SCORES, ctx())
    a_task = compute_advantages("group_none", SCORES[:, 0], 2)
    a_con = compute_advantages("group_none", SCORES[:, 1], 2)
    np.testing.assert_allclose(out.advantages, 0.75 * a_task + 0.25 * a_con)
    # limits: s = 0 is the task alone; s = 1 (the only constraint at full weight) is the constraint alone
    obj.multipliers.raw = np.array([0.0])
    np.testing.assert_allclose(obj.shape(SCORES, ctx()).advantages, a_task)
    obj.multipliers.raw = np.array([50.0])
    np.testing.assert_allclose(obj.shape(SCORES, ctx()).advantages, a_con, atol=1e-12)


def test_lagrangian_multiplier_direction_under_constant_violation():
    obj = lagrangian()  # brevity batch mean 0.55 > theta 0.5: its weight must go down (towards negative)
    for _ in range(5):
        out = obj.update(SCORES, ctx())
    assert out["objective/violation/brevity"] == pytest.approx(0.05)
    assert obj.multipliers.weights[0] < 0
    low = lagrangian()
    for _ in range(5):
        low.update(SCORES * np.array([1, 0.5, 1]), ctx())  # mean 0.275 < 0.5: weight goes up
    assert low.multipliers.weights[0] > 0


def test_lagrangian_authors_clip_and_updates_per_step():
    """The authors clip the multipliers' gradient at 0.5 and step after every minibatch:
    updates_per_step=2 is two SGD steps, on each half of the samples."""
    from align.config.objectives import LagrangianSection
    from align.objectives.multipliers import Multipliers

    assert LagrangianSection().max_grad_norm == 0.5
    obj = lagrangian(updates_per_step=2, max_grad_norm=None)
    obj.update(SCORES, ctx())
    want = Multipliers(1, "tanh", lr=1.0, momentum=0.0, init=np.zeros(1))
    want.step(SCORES[:2, 1:2].mean(axis=0), np.array([0.5]))  # brevity 0.55 -> violation +0.05
    want.step(SCORES[2:, 1:2].mean(axis=0), np.array([0.5]))  # 0.55 again
    np.testing.assert_allclose(obj.multipliers.raw, want.raw)
    clipped = lagrangian(lr=1.0)  # the default clip 0.5 bounds one step's move
    clipped.update(SCORES * np.array([1, 0.0, 1]), ctx())  # violation -0.5 -> gradient norm 0.5
    assert abs(clipped.multipliers.raw[0]) <= 0.5 + 1e-12


def test_lagrangian_per_reward_advantage_normalisation():
    obj = lagrangian(normalize_advantages=True)
    obj.multipliers.raw = np.array([np.arctanh(0.25)])
    a_task = compute_advantages("group_none", SCORES[:, 0], 2)
    a_con = compute_advantages("group_none", SCORES[:, 1], 2)

    def z(a):
        return (a - a.mean()) / (a.std() + 1e-8)

    np.testing.assert_allclose(obj.shape(SCORES, ctx()).advantages, 0.75 * z(a_task) + 0.25 * z(a_con))


def test_lagrangian_at_most_is_at_least_on_the_negated_reward():
    obj = lagrangian(kind="at_most")  # brevity <= 0.5 but it is 0.55: it must be pushed down
    assert obj.squash == "sigmoid"
    s0 = obj.multipliers.weights[0]
    for _ in range(3):
        obj.update(SCORES, ctx())
    assert obj.multipliers.weights[0] > s0  # weight of the negated brevity grows
    adv = obj.shape(SCORES, ctx()).advantages
    s = obj.multipliers.weights[0]
    np.testing.assert_allclose(
        adv,
        (1 - s) * compute_advantages("group_none", SCORES[:, 0], 2)
        - s * compute_advantages("group_none", SCORES[:, 1], 2),
    )


def test_lagrangian_threshold_search_runs_segments_and_keeps_the_best():
    cfg = config(
        {
            "name": "lagrangian",
            "lagrangian": {
                "task": "correctness",
                "constraints": [{"name": "brevity", "threshold": 0.5, "search_low": 0.3, "search_high": 0.9}],
                "threshold_search": {
                    "true_score": "efficiency",
                    "steps_per_eval": 2,
                    "check_every": 1,
                    "max_evals": 4,
                },
            },
        },
        rewards=[{"fn": "correctness"}, {"fn": "brevity"}, {"fn": "efficiency", "weight": 0.0}],
    )
    obj = build(cfg)
    theta0 = obj.thresholds.copy()
    assert 0.3 <= theta0[0] <= 0.9
    obj.observe_eval(0, {"brevity": 0.1, "efficiency": 0.2})  # the step-0 eval never counts
    told = []
    for step in range(1, 40):
        obj.update(SCORES, ctx())
        if obj.wants_eval(step):
            theta = obj.thresholds[0]
            res = {"brevity": theta, "efficiency": -((theta - 0.6) ** 2)}  # constraint reached at once
            out = obj.observe_eval(step, res)
            if "objective/nm/f" in out:
                told.append((theta, out["objective/nm/f"]))
        if obj.nm.done:
            break
    assert len(told) == 4 and obj.nm.done
    best = min(told, key=lambda t: t[1])
    assert obj.thresholds[0] == best[0]
    other = build(cfg)
    other.load_state_dict(obj.state_dict())
    assert other.nm.done and other.thresholds[0] == best[0]


def test_skipped_or_not_applicable_samples_take_their_group_mean():
    from align.algorithms.grpo import fill_group_mean as _fill_group_mean

    r = np.array([1.0, np.nan, 0.0, 0.5, np.nan, np.nan])
    out = _fill_group_mean(r, np.isnan(r), 3)
    np.testing.assert_allclose(out, [1.0, 0.5, 0.0, 0.5, 0.5, 0.5])
    empty = np.array([np.nan, np.nan])
    np.testing.assert_allclose(_fill_group_mean(empty, np.isnan(empty), 2), [0.0, 0.0])
