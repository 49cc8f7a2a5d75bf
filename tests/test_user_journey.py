"""One new user's first day, end to end, as typed at a shell: an own CSV with its own column
names and string labels goes through `sent fetch SOURCE` → train → eval → promote; the champion is
then used through MLflow's own tools (`mlflow.pyfunc.load_model`, `mlflow models serve`) and
through `sent serve` with the `{"inputs": ...}` body those tools use.

Every step is a real process (the installed CLI, a real MLflow SQLite store, real HTTP servers on
127.0.0.1). Marked slow: three servers start and a model trains (about two minutes); each piece
also has fast tests of its own (test_own_data.py, test_pyfunc.py, test_serve.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from sentiment_cli import servers

pytestmark = pytest.mark.slow

NAME = "sentiment-classifier"
POSITIVE = ["wonderful", "moving", "brilliant", "funny", "gripping", "charming"]
NEGATIVE = ["dull", "tedious", "silly", "boring", "lifeless", "clumsy"]
# A short run of the tiny profile that still learns these two word lists.
SHORT = ["--set", "train.epochs=3", "--set", "train.batch_size=16", "--set", "eval.compare=[]"]


def write_reviews(path: Path, n: int = 480) -> None:
    """Reviews whose sentiment is carried by one word, labelled 'negative' / 'positive'."""
    rows = []
    for i in range(n):
        label = ("positive", "negative")[i % 2]
        word = (POSITIVE if label == "positive" else NEGATIVE)[(i // 2) % 6]
        rows.append((f"a {word} film from start to finish, said reviewer {i}", label))
    pd.DataFrame(rows, columns=["review", "sentiment"]).to_csv(path, index=False)


def sent(cwd: Path, env: dict, *args: str, timeout: float = 600) -> str:
    """Run `sent ARGS` as a user would; its output, or a failure showing it."""
    proc = subprocess.run(servers.sent_command(*args), cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"sent {' '.join(args)} exited {proc.returncode}:\n{output}"
    return output


def post(url: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback test server
        return resp.status, json.loads(resp.read())


def test_own_csv_to_mlflow_tools_and_sent_serve(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bin_dir = str(Path(sys.executable).parent)  # mlflow models serve starts uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_REGISTRY_URI", None)
    write_reviews(tmp_path / "reviews.csv")

    out = sent(tmp_path, env, "fetch", "reviews.csv", "--text-column", "review",
               "--label-column", "sentiment", "--profile", "tiny")
    assert "negative, positive" in out  # the inferred labels are reported
    meta = json.loads((tmp_path / "data/processed/meta.json").read_text())
    assert meta["labels"] == ["negative", "positive"]

    sent(tmp_path, env, "train", "--profile", "tiny", *SHORT)
    sent(tmp_path, env, "eval", "--profile", "tiny", *SHORT)
    metrics = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert metrics["accuracy"] >= 0.9, metrics  # one word decides: the run learned it
    sent(tmp_path, env, "promote", "--profile", "tiny")

    # The run says what it trained on: the CSV, not the built-in default.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias(NAME, "champion")
    run = client.get_run(version.run_id)
    assert run.data.params["data.text_column"] == "review"
    assert "reviews.csv" in run.data.params["data.source"]
    assert re.fullmatch(r"train-scratch-tiny-\d{8}-\d{6}", run.info.run_name), run.info.run_name

    # MLflow's own loader, in this process.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        loaded = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
        got = loaded.predict(["a wonderful film", "a tedious film"])
    finally:
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert [p.label for p in got] == ["positive", "negative"], got
    assert set(got[0].probabilities) == {"negative", "positive"}

    # MLflow's own server on the champion, in this environment.
    argv = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
            f"models:/{NAME}@champion", "--env-manager", "local", "--workers", "1"]
    with servers.running(argv, cwd=tmp_path, env=env, output=tmp_path / "mlflow-serve.out",
                         ready_timeout=180, ready_path="/ping", group=True) as server:
        status, answer = post(f"{server.url}/invocations", {"inputs": ["a brilliant film"]})
    assert status == 200
    assert "positive" in json.dumps(answer), answer

    # sent serve on the same champion, answering MLflow's body convention.
    argv = servers.sent_command("serve", "--model", f"models:/{NAME}@champion", "--profile", "tiny",
                                "--set", f"paths.prediction_log={tmp_path / 'predictions'}")
    with servers.running(argv, cwd=tmp_path, env=env, output=tmp_path / "sent-serve.out",
                         ready_timeout=120) as server:
        status, one = post(f"{server.url}/predict", {"inputs": "a charming film"})
        status_many, many = post(f"{server.url}/predict", {"inputs": ["a dull film", "a funny film"]})
    assert (status, status_many) == (200, 200)
    assert json.dumps(one).count("positive") >= 1, one
    labels = [p["label"] for p in many["predictions"]]
    assert labels == ["negative", "positive"], many
