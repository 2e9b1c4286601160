"""Load, override, validate and save run configs; turn validation errors into one clear line each.

``load_config("run.yaml", ["trainer.max_steps=5"])`` returns a validated :class:`Config` or raises
:class:`ConfigError` whose message names the dotted key, the file and line (or the ``--set``), and
a close match for a mistyped key.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from align.config.algorithms import ALGORITHM_NAMES
from align.config.run import Config
from rewards.config import REWARD_TYPES


class ConfigError(ValueError):
    """An invalid config; the message says what to change and where."""


def _line_map(text: str) -> dict[tuple, int]:
    """Dotted path (as a tuple) -> 1-based line of its key in the YAML text."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[path + (key.value,)] = key.start_mark.line + 1
                walk(value, path + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                lines[path + (i,)] = value.start_mark.line + 1
                walk(value, path + (i,))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(loc: tuple, root: type[BaseModel] = Config) -> type[BaseModel] | None:
    """The pydantic model class that holds the key at ``loc`` (for close-match suggestions)."""
    model: typing.Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = (
            model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        )
        if field is None:
            return None
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation):
    """``list[X]`` / ``Optional[X]`` / ``X | None`` -> the model class inside, if any."""
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        inner = _unwrap(arg) if typing.get_args(arg) else None
        if inner is not None:
            return inner
    return annotation


def _where(loc: tuple, lines: dict[tuple, int], source: str, overrides: dict[tuple, str]) -> str:
    for n in range(len(loc), 0, -1):
        if loc[:n] in overrides:
            return f" (from --set {overrides[loc[:n]]})"
        if loc[:n] in lines:
            return f" ({source}, line {lines[loc[:n]]})"
    return f" ({source})" if source else ""


def _untagged(loc: tuple) -> tuple[tuple, type[BaseModel] | None, int]:
    """``loc`` without the tag pydantic puts after a tagged union (``algorithm.<name>.key`` ->
    ``algorithm.key``, ``rewards.<i>.<type>.key`` -> ``rewards.<i>.key``), the union member the tag
    names, and where the member's own keys start in the returned ``loc``."""
    if len(loc) > 1 and loc[0] == "algorithm" and loc[1] in ALGORITHM_NAMES:
        return (loc[0],) + loc[2:], ALGORITHM_NAMES[loc[1]], 1
    if len(loc) > 2 and loc[0] == "rewards" and isinstance(loc[1], int) and loc[2] in REWARD_TYPES:
        return loc[:2] + loc[3:], REWARD_TYPES[loc[2]], 2
    return loc, None, 0


def _describe(err: dict, root: type[BaseModel] = Config) -> str:
    loc, member, start = _untagged(tuple(err["loc"]))
    key = _dotted(loc)
    kind = err["type"]
    if kind == "union_tag_invalid":  # algorithm.name that names no method
        tag = str(err.get("ctx", {}).get("tag", ""))
        close = difflib.get_close_matches(tag, list(ALGORITHM_NAMES), n=1)
        return (
            f"'{_dotted(loc + ('name',))}': {tag!r} is not an algorithm; choose one of {', '.join(ALGORITHM_NAMES)}"
            + (f"; did you mean {close[0]!r}?" if close else "")
        )
    if kind == "extra_forbidden":
        model = _model_at(loc[start:], member) if member is not None else _model_at(loc, root)
        if model is member and member is not None:  # a key of another method / reward type?
            tags = ALGORITHM_NAMES if start == 1 else REWARD_TYPES
            owners = [t for t, c in tags.items() if loc[-1] in c.model_fields]
            if owners:
                this = [t for t, c in tags.items() if c is member]
                what = "algorithm.name" if start == 1 else "type"
                return (
                    f"'{key}' is a setting of {what} {'|'.join(owners)}, not of this {'config' if start == 1 else 'reward'}'s "
                    f"{what} {'|'.join(this)}"
                )
        close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1) if model else []
        hint = f"; did you mean '{_dotted(loc[:-1] + (close[0],))}'?" if close else ""
        if model and not close:
            hint = f"; valid keys here: {', '.join(model.model_fields)}"
        return f"unknown key '{key}'{hint}"
    if kind == "missing":
        return f"missing required key '{key}'"
    value = err.get("input")
    shown = f"{value!r} ({type(value).__name__})" if not isinstance(value, dict) else "a mapping"
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "value_error" or kind == "assertion_error":
        return f"'{key}': {msg}" if key else msg
    return f"'{key}': {msg}, got {shown}"


