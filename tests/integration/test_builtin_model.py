"""The built-in tiny model: builds reproducibly, loads like a hub model, and the warm-start gives a
policy whose reward is non-zero but imperfect, where thinking helps on hard levels."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.data.tasks import arithmetic_dataset
from align.eval.generation import accuracy_by_level
from align.models.builtin import (
    ensure_builtin,
    init_model,
    parse_builtin,
    resolve_model_path,
    shipped_weights,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny():
    path = ensure_builtin("tiny")  # the shipped warm-start, copied into the cache once per machine
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), path


def test_init_is_reproducible():
    a, b = init_model("tiny", seed=0).state_dict(), init_model("tiny", seed=0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["model.embed_tokens.weight"], init_model("tiny", seed=1).state_dict()["model.embed_tokens.weight"]
    )
    assert sum(v.numel() for v in a.values() if v.dtype.is_floating_point) < 1_000_000


def test_builtin_names_resolve_to_cached_dirs(tiny):
    assert resolve_model_path("builtin:tiny") == str(tiny[2])
    assert resolve_model_path("/some/local/dir") == "/some/local/dir"
    assert parse_builtin("builtin:small-init") == ("small", False)
    with pytest.raises(ValueError, match="unknown built-in model 'builtin:huge'"):
        parse_builtin("builtin:huge")


def _same_tensors(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_the_cached_warm_start_is_the_shipped_one(tiny):
    assert _same_tensors(Path(tiny[2]) / "model.safetensors", shipped_weights("tiny"))


@pytest.mark.slow
def test_the_recipe_gives_the_shipped_warm_start(tmp_path, monkeypatch):
    """Trained again from its recipe on two threads (about 4 minutes), the warm-start is the shipped one,
    bit for bit, in a cache folder of its own."""
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path))
    monkeypatch.setenv("ALIGN_BUILD_FROM_RECIPE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        path = ensure_builtin("tiny")
    finally:
        torch.set_num_threads(threads)
    assert path.name.endswith("-recipe") and "final_loss" in (path / "align_build.json").read_text()
    assert _same_tensors(path / "model.safetensors", shipped_weights("tiny"))


def test_warm_start_accuracy_by_level(tiny):
    model, tok, _ = tiny
    rep = accuracy_by_level(model, tok, arithmetic_dataset(500, 1, "eval"))
    think, nothink, free = rep["think"], rep["nothink"], rep["free"]
    mean_free = sum(free.values()) / len(free)
    # Non-zero but imperfect reward for RL to improve.
    assert 0.3 < mean_free < 0.95, rep
    # Thinking solves the hard levels; answering them in one go does much worse.
    assert min(think[4], think[5]) >= 0.85, rep
    assert (nothink[4] + nothink[5]) / 2 <= (think[4] + think[5]) / 2 - 0.25, rep
    # Easy problems do not need thinking (this is the eval split: its questions were never trained on).
    assert nothink[1] >= 0.6 and think[1] >= 0.9, rep


def test_both_modes_are_live(tiny):
    """The first-token probability of NoThinking is neither 0 nor 1 at any level, so sampling
    explores both modes and a policy can learn when to think."""
    model, tok, _ = tiny
    rows = arithmetic_dataset(200, 2, "train")
    enc = tok([r["prompt"] for r in rows], return_tensors="pt", padding=True)
    with torch.no_grad():
        probs = model(**enc).logits[:, -1].softmax(-1)[:, tok.convert_tokens_to_ids("</think>")]
    for level in range(1, 6):
        p = probs[[i for i, r in enumerate(rows) if r["level"] == level]].mean().item()
        assert 0.1 < p < 0.9, (level, p)
