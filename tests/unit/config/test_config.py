"""Config validation: every shipped config loads; bad configs give clear, located errors."""

from pathlib import Path

import pytest
import yaml

from align.config import Config
from align.config.loading import ConfigError, config_help, load_config, save_resolved

CONFIGS = sorted(Path(__file__).resolve().parents[3].joinpath("configs").rglob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    if path.name.startswith("sweep"):
        from launch.sweep import plan_sweep

        for quick in (False, True):
            assert plan_sweep(str(path), quick=quick)[3]  # every trial's config is valid
        return
    config = load_config(path)
    assert isinstance(config, Config)


def test_required_keys_exist():
    c = load_config(None)
    for dotted in [
        "model.path",
        "algorithm.name",
        "trainer.max_steps",
        "trainer.output_dir",
        "trainer.seed",
        "rollout.num_workers",
        "learner.num_ranks",
    ]:
        obj = c
        for part in dotted.split("."):
            obj = getattr(obj, part)
    assert isinstance(c.rewards, list) and c.rewards[0].fn == "correctness"


def _write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_path_line_and_close_match(tmp_path):
    p = _write(tmp_path, "trainer:\n  max_steps: 3\n  out_dir: runs/x\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"unknown key 'trainer.out_dir'; did you mean 'trainer.output_dir'? ({p}, line 3)" in str(e.value)


def test_unknown_section_lists_close_match(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'learners'; did you mean 'learner'\?"):
        load_config(_write(tmp_path, "learners:\n  num_ranks: 2\n"))


def test_wrong_type_names_field_and_value(tmp_path):
    p = _write(tmp_path, "model:\n  path: builtin:tiny\ntrainer:\n  max_steps: ten\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "'trainer.max_steps': Input should be a valid integer" in str(e.value)
    assert "got 'ten' (str)" in str(e.value) and "line 4" in str(e.value)


def test_list_item_errors_use_index(tmp_path):
    p = _write(tmp_path, "rewards:\n  - fn: correctness\n  - fn: length\n    wieght: -1\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'rewards\[1\].wieght'; did you mean 'rewards\[1\].weight'\? \(.*line 4\)",
    ):
        load_config(p)


def test_group_size_one_is_impossible_for_group_methods():
    with pytest.raises(
        ConfigError, match=r"'algorithm.group_size': grpo compares samples within a group: set it to 2"
    ):
        load_config(None, ["algorithm.group_size=1"])


@pytest.mark.parametrize("modules", ["[q_proj, lm_head]", "[model.embed_tokens]"])
def test_lora_on_the_head_or_embeddings_is_refused(modules):
    # measured: vLLM 0.32 refuses such an adapter at its first generate ("expected target modules in {...}")
    with pytest.raises(
        ConfigError, match=r"'model.lora.target_modules': .*(lm_head|embed_tokens): the rollout workers' vLLM"
    ):
        load_config(None, [f"model.lora.target_modules={modules}"])


def test_overrides_apply_with_yaml_values_and_errors_name_the_override():
    c = load_config(
        None, ["trainer.max_steps=3", "algorithm.name=dapo", "model.lora.target_modules=[q_proj, v_proj]"]
    )
    assert c.trainer.max_steps == 3 and c.model.lora.target_modules == ["q_proj", "v_proj"]
    assert c.algorithm.clip_high == 0.28 and c.algorithm.loss_agg == "token_mean"  # derived per algorithm
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'rollout.tempreature'; did you mean 'rollout.temperature'\? \(from --set rollout.tempreature=0.5\)",
    ):
        load_config(None, ["rollout.tempreature=0.5"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["trainer.max_steps"])


def test_duplicate_reward_names_rejected():
    with pytest.raises(ConfigError, match="two rewards share the name 'correctness'"):
        load_config(None, ["rewards=[{fn: correctness}, {fn: correctness, weight: 2}]"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="line 2: not valid YAML"):
        load_config(_write(tmp_path, "a: [1\nb: 2\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    c = load_config(None, ["algorithm.name=dr_grpo", "trainer.seed=7"])
    path = save_resolved(c, tmp_path / "run")
    saved = yaml.safe_load(path.read_text())
    assert saved["algorithm"]["loss_agg"] == "seq_mean_token_sum_norm"
    assert load_config(path) == c


def test_help_lists_every_key_with_help_text():
    rows = config_help()
    assert any(r.startswith("trainer.max_steps  (int, default 20)") for r in rows)
    assert any(r.startswith("rewards[i].fn  (str, required)") for r in rows)
    assert any(r.startswith("rewards[i].url  (str, required)") and r.endswith("[type: http]") for r in rows)
    assert any(
        r.startswith("algorithm.preference.beta") and r.endswith("[name: dpo|simpo|reward_model]")
        for r in rows
    )
    assert all(not r.rstrip().endswith("None") for r in rows)  # every key has a description


def test_runs_that_cannot_be_placed_are_refused():
    from align.runner.cluster import check_resources

    cfg = load_config(None, ["learner.num_ranks=4"])  # 1 rollout CPU + 4 x 0.5 learner CPUs = 3
    with pytest.raises(
        ValueError, match=r"needs 3 Ray CPUs .* but the cluster has 2: lower learner.num_ranks"
    ):
        check_resources(cfg, {"CPU": 2.0}, gpu_per_actor=0)
    check_resources(load_config(None), {"CPU": 2.0}, gpu_per_actor=0)  # the default fits 2 cores
    with pytest.raises(ValueError, match="needs 2 Ray GPUs"):
        check_resources(
            load_config(None, ["learner.num_ranks=1"]), {"CPU": 16.0, "GPU": 1.0}, gpu_per_actor=1
        )


def _objective_config(tmp_path, body: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text("rewards:\n  - fn: correctness\n  - fn: brevity\n" + body)
    return p


def test_objective_names_are_checked_against_rewards(tmp_path):
    p = _objective_config(
        tmp_path,
        "objective:\n  name: lagrangian\n  lagrangian:\n    task: corectness\n"
        "    constraints: [{name: brevity, threshold: 0.5}]\n",
    )
    with pytest.raises(ConfigError, match="did you mean 'correctness'"):
        load_config(p)
    p = _objective_config(
        tmp_path,
        "objective:\n  name: lagrangian\n  lagrangian:\n    task: correctness\n"
        "    constraints: [{name: brevty, threshold: 0.5}]\n",
    )
    with pytest.raises(ConfigError, match=r"constraints.0.name.*did you mean 'brevity'"):
        load_config(p)
    p = _objective_config(
        tmp_path,
        "objective:\n  name: lagrangian\n  lagrangian:\n    task: kl\n"
        "    constraints: [{name: brevity, threshold: 0.5}]\n",
    )
    with pytest.raises(ConfigError, match="'kl' needs algorithm.kl.coef > 0"):
        load_config(p)
    p = _objective_config(
        tmp_path,
        "objective:\n  name: lagrangian\n  lagrangian:\n    task: correctness\n"
        "    constraints: [{name: brevity, threshold: 0.5}]\n"
        "    threshold_search: {true_score: correctness}\n",
    )
    with pytest.raises(ConfigError, match="needs search_low and search_high on constraints \\['brevity'\\]"):
        load_config(p)
    p = _objective_config(tmp_path, "objective:\n  name: hypervolume\n  hypervolume: {variant: wieghts}\n")
    with pytest.raises(ConfigError, match="objective.hypervolume.variant"):
        load_config(p)
    with pytest.raises(ConfigError, match="validates on data.eval"):
        load_config(_objective_config(tmp_path, "objective: {name: hypervolume}\n"), ["data.eval=null"])


def test_sweep_file_errors_name_the_key_and_line(tmp_path):
    from launch.sweep import SweepConfig

    p = tmp_path / "sweep.yaml"
    p.write_text("base: run.yaml\nobjectives: {correctness: max, length: min}\nstepz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(p, model=SweepConfig)
    msg = str(err.value)
    assert "unknown key 'stepz'; did you mean 'steps'?" in msg and "line 3" in msg
    p.write_text("base: run.yaml\nobjectives: {correctness: max, length: min}\n")
    with pytest.raises(ConfigError, match=r"minimised objectives \['length'\]"):
        load_config(p, model=SweepConfig)


def test_sweep_weight_vectors():
    from launch.sweep import WeightsSection, simplex_grid, weight_vectors

    assert simplex_grid(3, 2) == [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.0],
        [0.5, 0.0, 0.5],
        [0.0, 1.0, 0.0],
        [0.0, 0.5, 0.5],
        [0.0, 0.0, 1.0],
    ]
    vs = weight_vectors(WeightsSection(kind="grid", divisions=2, min_weight=0.1), 3)
    assert vs[0] == [0.8, 0.1, 0.1] and all(abs(sum(v) - 1) < 1e-9 and min(v) >= 0.1 for v in vs)
    rs = weight_vectors(WeightsSection(kind="random", num=4, seed=3, min_weight=0.0), 2)
    assert len(rs) == 4 and all(abs(sum(v) - 1) < 1e-6 for v in rs)
    with pytest.raises(ConfigError, match="min_weight"):
        weight_vectors(WeightsSection(min_weight=0.4), 3)


def test_adaptthink_and_apo_options_are_checked():
    at = load_config(None, ["algorithm.name=adaptthink"])
    assert at.algorithm.ratio == "sequence_mean" and at.algorithm.adaptthink.delta == 0.05
    assert at.algorithm.adaptthink.nothink_ratio == 0.5 and at.algorithm.adaptthink.ref_samples == 16
    assert load_config(None, []).algorithm.ratio == "token"
    with pytest.raises(ConfigError, match="set algorithm.kl.coef > 0"):
        load_config(None, ["algorithm.apo.dads=true"])
    with pytest.raises(
        ConfigError,
        match=r"algorithm.apo.accuracy: 'corectness' is not a reward name.*did you mean 'correctness'",
    ):
        load_config(None, ["algorithm.apo.stcr=true", "algorithm.apo.accuracy=corectness"])
    with pytest.raises(ConfigError, match="group advantages of the GRPO family, not adaptthink"):
        load_config(None, ["algorithm.name=adaptthink", "algorithm.apo.stcr=true"])
    with pytest.raises(ConfigError, match="objective.name: static"):
        load_config(None, ["algorithm.name=adaptthink", "objective.name=gradient"])
    with pytest.raises(ConfigError, match="algorithm.adaptthink.nothink_ratio"):
        load_config(None, ["algorithm.name=adaptthink", "algorithm.adaptthink.nothink_ratio=1.5"])
    with pytest.raises(ConfigError, match="algorithm.apo.stcr_base"):
        load_config(None, ["algorithm.apo.stcr_base=0.9"])


def test_another_methods_settings_load_with_a_warning(caplog):
    """Old configs carried every method's section: they still load; what does nothing is named."""
    with caplog.at_level("WARNING", logger="align.config"):
        cfg = load_config(None, ["algorithm.name=dpo", "algorithm.apo.stcr=true", "algorithm.group_size=4"])
    assert cfg.algorithm.name == "dpo" and not hasattr(cfg.algorithm, "apo")
    assert "algorithm.apo is a setting of grpo" in caplog.text and "not of algorithm.name dpo" in caplog.text
    assert "algorithm.group_size is a setting of" in caplog.text
    with pytest.raises(
        ConfigError, match="unknown key 'algorithm.grop_size'; did you mean 'algorithm.group_size'"
    ):
        load_config(None, ["algorithm.grop_size=4"])
    with pytest.raises(
        ConfigError, match="'algorithm.name': 'grpoo' is not an algorithm.*did you mean 'grpo'"
    ):
        load_config(None, ["algorithm.name=grpoo"])


def test_preference_options_are_checked():
    dpo = load_config(None, ["algorithm.name=dpo"])
    assert dpo.algorithm.preference.beta == 0.1 and dpo.algorithm.preference.loss_type == "sigmoid"
    assert load_config(None, ["algorithm.name=simpo"]).algorithm.preference.beta == 2.0
    cases = [
        (["algorithm.name=simpo", "algorithm.preference.loss_type=ipo"], "simpo has its own loss"),
        (
            [
                "algorithm.name=dpo",
                "algorithm.preference.loss_type=hinge",
                "algorithm.preference.label_smoothing=0.1",
            ],
            "label_smoothing applies to loss_type: sigmoid",
        ),
        (["algorithm.name=dpo", "algorithm.preference.num_completions=1"], "num_completions"),
        (["algorithm.name=dpo", "algorithm.preference.ofs.lr_ratio=1"], "lr_ratio"),
        (["algorithm.name=dpo", "objective.name=hypervolume"], "ranks completions by static reward weights"),
        (
            ["algorithm.name=dpo", "algorithm.preference.online=true", "rollout.temperature=0"],
            "rollout.temperature > 0",
        ),
        (
            ["algorithm.name=dpo", "algorithm.preference.domains=[{name: a, train: x, eval: y}]"],
            "two or more domains",
        ),
        (["algorithm.name=dpo", "algorithm.preference.cofs.grid=[0.5, 2]"], "lambdas must lie in"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides)
    two = "[{name: a, train: x, eval: y, steps: 3}, {name: b, train: z, eval: w, steps: 4}]"
    cfg = load_config(None, ["algorithm.name=dpo", f"algorithm.preference.domains={two}"])
    assert cfg.trainer.max_steps == 7  # the domains' steps
    with pytest.raises(ConfigError, match="cofs.score: 'accuracy' is not a reward name"):
        load_config(
            None,
            [
                "algorithm.name=dpo",
                f"algorithm.preference.domains={two}",
                "algorithm.preference.cofs.score=accuracy",
            ],
        )


def _rewards(tmp_path, entries):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"rewards": entries}))
    return load_config(path)


def test_reward_entries_of_each_type(tmp_path):
    c = _rewards(
        tmp_path,
        [
            {"fn": "correctness"},
            {"model": "runs/rm/reward_model", "heads": ["helpful", "safe"]},
            {"url": "http://127.0.0.1:8000", "name": "remote", "on_failure": "retry"},
        ],
    )
    kinds = [(r.type, r.name, r.on_failure) for r in c.rewards]
    assert kinds == [
        ("function", "correctness", "error"),
        ("model", "reward_model", "error"),
        ("http", "remote", "retry"),
    ]
    assert c.rewards[2].timeout == 30.0 and c.rewards[0].timeout is None  # http requests always have one
    legacy = _rewards(tmp_path, [{"fn": "correctness", "nan_policy": "skip"}]).rewards[0]
    assert legacy.on_failure == "skip"  # the old key still works


@pytest.mark.parametrize(
    "entry,fragment",
    [
        ({"fn": "correctness", "url": "http://x:1"}, "exactly one of 'fn'"),
        ({"name": "nothing"}, "exactly one of 'fn'"),
        ({"url": "127.0.0.1:8000"}, "not an http(s) URL"),
        (
            {"fn": "correctness", "heads": ["a"]},
            "'rewards[0].heads' is a setting of type model, not of this reward's type function",
        ),
        ({"fn": "correctness", "on_failure": "ignore"}, "on_failure"),
        ({"fn": "correctness", "on_failure": "skip", "nan_policy": "error"}, "contradicts"),
        ({"type": "http", "fn": "correctness"}, "type: http needs 'url'"),
    ],
)
def test_bad_reward_entries_are_named(tmp_path, entry, fragment):
    with pytest.raises(ConfigError) as err:
        _rewards(tmp_path, [entry])
    assert fragment in str(err.value) and "rewards" in str(err.value)


def test_reward_model_training_needs_no_reward_and_no_online_options(tmp_path):
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump({"algorithm": {"name": "reward_model"}, "rewards": []}))
    assert load_config(path).algorithm.reward_model.finetune == "lora"
    path.write_text(
        yaml.safe_dump({"algorithm": {"name": "reward_model", "preference": {"online": True}}, "rewards": []})
    )
    with pytest.raises(ConfigError, match="trains offline"):
        load_config(path)


def test_rollout_lora_mode_and_learner_autocast():
    assert load_config(None, []).rollout.lora_mode == "auto"
    with pytest.raises(ConfigError, match="lora_mode 'merged' is the CPU path"):
        load_config(None, ["rollout.lora_mode=merged", "model.device=cuda"])
    assert (
        load_config(None, ["learner.autocast=off"]).learner.autocast == "off"
    )  # YAML reads a bare off as false
    assert load_config(None, ["learner.autocast=bf16"]).learner.autocast == "bf16"
    with pytest.raises(ConfigError, match="learner.autocast"):
        load_config(None, ["learner.autocast=fp8"])


def test_max_staleness_is_checked_against_the_method():
    """Asynchronous training needs a method that generates during training, on one prompt set."""
    assert load_config(None, []).rollout.max_staleness == 0
    for ok in (
        ["algorithm.name=dapo"],
        ["algorithm.name=adaptthink"],
        ["algorithm.name=dpo", "algorithm.preference.online=true"],
    ):
        assert load_config(None, [*ok, "rollout.max_staleness=2"]).rollout.max_staleness == 2
    two = "[{name: a, train: x, eval: y, steps: 3}, {name: b, train: z, eval: w, steps: 4}]"
    cases = [
        (["algorithm.name=dpo"], "trains on fixed pairs"),
        (["algorithm.name=reward_model", "rewards=[]"], "trains on fixed pairs"),
        (["algorithm.name=dpo", f"algorithm.preference.domains={two}"], "switches the prompt set"),
        (["rollout.max_staleness=-1"], "rollout.max_staleness"),
        (["rollout.behaviour_logps=rollout", "rollout.max_staleness=0"], "applies to asynchronous training"),
    ]
    for overrides, message in cases:
        extra = [] if any("max_staleness" in o for o in overrides) else ["rollout.max_staleness=1"]
        with pytest.raises(ConfigError, match=message):
            load_config(None, [*overrides, *extra])


def test_ppo_options_are_checked():
    ppo = load_config(None, ["algorithm.name=ppo"])
    alg = ppo.algorithm
    # one sample per prompt, a token-level clipped loss, KL k1 0.05 in the reward (TRL's PPO defaults)
    assert (alg.group_size, alg.loss, alg.loss_agg, alg.clip_low, alg.clip_high) == (
        1,
        "clip",
        "token_mean",
        0.2,
        0.2,
    )
    assert (alg.kl.coef, alg.kl.where, alg.kl.estimator) == (0.05, "reward", "k1")
    assert (alg.ppo.gamma, alg.ppo.lam, alg.ppo.value_clip, alg.ppo.critic_model) == (1.0, 0.95, 0.2, None)
    # a key given keeps the other defaults
    kl = load_config(None, ["algorithm.name=ppo", "algorithm.kl.coef=0.1"]).algorithm.kl
    assert (kl.coef, kl.where, kl.estimator) == (0.1, "reward", "k1")
    assert load_config(None, ["algorithm.name=ppo", "algorithm.kl.where=loss"]).algorithm.kl.where == "loss"
    for bad, fragment in [
        ("algorithm.loss=clip_sequence_mean", "per token"),
        ("algorithm.dynamic_sampling=true", "ppo has none"),
        ("algorithm.apo.stcr=true", "not ppo"),
        ("algorithm.ppo.lam=1.5", "algorithm.ppo.lam"),
        ("algorithm.ppo.critic_warmup=-1", "algorithm.ppo.critic_warmup"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            load_config(None, ["algorithm.name=ppo", bad])
    with pytest.raises(ConfigError, match="ppo puts the KL penalty per token"):
        load_config(
            None,
            [
                "algorithm.name=ppo",
                "objective.name=lagrangian",
                "objective.lagrangian.task=kl",
                "objective.lagrangian.constraints=[{name: correctness, threshold: 0.5}]",
            ],
        )
