"""The shape of the package: layers, sizes, and a code map that names every module.

The layers are import-linter contracts in pyproject.toml; docs/architecture.md is the code map a
newcomer reads. Each test guards a way the structure decays quietly: a step importing another, a
new module placed in no layer, a function that grows past a screenful, a module missing from the
map.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sentiment_cli"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400
# A module may be longer when its docstring says why, in a line that starts with this.
LONG_MODULE_MARKER = "Longer than 400 lines"


def _contract() -> dict:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in tool["contracts"] if c["type"] == "layers"]
    return contract


def _top_level_modules() -> set[str]:
    """sentiment_cli.X for every module file and subpackage directly under the package."""
    found = {f"sentiment_cli.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    found |= {f"sentiment_cli.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    return found


def _layers() -> list[set[str]]:
    return [{m.strip() for m in layer.replace("|", ":").split(":")} for layer in _contract()["layers"]]


def test_the_import_layers_hold() -> None:
    """cli → steps and services → core, steps and services independent of each other."""
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import "
                             "lint_imports_command; sys.exit(lint_imports_command())"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_every_module_has_a_layer() -> None:
    layers = _layers()
    placed = set().union(*layers)
    missing = sorted(_top_level_modules() - placed)
    assert not missing, f"add to a layer in pyproject.toml [tool.importlinter]: {missing}"
    gone = sorted(placed - _top_level_modules())
    assert not gone, f"the import contract names modules that do not exist: {gone}"
    assert all(len(a & b) == 0 for i, a in enumerate(layers) for b in layers[i + 1:])


def test_steps_and_services_are_independent_siblings() -> None:
    middle = _contract()["layers"][1]
    assert ":" not in middle, "steps and services must be independent ('|'), not just layered"


def _python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_fit_on_a_screen(path: Path) -> None:
    tree = ast.parse(path.read_text())
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: split {', '.join(long)} (at most {MAX_FUNCTION_LINES} lines)"


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_short_or_say_why(path: Path) -> None:
    text = path.read_text()
    lines = len(text.splitlines())
    if lines <= MAX_MODULE_LINES:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert any(line.startswith(LONG_MODULE_MARKER) for line in doc.splitlines()), (
        f"{path.name} has {lines} lines: split it, or say why at its top "
        f"('{LONG_MODULE_MARKER} because ...')")


def test_the_code_map_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for path in _python_files():
        rel = path.relative_to(PACKAGE)
        if rel == Path("__init__.py"):
            continue
        name = f"{rel.parent.as_posix()}/" if rel.name == "__init__.py" else rel.as_posix()
        if f"`{name}`" not in text:
            missing.append(name)
    assert not missing, f"docs/architecture.md does not mention: {missing}"
