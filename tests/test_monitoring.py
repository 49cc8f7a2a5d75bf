"""containers/monitoring/: the Prometheus alert rules and the Grafana dashboard.

`promtool check rules`, `promtool test rules` (the alerts fire on what they are meant for and stay
quiet on look-alikes) and `promtool check config` when promtool is installed (Debian's prometheus
package: .ci/run installs it and sets SENT_REQUIRE_PROMTOOL, so there its absence fails instead
of skipping; CI's lint job runs the same checks through make lint-prometheus); and, always, a
parser of the same files that checks every metric, label and label value they name against what
`sent serve` and `sent drift --serve` export, scraped from their /metrics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from serve_fixtures import serve_config, tiny_model_dir, tiny_predictor, wait_ready  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "containers" / "monitoring"
RULES, RULE_TESTS = FOLDER / "alerts.yml", FOLDER / "alerts.test.yml"
DASHBOARD = FOLDER / "grafana-dashboard.json"
# Names PromQL knows without any exporter: functions, aggregations, keywords.
METRIC = re.compile(r"\b(sent_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(sent_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
DURATION = re.compile(r"^\d+[smhd]$")


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("SENT_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is missing: apt-get install prometheus (.ci/run does)")
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return found


@pytest.mark.parametrize("argv", [
    ["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name], ["check", "config", "prometheus.yml"],
], ids=lambda a: " ".join(a))
def test_promtool_accepts_the_rules_and_their_unit_tests(argv: list[str]) -> None:
    done = subprocess.run([_promtool(), *argv], cwd=FOLDER, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_rules_have_the_shape_prometheus_loads() -> None:
    """What promtool would say, for machines without it: groups of named rules, one alert each,
    a PromQL expression, a valid `for`, a severity and a summary."""
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    for rule in _rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        assert DURATION.match(rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
    alerts = {r["alert"] for r in _rules()}
    tested = {a["alertname"] for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for a in t.get("alert_rule_test", [])}
    assert alerts == tested, f"alerts without a promtool unit test: {sorted(alerts - tested)}"


def test_the_alerts_cover_what_operations_watches() -> None:
    exprs = {r["alert"]: r["expr"] for r in _rules()}
    joined = "\n".join(exprs.values())
    assert "histogram_quantile(0.99" in joined and "sent_predict_latency_seconds_bucket" in joined
    assert "sent_rejected_requests_total" in joined  # rejection rate
    assert 'status_code=~"5.."' in joined  # error rate ...
    assert 'status_code!="503"' in joined  # ... without the deliberate 503s, counted as rejections
    assert "sent_prediction_log_records_total" in joined  # prediction-log loss
    assert "sent_drift_detected" in joined and "sent_drift_last_report_timestamp_seconds" in joined


def _exported(text: str) -> dict[str, set[str]]:
    """Sample name → label names seen, from an exposition; families with no sample yet (a
    labelled counter before its first increment) count by their TYPE line."""
    out: dict[str, set[str]] = {}
    suffixes = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            for suffix in suffixes.get(kind, ("",)):
                out.setdefault(name + suffix, set())
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            name = name.split()[0]
            labels = set(re.findall(r'([a-zA-Z_]+)="', rest.split("}")[0])) if rest else set()
            out.setdefault(name, set()).update(labels)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_predictor) -> dict[str, set[str]]:  # noqa: F811
    """What the two servers export, after the traffic that creates their labelled series."""
    from litestar.testing import TestClient
    from test_drift_service import _doc

    from sentiment_cli import config, serve
    from sentiment_cli.drift import report as reporting
    from sentiment_cli.drift import service as drift_service

    cfg = serve_config(tmp_path_factory.mktemp("log"))
    with TestClient(serve.create_app(cfg, predictor=tiny_predictor)) as client:
        wait_ready(client)
        assert client.post("/predict", json={"text": "a fine film"}).status_code == 200
        assert client.post("/predict", json={"texts": []}).status_code == 422
        serve_metrics = client.get("/metrics").text
    app = drift_service.create_app(config.load("tiny"), lambda: (_doc(), reporting.render_html(_doc())),
                                   background=False)
    with TestClient(app) as client:
        app.state.drift.refresh()
        drift_metrics = client.get("/metrics").text
    found = _exported(serve_metrics)
    for name, labels in _exported(drift_metrics).items():
        found.setdefault(name, set()).update(labels)
    return found


@pytest.mark.parametrize("where", ["alerts.yml", "grafana-dashboard.json"])
def test_every_metric_named_is_exported(where: str, exported: dict[str, set[str]]) -> None:
    exprs = [r["expr"] for r in _rules()] if where == "alerts.yml" else _dashboard_exprs()
    assert exprs
    for expr in exprs:
        names = METRIC.findall(expr)
        assert names, f"{where}: {expr!r} names no sent metric"
        for name in names:
            assert name in exported, f"{where}: {name} is not exported by sent serve or sent drift --serve"
        for name, selector in SELECTOR.findall(expr):
            for label, _, _ in MATCHER.findall(selector):
                seen = exported[name]
                assert not seen or label in seen, f"{where}: {name} has no label {label}; it has {sorted(seen)}"


def test_label_values_in_the_rules_are_ones_the_code_emits() -> None:
    """reason=~"overloaded|..." must name reasons the server counts, outcome=~ outcomes the log counts."""
    source = "\n".join(p.read_text() for p in (ROOT / "sentiment_cli").rglob("*.py"))
    for expr in [r["expr"] for r in _rules()] + _dashboard_exprs():
        for _, selector in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(selector):
                if label in ("reason", "outcome") and op in ("=", "=~"):
                    for v in value.split("|"):
                        assert f'"{v}"' in source, f"{label}={v!r}: no such {label} in sentiment_cli"


def test_dashboard_is_importable() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in doc["templating"]["list"]}
    for p in doc["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"].strip("${}") in variables, p["title"]
        assert p["targets"] and all(t["expr"].count("(") == t["expr"].count(")") for t in p["targets"])
    titles = " ".join(p["title"] for p in doc["panels"]).lower()
    assert "sent serve" in titles and "sent drift" in titles
