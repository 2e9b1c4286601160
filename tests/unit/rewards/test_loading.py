"""Loading reward functions by spec; a TRL reward function copied unchanged plugs in."""

import inspect
import textwrap

import pytest

import rewards
from rewards import Reward, RewardLoadError, load, score_batch


def test_builtin_names_load():
    assert load("correctness") is rewards.correctness
    assert set(rewards.BUILTIN_REWARDS) == {
        "correctness",
        "think_format",
        "length",
        "no_thinking",
        "brevity",
        "shows_work",
        "efficiency",
        "number_match",
    }


def test_trl_reward_function_copied_unchanged_loads_by_file_and_scores(tmp_path):
    """TRL's own think_format_reward, its source copied verbatim into a user file."""
    from trl.rewards import think_format_reward

    source = "import re\n\n\n" + inspect.getsource(think_format_reward)
    (tmp_path / "my_rewards.py").write_text(source)
    fn = load(f"{tmp_path}/my_rewards.py:think_format_reward")
    completions = [
        [{"role": "assistant", "content": "<think>\nreasoning\n</think>\nanswer"}],
        [{"role": "assistant", "content": "<think>\nno closing tag"}],
    ]
    out = score_batch([Reward("think", fn)], ["q1", "q2"], completions, {"answer": ["a", "b"]})
    assert out.names == ["think"]
    assert out.scores[:, 0].tolist() == [1.0, 0.0]
    assert out.scores[:, 0].tolist() == think_format_reward(completions)


def test_trl_docs_style_reward_relative_to_config_dir(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "len_reward.py").write_text(
        textwrap.dedent("""
        def reward_len(completions, **kwargs):
            return [-abs(20 - len(completion)) for completion in completions]
    """)
    )
    monkeypatch.chdir(tmp_path)
    fn = load("len_reward.py:reward_len", base_dir=tmp_path / "conf")
    assert fn(completions=["x" * 5, "y" * 20]) == [-15, 0]


def test_module_spec_loads():
    fn = load("rewards.builtin:no_thinking")
    assert fn([None], ["</think>4"]) == [1.0]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("nofile.py:f", "file not found"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("rewards.builtin:correctnes", "did you mean 'correctness'"),
        ("just_a_name", "expected 'package.module:function'"),
        ("rewards.builtin:THINK", "is not callable"),
    ],
)
def test_load_errors_name_the_problem(spec, message):
    with pytest.raises(RewardLoadError, match=message):
        load(spec)


def test_plugin_import_error_names_the_file(tmp_path):
    (tmp_path / "broken.py").write_text("import not_a_real_package_abc\n")
    with pytest.raises(RewardLoadError, match=r"importing .*broken.py failed: ModuleNotFoundError"):
        load(f"{tmp_path}/broken.py:f")


def test_two_plugin_files_with_the_same_name_do_not_collide(tmp_path):
    for d, value in (("a", 1.0), ("b", 2.0)):
        (tmp_path / d).mkdir()
        (tmp_path / d / "rewards.py").write_text(
            f"def r(completions, **kw):\n    return [{value}] * len(completions)\n"
        )
    assert load(f"{tmp_path}/a/rewards.py:r")(completions=["x"]) == [1.0]
    assert load(f"{tmp_path}/b/rewards.py:r")(completions=["x"]) == [2.0]
