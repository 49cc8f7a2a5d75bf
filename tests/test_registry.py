"""registry.py's Model Registry helpers against a real MLflow SQLite store, and the whole of
`sent promote` against a real `mlflow server` (marked slow: the server takes ~15 s to start)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import registry_fixtures
from registry_fixtures import NAME, champion_state, promote_cli

from sentiment_cli import model, pyfunc, registry
from sentiment_cli.registry import RegistryError

# the shared fixtures, used by name
empty_store_db, store, tiny_model = (registry_fixtures.empty_store_db, registry_fixtures.store,
                                     registry_fixtures.tiny_model)


# ---------------------------------------------------------------- no store needed


@pytest.mark.parametrize("uri, expected", [
    ("sqlite:///mlflow.db", Path("mlflow.db").resolve()),
    ("sqlite:////abs/dir/m.db", Path("/abs/dir/m.db")),
    ("sqlite:///m.db?timeout=30", Path("m.db").resolve()),
    ("sqlite://", None), ("sqlite:///:memory:", None),
    ("http://127.0.0.1:5000", None), ("postgresql://u@h/db", None), ("file:///tmp/mlruns", None),
])
def test_sqlite_path(uri, expected):
    assert registry._sqlite_path(uri) == expected


class Flaky:
    def __init__(self, failures: int, exc: BaseException):
        self.calls, self.failures, self.exc = 0, failures, exc

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "done"


def test_retry_waits_out_a_locked_sqlite_database():
    from mlflow.exceptions import MlflowException

    flaky = Flaky(3, MlflowException("(sqlite3.OperationalError) database is locked"))
    assert registry._retry(flaky, "test") == "done"
    assert flaky.calls == 4


def test_retry_turns_other_mlflow_errors_into_one_line_registry_errors_keeping_the_code():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    flaky = Flaky(1, MlflowException("Run with id=x not found\nmore detail",
                                     error_code=RESOURCE_DOES_NOT_EXIST))
    with pytest.raises(RegistryError) as info:
        registry._retry(flaky, "getting run x")
    assert str(info.value) == "getting run x: Run with id=x not found"
    assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert flaky.calls == 1


def test_retry_lets_programming_errors_through():
    with pytest.raises(ZeroDivisionError):
        registry._retry(lambda: 1 / 0, "x")


def test_retry_gives_up_after_its_deadline(monkeypatch):
    from mlflow.exceptions import MlflowException

    monkeypatch.setattr(registry, "LOCK_RETRY_SECONDS", 0.2)
    flaky = Flaky(10**6, MlflowException("database is locked"))
    with pytest.raises(RegistryError, match="database is locked"):
        registry._retry(flaky, "x")
    assert flaky.calls > 1


# ---------------------------------------------------------------- the lock


def test_registry_lock_excludes_a_second_holder_until_released(store):
    cfg = store.cfg()
    order: list[str] = []

    def second():
        with registry.registry_lock(cfg):
            order.append("second in")

    with registry.registry_lock(cfg) as path:
        assert path == store.root / "mlflow.db.sent-registry.lock"
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first out")
    t.join(10)
    assert order == ["first out", "second in"]


def test_registry_lock_times_out_with_a_clear_error(store, monkeypatch):
    cfg = store.cfg()
    monkeypatch.setattr(registry, "LOCK_TIMEOUT_SECONDS", 0.2)
    errors: list[str] = []

    def second():
        try:
            with registry.registry_lock(cfg):
                pass
        except RegistryError as exc:
            errors.append(str(exc))

    with registry.registry_lock(cfg):
        t = threading.Thread(target=second)
        t.start()
        t.join(10)
    assert len(errors) == 1 and "sent promote" in errors[0] and "stuck" in errors[0]


def test_no_lock_for_a_tracking_server(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with registry.registry_lock(store.cfg()) as path:
        assert path is None


# ---------------------------------------------------------------- registry helpers


def test_registered_model_is_none_until_created_and_creating_twice_is_fine(store):
    cfg = store.cfg()
    assert registry.registered_model(cfg, NAME) is None
    first = registry.registered_model(cfg, NAME, create=True)
    again = registry.registered_model(cfg, NAME, create=True)
    assert first.name == again.name == NAME


def test_create_version_points_at_the_runs_logged_model(store, tmp_path):
    cfg = store.cfg()
    rid = store.train_run(0.8)
    run = registry.get_run(cfg, rid)
    lm = registry.logged_model(cfg, rid)
    assert lm is not None and lm.source_run_id == rid and lm.name == "model"
    registry.registered_model(cfg, NAME, create=True)
    mv = registry.create_version(cfg, NAME, run, {"weights_sha256": "abc"})
    assert str(mv.version) == "1" and mv.run_id == rid
    assert mv.source == f"models:/{lm.model_id}" == registry.model_source(cfg, run)
    # linked both ways, as mlflow.register_model links them
    linked = json.loads(registry.client(cfg).get_logged_model(lm.model_id).tags["mlflow.modelVersions"])
    assert linked == [{"name": NAME, "version": "1"}]
    downloaded = registry.download(cfg, f"models:/{NAME}/1", tmp_path / "dl")
    assert (downloaded / "MLmodel").is_file()
    folder = pyfunc.model_folder(downloaded)
    assert folder == (downloaded / "artifacts" / "model").resolve()
    assert model.weights_sha256(folder) == model.weights_sha256(store.folder_of(rid))


def test_a_run_of_an_older_sent_is_registered_from_its_plain_folder(store, tmp_path):
    cfg = store.cfg()
    rid = store.train_run(0.8, legacy=True)
    run = registry.get_run(cfg, rid)
    assert registry.logged_model(cfg, rid) is None and registry.has_model_artifact(cfg, rid)
    registry.registered_model(cfg, NAME, create=True)
    mv = registry.create_version(cfg, NAME, run, {})
    assert mv.source == f"{run.info.artifact_uri}/model" == registry.model_source(cfg, run)
    downloaded = registry.download(cfg, f"models:/{NAME}/1", tmp_path / "dl")
    assert not (downloaded / "MLmodel").exists() and pyfunc.model_folder(downloaded) == downloaded
    assert model.weights_sha256(downloaded) == model.weights_sha256(store.folder_of(rid))


def test_only_the_files_that_decide_a_prediction_are_uploaded(store, tmp_path):
    import shutil

    cfg = store.cfg()
    folder = tmp_path / "with-extras"
    shutil.copytree(store.model_folder(), folder)
    (folder / "pytorch_model.bin").write_bytes(b"a pickle nobody should load")
    (folder / "NOTES.md").write_text("scratch notes")
    with registry.run(cfg, run_name="upload") as active:
        registry.log_model_folder(folder, active.info.run_id)
    stored = Path(registry.logged_model(cfg, active.info.run_id).artifact_location)
    uploaded = {p.name for p in pyfunc.model_folder(stored).iterdir()}
    assert "pytorch_model.bin" not in uploaded and "NOTES.md" not in uploaded
    assert {"config.json", "model.safetensors", "sent.json", "tokenizer.json"} <= uploaded
    # and nothing of the MLflow model around it is a pickle: a model from code
    everything = [p.name for p in stored.rglob("*") if p.is_file()]
    assert not [n for n in everything if n.endswith((".pkl", ".pickle", ".bin", ".pt"))], everything
    assert pyfunc.CODE_FILE in everything


def test_search_versions_by_run_and_by_tag_oldest_first(store):
    cfg = store.cfg()
    registry.registered_model(cfg, NAME, create=True)
    runs = [store.train_run(0.8) for _ in range(3)]
    for rid, sha in zip(runs, ["aa", "bb", "aa"], strict=True):
        registry.create_version(cfg, NAME, registry.get_run(cfg, rid), {"weights_sha256": sha})
    assert [str(v.version) for v in registry.search_versions(cfg, NAME)] == ["1", "2", "3"]
    assert [str(v.version) for v in registry.search_versions(cfg, NAME, run_id=runs[1])] == ["2"]
    by_tag = registry.search_versions(cfg, NAME, tags={"weights_sha256": "aa"})
    assert [str(v.version) for v in by_tag] == ["1", "3"]
    assert registry.search_versions(cfg, NAME, tags={"weights_sha256": "it's"}) == []  # quoted


def test_model_version_is_none_once_deleted(store):
    cfg = store.cfg()
    registry.registered_model(cfg, NAME, create=True)
    registry.create_version(cfg, NAME, registry.get_run(cfg, store.train_run(0.8)), {})
    assert str(registry.model_version(cfg, NAME, "1").version) == "1"
    registry.client(cfg).delete_model_version(NAME, "1")
    assert registry.model_version(cfg, NAME, "1") is None


def test_latest_train_run(store):
    cfg = store.cfg()
    assert registry.latest_train_run(cfg) is None  # no experiment yet
    first = store.train_run(0.8)
    second = store.train_run(0.8)
    store.train_run(0.8, log_model=False)
    store.train_run(0.8, kind="register")
    assert registry.latest_train_run(cfg).info.run_id == second
    assert registry.has_model_artifact(cfg, first)


def test_aliases_and_model_tags(store):
    cfg = store.cfg()
    registry.registered_model(cfg, NAME, create=True)
    registry.create_version(cfg, NAME, registry.get_run(cfg, store.train_run(0.8)), {})
    registry.set_alias(cfg, NAME, "champion", "1")
    registry.set_model_tag(cfg, NAME, "k", "v")
    rm = registry.registered_model(cfg, NAME)
    assert str(rm.aliases["champion"]) == "1" and rm.tags["k"] == "v"
    registry.delete_model_tag(cfg, NAME, "k")
    registry.delete_model_tag(cfg, NAME, "k")  # already gone: fine
    assert "k" not in registry.registered_model(cfg, NAME).tags
    assert str(registry.get_version(cfg, NAME, alias="champion").version) == "1"


# ---------------------------------------------------------------- a real tracking server


@pytest.mark.slow
def test_promote_rollback_list_and_serve_through_a_tracking_server(store, tracking_server,
                                                                   tmp_path):
    url, artifacts = tracking_server
    first = store.train_run(0.80)
    assert promote_cli().exit_code == 0
    second = store.train_run(0.85)
    result = promote_cli()
    assert result.exit_code == 0, result.output
    cfg = store.cfg()
    assert registry.tracking_uri(cfg) == url
    assert registry._sqlite_path(url) is None  # no file lock: compare-and-verify only
    assert champion_state(cfg) == ("2", ["1", "2"])
    mv = registry.get_version(cfg, NAME, alias="champion")
    assert mv.source.startswith("models:/m-") and mv.run_id == second
    lm = registry.logged_model(cfg, second)
    assert lm.artifact_location.startswith("mlflow-artifacts:/")
    # the artifacts went through the server to its destination, not to a local ./mlruns
    assert list(artifacts.rglob("model.safetensors")) and not (store.root / "mlruns").exists()
    folder, info = registry.resolve_model(cfg, f"models:/{NAME}@champion", tmp_path / "dl")
    assert model.weights_sha256(folder) == info["weights_sha256"] == mv.tags["weights_sha256"]
    store.train_run(0.70)
    assert promote_cli().exit_code == 3
    listed = promote_cli("--list")
    assert listed.exit_code == 0 and url in listed.stdout and first in listed.stdout
    assert promote_cli("--rollback").exit_code == 0
    assert champion_state(cfg) == ("1", ["1"])
    assert promote_cli("--run-id", first).exit_code == 0  # already champion: nothing to change
    assert len(registry.search_versions(cfg, NAME)) == 3


# ---------------------------------------------------------------- a tracking server that dies mid-run


@pytest.mark.slow
def test_training_stops_in_one_line_soon_after_its_tracking_server_dies(store, tmp_path):
    """The choice: sent does not train on silently for a run nobody records. MLflow's retries are
    bounded (mlflow.request_retries / request_timeout_s); then the run ends with one line that
    says what to do, and the checkpoints written so far let `sent train --resume` continue."""
    import os
    import signal
    import subprocess
    import sys

    server_dir = tmp_path / "server"
    server_dir.mkdir()
    shutil.copyfile(store.root / "mlflow.db", server_dir / "backend.db")
    proc, url = registry_fixtures.start_mlflow_server(server_dir)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=url, MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    sets = ["--set", "train.epochs=2", "--set", "train.log_every_steps=2", "--set", "train.checkpoint_every_steps=5"]
    sent = [sys.executable, "-m", "sentiment_cli.cli"]
    try:
        subprocess.run([*sent, "fetch", "--profile", "tiny", "--set", "data.max_train_samples=3000"],
                       cwd=work, env=env, check=True, capture_output=True, timeout=120)
        train = subprocess.Popen([*sent, "train", "--profile", "tiny", *sets], cwd=work, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not list((work / "checkpoints").glob("step-*/*")):  # training is under way
            assert train.poll() is None and time.monotonic() < deadline, train.communicate()
            time.sleep(0.2)
    finally:
        registry_fixtures.stop_mlflow_server(proc, signal.SIGKILL)
    killed = time.monotonic()
    out, err = train.communicate(timeout=300)
    stopped_after = time.monotonic() - killed
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert train.returncode == 1, err[-2000:]
    assert "Traceback" not in err and len(errors) == 1, err[-2000:]
    assert url in errors[0] and "--resume" in errors[0]
    assert stopped_after < 120, f"took {stopped_after:.0f} s to give up"
    assert list((work / "checkpoints").glob("step-*")), "nothing to resume from"
