"""MkDocs hooks: pages generated from the code and the results, so the site never holds a stale copy.

- ``index.md`` is the README (its links to ``docs/``, ``bench/results/`` and ``experiments/results/``
  pointed at the pages below);
- ``reference/configuration.md`` is generated from the config models (every key, type, default, help);
- ``benchmarks/<name>.md`` are ``bench/results/*.md``, ``results/<path>.md`` are the ``.md`` files under
  ``experiments/results/`` (run folders aside), each with the images it shows;
- ``<!-- defaults: NAME PREFIX -->`` in a page becomes the table of the keys under ``PREFIX`` with the
  values they take for ``algorithm.name: NAME`` (derived defaults filled in).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
# repository folder -> where its pages sit in the site
MOUNTS = {"docs": "", "bench/results": "benchmarks", "experiments/results": "results"}
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
DEFAULTS = re.compile(r"<!-- defaults: (\S+) (\S+) -->")
ORIGIN: dict[str, str] = {}  # generated page -> its source file's folder in the repository


def _site_path(repo_path: str) -> str | None:
    for folder, mount in sorted(MOUNTS.items(), key=lambda m: -len(m[0])):
        if repo_path == folder or repo_path.startswith(folder + "/"):
            return (
                posixpath.join(mount, repo_path[len(folder) + 1 :]) if mount else repo_path[len(folder) + 1 :]
            )
    return None


def _add(files, config, uri: str, content: str | bytes, origin: str | None = None) -> None:
    existing = files.get_file_from_path(uri)
    if existing is not None:
        files.remove(existing)
    files.append(File.generated(config, uri, content=content))
    if origin is not None:
        ORIGIN[uri] = origin


def _results(files, config, folder: str) -> list[str]:
    """The ``.md`` files under ``folder`` (not inside run folders) and the images they link to."""
    pages = []
    base = ROOT / folder
    for md in sorted(base.rglob("*.md")):
        rel = md.relative_to(ROOT).as_posix()
        if "/runs/" in rel:
            continue
        text = md.read_text()
        uri = _site_path(rel)
        _add(files, config, uri, text, posixpath.dirname(rel))
        pages.append(uri)
        for _, target, _ in LINK.findall(text):
            image = (md.parent / target).resolve()
            if target.endswith((".png", ".svg")) and image.is_file():
                _add(files, config, _site_path(image.relative_to(ROOT).as_posix()), image.read_bytes())
    return pages


def on_files(files, config):
    import sys

    sys.path.insert(0, str(ROOT))
    from align.config import Config
    from align.config.loading import config_reference
    from launch.sweep import SweepConfig

    _add(files, config, "index.md", (ROOT / "README.md").read_text(), "")
    _add(
        files,
        config,
        "reference/configuration.md",
        config_reference(
            {"Run config (`align train`, `align eval`)": Config, "Sweep file (`align sweep`)": SweepConfig}
        ),
    )
    bench = _results(files, config, "bench/results")
    results = _results(files, config, "experiments/results")
    listing = ["# All result files", "", "## Benchmarks (`bench/results/`)", ""]
    listing += [f"- [{Path(p).stem}]({posixpath.relpath(p, 'reference')})" for p in bench]
    listing += ["", "## Experiments (`experiments/results/`)", ""]
    listing += [f"- [{p[len('results/') : -3]}]({posixpath.relpath(p, 'reference')})" for p in results]
    _add(files, config, "reference/results.md", "\n".join(listing) + "\n")
    return files


def _defaults_table(name: str, prefix: str) -> str:
    from align.config.loading import config_keys, load_config, yaml_text
    from align.reporting.trackers import flatten

    cfg = load_config(None, [f"algorithm.name={name}"]) if name != "-" else load_config(None)
    values = flatten(cfg.model_dump(mode="json"))
    helps = {r["key"].replace("[i]", ""): r["help"] for r in config_keys()}
    rows = [
        f"| `{k}` | `{yaml_text(v)}` | {str(helps.get(k, '')).replace('|', '/')} |"
        for k, v in values.items()
        if k == prefix or k.startswith(prefix + ".")
    ]
    if not rows:
        raise ValueError(f"<!-- defaults: {name} {prefix} -->: no key under {prefix}")
    return "\n".join(["| key | default | description |", "|---|---|---|", *rows])


def on_page_markdown(markdown, page, config, files):
    uri = page.file.src_uri
    markdown = DEFAULTS.sub(lambda m: _defaults_table(m.group(1), m.group(2)), markdown)
    origin = ORIGIN.get(uri)
    if origin is None:
        return markdown

    def relink(m):
        target = m.group(2)
        if re.match(r"^[a-z]+:|^#", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        site = _site_path(posixpath.normpath(posixpath.join(origin, path)))
        if site is None:
            return m.group(0)
        new = posixpath.relpath(site, posixpath.dirname(uri) or ".")
        return f"{m.group(1)}{new}{'#' + anchor if anchor else ''}{m.group(3)}"

    return LINK.sub(relink, markdown)
