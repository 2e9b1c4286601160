"""The config and data loaders, fuzzed with hypothesis: whatever the file holds, the result is a
valid object or the loader's own error (ConfigError / DataError) with a message that says where,
never another exception."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from align.config import Config
from align.config.loading import ConfigError, load_config
from align.data.loading import DataError, load_preferences, load_prompts
from tests.reliability.report import record

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _paths(model: type[BaseModel] = Config, prefix: tuple = ()) -> list[tuple]:
    out = []
    for name, field in model.model_fields.items():
        out.append(prefix + (name,))
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(_paths(ann, prefix + (name,)))
    return out


PATHS = _paths()
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["grpo", "dpo", "builtin:tiny", "auto", "cpu", "skip", "all-linear"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def configs(draw) -> dict:
    """A config dict: real key paths (and some wrong ones) with values of any type."""
    data: dict = {}
    for _ in range(draw(st.integers(0, 6))):
        path = list(draw(st.sampled_from(PATHS)))
        if draw(st.booleans()) and len(path) > 1:
            path[-1] = path[-1][:-1] or "x"  # a near-miss key
        node = data
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else node
        node[path[-1]] = draw(values)
    return data


_seen = {"configs": 0, "refused": 0}


@FUZZ
@given(configs())
def test_fuzzed_configs_load_or_raise_config_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        _seen["configs"] += 1
        try:
            load_config(path)
        except ConfigError as exc:
            _seen["refused"] += 1
            assert str(exc).strip() and (
                "fuzz.yaml" in str(exc) or "line" in str(exc) or "--set" in str(exc)
            ), str(exc)


@FUZZ
@given(st.text(max_size=300))
def test_fuzzed_yaml_text_loads_or_raises_config_error(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.yaml"
        path.write_text(text)
        try:
            load_config(path)
        except ConfigError as exc:
            assert "fuzz.yaml" in str(exc) or "line" in str(exc), str(exc)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "bot"]),
            "content": st.one_of(st.text(max_size=20), st.integers()),
        }
    ),
    max_size=3,
)
rows = st.dictionaries(
    st.sampled_from(["prompt", "chosen", "rejected", "answer", "x"]),
    st.one_of(json_values, messages, st.text(max_size=30)),
    max_size=4,
)
lines = st.lists(st.one_of(rows.map(json.dumps), st.text(max_size=40)), max_size=6)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from align.models.builtin import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("builtin:tiny"))


_data = {"files": 0, "refused": 0}


@FUZZ
@given(lines)
def test_fuzzed_jsonl_loads_or_raises_data_error_naming_the_file(tokenizer, text_lines):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.jsonl"
        path.write_text("\n".join(text_lines) + "\n")
        _data["files"] += 1
        for loader in (load_prompts, load_preferences):
            try:
                out = loader(str(path), tokenizer)
                assert out and all(isinstance(r["prompt"], str) for r in out)
            except DataError as exc:
                _data["refused"] += 1
                assert "fuzz.jsonl" in str(exc), str(exc)


def test_fuzz_figures_go_to_the_report():
    """Runs after the fuzz tests of this module (file order): their counts go to the report."""
    record(
        "bad_input",
        "fuzzed configs (hypothesis)",
        _seen["configs"] > 0,
        f"{_seen['configs']} generated, {_seen['refused']} refused with ConfigError, none raised anything else",
    )
    record(
        "bad_input",
        "fuzzed JSONL files (hypothesis), prompt and preference loaders",
        _data["files"] > 0,
        f"{_data['files']} generated, {_data['refused']} loader refusals with DataError naming the file, none raised anything else",
    )
    assert _seen["configs"] > 0 and _data["files"] > 0
