"""Atomic checkpoints: safetensors for tensors, JSON for the rest, nothing pickled.

``runs/<name>/checkpoints/step_N/`` holds
- ``adapter/``: ``adapter_model.safetensors`` + ``adapter_config.json`` (loads with peft's
  ``PeftModel.from_pretrained`` and as a vLLM ``LoRARequest``);
- ``optimizer_rank{r}.safetensors``: each learner rank's optimizer tensors;
- ``state.json``: step, adapter version, objective state, RNG and data position;
- ``manifest.json``: a SHA-256 of every other file, written last.
Everything is written into a temporary sibling folder and renamed into place, so a kill during a
save never leaves a ``step_N`` that resume would pick; the manifest is checked on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save

STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def flatten_state(state, prefix: str = "") -> dict[str, np.ndarray]:
    """Tensor leaves of a nested dict/list as ``{"a.#0.b[1]": array}``; other leaves are skipped.

    Integer dict keys (torch optimizers key their state by parameter index) are written ``#n``
    so that :func:`unflatten_state` can restore them as integers.
    """
    out: dict[str, np.ndarray] = {}
    if isinstance(state, dict):
        for k, v in state.items():
            part = f"#{k}" if isinstance(k, int) else str(k)
            out.update(flatten_state(v, f"{prefix}.{part}" if prefix else part))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(flatten_state(v, f"{prefix}[{i}]"))
    elif torch.is_tensor(state):
        out[prefix] = state.detach().cpu().numpy().copy()
    return out


def _copy_structure(x):
    if isinstance(x, dict):
        return {k: _copy_structure(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_copy_structure(v) for v in x]
    return x


def unflatten_state(template, arrays: dict[str, np.ndarray]):
    """``template`` (the live optimizer's state dict) with every saved tensor put at its path.

    Paths absent from the template are created: a fresh optimizer has no per-parameter state
    (Adam moments) until its first step, and those must come from the checkpoint, not be dropped.
    """
    root = _copy_structure(template)
    for path, array in arrays.items():
        tokens = [(name, idx) for name, idx in _TOKEN.findall(path)]
        node = root
        for i, (name, idx) in enumerate(tokens):
            key = int(idx) if idx else (int(name[1:]) if name.startswith("#") else name)
            last = i == len(tokens) - 1
            if isinstance(node, list):
                if key >= len(node):
                    raise CheckpointError(
                        f"optimizer state path {path!r} does not fit this optimizer (index {key})"
                    )
            elif not last and key not in node:
                node[key] = {}
            if last:
                old = node[key] if (isinstance(node, list) or key in node) else None
                value = torch.from_numpy(array.copy())
                if torch.is_tensor(old):
                    if tuple(value.shape) != tuple(old.shape):
                        raise CheckpointError(
                            f"optimizer tensor {path!r} has shape {tuple(value.shape)}, expected {tuple(old.shape)}"
                        )
                    value = value.to(old.dtype)
                node[key] = value
            else:
                node = node[key]
    missing = set(flatten_state(template)) - set(arrays)
    if missing:
        raise CheckpointError(f"checkpoint optimizer state lacks {sorted(missing)[:3]}")
    return root


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(directory: str | Path):
    """Yield a temporary folder beside ``directory``; when the block succeeds the folder replaces
    ``directory`` by a rename (a reader sees the old folder or the new one, never half of one)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    old = None
    try:
        yield tmp
        if directory.exists():  # moved aside first: a kill now leaves the old folder under a temp name
            old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old."))
            os.replace(directory, old / directory.name)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def build_once(target: Path, marker: str, build) -> Path:
    """Build the folder ``target`` once: ``build(tmp)`` fills a temporary folder that is renamed into
    place when it returns (``atomic_dir``), under a file lock so that concurrent processes (actors
    resolving the same model) wait for one build; ``marker`` is a file the build writes, whose
    presence says ``target`` is complete."""
    from filelock import FileLock

    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / marker).exists():
            with atomic_dir(target) as tmp:
                build(tmp)
    return target


