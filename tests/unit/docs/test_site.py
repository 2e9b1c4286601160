"""The documentation site: `mkdocs build --strict` (what `make docs` runs), every link and image
of the built pages resolves (anchors too), and the configuration reference covers every key of
the config models, found by walking their JSON schema (not the generator's own walk)."""

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[3]
MKDOCS = str(Path(sys.executable).with_name("mkdocs"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [MKDOCS, "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key) is not None:
                self.refs.append(a[key])


def _parse(path: Path) -> _Refs:
    p = _Refs()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_every_link_and_image_resolves(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 40
    parsed = {p: _parse(p) for p in pages}
    broken = []
    for page, refs in parsed.items():
        for ref in refs.refs:
            url = urlsplit(ref)
            if url.scheme or ref.startswith(("//", "mailto:", "javascript:")):
                continue  # external: not reachable from here (no network), not checked
            path = unquote(url.path)
            if not path:
                target = page
            else:  # (404.html links from the site's root)
                target = (site / path.lstrip("/") if path.startswith("/") else page.parent / path).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page.relative_to(site)}: {ref}")
            elif url.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if url.fragment not in ids:
                    broken.append(f"{page.relative_to(site)}: {ref} (no such anchor)")
    assert not broken, "\n".join(broken[:30])


def _schema_keys(schema: dict, node: dict, prefix: str = "") -> set[str]:
    """Dotted keys of a pydantic JSON schema: sections nest, lists add ``[i]``, a union (``anyOf`` /
    ``oneOf``: Optional, the algorithm and reward-type variants) contributes every member's keys."""
    defs = schema.get("$defs", {})

    def resolve(n):
        while "$ref" in n:
            n = defs[n["$ref"].split("/")[-1]]
        return n

    def below(n, key: str) -> set[str]:
        n = resolve(n)
        if "properties" in n:
            return _schema_keys(schema, n, key + ".")
        if n.get("type") == "array":
            return below(n.get("items", {}), key + "[i]")
        return set().union(*(below(m, key) for m in n.get("anyOf", n.get("oneOf", []))))

    keys = set()
    for name, prop in resolve(node).get("properties", {}).items():
        keys |= {prefix + name} | below(prop, prefix + name)
    return keys


def test_configuration_reference_covers_every_key(site):
    from align.config import Config
    from launch.sweep import SweepConfig

    text = (site / "reference" / "configuration" / "index.html").read_text(encoding="utf-8")
    listed = set(re.findall(r"<code>([a-z_0-9\[\].]+)</code>", text))
    for model, where in ((Config, "run config"), (SweepConfig, "sweep file")):
        schema = model.model_json_schema()
        keys = _schema_keys(schema, schema)
        assert len(keys) > (150 if model is Config else 15), len(keys)
        # a section's own row may be its keys' rows (model.lora -> model.lora.r, ...)
        missing = sorted(
            k for k in keys if k not in listed and not any(x.startswith(k + ".") for x in listed)
        )
        assert not missing, f"{where}: not in the configuration reference: {missing}"
    for key in ("trainer.report_to", "trainer.tracking.mlflow_uri", "algorithm.ppo.lam", "rewards[i].url"):
        assert key in listed
