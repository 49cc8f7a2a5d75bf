"""Shared fixtures: every test runs offline, on the CPU, in its own working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["registry_fixtures"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Small, fast runs of the tiny profile: a few hundred examples, one short epoch.
FAST = [
    "data.max_train_samples=600",
    "train.epochs=1",
    "train.batch_size=32",
    "train.checkpoint_every_steps=5",
    "train.log_every_steps=5",
]


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX exports (eval.compare, serve.runtime=onnx) go to a temporary cache, not ~/.cache."""
    root = tmp_path_factory.mktemp("xdg-cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(root)
    yield root / "sent" / "onnx"
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(autouse=True)
def mlflow_uris_restored():
    """mlflow.set_tracking_uri / set_registry_uri (called by registry.client) export
    MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI: a test against a tracking server would otherwise
    leave later tests, and the processes they start (dvc repro), pointed at a server that is gone."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.get(name) for name in names}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory with its own MLflow SQLite store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fetch → train → eval run of the tiny profile, shared by the tests that only read it."""
    from typer.testing import CliRunner

    from sentiment_cli.cli import app

    root = tmp_path_factory.mktemp("pipeline")
    old = Path.cwd()
    old_uri = os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        runner = CliRunner()
        args = ["--profile", "tiny", *[a for s in FAST for a in ("--set", s)]]
        for step in ("fetch", "train", "eval"):
            result = runner.invoke(app, [step, *args])
            assert result.exit_code == 0, f"sent {step} failed:\n{result.output}"
    finally:
        os.chdir(old)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    return root


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With SENT_REQUIRE_BROWSER=1 (CI sets it), a browser test may not skip: it fails instead."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("SENT_REQUIRE_BROWSER") == "1" and item.get_closest_marker("browser"):
        report.outcome = "failed"
        report.longrepr = f"browser test skipped but SENT_REQUIRE_BROWSER=1: {report.longrepr}"