def save_checkpoint(
    ckpt_root: str | Path,
    step: int,
    adapter: dict[str, np.ndarray],
    adapter_config: dict,
    optimizer_states: list[dict[str, np.ndarray]],
    state: dict,
    keep: int = 2,
    extra_adapters: dict[str, tuple[dict[str, np.ndarray], dict]] | None = None,
) -> Path:
    """Write ``ckpt_root/step_{step}`` atomically and keep the newest ``keep`` checkpoints.

    ``adapter`` is the served adapter (``step_N/adapter``, a peft folder); ``extra_adapters`` (name ->
    (tensors, config)) go to ``step_N/adapters/<name>`` (e.g. OFS-DPO's two modules)."""
    root = Path(ckpt_root)
    final = root / f"step_{step}"
    try:
        _write_checkpoint(final, adapter, adapter_config, optimizer_states, state, step, extra_adapters)
    except OSError as exc:  # disk full, a size limit, permissions: say so; the earlier checkpoints stay
        earlier = [p for p in list_checkpoints(root) if p != final]
        kept = (
            f"the previous checkpoint {earlier[-1]} is intact"
            if earlier
            else "there is no earlier checkpoint"
        )
        what = exc.strerror or str(exc)
        raise CheckpointError(
            f"could not write checkpoint {final}: {what}{f' ({exc.filename})' if exc.filename else ''}; "
            f"{kept}; free space (or raise the limit) and continue with --resume"
        ) from exc
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(path: Path, data: bytes) -> None:
    """Write and fsync one file; an OSError names the file (a full disk fails here, in Python, not
    inside a native writer that would hide the errno)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def _tensors(tensors: dict[str, np.ndarray]) -> bytes:
    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()})


def _write_checkpoint(
    final: Path, adapter, adapter_config, optimizer_states, state, step, extra_adapters
) -> None:
    with atomic_dir(final) as tmp:
        write_adapter_dir(tmp / "adapter", adapter, adapter_config)
        for name, (tensors, config) in (extra_adapters or {}).items():
            write_adapter_dir(tmp / "adapters" / name, tensors, config)
        for rank, opt in enumerate(optimizer_states):
            _write(tmp / f"optimizer_rank{rank}.safetensors", _tensors(opt))
        _write(tmp / "state.json", json.dumps({"step": step, **state}, indent=2).encode())
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {str(p.relative_to(tmp)): sha256_file(p) for p in files}
        _write(
            tmp / "manifest.json", json.dumps(manifest, indent=2).encode()
        )  # last: its presence marks a whole checkpoint


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints (with a manifest) in step order; temporary folders are ignored."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := STEP_DIR.match(p.name)) and (p / "manifest.json").exists()
    ]
    return [p for _, p in sorted(found)]


def verify(ckpt: str | Path) -> None:
    """Check every file against the manifest; raise CheckpointError naming the first bad file."""
    ckpt = Path(ckpt)
    manifest_path = ckpt / "manifest.json"
    if not manifest_path.exists():
        raise CheckpointError(f"{ckpt}: no manifest.json (an incomplete checkpoint)")
    manifest = json.loads(manifest_path.read_text())
    for name, digest in manifest.items():
        path = ckpt / name
        if not path.exists():
            raise CheckpointError(f"{path}: listed in the manifest but missing")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path}: checksum mismatch (the file is corrupted)")


def load_checkpoint(ckpt: str | Path) -> dict:
    """Verify and read a checkpoint: adapter, adapter_config, optimizer_states, state."""
    ckpt = Path(ckpt)
    verify(ckpt)
    ranks = sorted(
        ckpt.glob("optimizer_rank*.safetensors"), key=lambda p: int(p.stem.removeprefix("optimizer_rank"))
    )
    return {
        "adapter": load_file(str(ckpt / "adapter" / "adapter_model.safetensors")),
        "adapter_config": json.loads((ckpt / "adapter" / "adapter_config.json").read_text()),
        "optimizer_states": [load_file(str(p)) for p in ranks],
        "state": json.loads((ckpt / "state.json").read_text()),
        "extra_adapters": {
            d.name: (
                load_file(str(d / "adapter_model.safetensors")),
                json.loads((d / "adapter_config.json").read_text()),
            )
            for d in sorted((ckpt / "adapters").iterdir())
        }
        if (ckpt / "adapters").is_dir()
        else {},
        "path": ckpt,
    }


def write_adapter_dir(directory: str | Path, adapter: dict[str, np.ndarray], adapter_config: dict) -> Path:
    """A peft adapter folder (safetensors + config) for vLLM's LoRARequest or PeftModel."""
    d = Path(directory)
    _write(d / "adapter_model.safetensors", _tensors(adapter))
    _write(d / "adapter_config.json", json.dumps(adapter_config, indent=2).encode())
    return d
