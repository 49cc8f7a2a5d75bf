"""sent drift end to end: a real `sent serve` log (tiny profile) → drift.json + drift.html, exit
statuses, fsspec URLs, tables, and the bad inputs that must end in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_fixtures import running_server
from typer.testing import CliRunner

from sentiment_cli import predlog
from sentiment_cli.cli import app
from sentiment_cli.drift import EXIT_DRIFT, EXIT_NOT_ENOUGH_DATA

FOREIGN = [f"ERROR {i}: connection to host db-{i % 7}.internal refused; retrying in {i % 5} s "
           f"<br> see https://status.example.com/{i} 🔥🔥" for i in range(120)]


def _args(pipeline: Path, *more: str) -> list[str]:
    return ["--profile", "tiny", "--model", str(pipeline / "models" / "candidate"),
            "--set", f"paths.metrics_dir={pipeline / 'metrics'}", "--set", "mlflow.enabled=false", *more]


def _drift(pipeline: Path, *more: str):
    return CliRunner().invoke(app, ["drift", *_args(pipeline, *more)])


def _reviews(pipeline: Path, n: int) -> list[str]:
    return pd.read_parquet(pipeline / "data" / "processed" / "validation.parquet")["text"].tolist()[:n]


_PREDICTORS: dict = {}


def _write_log(folder, texts: list[str], version: str, model_dir: Path | None = None) -> None:
    """A prediction log as serve writes it (the real writer); outputs from the model in model_dir
    (the pipeline's by default), else a fixed made-up answer."""
    from sentiment_cli.model import Prediction, Predictor

    if model_dir is not None:
        if model_dir not in _PREDICTORS:
            _PREDICTORS[model_dir] = Predictor.from_folder(model_dir)
        preds = _PREDICTORS[model_dir].predict(texts)
    else:
        preds = [Prediction("pos", 1, 0.7, {"neg": 0.3, "pos": 0.7}) for _ in texts]
    with predlog.PredictionLog(folder) as log:
        log.write([predlog.make_record(t, p, model_name="m", model_version=version, latency_ms=1.0)
                   for t, p in zip(texts, preds, strict=True)])


def _version(pipeline: Path) -> str:
    meta = json.loads((pipeline / "models" / "candidate" / "sent.json").read_text())
    return f"sha256:{meta['weights_sha256'][:12]}"


class _Parser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.ids, self.external, self.tests, self.svgs = [], {}, [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids[a["id"]] = a
        for key in ("src", "href"):
            if a.get(key):
                self.external.append(a[key])
        if tag == "tr" and "data-test" in a:
            self.tests.append(a["data-test"])
        if tag == "svg":
            self.svgs += 1


def test_serve_log_to_reports_and_exit_statuses(pipeline, tmp_path):
    """A real server logs reviews; drift finds none, then finds the foreign text sent after."""
    log_dir = tmp_path / "predictions"
    reviews = _reviews(pipeline, 240)
    with running_server(pipeline / "models" / "candidate", tmp_path) as server:
        for chunk in range(0, len(reviews), 60):
            body = json.dumps({"texts": reviews[chunk:chunk + 60]}).encode()
            req = urllib.request.Request(f"{server.url}/predict", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
                assert resp.status == 200
    assert server.log_dir == log_dir
    out = tmp_path / "reports"
    cmd = [sys.executable, "-m", "sentiment_cli.cli", "drift", *_args(pipeline, "--current", str(log_dir),
           "--output-dir", str(out), "--window", "200", "--fail-on-drift")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "NO DRIFT" in done.stdout
    doc = json.loads((out / "drift.json").read_text())
    assert doc["status"] == "no drift" and doc["drift_detected"] is False
    assert doc["window"]["n"] == 200 and doc["window"]["model_version"] == _version(pipeline)
    assert doc["reference"]["weights_sha256"].startswith(_version(pipeline)[7:])
    names = [t["name"] for t in doc["tests"]]
    assert names == ["labels", "confidence", "positive_probability", "mean_probability", "length_chars",
                     "length_tokens", "uppercase", "oov", "word_pairs", "words", "embeddings"]
    for t in doc["tests"]:
        assert {"statistic", "p_value", "p_adjusted", "effect", "threshold", "n_reference", "n_current",
                "drift"} <= set(t)
        assert 0 < t["p_value"] <= t["p_adjusted"] <= 1
    assert doc["typical_texts"] and doc["words"]["over"] is not None
    page = (out / "drift.html").read_text()
    parser = _Parser()
    parser.feed(page)
    assert parser.ids["verdict"]["data-status"] == "no drift"
    assert parser.tests == names and parser.svgs == 6
    assert parser.external == []  # self-contained: nothing to fetch
    assert "<script" not in page

    # Foreign text through the same server: drift, exit 4 with --fail-on-drift, 0 without.
    with running_server(pipeline / "models" / "candidate", tmp_path) as server:
        body = json.dumps({"texts": FOREIGN[:60]}).encode()
        for _ in range(2):
            req = urllib.request.Request(f"{server.url}/predict", data=body,
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=30).close()  # noqa: S310 - loopback
    done = subprocess.run(cmd[:-1] + ["--window", "120", "--fail-on-drift"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == EXIT_DRIFT, done.stdout + done.stderr
    doc = json.loads((out / "drift.json").read_text())
    assert doc["drift_detected"] is True and doc["status"] == "drift"
    assert {"words", "oov"} & {t["name"] for t in doc["tests"] if t["drift"]}
    assert any(w["word"] in {"error", "connection", "refused", "br"} for w in doc["words"]["over"])
    assert subprocess.run(cmd[:-1] + ["--window", "120"], capture_output=True, cwd=tmp_path).returncode == 0


def test_not_enough_data_is_its_own_outcome(pipeline, tmp_path):
    log = tmp_path / "log"
    _write_log(log, _reviews(pipeline, 20), _version(pipeline))
    result = _drift(pipeline, "--current", str(log), "--output-dir", str(tmp_path / "r"), "--fail-on-drift")
    assert result.exit_code == EXIT_NOT_ENOUGH_DATA, result.output
    assert "NOT ENOUGH DATA" in result.output and "20 usable record" in result.output
    doc = json.loads((tmp_path / "r" / "drift.json").read_text())
    assert doc["status"] == "not enough data" and doc["drift_detected"] is False and doc["tests"] == []
    # without --fail-on-drift a completed run exits 0, and says so
    assert _drift(pipeline, "--current", str(log), "--output-dir", str(tmp_path / "r")).exit_code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _drift(pipeline, "--current", str(empty), "--output-dir", str(tmp_path / "r"), "--fail-on-drift")
    assert result.exit_code == EXIT_NOT_ENOUGH_DATA and "0 usable record" in result.output


def test_other_model_versions_and_corrupt_lines_are_counted_and_left_out(pipeline, tmp_path):
    log = tmp_path / "log"
    reviews = _reviews(pipeline, 150)
    _write_log(log, reviews[:100], _version(pipeline))
    _write_log(log, reviews[100:], "sha256:000000000000")
    with next(log.glob("*.jsonl")).open("a") as fh:
        fh.write('{"timestamp": "2026-01-01T00:00:00+00:00", "text": "half a li\n[1, 2]\n')
    result = _drift(pipeline, "--current", str(log), "--output-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    w = json.loads((tmp_path / "r" / "drift.json").read_text())["window"]
    assert w["n"] == 100 and w["left_out_other_model_version"] == 50 and w["corrupt_lines_skipped"] == 2


def test_time_range_selects_records(pipeline, tmp_path):
    log = tmp_path / "log"
    _write_log(log, _reviews(pipeline, 80), _version(pipeline))
    later = predlog.utc_now()
    result = _drift(pipeline, "--current", str(log), "--output-dir", str(tmp_path / "r"), "--since", later,
                    "--fail-on-drift")
    assert result.exit_code == EXIT_NOT_ENOUGH_DATA, result.output
    result = _drift(pipeline, "--current", str(log), "--output-dir", str(tmp_path / "r"),
                    "--until", later, "--since", "2000-01-01")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "drift.json").read_text())["window"]["n"] == 80
    bad = _drift(pipeline, "--current", str(log), "--since", "yesterday")
    assert bad.exit_code == 2 and "--since 'yesterday' is not an ISO 8601 time" in bad.output


def test_a_log_on_an_fsspec_url(pipeline, tmp_path):
    import fsspec

    url = "memory://drift-test/predictions"
    fs = fsspec.filesystem("memory")
    try:
        _write_log(url, _reviews(pipeline, 90), _version(pipeline), pipeline / "models" / "candidate")
        assert predlog.list_files(url)
        result = _drift(pipeline, "--current", url, "--output-dir", str(tmp_path / "r"), "--fail-on-drift")
        assert result.exit_code == 0, result.output
        doc = json.loads((tmp_path / "r" / "drift.json").read_text())
        assert doc["window"]["n"] == 90 and doc["window"]["source"] == url
    finally:
        fs.rm("/drift-test", recursive=True)


def test_a_table_is_scored_by_the_model(pipeline, tmp_path):
    table = tmp_path / "current.csv"
    pd.DataFrame({"text": _reviews(pipeline, 100)}).to_csv(table, index=False)
    result = _drift(pipeline, "--current", str(table), "--output-dir", str(tmp_path / "r"), "--fail-on-drift")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "r" / "drift.json").read_text())
    assert doc["window"]["kind"] == "table" and doc["window"]["n"] == 100
    jsonl = tmp_path / "foreign.jsonl"
    pd.DataFrame({"text": FOREIGN}).to_json(jsonl, orient="records", lines=True)
    result = _drift(pipeline, "--current", str(jsonl), "--output-dir", str(tmp_path / "r"), "--fail-on-drift")
    assert result.exit_code == EXIT_DRIFT, result.output


@pytest.mark.parametrize("case", ["missing log", "no text column", "other weights", "unreadable table",
                                  "old reference"])
def test_bad_input_ends_in_one_line(pipeline, tmp_path, case):
    args = ["--output-dir", str(tmp_path / "r")]
    if case == "missing log":
        args += ["--current", str(tmp_path / "nowhere")]
        expect = "no prediction log at"
    elif case == "no text column":
        (tmp_path / "t.csv").write_text("review,stars\nfine,3\n")
        args += ["--current", str(tmp_path / "t.csv")]
        expect = "has no text column 'text' (columns: review, stars)"
    elif case == "unreadable table":
        (tmp_path / "t.parquet").write_bytes(b"not parquet")
        args += ["--current", str(tmp_path / "t.parquet")]
        expect = "cannot parse as parquet"
    elif case == "other weights":
        metrics = tmp_path / "metrics"
        shutil.copytree(pipeline / "metrics", metrics)
        shutil.rmtree(metrics / "by-weights")
        ref = json.loads((metrics / "reference.json").read_text())
        ref["weights_sha256"] = "ab" * 32
        (metrics / "reference.json").write_text(json.dumps(ref))
        args += ["--set", f"paths.metrics_dir={metrics}"]
        expect = "run `sent eval` on this model first"
    else:
        metrics = tmp_path / "metrics"
        shutil.copytree(pipeline / "metrics", metrics)
        for path in metrics.rglob("reference.json"):
            ref = json.loads(path.read_text())
            del ref["sample"]
            path.write_text(json.dumps(ref))
        args += ["--set", f"paths.metrics_dir={metrics}"]
        expect = "made by an older sent"
    result = _drift(pipeline, *args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], result.output
    assert "Traceback" not in result.output


def test_usage_errors_exit_2(pipeline):
    assert _drift(pipeline, "--port", "9").exit_code == 2
    assert _drift(pipeline, "--serve", "--fail-on-drift").exit_code == 2
    assert _drift(pipeline, "--set", "drift.min_window=500").exit_code == 2
    assert _drift(pipeline, "--window", "0").exit_code == 2


_MONITORS: dict = {}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 49))
def test_any_window_below_the_minimum_is_not_enough_data(pipeline, tmp_path_factory, n):
    from sentiment_cli import config
    from sentiment_cli.drift import NOT_ENOUGH, Monitor

    if "m" not in _MONITORS:
        cfg = config.load("tiny", [f"paths.metrics_dir={pipeline / 'metrics'}", "mlflow.enabled=false"])
        _MONITORS["m"] = Monitor(cfg, str(pipeline / "models" / "candidate"))
    log = tmp_path_factory.mktemp("log")
    _write_log(log, _reviews(pipeline, n), _version(pipeline))
    doc = _MONITORS["m"].report(str(log))
    assert doc["status"] == NOT_ENOUGH and doc["tests"] == [] and doc["drift_detected"] is False
    assert doc["window"]["n"] == n
