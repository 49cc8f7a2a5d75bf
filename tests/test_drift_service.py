"""The drift service (`sent drift --serve`): the latest report, Prometheus gauges, readiness."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from litestar.testing import TestClient

from sentiment_cli import config, predlog
from sentiment_cli.drift import report as reporting
from sentiment_cli.drift import service
from sentiment_cli.errors import SentError


def _doc(status: str = "drift", p: float = 0.001) -> dict:
    tests = [{"name": "labels", "method": "Fisher exact", "statistic": 2.0, "p_value": p, "p_adjusted": 2 * p,
              "effect": 0.2, "effect_name": "max |share change|", "threshold": 0.05, "n_reference": 1000,
              "n_current": 200, "significant": True, "drift": status == "drift", "detail": {}},
             {"name": "words", "method": "JS", "statistic": 0.1, "p_value": 0.5, "p_adjusted": 0.5,
              "effect": 0.0, "effect_name": "JS", "threshold": 0.02, "n_reference": 1000, "n_current": 200,
              "significant": False, "drift": False, "detail": {}}]
    return {"status": status, "drift_detected": status == "drift", "message": "test", "alpha": 0.05,
            "min_window": 50, "created": predlog.utc_now(),
            "window": {"source": "logs", "kind": "prediction log", "n": 200, "requested": 1000, "since": None,
                       "until": None, "first_timestamp": None, "last_timestamp": None, "model_version": "3",
                       "left_out_other_model_version": 0, "corrupt_lines_skipped": 0, "files": 1},
            "reference": {"model": "m", "model_version": "3", "weights_sha256": "ab" * 32, "split": "test",
                          "n": 1066, "sample_n": 1000},
            "tests": tests, "words": {}, "typical_texts": ["a fine film"], "histograms": {}, "timings": {}}


def _metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_report_gauges_and_readiness():
    cfg = config.load("tiny")
    docs = [_doc("drift", 0.001), _doc("no drift", 0.3)]

    def compute():
        doc = docs.pop(0)
        return doc, reporting.render_html(doc)

    app = service.create_app(cfg, compute, background=False)
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        assert client.get("/drift.json").status_code == 503
        app.state.drift.refresh()
        assert client.get("/readyz").status_code == 200
        body = client.get("/drift.json").json()
        assert body["drift_detected"] is True and body["tests"][0]["name"] == "labels"
        page = client.get("/drift.html")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'data-status="drift"' in page.text
        metrics = client.get("/metrics").text
        assert _metric(metrics, "sent_drift_detected") == 1
        assert _metric(metrics, "sent_drift_p_value", '{test="labels"}') == pytest.approx(0.001)
        assert _metric(metrics, "sent_drift_p_adjusted", '{test="labels"}') == pytest.approx(0.002)
        assert _metric(metrics, "sent_drift_effect", '{test="labels"}') == pytest.approx(0.2)
        assert _metric(metrics, "sent_drift_effect_threshold", '{test="words"}') == pytest.approx(0.02)
        assert _metric(metrics, "sent_drift_test_detected", '{test="labels"}') == 1
        assert _metric(metrics, "sent_drift_window_size") == 200
        assert "sent_drift_http_requests_total" in metrics  # the shared HTTP middleware
        app.state.drift.refresh()  # the next interval: no drift
        metrics = client.get("/metrics").text
        assert _metric(metrics, "sent_drift_detected") == 0
        assert _metric(metrics, "sent_drift_test_detected", '{test="labels"}') == 0
        assert client.get("/drift.json").json()["status"] == "no drift"


def test_a_failed_refresh_keeps_the_last_report_and_says_why():
    cfg = config.load("tiny")
    calls = []

    def compute():
        calls.append(1)
        if len(calls) > 1:
            raise SentError("no prediction log at gs://x: start `sent serve`")
        doc = _doc("not enough data")
        return doc, reporting.render_html(doc)

    app = service.create_app(cfg, compute, background=False)
    with TestClient(app) as client:
        app.state.drift.refresh()
        metrics = client.get("/metrics").text
        assert _metric(metrics, "sent_drift_detected") == -1
        app.state.drift.refresh()
        ready = client.get("/readyz")
        assert ready.status_code == 200 and "no prediction log" in ready.json()["detail"]
        assert client.get("/drift.json").json()["status"] == "not enough data"


def test_first_report_failing_shows_on_readyz():
    cfg = config.load("tiny")

    def compute():
        raise SentError("no drift reference for weights abc: run `sent eval` on this model first")

    app = service.create_app(cfg, compute, background=False)
    with TestClient(app) as client:
        app.state.drift.refresh()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "run `sent eval`" in ready.json()["detail"]


def test_the_service_recomputes_from_a_real_log_on_its_interval(pipeline, tmp_path):
    """Default compute: the model and reference of the pipeline, a log that grows between runs."""
    from test_drift import _reviews, _version, _write_log

    log = tmp_path / "log"
    cfg = config.load("tiny", [f"paths.metrics_dir={pipeline / 'metrics'}", "mlflow.enabled=false",
                               "drift.interval_s=0.2", f"paths.prediction_log={log}"])
    _write_log(log, _reviews(pipeline, 30), _version(pipeline))
    app = service.create_app(cfg, model_uri=str(pipeline / "models" / "candidate"), output_dir=tmp_path / "r")
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/drift.json").json()["status"] == "not enough data"
        _write_log(log, _reviews(pipeline, 120)[30:], _version(pipeline))
        while client.get("/drift.json").json()["window"]["n"] < 120 and time.monotonic() < deadline:
            time.sleep(0.1)
        doc = client.get("/drift.json").json()
        assert doc["window"]["n"] == 120 and doc["status"] in {"drift", "no drift"}
        assert json.loads(Path(tmp_path / "r" / "drift.json").read_text())["window"]["n"] == 120
        assert _metric(client.get("/metrics").text, "sent_drift_window_size") == 120


def test_sent_drift_serve_as_a_real_process(pipeline, tmp_path):
    """`sent drift --serve`: a process that loads the model and reference, reports, stops on SIGTERM."""
    from test_drift import _reviews, _version, _write_log

    from sentiment_cli import servers

    log = tmp_path / "log"
    _write_log(log, _reviews(pipeline, 60), _version(pipeline), pipeline / "models" / "candidate")
    argv = servers.sent_command("drift", "--serve", "--profile", "tiny", "--model",
                                str(pipeline / "models" / "candidate"), "--current", str(log),
                                "--output-dir", str(tmp_path / "r"),
                                "--set", f"paths.metrics_dir={pipeline / 'metrics'}", "--set", "mlflow.enabled=false")
    with servers.running(argv, cwd=tmp_path, output=tmp_path / "drift.out", ready_timeout=120) as server:
        status, body = servers.get(f"{server.url}/drift.json")
        assert status == 200 and json.loads(body)["window"]["n"] == 60
        status, body = servers.get(f"{server.url}/metrics")
        assert status == 200 and "sent_drift_p_value{test=\"words\"}" in body.decode()
        assert servers.get(f"{server.url}/drift.html")[0] == 200
    assert server.process.returncode in (0, -15)
    assert (tmp_path / "r" / "drift.html").is_file()
