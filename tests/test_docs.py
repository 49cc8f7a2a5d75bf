"""The documentation site: generated pages current, every page in the nav, every error explained.

Offline and fast; the strict site build runs when mkdocs is installed (the docs extra, as in
`make docs`), and is skipped otherwise.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "sentiment_cli"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen_ref():
    return _load("gen_ref")


@pytest.fixture(scope="module")
def mkdocs_yml() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


# ------------------------------------------------------------------------------ generated pages


def test_generated_references_are_current(gen_ref) -> None:
    """A command, an option, a schema key or a params.yaml comment changed: regenerate."""
    for path, text in gen_ref.render().items():
        rel = path.relative_to(ROOT)
        current = path.read_text() if path.is_file() else ""
        assert current == text, f"{rel} is stale: run `{gen_ref.REGENERATE}`"


def test_cli_reference_has_every_command_and_option(gen_ref) -> None:
    import click
    import typer

    from sentiment_cli.cli import app

    page = gen_ref.cli_page()
    group = typer.main.get_command(app)
    root = click.Context(group, info_name="sent")
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        assert f"## sent {name}\n" in page, f"no section for sent {name}"
        section = page.split(f"## sent {name}\n", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            for opt in (*param.opts, *param.secondary_opts):
                assert opt in section, f"sent {name}: {opt} is not in the reference"


def test_config_reference_has_every_key_with_its_default(gen_ref) -> None:
    from sentiment_cli import config

    def leaves(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from leaves(hints[f.name], f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    page = gen_ref.config_page()
    keys = set(leaves(config.Config))
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `([\w.]+)` \| `[^`]+` \| `([^`]*)` \|", page, re.M)}
    assert keys == set(rows), f"missing: {sorted(keys - set(rows))}, not in the schema: {sorted(set(rows) - keys)}"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, written in rows.items():
        node = params
        for part in key.split("."):
            node = node[part]
        assert yaml.safe_load(written) == node, f"{key}: the page says {written}, params.yaml {node!r}"


def test_params_yaml_comments_are_read_per_key(gen_ref) -> None:
    text = 'a: 1  # one\nb:\n  # above c\n  c: "x # y"   # the comment\n  d: [p, q]\n'
    assert gen_ref.params_yaml_lines(text) == {
        "a": ("1", "one"),
        "b": ("", ""),
        "b.c": ('"x # y"', "above c the comment"),
        "b.d": ("[p, q]", ""),
    }


# -------------------------------------------------------------------------------------- the nav


def _nav_files(entries) -> list[str]:
    out = []
    for entry in entries:
        if isinstance(entry, str):
            out.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                out += _nav_files(value) if isinstance(value, list) else [value]
    return out


def test_nav_lists_every_page_and_only_pages_that_exist(mkdocs_yml: dict) -> None:
    nav = _nav_files(mkdocs_yml["nav"])
    optional = set(mkdocs_yml["extra"]["optional_pages"])
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert not pages - set(nav), f"add to the nav in mkdocs.yml: {sorted(pages - set(nav))}"
    missing = {n for n in nav if n not in pages} - optional
    assert not missing, f"the nav names pages that do not exist: {sorted(missing)}"
    assert optional <= set(nav), "an optional page that is not in the nav would never appear"
    for page in ("drift.md", "vertex.md", "distributed.md", "architecture.md"):
        assert page in nav


def test_hook_leaves_out_only_missing_optional_pages(tmp_path: Path) -> None:
    hooks = _load("hooks")
    (tmp_path / "here.md").write_text("# here\n")
    (tmp_path / "later-but-here.md").write_text("# x\n")
    config = SimpleNamespace(
        extra={"optional_pages": ["later.md", "later-but-here.md"]},
        docs_dir=str(tmp_path),
        nav=[
            {"Home": "here.md"},
            {"Later": "later.md"},
            {"Group": [{"A": "later.md"}, {"B": "later-but-here.md"}]},
            {"Empty": [{"A": "later.md"}]},
            {"Typo": "not-optional.md"},
        ],
    )
    assert hooks.on_config(config).nav == [
        {"Home": "here.md"},
        {"Group": [{"B": "later-but-here.md"}]},
        {"Typo": "not-optional.md"},  # still there: the strict build reports it
    ]


# ------------------------------------------------------------------------------ troubleshooting


def error_classes() -> dict[str, str]:
    """Every subclass of sentiment_cli.errors.SentError in the package, by name → module. Read
    from the source (no imports: a module that needs an optional dependency still counts)."""
    bases: dict[str, tuple[set[str], str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                names = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases}
                bases[node.name] = (names, path.relative_to(ROOT).as_posix())
    found = {"SentError": "sentiment_cli/errors.py"}
    grew = True
    while grew:
        grew = False
        for name, (parents, where) in bases.items():
            if name not in found and parents & set(found):
                found[name] = where
                grew = True
    return found


def test_every_error_class_has_a_troubleshooting_entry() -> None:
    page = (DOCS / "troubleshooting.md").read_text()
    headings = re.findall(r"^#{2,3} (.+)$", page, re.M)
    classes = error_classes()
    assert {"SentError", "UsageError", "ConfigError", "DataError", "ModelError"} <= set(classes)
    for name, where in sorted(classes.items()):
        assert any(re.match(rf"`?{name}`?\b", h) for h in headings), (
            f"docs/troubleshooting.md has no entry for {name} ({where}): add a `## {name}: ...` "
            "section with its messages and what to do"
        )


# --------------------------------------------------------------------------------- strict build


def test_site_builds_strictly(tmp_path: Path) -> None:
    """Broken links and anchors, pages missing from the nav: all fail `mkdocs build --strict`."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs-material is not installed (the docs extra: make docs)")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert result.returncode == 0, "\n".join(warnings) or result.stderr
    assert (tmp_path / "site" / "reference" / "cli.html").is_file()
