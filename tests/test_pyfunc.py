"""A registered version is an MLflow model: MLflow's own loaders and server use it (pyfunc.py and
resources/mlflow_model.py), the hash checks still hold, and sent serve, promote's hash tag and
the accuracy gate work on it and on versions registered as plain folders by older sent."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import registry_fixtures
from registry_fixtures import NAME, promote_cli
from serve_fixtures import serve_config, wait_ready

from sentiment_cli import loading, model, pyfunc, registry
from sentiment_cli.errors import ModelError
from sentiment_cli.servers import free_port

empty_store_db, store, tiny_model = (registry_fixtures.empty_store_db, registry_fixtures.store,
                                     registry_fixtures.tiny_model)
CHAMPION = f"models:/{NAME}@champion"


def _tamper(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-8] + b"tampered")


def test_the_champion_loads_and_predicts_with_mlflow_pyfunc(store):
    import mlflow

    rid = store.train_run(0.8)
    assert promote_cli().exit_code == 0
    loaded = mlflow.pyfunc.load_model(CHAMPION)
    texts = ["great film", "a dull, tired mess"]
    got = loaded.predict(texts)
    expected = model.Predictor.from_folder(store.folder_of(rid)).predict(texts)
    assert [p.label for p in got] == [p.label for p in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.score == pytest.approx(e.score, abs=1e-6)
        assert g.probabilities == pytest.approx(e.probabilities, abs=1e-6)
        assert set(g.probabilities) == {"neg", "pos"}
    # its MLmodel: a signature (texts in, one prediction per text out) and an input example
    meta = loaded.metadata
    assert meta.signature.inputs.to_dict() == [{"type": "string", "required": True}]
    out = json.dumps(meta.signature.outputs.to_dict())
    assert all(k in out for k in ("label", "score", "probabilities"))
    assert meta.saved_input_example_info["type"] == "json_object"
    assert meta.metadata["weights_sha256"] == registry.get_version(store.cfg(), NAME, "champion").tags[
        "weights_sha256"]


def test_the_logged_model_is_linked_to_its_run_and_its_metrics(store):
    rid = store.train_run(0.8)
    cfg = store.cfg()
    with registry.run(cfg, run_id=rid):  # `sent eval` logs to the training run later
        registry.log_metrics({"test_loss": 0.4})
    lm = registry.client(cfg).get_logged_model(registry.logged_model(cfg, rid).model_id)
    assert lm.source_run_id == rid and lm.model_type == pyfunc.MODEL_TYPE
    assert {"val_accuracy", "test_accuracy", "test_loss"} <= {m.key for m in lm.metrics}
    assert lm.tags["weights_sha256"] == model.read_meta(store.folder_of(rid))["weights_sha256"]


def test_pyfunc_loading_refuses_changed_weights(store):
    import mlflow

    rid = store.train_run(0.8)
    assert promote_cli().exit_code == 0
    _tamper(store.folder_of(rid) / "model.safetensors")
    with pytest.raises(ModelError, match="does not match its sent.json.*refusing to load"):
        mlflow.pyfunc.load_model(CHAMPION)


def test_pyfunc_loading_checks_the_hash_the_mlmodel_recorded(store, tmp_path):
    """A sent.json rewritten to match changed weights still disagrees with the MLmodel."""
    rid = store.train_run(0.8)
    folder = store.folder_of(rid)
    _tamper(folder / "model.safetensors")
    meta = json.loads((folder / "sent.json").read_text())
    recorded = meta["weights_sha256"]
    meta["weights_sha256"] = model.weights_sha256(folder)
    (folder / "sent.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="the hash its MLmodel recorded"):
        pyfunc.load(folder, {"weights_sha256": recorded})
    assert pyfunc.load(folder, {}).labels == ["neg", "pos"]  # nothing else recorded: it loads


def test_model_folder_refuses_an_mlmodel_sent_did_not_write(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "MLmodel").write_text("flavors:\n  sklearn: {}\n")
    with pytest.raises(ModelError, match="sent did not log"):
        pyfunc.model_folder(tmp_path / "other")
    (tmp_path / "escape").mkdir()
    (tmp_path / "escape" / "MLmodel").write_text(
        "flavors:\n  python_function:\n    artifacts:\n      model: {path: ../other}\n")
    with pytest.raises(ModelError, match="not a folder inside"):
        pyfunc.model_folder(tmp_path / "escape")
    assert pyfunc.model_folder(tmp_path) == tmp_path  # no MLmodel: a plain folder is itself


@pytest.mark.parametrize("legacy", [False, True], ids=["mlflow-model", "plain-folder"])
def test_sent_serve_promote_and_the_gate_work_on_both_layouts(store, tmp_path, legacy):
    from litestar.testing import TestClient

    from sentiment_cli import serve

    rid = store.train_run(0.8, metrics={"test_accuracy_torch_int8": 0.799}, legacy=legacy)
    assert promote_cli().exit_code == 0
    cfg = store.cfg()
    mv = registry.get_version(cfg, NAME, "champion")
    assert mv.source.startswith("models:/m-") != legacy
    # promote's tag is the hash of the registered files
    assert mv.tags["weights_sha256"] == model.weights_sha256(store.folder_of(rid))
    folder, info = loading.resolve(cfg, CHAMPION, verify_hash=True)
    assert (folder / "config.json").is_file() and info["version"] == "1"
    # the accuracy gate reads the version's run: int8 was measured on these weights
    gated = serve_config(tmp_path / "gated", f"serve.model={CHAMPION}", "serve.runtime=torch",
                         "serve.quantize=true")
    assert loading.load_predictor(gated, folder, info).variant == "torch-int8"
    with TestClient(serve.create_app(serve_config(tmp_path / "log", f"serve.model={CHAMPION}"))) as c:
        wait_ready(c)
        r = c.post("/predict", json={"text": "registered and verified"})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == {"name": NAME, "version": "1"}
    _tamper(store.folder_of(rid) / "model.safetensors")
    with pytest.raises(registry.RegistryError, match="does not match the registry tag"):
        loading.resolve(cfg, CHAMPION, verify_hash=True)


def test_a_downloaded_mlflow_model_folder_serves_as_a_path(store, tmp_path):
    store.train_run(0.8)
    assert promote_cli().exit_code == 0
    cfg = store.cfg()
    downloaded = registry.download(cfg, f"models:/{NAME}/1", tmp_path / "dl")
    folder, _ = loading.resolve(cfg, str(downloaded), verify_hash=True)
    assert folder == pyfunc.model_folder(downloaded) and (folder / "sent.json").is_file()


def _post_invocations(url: str, body: dict, deadline: float, proc, log: Path) -> dict:
    import requests

    while True:
        try:
            if requests.get(f"{url}/ping", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"mlflow models serve did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    r = requests.post(f"{url}/invocations", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_mlflow_models_serve_answers_for_the_champion(store, tmp_path):
    """MLflow's own server, on the registered champion, in this environment (--env-manager local):
    about 17 s, most of it the server importing torch; not marked slow, it is the check that
    MLflow's tools work on what sent registers."""
    import signal

    store.train_run(0.8)
    assert promote_cli().exit_code == 0
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # mlflow starts `uvicorn` from PATH: an activated venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", CHAMPION,
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=store.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        answer = _post_invocations(f"http://127.0.0.1:{port}", {"inputs": ["great film"]},
                                   time.monotonic() + 120, proc, log_path)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
    (prediction,) = answer["predictions"]
    assert prediction["label"] in ("neg", "pos")
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
