"""A reward model as a reward (``rewards.model.ModelReward``): it scores exactly the token ids that
reward-model training builds, renders conversational rows with its own chat template, and names
several heads."""

import pytest
import torch

from align.algorithms.dpo import tokenize_row
from align.data.loading import load_preferences
from align.models.builtin import resolve_model_path
from rewards.model import ModelReward


def _save(tmp_path, num_labels):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = resolve_model_path("builtin:tiny")
    torch.manual_seed(0)
    out = tmp_path / f"rm{num_labels}"
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=num_labels).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    return ModelReward(_save(tmp_path_factory.mktemp("m"), 1))


def test_scores_the_ids_training_builds(rm, tmp_path):
    conv = tmp_path / "conv.jsonl"
    conv.write_text(
        '{"prompt": [{"role": "user", "content": "1+2="}], "chosen": [{"role": "assistant", "content": "3"}], '
        '"rejected": [{"role": "assistant", "content": "4"}]}\n'
    )
    for source in ("builtin:preference-arithmetic-eval", str(conv)):
        row = load_preferences(source, rm.tokenizer)[0]
        ids = tokenize_row(rm.tokenizer, row)
        if source == str(conv):  # a run gives the reward the raw messages and the assistant's text
            got = rm._ids(row["prompt"], "3", [{"role": "user", "content": "1+2="}])
        else:
            got = rm._ids(row["prompt"], row["chosen"], None)
        assert got == ids["prompt_ids"] + ids["chosen_ids"], source
    # a batch scores as the rows one by one (padding does not move the score)
    prompts, comps = ["1+2=<think>", "9-9-9=<think>"], ["</think>3", "9-9=0,0-9=-9</think>-9"]
    together = rm(prompts, comps)
    alone = [rm([p], [c])[0] for p, c in zip(prompts, comps)]
    assert together == pytest.approx(alone, abs=1e-5)


def test_plain_or_chat_template(rm):
    messages = [{"role": "user", "content": "1+2="}]
    chat = rm._ids("ignored", "3", messages)
    plain = ModelReward.__new__(ModelReward)
    plain.__dict__.update(rm.__dict__, template="plain")
    assert plain._ids("1+2=", "3", messages) == rm.tokenizer("1+2=")["input_ids"] + rm.tokenizer(
        "3", add_special_tokens=False
    )["input_ids"] + [rm.tokenizer.eos_token_id]
    assert chat != plain._ids("1+2=", "3", messages)
    assert rm._ids("1+2=", "3", None) == plain._ids("1+2=", "3", None)  # auto: a plain prompt stays plain


def test_several_heads_are_several_objectives(tmp_path):
    path = _save(tmp_path, 2)
    out = ModelReward(path, heads=["helpful", "safe"])(["1+2="], ["3"])
    assert list(out) == ["helpful", "safe"] and all(len(v) == 1 for v in out.values())
    with pytest.raises(ValueError, match="has 2 output"):
        ModelReward(path, heads=["only_one"])
