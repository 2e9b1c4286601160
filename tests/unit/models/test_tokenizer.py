"""The character tokenizer saves and loads like a hub tokenizer; specials are single tokens."""

from transformers import AutoTokenizer

from align.models.tokenizer import END_THINK, THINK, build_tokenizer


def test_round_trip_and_special_tokens(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "rev:ab c=<think>3+4=7</think>7"
    ids = loaded(text)["input_ids"]
    assert ids[0] == loaded.bos_token_id
    assert loaded.decode(ids, skip_special_tokens=False) == "<bos>" + text
    for special in (THINK, END_THINK, "<eos>", "<|user|>"):
        assert len(loaded(special, add_special_tokens=False)["input_ids"]) == 1
    assert len(loaded("12+3", add_special_tokens=False)["input_ids"]) == 4
    assert loaded.pad_token_id == 0 and loaded.eos_token_id == 2
    assert (
        loaded.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
        == "<|user|>hi<|end|><|assistant|>"
    )