def _set_path(data: dict, path: list[str], value, raw: str) -> tuple:
    node = data
    loc: list = []
    for i, part in enumerate(path):
        key: typing.Any = int(part) if isinstance(node, list) and part.isdigit() else part
        loc.append(key)
        last = i == len(path) - 1
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                raise ConfigError(
                    f"--set {raw}: '{_dotted(tuple(loc[:-1]))}' is a list; index {part!r} is not in it"
                )
            if last:
                node[key] = value
            else:
                node = node[key]
        else:
            if last:
                node[key] = value
            elif key not in node and path[i + 1].isdigit():
                raise ConfigError(
                    f"--set {raw}: '{_dotted(tuple(loc))}' is not in the config file, so it has no item {path[i + 1]}; "
                    f"set the whole list instead, e.g. --set '{key}=[{{...}}]'"
                )
            else:
                node = node.setdefault(key, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"--set {raw}: '{_dotted(tuple(loc))}' is a value, not a section")
    return tuple(loc)


def apply_overrides(data: dict, overrides: list[str]) -> dict[tuple, str]:
    """Apply ``a.b=c`` overrides in place (values parsed as YAML); return loc -> the override text."""
    origin: dict[tuple, str] = {}
    for raw in overrides:
        key, sep, text = raw.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {raw!r}: expected KEY=VALUE, e.g. --set trainer.max_steps=10")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {raw}: value is not valid YAML: {exc}") from None
        origin[_set_path(data, key.strip().split("."), value, raw)] = raw
    return origin


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, model: type[BaseModel] = Config
):
    """Read ``path`` (YAML; None for all defaults), apply ``overrides``, validate as ``model`` (a run
    :class:`Config` by default; the sweep file uses its own model); raise ConfigError."""
    text, source = "", ""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        text, source = p.read_text(encoding="utf-8"), str(path)
    try:
        data = yaml.safe_load(text) if text else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{at}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (model:, algorithm:, ...)")
    origin = apply_overrides(data, overrides or [])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = _line_map(text) if text else {}
        problems = []
        for e in exc.errors():
            text_ = _describe(e, model)
            loc = _untagged(tuple(e["loc"]))[0] + (("name",) if e["type"] == "union_tag_invalid" else ())
            if not loc:  # a check across sections: the first config key its message names
                keys = [
                    tuple(int(p) if p.isdigit() else p for p in k.split("."))
                    for k in re.findall(r"[a-z_]+(?:\.[a-z_0-9]+)+", text_)
                ]
                loc = next((k for k in keys if k in lines or k in origin), ())
            problems.append(text_ + _where(loc, lines, source, origin))
        if len(problems) == 1:  # one line: what to change, and where
            raise ConfigError(f"invalid config: {problems[0]}") from None
        raise ConfigError(f"invalid config ({len(problems)} problems):\n  " + "\n  ".join(problems)) from None


def save_resolved(config: Config, run_dir: str | Path) -> Path:
    """Write the resolved config (defaults and derived values filled in) to ``run_dir/config.yaml``."""
    out = Path(run_dir) / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    tmp.replace(out)
    return out


