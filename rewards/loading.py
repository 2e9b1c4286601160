"""Load a reward function named ``"package.module:function"`` or ``"path/to/file.py:function"``.

A plug-in file is code the user chose to run: it is imported like any module. Never load a spec
that came from a dataset or a checkpoint.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable


class RewardLoadError(ValueError):
    """A reward spec that cannot be turned into a callable; the message says what to change."""


def _split(spec: str) -> tuple[str, str]:
    target, sep, func = spec.rpartition(":")
    if not sep or not target or not func:
        raise RewardLoadError(
            f"reward {spec!r}: expected 'package.module:function' or 'path/to/file.py:function' "
            f"(or a built-in name: {', '.join(sorted(_builtins()))})"
        )
    return target, func


def _builtins() -> dict[str, Callable]:
    from rewards.builtin import BUILTIN_REWARDS

    return BUILTIN_REWARDS


def _import_file(path: Path, spec: str):
    # A stable, unique module name per file, so two plug-ins called rewards.py do not collide.
    name = f"align_reward_plugin_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise RewardLoadError(
            f"reward {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def load(spec: str, base_dir: str | Path | None = None) -> Callable:
    """Return the reward callable for ``spec``.

    ``spec`` is a built-in name (``correctness``, ``think_format``, ``length``, ``no_thinking``),
    ``"package.module:function"``, or ``"path/to/file.py:function"``; a relative file path is
    looked up in the working directory, then in ``base_dir`` (the config file's folder).
    """
    builtins = _builtins()
    if spec in builtins:
        return builtins[spec]
    target, func = _split(spec)
    if target.endswith(".py"):
        candidates = [Path(target)] + (
            [Path(base_dir) / target] if base_dir and not Path(target).is_absolute() else []
        )
        path = next((p.resolve() for p in candidates if p.is_file()), None)
        if path is None:
            raise RewardLoadError(
                f"reward {spec!r}: file not found (looked for {', '.join(str(p) for p in candidates)})"
            )
        module = _import_file(path, spec)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise RewardLoadError(f"reward {spec!r}: cannot import module {target!r}: {exc}") from exc
        except Exception as exc:
            raise RewardLoadError(
                f"reward {spec!r}: importing {target!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    fn = getattr(module, func, None)
    if fn is None:
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(func, names, n=1)
        hint = (
            f"; did you mean {close[0]!r}?"
            if close
            else f"; it defines: {', '.join(names) or 'no functions'}"
        )
        raise RewardLoadError(f"reward {spec!r}: {target} has no function {func!r}{hint}")
    if not callable(fn):
        raise RewardLoadError(f"reward {spec!r}: {func!r} in {target} is not callable")
    return fn


def model_dir(entry: dict, base_dir: str | Path | None = None, resolve_model=None) -> Path:
    """The reward model folder of a ``type: model`` entry: as given (absolute, or relative to the
    working directory), else relative to the config's folder; it must hold a config.json. A name of
    the form ``builtin:NAME`` is the folder ``resolve_model(name)`` gives (the trainer passes
    ``align.models.builtin.resolve_model_path``: a built-in causal LM, its score head untrained, as a
    base for reward-model training)."""
    if entry["model"].startswith("builtin:"):
        if resolve_model is None:
            raise RewardLoadError(
                f"reward {entry.get('name')!r}: model {entry['model']!r} names a built-in model; "
                "pass resolve_model (align resolves built-in names) or give a model folder"
            )
        return Path(resolve_model(entry["model"]))
    path = Path(entry["model"])
    if (
        not path.is_absolute()
        and not path.exists()
        and base_dir is not None
        and (Path(base_dir) / path).exists()
    ):
        path = Path(base_dir) / path
    if not (path / "config.json").exists():
        raise RewardLoadError(
            f"reward {entry.get('name')!r}: model {entry['model']!r} is not a HF model folder (no "
            f"config.json in {path.resolve()}); train one with algorithm.name: reward_model"
        )
    return path
