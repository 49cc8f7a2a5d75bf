"""Fixtures for the registry and promote tests: a real MLflow SQLite store in tmp_path, and
runs that look like `sent train` + `sent eval` made them, holding a tiny real model.

A test module binds the fixtures it uses to module names: `store = registry_fixtures.store`
(and the fixtures those need: empty_store_db, tiny_model).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sentiment_cli.servers import free_port

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

NAME = "sentiment-classifier"
TEXTS = [
    "a gripping, beautifully acted film", "dull and far too long", "a warm funny delight",
    "the plot makes no sense at all", "one of the best movies this year", "i walked out bored",
    "sharp writing and a great cast", "a tired collection of cliches", "moving and honest",
    "painfully slow with flat jokes", "an utterly charming surprise", "a mess from start to end",
    "smart, tender and very funny", "the acting is wooden", "a triumph of quiet storytelling",
    "nothing here is worth your time", "fresh and full of life", "clumsy, loud and empty",
    "a joy to watch", "the worst script in years", "wonderfully strange and bold",
    "predictable and lifeless", "a rich rewarding drama", "tedious beyond belief",
    "clever twists and real heart", "an insult to the audience", "lovely music and images",
    "overlong and self important", "genuinely thrilling", "forgettable in every way",
]
_serial = itertools.count()


@pytest.fixture(scope="session")
def tiny_model():
    """A tokenizer and a 2-layer BERT built from the tiny profile: no download."""
    from sentiment_cli import config, model

    cfg = config.load("tiny")
    return model.build(cfg, ["neg", "pos"], train_texts=TEXTS)


@dataclass
class Store:
    """A working directory with its own MLflow SQLite store, and a maker of candidate runs."""

    root: Path
    uri: str
    tiny: tuple
    runs: list[str] = field(default_factory=list)

    def cfg(self, *overrides: str):
        from sentiment_cli import config

        return config.load("tiny", list(overrides))

    def model_folder(self, name: str | None = None, run_id: str | None = None,
                     metrics: dict | None = None) -> Path:
        """A saved model folder with weights no other folder of this session has."""
        import torch

        from sentiment_cli import config, model

        tok, m = self.tiny
        n = next(_serial)
        with torch.no_grad():  # a new classifier bias: new weights, new sha256
            gen = torch.Generator().manual_seed(1000 + n)
            m.classifier.bias.copy_(torch.randn(m.classifier.bias.shape, generator=gen))
        meta = {"config": config.to_dict(self.cfg()), "data_sha256": "test",
                "labels": ["neg", "pos"], "metrics": metrics or {}, "mlflow_run_id": run_id}
        return model.save(self.root / "folders" / (name or f"model-{n}"), m, tok, meta)

    def train_run(self, test_accuracy: float | None = 0.8, *, metrics: dict | None = None,
                  kind: str = "train", log_model: bool = True, legacy: bool = False) -> str:
        """A finished run like `sent train` then `sent eval` leave it; returns its id.

        legacy=True: the model is a plain "model" artifact folder, as sent logged it before
        LoggedModels (no MLmodel)."""
        from sentiment_cli import model, registry

        cfg = self.cfg()
        scores = {"val_accuracy": 0.75, **(metrics or {})}
        if test_accuracy is not None:
            scores.setdefault("test_accuracy", test_accuracy)
            scores.setdefault("test_f1", round(test_accuracy - 0.01, 4))
        with registry.run(cfg, run_name="train-test", tags={"sent.kind": kind}) as active:
            run_id = active.info.run_id
            folder = self.model_folder(run_id=run_id, metrics={"val_accuracy": 0.75})
            registry.log_metrics(scores)
            if log_model and legacy:
                registry.client(cfg).log_artifacts(run_id, str(folder), "model")
            elif log_model:
                registry.log_model_folder(folder, run_id)
            sha = model.read_meta(folder)["weights_sha256"]
            registry.set_run_tags(cfg, run_id, {"weights_sha256": sha,
                                                "sent.model_dir": str(folder)})
        time.sleep(0.01)  # distinct start times: "the last training run" is well defined
        self.runs.append(run_id)
        return run_id

    def folder_of(self, run_id: str) -> Path:
        """Where the local artifact store keeps a run's model folder: the LoggedModel's
        artifacts/model/, or a legacy run's "model" artifact folder."""
        from sentiment_cli import pyfunc, registry

        cfg = self.cfg()
        lm = registry.logged_model(cfg, run_id)
        if lm is not None:
            return pyfunc.model_folder(Path(lm.artifact_location))
        return Path(registry.model_source(cfg, registry.get_run(cfg, run_id)))


@pytest.fixture(scope="session")
def empty_store_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its tables made: copying it is far faster than letting
    every test run MLflow's migrations again (seconds each)."""
    import mlflow

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    uri = f"sqlite:///{db}"
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
    return db


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model, empty_store_db) -> Store:
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(empty_store_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    # mlflow.set_registry_uri() exports MLFLOW_REGISTRY_URI, and registry.client() honours it:
    # left over from an earlier test it would point this test at that test's registry.
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return Store(tmp_path, uri, tiny_model)


def promote_cli(*args: str):
    """`sent promote --profile tiny ARGS` through Typer's CliRunner."""
    from typer.testing import CliRunner

    from sentiment_cli.cli import app

    return CliRunner().invoke(app, ["promote", "--profile", "tiny", *args])


def champion_state(cfg, name: str = NAME, alias: str = "champion") -> tuple[str | None, list[str]]:
    """(where the alias points, the stored history tag) read straight from MLflow."""
    import json

    from sentiment_cli import registry

    rm = registry.client(cfg).get_registered_model(name)
    champion = rm.aliases.get(alias)
    raw = rm.tags.get(f"sent.history.{alias}")
    return (None if champion is None else str(champion)), [str(v) for v in json.loads(raw or "[]")]


@pytest.fixture
def tracking_server(store, tmp_path, monkeypatch):
    """`mlflow server` with its own SQLite store, proxying artifacts to tmp_path/artifacts."""
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    shutil.copyfile(store.root / "mlflow.db", server_dir / "backend.db")  # tables made already
    proc, url = start_mlflow_server(server_dir)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        yield url, server_dir / "artifacts"
    finally:
        stop_mlflow_server(proc)


def start_mlflow_server(server_dir: Path, port: int | None = None, env: dict[str, str] | None = None):
    """A real `mlflow server` on 127.0.0.1 over server_dir/backend.db; (process, url) once healthy.
    env: extra environment for the server (its webhook settings, say)."""
    port = port or free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
    proc = subprocess.Popen(
        [str(mlflow_cli), "server", "--backend-store-uri", f"sqlite:///{server_dir / 'backend.db'}",
         "--artifacts-destination", str(server_dir / "artifacts"), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=server_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 90
    while True:
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_mlflow_server(proc)
            pytest.fail(f"mlflow server did not start (exit {proc.poll()})")
        time.sleep(0.3)


def stop_mlflow_server(proc, sig: int = 15) -> None:
    """The server and its uvicorn worker (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(20)