def _type_name(annotation) -> str:
    """``Literal['a', 'b']`` -> ``a|b``; ``Optional[float]`` -> ``float|null``; ``int`` -> ``int``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if args and origin is not list and origin is not dict:
        return "|".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[dict]:
    """Every config key of ``model``, once: ``{"key", "type", "default", "help", "only"}`` (``default``
    as written in a config file, or ``required``; ``only``:
    the ``algorithm.name`` / ``rewards[i].type`` values that have the key, "" for all). A list of
    sections is one row (type ``list``) and then its items' keys as ``key[i].*``."""
    rows: list[dict] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        unions = {
            "algorithm": ("name", ALGORITHM_NAMES, "algorithm.name"),
            "rewards": ("type", REWARD_TYPES, "rewards[i].type"),
        }
        if model is Config and name in unions:  # a section per method / reward type: each one's keys, once
            tag, members, full = unions[name]
            if name == "rewards":
                rows.append(
                    {"key": key, "type": "list", "default": "", "help": field.description, "only": ""}
                )
            tagged: dict[str, tuple[dict, list[str]]] = {}  # key -> (row, the member names that have it)
            for variant in dict.fromkeys(members.values()):
                names = [n for n, c in members.items() if c is variant]
                for row in config_keys(variant, key + ("[i]." if name == "rewards" else ".")):
                    same = (row["key"], row["type"], row["default"], row["help"])
                    tagged.setdefault(repr(same), (row, []))[1].extend(names)
            for row, names in tagged.values():
                if row["key"] == full:
                    if not any(r["key"] == full for r in rows):
                        rows.append({**row, "type": "|".join(members), "only": ""})
                else:
                    rows.append({**row, "only": f"{tag}: {'|'.join(names)}"})
            continue
        sub = _unwrap(field.annotation)
        is_model = isinstance(sub, type) and issubclass(sub, BaseModel)
        if is_model and typing.get_origin(field.annotation) is not list:
            rows.extend(config_keys(sub, key + "."))
            continue
        if is_model:
            rows.append({"key": key, "type": "list", "default": "", "help": field.description, "only": ""})
            rows.extend(config_keys(sub, key + "[i]."))
            continue
        default = (
            "required" if field.is_required() else yaml_text(field.get_default(call_default_factory=True))
        )
        rows.append(
            {
                "key": key,
                "type": _type_name(field.annotation),
                "default": default,
                "help": field.description,
                "only": "",
            }
        )
    return rows


def yaml_text(value) -> str:
    """A default as it is written in a config file (``true``, ``null``, ``[a, b]``, ``0.1``)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def config_help(model: type[BaseModel] = Config) -> list[str]:
    """One line per config key: ``dotted.key  (type, default D)  help  [name: ...]``."""
    lines = []
    for r in config_keys(model):
        if r["type"] == "list" and not r["default"]:
            head = "(list)"
        elif r["key"] in ("algorithm.name", "rewards[i].type"):
            head = f"({r['type']})"
        else:
            head = f"({r['type']}, {'required' if r['default'] == 'required' else 'default ' + r['default']})"
        lines.append(f"{r['key']}  {head}  {r['help']}" + (f"  [{r['only']}]" if r["only"] else ""))
    return lines


def config_reference(models: dict[str, type[BaseModel]] | None = None) -> str:
    """The configuration reference as Markdown, generated from the config models: per model (title ->
    model; default: the run config; the docs add the sweep file's) a table per top-level section with
    every key, its type, default and help."""
    models = models or {"Run config (`align train`, `align eval`)": Config}

    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    out = [
        "# Configuration reference",
        "",
        "Generated from the config models when the site is built; `align train --help` prints the same "
        "keys. Every key is set in the YAML file or with "
        "`--set key=value`; an unknown key is an error that names the file and line.",
        "",
    ]
    for title, model in models.items():
        out += [f"## {title}", ""]
        sections: dict[str, list[dict]] = {}
        for row in config_keys(model):
            top = row["key"].split(".")[0].split("[")[0]
            sections.setdefault(top if "." in row["key"] or "[" in row["key"] else "", []).append(row)
        for top, rows in sections.items():
            if top:
                out += [f"### `{top}`", ""]
                field = model.model_fields[top]
                if field.description:
                    out += [cell(field.description), ""]
            out += ["| key | type | default | description |", "|---|---|---|---|"]
            for r in rows:
                only = f" *({r['only']} only)*" if r["only"] else ""
                default = f"`{cell(r['default'])}`" if r["default"] not in ("", "required") else r["default"]
                out.append(f"| `{r['key']}` | {cell(r['type'])} | {default} | {cell(r['help'])}{only} |")
            out.append("")
    return "\n".join(out)
