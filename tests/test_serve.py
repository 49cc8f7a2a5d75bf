"""sent serve: the HTTP contract, bad input, readiness, metrics, micro-batching, the prediction
log, the CLI's refusals, and a real uvicorn process stopped with SIGTERM mid-request."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import registry_fixtures
import serve_fixtures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families
from serve_fixtures import metric, running_server, scrape, serve_config, wait_ready
from typer.testing import CliRunner

from sentiment_cli import predlog, serve
from sentiment_cli.cli import app as cli_app
from sentiment_cli.model import ModelError, Prediction

tiny_model_dir = serve_fixtures.tiny_model_dir
tiny_predictor = serve_fixtures.tiny_predictor
store = registry_fixtures.store  # an MLflow SQLite store with runs holding a tiny model
tiny_model = registry_fixtures.tiny_model
empty_store_db = registry_fixtures.empty_store_db

JSON = {"content-type": "application/json"}
CLIENT_ERRORS = {400, 413, 415, 422}


@pytest.fixture
def cfg(tmp_path: Path):
    return serve_config(tmp_path / "log")


@pytest.fixture
def client(cfg, tiny_predictor):
    with TestClient(serve.create_app(cfg, predictor=tiny_predictor)) as c:
        wait_ready(c)
        yield c




# ---------------------------------------------------------------- the happy path


def test_predict_one_text_shape(client, tiny_predictor):
    r = client.post("/predict", json={"text": "a wonderful, moving film"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "tiny", "version": "7"}
    (p,) = body["predictions"]
    assert set(p) == {"label", "label_id", "score", "probabilities"}
    assert set(p["probabilities"]) == {"neg", "pos"}
    assert p["probabilities"][p["label"]] == pytest.approx(p["score"])
    assert p["label"] == tiny_predictor.labels[p["label_id"]]
    assert p["score"] == max(p["probabilities"].values())
    assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    expected = tiny_predictor.predict(["a wonderful, moving film"])[0]
    assert p["probabilities"]["pos"] == pytest.approx(expected.probabilities["pos"], abs=1e-5)


def test_predict_many_texts_keep_their_order(client, tiny_predictor):
    texts = ["dull", "a gripping story with wonderful performances and a great score", "meh!"]
    r = client.post("/predict", json={"texts": texts})
    assert r.status_code == 200, r.text
    got = [p["probabilities"]["pos"] for p in r.json()["predictions"]]
    want = [p.probabilities["pos"] for p in tiny_predictor.predict(texts)]
    assert got == pytest.approx(want, abs=1e-5)


def test_concurrent_requests_each_get_their_own_answer(cfg, tiny_predictor):
    texts = [f"review number {i} " + "good " * (i % 7) + "bad " * (i % 3) for i in range(24)]
    want = {t: p.probabilities["pos"] for t, p in zip(texts, tiny_predictor.predict(texts),
                                                       strict=True)}
    with TestClient(serve.create_app(cfg, predictor=tiny_predictor)) as c:
        wait_ready(c)
        before = scrape(c)
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda t: c.post("/predict", json={"text": t}), texts))
        after = scrape(c)
    for t, r in zip(texts, responses, strict=True):
        assert r.status_code == 200, r.text
        got = r.json()["predictions"][0]["probabilities"]["pos"]
        assert got == pytest.approx(want[t], abs=1e-5)
    passes = metric(after, "sent_batch_size_count") - metric(before, "sent_batch_size_count")
    texts_done = metric(after, "sent_batch_size_sum") - metric(before, "sent_batch_size_sum")
    assert texts_done == len(texts)
    assert 1 <= passes <= len(texts)
    # Every prediction is in the log once the app has shut down (the lifespan flushes it).
    logged = predlog.read_predictions(cfg.paths.prediction_log)
    assert sorted(r["text"] for r in logged) == sorted(texts)
    for record in logged:
        assert record["probabilities"]["pos"] == pytest.approx(want[record["text"]], abs=1e-5)
        assert record["model_name"] == "tiny" and record["model_version"] == "7"
        assert record["latency_ms"] >= 0 and record["timestamp"].endswith("+00:00")


# ---------------------------------------------------------------- bad input: 4xx, never 500


BAD = [
    pytest.param(b'{"text": ', JSON, 400, "not valid JSON", id="truncated-json"),
    pytest.param(b"\xff\xfe", JSON, 400, "not valid JSON", id="not-utf8"),
    pytest.param(rb'{"text": "\ud800"}', JSON, 400, "not valid JSON", id="lone-surrogate"),
    pytest.param(b'{"text": ""}', JSON, 422, "length >= 1", id="empty-text"),
    pytest.param(b'{"text": " \\t\\n "}', JSON, 422, "regex", id="whitespace-text"),
    pytest.param(b'{"texts": ["ok", "  "]}', JSON, 422, "$.texts[1]", id="whitespace-in-list"),
    pytest.param(b'{"text": 5}', JSON, 422, "Expected `str`", id="number-text"),
    pytest.param(b'{"texts": [1, 2]}', JSON, 422, "Expected `str`", id="numbers-in-list"),
    pytest.param(b'{"texts": "one"}', JSON, 422, "Expected `array`", id="texts-not-a-list"),
    pytest.param(b'{"texts": []}', JSON, 422, "length >= 1", id="no-texts"),
    pytest.param(b'{"text": null}', JSON, 422, "got `null`", id="null-text"),
    pytest.param(b"{}", JSON, 422, "exactly one", id="empty-object"),
    pytest.param(b'{"text": "a", "texts": ["b"]}', JSON, 422, "exactly one", id="both-keys"),
    pytest.param(b'{"review": "good"}', JSON, 422, "unknown field", id="unknown-key"),
    pytest.param(b'["good"]', JSON, 422, "Expected `object`", id="array-body"),
    pytest.param(b"", JSON, 400, "not valid JSON", id="empty-body"),
    pytest.param(b'{"text": "\xff\xfe not utf-8"}', JSON, 400, "not valid UTF-8", id="latin-1-in-a-string"),
    pytest.param(b'{"texts": ["ok", "\xc3\x28"]}', JSON, 400, "not valid UTF-8", id="broken-utf-8-in-list"),
    pytest.param(b"\xff\xfe{}", JSON, 400, "not valid JSON", id="binary-body"),
    pytest.param(b'{"texts": ["a"]}' + b" " * 5000, JSON, 413, "over 4096 bytes",
                 id="body-too-big"),
    pytest.param(json.dumps({"texts": ["x"] * 9}).encode(), JSON, 422, "length <= 8",
                 id="too-many-texts"),
    pytest.param(json.dumps({"text": "x" * 201}).encode(), JSON, 422, "length <= 200",
                 id="text-too-long"),
    pytest.param(b'{"text": "good"}', {"content-type": "text/plain"}, 415, "application/json",
                 id="text-plain"),
    pytest.param(b"text=good", {"content-type": "application/x-www-form-urlencoded"}, 415,
                 "application/json", id="form"),
    pytest.param(b'{"text": "good"}', {}, 415, "application/json", id="no-content-type"),
]


@pytest.mark.parametrize(("body", "headers", "status", "message"), BAD)
def test_bad_input_is_a_client_error_with_a_message(client, body, headers, status, message):
    before = scrape(client)
    r = client.post("/predict", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    after = scrape(client)
    assert metric(after, "sent_rejected_requests_total") == metric(
        before, "sent_rejected_requests_total") + 1
    assert metric(after, "sent_predictions_total") == metric(before, "sent_predictions_total")


@pytest.mark.parametrize(("text", "status"), [
    ("\u001d", 422), ("\u001e", 422), ("\ufeff", 422), ("\x00\x00", 422), ("\u200b\u2060", 422),
    (" \t\u00a0", 422), ("a\u001d", 200), ("\u00e9", 200), ("\u4e2d", 200), ("\U0001f600", 200),
])
def test_a_text_is_valid_exactly_when_the_schema_says_so(client, text, status):
    """One definition of a text: the schema's pattern, read as a regex of any dialect (explicit
    code points only, no \\s or \\S whose meaning differs), decides what the server accepts."""
    import re

    pattern = client.get("/schema/openapi.json").json()["paths"]["/predict"]["post"][
        "requestBody"]["content"]["application/json"]["schema"]["properties"]["text"]["pattern"]
    assert not re.search(r"\\[sSwWdD]", pattern)
    assert bool(re.search(pattern, text)) == (status == 200)
    assert client.post("/predict", json={"text": text}).status_code == status


def test_json_with_charset_is_accepted(client):
    r = client.post("/predict", content=b'{"text": "fine"}',
                    headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_limits_at_the_edge_are_accepted(client):
    r = client.post("/predict", json={"texts": ["y" * 200] * 8})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 8


def test_wrong_method_and_unknown_path(client):
    assert client.get("/predict").status_code == 405
    assert client.get("/no-such-page").status_code == 404


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"text": json_values}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"texts": st.lists(st.text(max_size=250) | json_values, max_size=10)}
                          ).map(lambda v: json.dumps(v).encode()),
    st.text(max_size=300).map(lambda t: json.dumps({"text": t}).encode()),
    st.binary(max_size=300),
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "", "application/xml",
     "multipart/form-data; boundary=x"])


@pytest.fixture(scope="module")
def module_client(tmp_path_factory, tiny_predictor):
    cfg = serve_config(tmp_path_factory.mktemp("hypothesis-log"))
    with TestClient(serve.create_app(cfg, predictor=tiny_predictor)) as c:
        wait_ready(c)
        yield c


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, content_type=content_types)
def test_any_body_gets_a_client_error_or_an_answer(module_client, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = module_client.post("/predict", content=body, headers=headers)
    assert r.status_code in {200} | CLIENT_ERRORS, (r.status_code, r.text)
    if r.status_code != 200:
        assert r.json()["detail"]
        return
    sent = json.loads(body)
    texts = sent["texts"] if "texts" in sent else [sent["text"]]
    assert all(isinstance(t, str) and t.strip() and len(t) <= 200 for t in texts)
    assert len(r.json()["predictions"]) == len(texts) <= 8


@pytest.fixture(scope="module")
def handler_client(tmp_path_factory, tiny_predictor):
    """The same app with every /predict answered by Litestar's handler (plain_path=False)."""
    cfg = serve_config(tmp_path_factory.mktemp("handler-log"))
    with TestClient(serve.create_app(cfg, predictor=tiny_predictor, plain_path=False)) as c:
        wait_ready(c)
        yield c


def _answer(client, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    r = client.post("/predict", content=body, headers=headers)
    kept = {k: v for k, v in r.headers.items() if k in {"content-type", "content-length", "retry-after"}}
    return r.status_code, r.content, kept


PLAIN_OR_NOT = [
    (b'{"text": "a wonderful, moving film"}', JSON),
    (b'{"texts": ["dull", "a charming film", "\\u00e9t\\u00e9"]}', JSON),
    (b'{"inputs": "a charming film"}', JSON),
    (b'{"inputs": ["a charming film", "dull"]}', JSON),
    (b'{"text": "fine"}', {"content-type": "application/json; charset=utf-8"}),
    (b'{"text": "fine"}', {"content-type": "Application/JSON"}),
    (b'{"text": "fine"}', {"content-type": "text/plain"}),
    (b'{"text": "fine"}', {}),
    *[(body, headers) for body, headers, _status, _message in (p.values[:4] for p in BAD)],
]


@pytest.mark.parametrize(("body", "headers"), PLAIN_OR_NOT)
def test_the_plain_request_path_answers_exactly_as_the_handler_does(module_client, handler_client, body,
                                                                    headers):
    """The route's plain-request path (it answers a plain JSON body without Litestar's request and
    response objects) gives the same status, body and headers as the handler, for good and bad
    bodies alike: every refusal is still made by the handler."""
    assert _answer(module_client, body, headers) == _answer(handler_client, body, headers)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(body=bodies, content_type=content_types)
def test_any_body_is_answered_alike_on_the_plain_path_and_by_the_handler(module_client, handler_client,
                                                                         body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    assert _answer(module_client, body, headers) == _answer(handler_client, body, headers)


def test_plain_requests_are_counted_logged_and_limited_like_any_other(cfg, tiny_predictor):
    with TestClient(serve.create_app(cfg, predictor=tiny_predictor)) as c:
        wait_ready(c)
        before = scrape(c)
        assert c.post("/predict", content=b'{"texts": ["good", "bad"]}', headers=JSON).status_code == 200
        big = b'{"texts": ["a"]}' + b" " * 5000
        r = c.post("/predict", content=big, headers=JSON)
        assert r.status_code == 413 and "over 4096 bytes" in r.json()["detail"]
        after = scrape(c)
    assert metric(after, "sent_http_requests_total", path="/predict", status_code="200") == metric(
        before, "sent_http_requests_total", path="/predict", status_code="200") + 1
    assert metric(after, "sent_predictions_total") == metric(before, "sent_predictions_total") + 2
    assert metric(after, "sent_rejected_requests_total") == metric(before, "sent_rejected_requests_total") + 1
    assert sorted(r["text"] for r in predlog.read_predictions(cfg.paths.prediction_log)) == ["bad", "good"]


# ---------------------------------------------------------------- readiness


class GatedPredictor:
    """The tiny predictor, but its forward passes wait until the test opens the gate."""

    def __init__(self, inner, gate: threading.Event):
        self.inner, self.gate = inner, gate
        self.name, self.version, self.labels = inner.name, inner.version, inner.labels

    def predict(self, texts):
        assert self.gate.wait(20), "the test never opened the gate"
        return self.inner.predict(texts)


class BreaksAfterWarmUp(GatedPredictor):
    """The tiny predictor, its gate open, whose passes after the warm-up raise RuntimeError(error)."""

    def __init__(self, inner, error: str):
        gate = threading.Event()
        gate.set()
        super().__init__(inner, gate)
        self.error, self.calls = error, 0

    def predict(self, texts):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError(self.error)
        return self.inner.predict(texts)


def test_readyz_is_503_until_the_warm_up_pass_has_run(cfg, tiny_predictor):
    gate = threading.Event()
    app = serve.create_app(cfg, predictor=GatedPredictor(tiny_predictor, gate), ready_wait_s=0.05)
    with TestClient(app) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = c.post("/predict", json={"text": "too early"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        gate.set()
        wait_ready(c, timeout=10)
        assert c.get("/readyz").json()["model"] == {"name": "tiny", "version": "7"}
        assert c.post("/predict", json={"text": "now"}).status_code == 200


def test_a_request_during_warm_up_waits_for_the_model(cfg, tiny_predictor):
    gate = threading.Event()
    app = serve.create_app(cfg, predictor=GatedPredictor(tiny_predictor, gate), ready_wait_s=10)
    with TestClient(app) as c, ThreadPoolExecutor(1) as pool:
        early = pool.submit(c.post, "/predict", json={"text": "early bird"})
        time.sleep(0.2)
        assert not early.done()  # held, not refused
        gate.set()
        r = early.result(timeout=10)
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 1


def test_a_model_that_fails_to_load_is_never_ready(cfg):
    def loader():
        raise ModelError("weights are corrupt")

    with TestClient(serve.create_app(cfg, loader=loader)) as c:
        deadline = time.monotonic() + 10
        while c.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["status"] == "failed" and "weights are corrupt" in r.json()["detail"]
        assert c.post("/predict", json={"text": "hello"}).status_code == 503
        assert c.get("/healthz").status_code == 200


def test_the_lifespan_loads_a_model_folder(tmp_path, tiny_model_dir):
    cfg = serve_config(tmp_path / "log")
    with TestClient(serve.create_app(cfg, model_uri=str(tiny_model_dir))) as c:
        wait_ready(c)
        model = c.get("/readyz").json()["model"]
        assert model["name"] == "tiny" and model["version"].startswith("sha256:")
        assert c.post("/predict", json={"text": "ok"}).json()["model"] == model


def test_a_failing_forward_pass_is_a_500_and_counted(cfg, tiny_predictor):
    broken = BreaksAfterWarmUp(tiny_predictor, "CUDA error: device lost")
    with TestClient(serve.create_app(cfg, predictor=broken)) as c:
        wait_ready(c)
        before = scrape(c)
        r = c.post("/predict", json={"text": "hello"})
        assert r.status_code == 500
        assert "CUDA" not in r.text  # internals stay in the server log
        after = scrape(c)
    assert metric(after, "sent_prediction_failures_total") == metric(
        before, "sent_prediction_failures_total") + 1


def test_an_unplanned_failure_is_a_500_counted_and_logged(cfg, tiny_model_dir, caplog):
    """Nothing a client sends should reach this; if a bug does, the operator sees it. The bug
    planted here: a label the response encoder cannot write."""
    import dataclasses

    from sentiment_cli.model import Predictor

    class Unwritable:
        def __str__(self) -> str:
            return "unwritable"

    class Buggy(Predictor):
        def predict(self, texts, parallel=True):
            return [dataclasses.replace(p, label=Unwritable()) for p in super().predict(texts, parallel)]

    plain = Predictor.from_folder(tiny_model_dir, name="tiny")
    buggy = Buggy(plain.model, plain.tokenizer, name="tiny", version="1")
    with TestClient(serve.create_app(cfg, predictor=buggy)) as c:
        wait_ready(c)
        before = scrape(c)
        with caplog.at_level("ERROR"):
            r = c.post("/predict", json={"text": "hello"})
        assert r.status_code == 500 and "object" not in r.text
        after = scrape(c)
    assert metric(after, "sent_internal_errors_total") == metric(before, "sent_internal_errors_total") + 1
    assert any("internal error answering POST /predict" in rec.getMessage() for rec in caplog.records)


def test_work_beyond_the_queue_bound_is_a_503_with_retry_after(tmp_path, tiny_predictor):
    """Admission control: at most serve.max_queued_texts wait; the rest is refused at once."""
    cfg = serve_config(tmp_path / "log", "serve.max_wait_ms=1500", "serve.max_batch_size=64",
                       "serve.max_queued_texts=8")
    with TestClient(serve.create_app(cfg, predictor=tiny_predictor)) as c:
        wait_ready(c)
        before = scrape(c)
        with ThreadPoolExecutor(4) as pool:
            first = [pool.submit(c.post, "/predict", json={"texts": ["q"] * 4}) for _ in range(2)]
            deadline = time.monotonic() + 5
            while metric(scrape(c), "sent_queued_texts") < 8:
                assert time.monotonic() < deadline, "the first requests never queued"
                time.sleep(0.02)
            over = c.post("/predict", json={"text": "one too many"})
            answered = [f.result() for f in first]
        after = scrape(c)
    assert over.status_code == 503 and int(over.headers["retry-after"]) >= 1
    assert "serve.max_queued_texts" in over.json()["detail"]
    assert [r.status_code for r in answered] == [200, 200]
    assert metric(after, "sent_rejected_requests_total", reason="overloaded") == metric(
        before, "sent_rejected_requests_total", reason="overloaded") + 1


def test_draining_refuses_new_work_and_readiness_turns_503(cfg, tiny_predictor):
    from sentiment_cli import web

    hooks_before = list(web._drain_hooks)  # a module-scoped app of another test may be running
    with TestClient(serve.create_app(cfg, predictor=tiny_predictor)) as c:
        wait_ready(c)
        assert len(web._drain_hooks) == len(hooks_before) + 1
        assert c.post("/predict", json={"text": "before"}).status_code == 200
        (ours,) = [h for h in web._drain_hooks if h not in hooks_before]  # only this app drains
        c.blocking_portal.call(_on_loop, ours)  # on the app's loop, as the signal handler arranges
        r = c.post("/predict", json={"text": "after SIGTERM"})
        ready = c.get("/readyz")
        assert c.get("/healthz").status_code == 200  # alive, just not taking work
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "shutting down" in r.json()["detail"]
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert web._drain_hooks == hooks_before  # the service unregistered itself on shutdown


async def _on_loop(fn) -> None:
    fn()


def test_a_failing_prediction_log_is_counted_and_leaves_the_rotation(tmp_path, tiny_predictor):
    """The log folder cannot be written: answers go on, every lost record is counted, and once
    the failure lasts serve.log_failure_unready_s the replica reports itself not ready."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    cfg = serve_config(blocker / "log", "serve.log_failure_unready_s=0.3")
    with TestClient(serve.create_app(cfg, predictor=tiny_predictor)) as c:
        wait_ready(c)
        before = scrape(c)
        answers = [c.post("/predict", json={"texts": ["a", "b"]}).status_code for _ in range(3)]
        deadline = time.monotonic() + 10
        while metric(scrape(c), "sent_prediction_log_records_total", outcome="failed") < metric(
                before, "sent_prediction_log_records_total", outcome="failed") + 6:
            assert time.monotonic() < deadline, "lost records were not counted"
            time.sleep(0.05)
        time.sleep(0.4)
        ready = c.get("/readyz")
        blocker.unlink()  # fixed: the next record is written and the replica is ready again
        assert c.post("/predict", json={"text": "c"}).status_code == 200
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "readiness did not recover"
            time.sleep(0.05)
    assert answers == [200, 200, 200]
    assert ready.status_code == 503 and ready.json()["status"] == "log_failing"
    assert "records lost" in ready.json()["detail"]


# ---------------------------------------------------------------- metrics, schema, page


def test_metrics_count_requests_labels_batches_and_model(client):
    before = scrape(client)
    texts = ["first review here", "second one", "third"]
    r = client.post("/predict", json={"texts": texts})
    labels = [p["label"] for p in r.json()["predictions"]]
    client.post("/predict", json={"text": ""})
    after = scrape(client)

    def delta(name, **lab):
        return metric(after, name, **lab) - metric(before, name, **lab)

    for label in set(labels):
        assert delta("sent_predictions_total", label=label) == labels.count(label)
    assert delta("sent_request_texts_count") == 1 and delta("sent_request_texts_sum") == 3
    assert delta("sent_input_chars_sum") == sum(map(len, texts))
    assert delta("sent_batch_size_sum") == 3
    assert delta("sent_forward_seconds_count") >= 1
    assert delta("sent_predict_latency_seconds_count") == 1
    assert delta("sent_rejected_requests_total", reason="invalid") == 1
    assert delta("sent_http_requests_total", path="/predict", status_code="200") == 1
    assert delta("sent_http_requests_total", path="/predict", status_code="422") == 1
    assert delta("sent_http_request_duration_seconds_count", path="/predict") == 2
    assert metric(after, "sent_model_info", name="tiny", version="7", variant="torch-fp32") == 1
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


def test_http_metrics_count_each_status_and_failures_are_logged_without_an_access_log(cfg, tiny_predictor,
                                                                                     caplog):
    """The HTTP middleware: a series per method, route and status, 5xx also as errors, nothing
    left in progress; with serve.access_log off (the default) each answer >= 400 is one log line
    in the access log's form and a 200 none; with it on, uvicorn's access log says it instead."""
    def logged() -> list[str]:
        return [r.getMessage().split(" - ", 1)[1] for r in caplog.records
                if r.name == "uvicorn.error" and "HTTP/1.1" in r.getMessage()]

    caplog.set_level(logging.INFO, logger="uvicorn.error")
    with TestClient(serve.create_app(cfg, predictor=tiny_predictor)) as client:
        wait_ready(client)
        before = scrape(client)
        caplog.clear()
        assert client.post("/predict", json={"text": "a fine film"}).status_code == 200
        assert client.post("/predict", json={"text": ""}).status_code == 422
        assert client.post("/predict", content=b'{"text": "\xff"}', headers=JSON).status_code == 400
        assert client.get("/healthz").status_code == 200
        after = scrape(client)
        lines = logged()

    def delta(name, **lab):
        return metric(after, name, **lab) - metric(before, name, **lab)

    for status in ("200", "422", "400"):
        assert delta("sent_http_requests_total", method="POST", path="/predict", status_code=status,
                     app_name="sent") == 1
    assert delta("sent_http_requests_total", method="GET", path="/healthz", status_code="200") == 1
    assert delta("sent_http_request_duration_seconds_count", path="/predict") == 3
    assert metric(after, "sent_http_requests_in_progress", method="POST", path="/predict") == 0
    assert lines == ['"POST /predict HTTP/1.1" 422', '"POST /predict HTTP/1.1" 400']

    on = serve_config(Path(cfg.paths.prediction_log), "serve.access_log=true")
    broken = BreaksAfterWarmUp(tiny_predictor, "forward pass broke")
    with TestClient(serve.create_app(on, predictor=broken)) as client:
        wait_ready(client)
        before = scrape(client)
        caplog.clear()
        assert client.post("/predict", json={"text": "a fine film"}).status_code == 500
        after = scrape(client)
        lines = logged()
    assert delta("sent_http_requests_total", path="/predict", status_code="500") == 1
    assert delta("sent_http_requests_error_total", path="/predict", status_code="500") == 1
    assert lines == []  # uvicorn's access log (on) has the line; the app does not repeat it


def test_openapi_schema_matches_the_limits(client):
    doc = client.get("/schema/openapi.json").json()
    op = doc["paths"]["/predict"]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False
    assert body["minProperties"] == body["maxProperties"] == 1
    assert body["properties"]["texts"]["maxItems"] == 8
    item = body["properties"]["texts"]["items"]
    assert item["maxLength"] == 200 and item["minLength"] == 1 and item["pattern"] == serve.VISIBLE
    assert body["properties"]["text"]["maxLength"] == 200
    assert {"200", "400", "413", "415", "422", "503"} <= set(op["responses"])
    assert {"/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    assert client.get("/schema").status_code == 200


def test_the_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert 'id="review"' in html and "fetch(\"/predict\"" in html
    assert 'maxlength="200"' in html  # the configured limit, not a placeholder
    for external in ("http://", "https://", "//cdn", "src=\""):
        assert external not in html
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_predict_takes_the_inputs_body_of_mlflow_and_hugging_face_servers(client):
    texts = ["a charming film", "dull and far too long"]
    native = client.post("/predict", json={"texts": texts}).json()["predictions"]
    listed = client.post("/predict", json={"inputs": texts})
    assert listed.status_code == 200, listed.text
    assert listed.json()["predictions"] == native
    one = client.post("/predict", json={"inputs": texts[0]})
    assert one.status_code == 200 and one.json()["predictions"] == native[:1]
    for body in ({"inputs": texts[0], "text": texts[0]}, {"inputs": []}, {"inputs": "   "}, {"inputs": 3}):
        r = client.post("/predict", json=body)
        assert r.status_code == 422, (body, r.text)
    assert '"inputs"' in client.post("/predict", json={"inputs": "x", "texts": ["y"]}).json()["detail"]
    body = client.get("/schema/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert {"text", "texts", "inputs"} <= set(body["properties"]) and any("inputs" in e for e in body["examples"])


def test_the_schema_page_renders_offline_from_this_server_only(client):
    import re

    r = client.get("/schema")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<code>POST /predict</code>" in page and "inputs" in page and "minProperties" in page
    assert "<script" not in page
    for external in ("http://", "https://", "//cdn", "unpkg", "jsdelivr"):
        assert external not in page, external
    linked = re.findall(r"""(?:src|href)=['"]([^'"]+)""", page)
    assert "/schema/openapi.json" in linked
    for url in linked:  # every asset it names is served here
        assert url.startswith("/") and client.get(url).status_code == 200, url


# ---------------------------------------------------------------- schemathesis


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, tiny_predictor):
    import schemathesis

    cfg = serve_config(tmp_path_factory.mktemp("schemathesis-log"))
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json",
                                            serve.create_app(cfg, predictor=tiny_predictor))
    # A body over serve.max_body_bytes is rejected with 413 (documented in the schema), which
    # the negative-data check does not count as a rejection by default.
    from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, NegativeDataRejectionConfig

    schema.config.checks.negative_data_rejection = NegativeDataRejectionConfig(
        expected_statuses=[*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"])
    # The first call starts the app's lifespan; wait for the warm-up before testing.
    deadline = time.monotonic() + 30
    while schema["/readyz"]["GET"].Case().call().status_code != 200:
        assert time.monotonic() < deadline, "the app never became ready"
        time.sleep(0.05)
    return schema


# schemathesis.pytest.from_fixture breaks on pytest 9 (it reads Function._nodeid), so the
# cases come from the schema's Hypothesis strategy: every operation, valid and invalid input.
@pytest.mark.parametrize("mode", ["positive", "negative"])
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_openapi_conformance(api_schema, mode, data):
    from schemathesis import GenerationMode

    case = data.draw(api_schema.as_strategy(GenerationMode(mode)))
    case.call_and_validate()


# ---------------------------------------------------------------- the batcher


def _fake_prediction(text: str) -> Prediction:
    return Prediction(label=text, label_id=0, score=1.0, probabilities={text: 1.0})


def test_batcher_groups_concurrent_requests_up_to_the_batch_size():
    batches: list[list[str]] = []

    def predict(texts):
        batches.append(list(texts))
        time.sleep(0.01)
        return [_fake_prediction(t) for t in texts]

    async def main():
        b = serve.Batcher(predict, max_batch_size=8, max_wait_ms=50)
        b.start()
        requests = [[f"r{i}-{j}" for j in range(1 + i % 3)] for i in range(20)]
        results = await asyncio.gather(*(b.predict(r) for r in requests))
        await b.stop()
        return requests, results

    requests, results = asyncio.run(main())
    for req, res in zip(requests, results, strict=True):
        assert [p.label for p in res] == req  # every request gets its own, in order
    assert all(len(batch) <= 8 for batch in batches)
    assert sum(map(len, batches)) == sum(map(len, requests))
    assert len(batches) < len(requests)  # they were batched, not run one by one


def test_batcher_runs_an_oversized_request_alone_and_keeps_the_loop_free():
    batches: list[int] = []

    def predict(texts):
        batches.append(len(texts))
        time.sleep(0.2)  # a slow forward pass on the worker thread
        return [_fake_prediction(t) for t in texts]

    async def main():
        b = serve.Batcher(predict, max_batch_size=4, max_wait_ms=1)
        b.start()
        ticks = 0

        async def heartbeat():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(heartbeat())
        big = await b.predict([f"t{i}" for i in range(10)])
        beat.cancel()
        await b.stop()
        return big, ticks

    big, ticks = asyncio.run(main())
    assert batches == [10] and len(big) == 10
    assert ticks >= 10  # the event loop kept running while the model worked


def test_batcher_waits_at_most_max_wait_for_company():
    def predict(texts):
        return [_fake_prediction(t) for t in texts]

    async def main():
        b = serve.Batcher(predict, max_batch_size=32, max_wait_ms=30)
        b.start()
        start = time.perf_counter()
        await b.predict(["alone"])
        waited = time.perf_counter() - start
        await b.stop()
        return waited

    waited = asyncio.run(main())
    assert 0.025 <= waited < 1.0


def test_batcher_keeps_no_lone_client_waiting_and_waits_again_once_requests_overlap():
    """After a batch that ran alone the next request runs at once; when requests are seen
    together again (work queued behind a pass), gathering waits for company again."""
    batches: list[list[str]] = []

    def predict(texts):
        batches.append(list(texts))
        time.sleep(0.05)
        return [_fake_prediction(t) for t in texts]

    async def timed(texts):
        start = time.perf_counter()
        await b.predict(texts)
        return time.perf_counter() - start

    async def main():
        nonlocal b
        b = serve.Batcher(predict, max_batch_size=32, max_wait_ms=400)
        b.start()
        first = await timed(["a"])  # no traffic seen yet: it waits for company
        alone = await timed(["b"])  # the last batch ran alone: no wait
        c = asyncio.ensure_future(timed(["c"]))  # alone, so it starts at once ...
        await asyncio.sleep(0.02)
        together = [await c, *await asyncio.gather(timed(["d"]), timed(["e"]))]  # ... these queue
        after = await timed(["f"])  # d and e queued behind c: waiting is back
        await b.stop()
        return first, alone, together, after

    b = None
    first, alone, together, after = asyncio.run(main())
    assert batches == [["a"], ["b"], ["c"], ["d", "e"], ["f"]]
    assert first >= 0.4 and after >= 0.4
    assert alone < 0.3 and together[0] < 0.3  # 0.05 s of model, no 0.4 s wait


def test_batcher_skips_requests_whose_client_left():
    seen: list[str] = []

    def predict(texts):
        seen.extend(texts)
        return [_fake_prediction(t) for t in texts]

    async def main():
        b = serve.Batcher(predict, max_batch_size=32, max_wait_ms=100)
        b.start()
        gone = asyncio.create_task(b.predict(["gone"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        kept = await b.predict(["kept"])
        await b.stop()
        return kept

    kept = asyncio.run(main())
    assert [p.label for p in kept] == ["kept"] and seen[-1:] == ["kept"] and "gone" not in seen


def test_batcher_refuse_queued_fails_waiting_work_and_ends_gathering():
    """A drain's cut-off: requests still waiting, even one gathering company, fail at once."""
    seen: list[str] = []

    def predict(texts):
        seen.extend(texts)
        return [_fake_prediction(t) for t in texts]

    async def main():
        b = serve.Batcher(predict, max_batch_size=32, max_wait_ms=60_000)  # would gather a minute
        b.start()
        waiting = [asyncio.create_task(b.predict([f"t{i}"])) for i in range(3)]
        await asyncio.sleep(0.05)
        start = time.monotonic()
        refused = b.refuse_queued(RuntimeError("shutting down"))
        results = await asyncio.gather(*waiting, return_exceptions=True)
        elapsed = time.monotonic() - start
        late = await asyncio.gather(b.predict(["late"]), return_exceptions=True)
        await b.stop()
        return refused, results, late, elapsed, b.queued_texts

    refused, results, late, elapsed, queued = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results + late), results
    assert seen == [] and queued == 0 and elapsed < 1.0  # nothing computed, nothing left waiting
    assert 0 <= refused <= 3  # those in the gathering batch are refused when it launches


def test_batcher_passes_a_model_error_to_its_batch_and_carries_on():
    calls = 0

    def predict(texts):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("out of memory")
        return [_fake_prediction(t) for t in texts]

    async def main():
        b = serve.Batcher(predict, max_batch_size=8, max_wait_ms=20)
        b.start()
        failed = await asyncio.gather(b.predict(["a"]), b.predict(["b"]), return_exceptions=True)
        later = await b.predict(["c"])
        await b.stop()
        return failed, later

    failed, later = asyncio.run(main())
    assert [type(r) for r in failed] == [RuntimeError, RuntimeError]
    assert [p.label for p in later] == ["c"]


def test_torch_on_a_cpu_serves_a_lane_per_core_single_threaded_when_passes_overlap(
        tmp_path, tiny_predictor, caplog):
    """serve.threads=0: a lane per core; a pass alone uses torch's threads, passes side by side
    one thread each, and the rest of the process keeps its torch thread count;
    serve.threads=N: one pass at a time."""
    import torch

    from sentiment_cli.onnxrt import usable_cores
    from sentiment_cli.serve.service import Service

    if usable_cores() < 2:
        pytest.skip("lanes need two cores")
    here = torch.get_num_threads()

    class Recording:  # the tiny model, noting each pass's torch threads
        def __init__(self):
            self.seen: list[int] = []

        def __getattr__(self, name):
            return getattr(tiny_predictor, name)

        def predict(self, texts, parallel=True):
            self.seen.append(torch.get_num_threads())
            time.sleep(0.05)  # long enough for the passes of concurrent requests to overlap
            return tiny_predictor.predict(texts, parallel)

    async def serve_some(*overrides):
        predictor = Recording()
        svc = Service(serve_config(tmp_path / "log", "serve.max_batch_size=2", *overrides),
                      predictor, None, 30.0)
        await svc.start()
        try:
            assert await svc.wait_ready(), svc.detail
            predictor.seen.clear()  # the warm-up
            await svc.predict(["alone"])
            alone = list(predictor.seen)
            predictor.seen.clear()
            await asyncio.gather(*(svc.predict([f"together {i}"]) for i in range(12)))
            return svc.batcher.lanes, alone, set(predictor.seen)
        finally:
            await svc.stop()

    with caplog.at_level("INFO", logger="uvicorn.error"):
        lanes, alone, together = asyncio.run(serve_some())
    assert lanes == usable_cores() and alone == [here] and 1 in together
    assert torch.get_num_threads() == here  # this thread, and threads started later, unchanged
    with ThreadPoolExecutor(1) as fresh:
        assert fresh.submit(torch.get_num_threads).result() == here
    assert any(f"on {lanes} lanes" in r.getMessage() for r in caplog.records)
    lanes, alone, together = asyncio.run(serve_some("serve.threads=1"))
    assert lanes == 1 and alone == [here] and together == {here}


def test_batcher_lanes_run_side_by_side_and_stop_finishes_them():
    active = peak = 0
    lock = threading.Lock()

    def predict(texts):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return [_fake_prediction(t) for t in texts]

    async def main():
        b = serve.Batcher(predict, max_batch_size=1, max_wait_ms=5, lanes=2)
        b.start()
        pending = [asyncio.ensure_future(b.predict([f"r{i}"])) for i in range(7)]
        await asyncio.sleep(0.01)
        await b.stop()  # queued and running requests are all answered first
        return [p.result() for p in pending]

    results = asyncio.run(main())
    assert [[p.label for p in r] for r in results] == [[f"r{i}"] for i in range(7)]
    assert peak == 2  # two lanes busy at once, never more


def _started_while_the_loop_was_blocked(ahead: int) -> tuple[list[str], list[str]]:
    """Two lanes, four one-text requests; while the first two passes run the event loop is
    blocked for 0.4 s. Returns the texts whose pass began during the block, and the answers."""
    starts: dict[str, float] = {}

    def predict(texts):
        starts[texts[0]] = time.monotonic()
        time.sleep(0.1)
        return [_fake_prediction(t) for t in texts]

    async def main():
        b = serve.Batcher(predict, max_batch_size=1, max_wait_ms=0, lanes=2, ahead=ahead)
        b.start()
        pending = [asyncio.ensure_future(b.predict([f"r{i}"])) for i in range(4)]
        while len(starts) < 2:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)  # the batcher has handed out all it will
        blocked_from = time.monotonic()
        time.sleep(0.4)  # the event loop is busy (a slow request, a GC pause): lanes are on their own
        blocked_to = time.monotonic()
        answers = [[p.label for p in await r] for r in pending]
        await b.stop()
        return [t for t, at in starts.items() if blocked_from < at < blocked_to], answers

    return asyncio.run(main())


def test_batcher_hands_one_text_lanes_their_next_pass_ahead_so_they_never_wait_for_the_loop():
    during, answers = _started_while_the_loop_was_blocked(ahead=2)
    assert sorted(during) == ["r2", "r3"]  # the next passes began without the event loop
    assert answers == [["r0"], ["r1"], ["r2"], ["r3"]]
    during, answers = _started_while_the_loop_was_blocked(ahead=0)
    assert during == [] and answers == [["r0"], ["r1"], ["r2"], ["r3"]]  # handed out by the loop


def test_batcher_work_handed_ahead_is_skipped_when_its_client_left_and_refused_by_a_drain():
    seen: list[str] = []
    release = threading.Event()

    def predict(texts):
        seen.extend(texts)
        release.wait(5)
        return [_fake_prediction(t) for t in texts]

    async def main():
        b = serve.Batcher(predict, max_batch_size=1, max_wait_ms=0, lanes=1, ahead=2)
        b.start()
        running = asyncio.ensure_future(b.predict(["running"]))
        gone = asyncio.ensure_future(b.predict(["gone"]))  # handed ahead, waits on the lane's thread
        refused = asyncio.ensure_future(b.predict(["refused"]))  # handed ahead too
        while not seen:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        queued_while_waiting = b.queued_texts
        gone.cancel()  # its client went away
        b.refuse_queued(RuntimeError("shutting down"))  # the drain's cut-off
        release.set()
        out = await asyncio.gather(running, refused, return_exceptions=True)
        await b.stop()
        return out, queued_while_waiting, b.queued_texts

    (ran, refused), queued_while_waiting, queued_after = asyncio.run(main())
    assert [p.label for p in ran] == ["running"] and isinstance(refused, RuntimeError)
    assert seen == ["running"]  # neither the departed client's text nor the refused one was computed
    assert queued_while_waiting == 2 and queued_after == 0  # handed ahead still counts as queued


def test_waiting_for_the_model_ends_when_the_client_leaves_and_only_then():
    from sentiment_cli.serve.app import ClientLeft, _unless_client_leaves

    async def main():
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()

        async def receive():  # the ASGI receive once the body is read: waits for a disconnect
            await gone.wait()
            return {"type": "http.disconnect"}

        async def work(future):
            return await future

        answered = loop.create_future()
        loop.call_later(0.01, answered.set_result, "answer")
        result = await _unless_client_leaves(receive, work(answered))

        waiting = loop.create_future()  # the request's place in the queue
        loop.call_later(0.01, gone.set)
        with pytest.raises(ClientLeft):
            await _unless_client_leaves(receive, work(waiting))
        uncancelled = asyncio.current_task().cancelling() == 0
        await asyncio.sleep(0)  # the request's task goes on normally after ClientLeft

        gone.clear()
        inner = asyncio.ensure_future(_unless_client_leaves(receive, work(loop.create_future())))
        await asyncio.sleep(0.01)
        inner.cancel()  # uvicorn cancelling the request (a drain that was not clean)
        with pytest.raises(asyncio.CancelledError):
            await inner
        return result, waiting.cancelled(), uncancelled

    result, work_cancelled, uncancelled = asyncio.run(main())
    assert result == "answer"
    assert work_cancelled and uncancelled  # its queued texts are skipped; no cancellation lingers


def test_a_lost_connection_ends_the_wait_of_its_requests_and_only_theirs():
    """Where the protocol tells of lost connections (web.Departures in the scope), the request's
    own task is cancelled by it: ClientLeft, no cancellation left over; a wait that starts on a
    connection already lost is ClientLeft at once; anybody else's cancellation goes on up."""
    from sentiment_cli import web
    from sentiment_cli.serve.app import ClientLeft, _unless_client_leaves

    async def unread():
        raise AssertionError("receive is not read where the protocol tells of departures")

    async def work(future):
        return await future

    async def main():
        loop = asyncio.get_running_loop()
        gone, other = web.Departures(), web.Departures()
        answered = loop.create_future()
        loop.call_later(0.01, answered.set_result, "answer")
        result = await _unless_client_leaves(unread, work(answered), {web.DEPARTURES: gone})

        waiting = loop.create_future()
        loop.call_later(0.01, gone.lose)
        with pytest.raises(ClientLeft):
            await _unless_client_leaves(unread, work(waiting), {web.DEPARTURES: gone})
        uncancelled = asyncio.current_task().cancelling() == 0
        late = work(loop.create_future())
        with pytest.raises(ClientLeft):
            await _unless_client_leaves(unread, late, {web.DEPARTURES: gone})

        inner = asyncio.ensure_future(_unless_client_leaves(unread, work(loop.create_future()),
                                                            {web.DEPARTURES: other}))
        await asyncio.sleep(0.01)
        inner.cancel()  # uvicorn cancelling the request (a drain that was not clean)
        with pytest.raises(asyncio.CancelledError):
            await inner
        return result, waiting.cancelled(), uncancelled, late.cr_frame is None, gone, other

    result, work_cancelled, uncancelled, late_closed, gone, other = asyncio.run(main())
    assert result == "answer" and work_cancelled and uncancelled and late_closed
    assert gone.waiting == gone.left == other.waiting == other.left == set()


def test_service_hands_work_ahead_only_to_one_text_lanes_and_only_when_prefetch_is_on(tmp_path):
    from sentiment_cli.serve.service import Service

    class Lanes:  # what Service reads of a predictor with lanes of its own (ONNX Runtime's)
        name, version, variant, lanes, on_cpu, labels = "lanes", "1", "onnx-int8", 3, True, ["a"]

        def __init__(self, batch_size):
            self.batch_size = batch_size

        def predict(self, texts, parallel=True):
            return [_fake_prediction(t) for t in texts]

    def ahead(batch_size, *overrides):
        svc = Service(serve_config(tmp_path / "log", *overrides), Lanes(batch_size), None)
        return svc._batcher_for(svc.predictor).ahead

    assert ahead(1) == 3
    assert ahead(1, "serve.prefetch=false") == 0
    assert ahead(4) == 0  # passes that gather a batch are formed only when a lane is free
    assert ahead(4, "serve.max_batch_size=1") == 3


# ---------------------------------------------------------------- the ONNX Runtime variant


@pytest.fixture(scope="module")
def onnx_predictor(tiny_model_dir, tmp_path_factory):
    from sentiment_cli.onnxrt import OnnxPredictor

    return OnnxPredictor.from_folder(tiny_model_dir, quantize=True, threads=2, name="tiny", version="7",
                                     cache=str(tmp_path_factory.mktemp("onnx")))


def test_the_onnx_variant_serves_the_same_api(cfg, onnx_predictor, tiny_predictor):
    texts = ["a gripping story", "dull", "the worst movie i have seen in years", "charming"]
    with TestClient(serve.create_app(cfg, predictor=onnx_predictor)) as c:
        wait_ready(c)
        before = scrape(c)
        with ThreadPoolExecutor(4) as pool:  # concurrent requests spread over the two lanes
            answers = list(pool.map(lambda t: c.post("/predict", json={"text": t}), texts * 3))
        samples = scrape(c)
    assert all(r.status_code == 200 for r in answers)
    got = [r.json()["predictions"][0] for r in answers]
    expected = onnx_predictor.predict(texts * 3, parallel=False)
    assert [g["label"] for g in got] == [e.label for e in expected]
    torch_probs = tiny_predictor.predict_proba(texts * 3)
    assert max(abs(g["probabilities"]["pos"] - tp[1]) for g, tp in zip(got, torch_probs, strict=True)) < 0.05
    assert metric(samples, "sent_model_info", name="tiny", version="7", variant="onnx-int8") == 1
    for name in ("sent_batch_size_sum", "sent_batch_size_count"):  # every text once, batches of one
        assert metric(samples, name) - metric(before, name) == 12


def test_a_lone_onnx_request_runs_on_every_thread_and_overlapping_ones_on_the_lanes(
        tmp_path, tiny_model_dir, caplog):
    """A pass with no other running or waiting takes the second session (serve.alone_threads
    threads); passes that overlap take the lanes' single-threaded session; the warm-up runs both."""
    from sentiment_cli.onnxrt import OnnxPredictor
    from sentiment_cli.serve.service import Service

    predictor = OnnxPredictor.from_folder(tiny_model_dir, quantize=True, threads=2, alone_threads=2,
                                          name="tiny", version="7", cache=str(tmp_path / "onnx"))
    runs = {"lanes": 0, "alone": 0}

    class Counting:
        def __init__(self, session, key):
            self.session, self.key = session, key

        def run(self, *args):
            runs[self.key] += 1
            time.sleep(0.02)  # long enough for the passes of concurrent requests to overlap
            return self.session.run(*args)

    predictor.session = Counting(predictor.session, "lanes")
    predictor.alone = Counting(predictor.alone, "alone")

    async def serve_some():
        svc = Service(serve_config(tmp_path / "log"), predictor, None, 30.0)
        await svc.start()
        try:
            assert await svc.wait_ready(), svc.detail
            warm = dict(runs)
            for key in runs:
                runs[key] = 0
            lone = [await svc.predict([f"alone {i}"]) for i in range(3)]
            after_lone = dict(runs)
            together = await asyncio.gather(*(svc.predict([f"together {i}"]) for i in range(12)))
            return warm, after_lone, dict(runs), lone, together
        finally:
            await svc.stop()

    with caplog.at_level("INFO", logger="uvicorn.error"):
        warm, after_lone, after_all, lone, together = asyncio.run(serve_some())
    assert warm == {"lanes": 1, "alone": 1}
    assert after_lone == {"lanes": 0, "alone": 3}
    assert after_all["lanes"] >= 6 and after_all["lanes"] + after_all["alone"] == 15
    expected = predictor.predict([f"alone {i}" for i in range(3)], parallel=False)
    assert [preds[0].label for preds, _ in lone] == [e.label for e in expected]
    assert all(len(preds) == 1 for preds, _ in together)
    assert any("on 2 lanes, a pass alone on 2 threads" in r.getMessage() for r in caplog.records)


def _eval_json(folder: Path, accuracy: float, variants: dict[str, float], weights: str | None = None):
    from sentiment_cli.model import weights_sha256

    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/eval.json").write_text(json.dumps({
        "accuracy": accuracy, "weights_sha256": weights or weights_sha256(folder),
        "variants": {k: {"accuracy": v} for k, v in variants.items()}}))


@pytest.fixture
def started(monkeypatch):
    """uvicorn.run replaced: the apps it would have served."""
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    return apps


def test_a_faster_variant_needs_its_accuracy_measured(tmp_path, tiny_model_dir, monkeypatch, started):
    monkeypatch.chdir(tmp_path)
    model = str(tiny_model_dir)
    result = _invoke("--model", model, "--runtime", "onnx", "--quantize")
    assert result.exit_code == 1 and "onnx-int8 has no accuracy measurement" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1

    _eval_json(tiny_model_dir, 0.80, {"onnx-int8": 0.79}, weights="other weights")
    result = _invoke("--model", model, "--runtime", "onnx", "--quantize")
    assert result.exit_code == 1 and "no accuracy measurement" in result.output  # not these weights

    _eval_json(tiny_model_dir, 0.80, {"onnx-int8": 0.78, "torch-int8": 0.795})
    result = _invoke("--model", model, "--runtime", "onnx", "--quantize")
    assert result.exit_code == 1 and "0.0200 below fp32" in result.output
    assert "max_accuracy_drop is 0.01" in result.output
    assert not started

    result = _invoke("--model", model, "--runtime", "torch", "--quantize")  # torch-int8: 0.005 below
    assert result.exit_code == 0, result.output and len(started) == 1
    result = _invoke("--model", model, "--runtime", "onnx", "--quantize", "--set", "serve.max_accuracy_drop=0.03")
    assert result.exit_code == 0, result.output
    result = _invoke("--model", model, "--runtime", "onnx", "--no-quantize", "--no-accuracy-gate")
    assert result.exit_code == 0, result.output
    assert len(started) == 3
    result = _invoke("--model", model, "--runtime", "tensorrt")
    assert result.exit_code == 2 and "serve.runtime" in result.output


def test_by_default_serve_runs_onnx_fp32_with_torchs_answers_and_no_gate(tmp_path, tiny_model_dir,
                                                                          tiny_predictor):
    """serve.runtime=auto: ONNX Runtime fp32, exported once per weights; the same labels as
    torch and its probabilities within the export's tolerance, so no accuracy measurement is
    needed (none exists for this folder)."""
    from sentiment_cli import onnxrt

    texts = ["a warm and funny film", "dull, lifeless and far too long", "not bad", "x"]
    with running_server(tiny_model_dir, tmp_path) as server:
        r = httpx.post(f"{server.url}/predict", json={"texts": texts}, timeout=30)
        exposition = httpx.get(f"{server.url}/metrics").text
    assert r.status_code == 200, r.text
    assert 'variant="onnx-fp32"' in exposition and 'variant="torch-fp32"' not in exposition
    assert "ready as onnx-fp32" in server.text(), server.text()
    want = tiny_predictor.predict(texts)
    got = r.json()["predictions"]
    assert [p["label"] for p in got] == [p.label for p in want]
    worst = max(abs(g["probabilities"][k] - w.probabilities[k]) for g, w in zip(got, want, strict=True)
                for k in w.probabilities)
    assert worst <= onnxrt.EXPORT_TOLERANCE


def test_auto_serves_with_torch_and_says_why_when_the_export_cannot_be_made(tmp_path, tiny_model_dir,
                                                                            monkeypatch, started):
    from sentiment_cli import serve as serve_pkg

    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-a-folder").write_text("")  # the ONNX cache cannot be made here
    served = []
    real = serve_pkg.load_predictor
    monkeypatch.setattr(serve_pkg, "load_predictor", lambda *a, **k: served.append(real(*a, **k)) or served[-1])
    result = _invoke("--model", str(tiny_model_dir), "--set", f"paths.onnx_cache={tmp_path / 'not-a-folder'}")
    assert result.exit_code == 0, result.output
    assert "serve.runtime=auto: serving with torch" in result.output and "not-a-folder" in result.output
    assert "Traceback" not in result.output
    assert [p.variant for p in served] == ["torch-fp32"] and len(started) == 1

    # Asked for by name, ONNX is not replaced: the failure is the answer, in one line.
    result = _invoke("--model", str(tiny_model_dir), "--runtime", "onnx",
                     "--set", f"paths.onnx_cache={tmp_path / 'not-a-folder'}")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert len(started) == 1


def test_the_gate_guards_int8_whatever_the_runtime_and_not_fp32(tmp_path, tiny_model_dir, monkeypatch, started):
    monkeypatch.chdir(tmp_path)
    model = str(tiny_model_dir)
    result = _invoke("--model", model, "--quantize")  # auto: onnx-int8
    assert result.exit_code == 1 and "onnx-int8 has no accuracy measurement" in result.output
    result = _invoke("--model", model, "--runtime", "torch", "--quantize")
    assert result.exit_code == 1 and "torch-int8 has no accuracy measurement" in result.output
    assert not started
    for runtime in ("onnx", "torch", "auto"):  # fp32: the reference's numbers, no measurement needed
        result = _invoke("--model", model, "--runtime", runtime)
        assert result.exit_code == 0, result.output
    assert len(started) == 3


def test_the_gate_reads_the_champions_mlflow_run(store, tmp_path, started):
    from sentiment_cli import registry

    run_id = store.train_run(0.8, metrics={"test_accuracy_onnx_int8": 0.797})
    assert registry_fixtures.promote_cli().exit_code == 0
    result = _invoke("--runtime", "onnx", "--quantize")
    assert result.exit_code == 0, result.output
    with registry.run(store.cfg(), run_id=run_id):
        registry.log_metrics({"test_accuracy_onnx_int8": 0.70})  # a later eval: far worse
    result = _invoke("--runtime", "onnx", "--quantize")
    assert result.exit_code == 1 and f"MLflow run {run_id}" in result.output
    assert len(started) == 1


# ---------------------------------------------------------------- the command line


def _invoke(*args: str):
    return CliRunner().invoke(cli_app, ["serve", "--profile", "tiny", *args])


@pytest.fixture
def no_server(monkeypatch):
    """A refusal test that regresses fails here instead of serving forever."""
    import uvicorn

    def run(*args, **kwargs):
        raise AssertionError("the server was started")

    monkeypatch.setattr(uvicorn, "run", run)


def test_cli_refuses_a_missing_model_in_one_line(tmp_path, monkeypatch, no_server):
    monkeypatch.chdir(tmp_path)
    result = _invoke("--model", str(tmp_path / "nope"))
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "nope" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_cli_refuses_weights_that_do_not_match_their_hash(tmp_path, tiny_model_dir, monkeypatch,
                                                         no_server):
    monkeypatch.chdir(tmp_path)
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_model_dir, tampered)
    weights = tampered / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight
    weights.write_bytes(bytes(data))
    result = _invoke("--model", str(tampered))
    assert result.exit_code == 1
    assert "does not match" in result.output and "refusing to serve" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_cli_refuses_a_folder_whose_labels_were_swapped(tmp_path, tiny_model_dir, monkeypatch, no_server):
    """Same weights, id2label swapped in config.json: every answer would be inverted."""
    monkeypatch.chdir(tmp_path)
    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_model_dir, swapped)
    cfg = json.loads((swapped / "config.json").read_text())
    cfg["id2label"] = {"0": "pos", "1": "neg"}
    (swapped / "config.json").write_text(json.dumps(cfg))
    result = _invoke("--model", str(swapped))
    assert result.exit_code == 1
    assert "does not match" in result.output and "changed: config.json" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_cli_refuses_a_folder_with_nothing_to_verify_unless_told(tmp_path, tiny_model_dir, monkeypatch,
                                                               no_server):
    monkeypatch.chdir(tmp_path)
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "sent.json").unlink()
    result = _invoke("--model", str(bare))
    assert result.exit_code == 1 and "no sent.json" in result.output and "--no-verify-hash" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    with pytest.raises(AssertionError, match="the server was started"):  # told: it goes ahead
        CliRunner().invoke(cli_app, ["serve", "--profile", "tiny", "--model", str(bare), "--no-verify-hash"],
                           catch_exceptions=False)


def test_a_registered_model_whose_config_changed_is_refused(store, tmp_path, no_server):
    run_id = store.train_run(0.8)
    assert registry_fixtures.promote_cli().exit_code == 0
    folder = store.folder_of(run_id)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["id2label"] = {"0": "pos", "1": "neg"}
    (folder / "config.json").write_text(json.dumps(cfg))
    result = _invoke("--model", "models:/sentiment-classifier@champion")
    assert result.exit_code == 1
    assert "does not match the registry tag" in result.output and "changed: config.json" in result.output


def test_the_champion_is_served_by_name_and_version_and_tampering_refused(store, tmp_path,
                                                                          no_server):
    run_id = store.train_run(0.8)
    assert registry_fixtures.promote_cli().exit_code == 0
    cfg = serve_config(tmp_path / "log", "serve.model=models:/sentiment-classifier@champion")
    with TestClient(serve.create_app(cfg)) as c:
        wait_ready(c)
        r = c.post("/predict", json={"text": "registered and verified"})
        assert r.status_code == 200
        assert r.json()["model"] == {"name": "sentiment-classifier", "version": "1"}
    weights = store.folder_of(run_id) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    result = _invoke("--model", "models:/sentiment-classifier@champion")
    assert result.exit_code == 1
    assert "does not match the registry tag" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_cli_rejects_a_bad_port(tmp_path, tiny_model_dir, monkeypatch, no_server):
    monkeypatch.chdir(tmp_path)
    result = _invoke("--model", str(tiny_model_dir), "--port", "70000")
    assert result.exit_code != 0 and "serve.port" in result.output
    assert "Traceback" not in result.output


def test_cli_hands_uvicorn_the_app_and_the_options(tmp_path, tiny_model_dir, monkeypatch):
    import uvicorn
    from litestar import Litestar

    calls = []
    # the environment as the workers will see it, taken when the server starts
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw, dict(serve.os.environ))))
    monkeypatch.chdir(tmp_path)
    for name in (serve.SPEC_ENV, "PROMETHEUS_MULTIPROC_DIR"):  # run() sets them; undo after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    result = _invoke("--model", str(tiny_model_dir), "--host", "0.0.0.0", "--port", "8123")
    assert result.exit_code == 0, result.output
    app, kw, _ = calls.pop()
    assert isinstance(app, Litestar)
    # the drain budget: under Cloud Run's 10 s between SIGTERM and SIGKILL
    assert (kw["host"], kw["port"], kw["timeout_graceful_shutdown"]) == ("0.0.0.0", 8123, 8.0)
    assert kw["access_log"] is False  # failures are logged by the app itself (serve.access_log)
    from sentiment_cli.httpwrites import OneWriteHttpToolsProtocol

    assert kw["http"] is OneWriteHttpToolsProtocol  # each answer in one write (httpwrites.py)
    assert _invoke("--model", str(tiny_model_dir), "--set", "serve.access_log=true").exit_code == 0
    assert calls.pop()[1]["access_log"] is True

    # Several workers: an import string and a factory, the resolved model passed by environment.
    result = _invoke("--model", str(tiny_model_dir), "--workers", "2", "--quantize", "--no-accuracy-gate")
    assert result.exit_code == 0, result.output
    app, kw, env = calls.pop()
    assert app == "sentiment_cli.serve:app_from_env" and kw["factory"] and kw["workers"] == 2
    assert kw["http"] is OneWriteHttpToolsProtocol
    spec = json.loads(env[serve.SPEC_ENV])
    assert spec["folder"] == str(tiny_model_dir) and spec["threads"] >= 1
    assert spec["config"]["serve"]["quantize"] is True
    assert "PROMETHEUS_MULTIPROC_DIR" in env
    built = serve.app_from_env()  # what each worker runs
    assert isinstance(built, Litestar)


def test_cli_serves_with_short_thread_waits_unless_told_otherwise(tmp_path, tiny_model_dir, monkeypatch):
    """OpenMP's spinning threads starve each other on a busy host, and sleeping at once costs a
    lone pass on a quiet one: `sent serve` asks for a short spin before torch loads (the
    predictor), and leaves the user's own settings alone, whichever of them they set."""
    import uvicorn

    seen = []
    real_load = serve.load_predictor
    names = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

    def load(*args, **kwargs):
        seen.append({n: serve.os.environ[n] for n in names if n in serve.os.environ})
        return real_load(*args, **kwargs)

    monkeypatch.setattr(serve, "load_predictor", load)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    monkeypatch.chdir(tmp_path)
    for user_set in ({}, {"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "5"}):
        for name in names:  # restored (absent, or the caller's) after the test
            monkeypatch.setenv(name, "")
            monkeypatch.delenv(name)
        for name, value in user_set.items():
            monkeypatch.setenv(name, value)
        assert _invoke("--model", str(tiny_model_dir)).exit_code == 0
    assert seen == [{"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "1000"}, {"OMP_WAIT_POLICY": "PASSIVE"},
                    {"GOMP_SPINCOUNT": "5"}]


def test_the_cli_and_serve_modules_do_not_load_torch():
    """The thread settings take effect only if torch is not loaded before serve.run sets them."""
    import subprocess
    import sys

    code = ("import sys; import sentiment_cli.cli, sentiment_cli.serve, sentiment_cli.web, "
            "sentiment_cli.loading; print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_help_names_the_options():
    result = CliRunner().invoke(cli_app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--host", "--port", "--workers", "--runtime", "--quantize",
                   "--no-accuracy-gate", "--no-verify-hash"):
        assert option in result.output


# ---------------------------------------------------------------- a real server and SIGTERM


def _queued(url: str) -> float:
    samples = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for s in family.samples:
            samples[s.name] = s.value
    return samples.get("sent_queued_texts", 0.0)


def test_sigterm_finishes_requests_in_flight_and_flushes_the_log(tmp_path, tiny_model_dir):
    n = 12
    texts = [f"in flight review {i}: " + "great " * i for i in range(n)]
    # A long batching wait holds every request inside the server when SIGTERM arrives (one lane:
    # with a lane per core, the first lane's batch of 8 would start at once).
    with running_server(tiny_model_dir, tmp_path, "--set", "serve.max_wait_ms=1500",
                        "--set", "serve.max_batch_size=64", "--set", "serve.threads=1") as server:

        async def send_all():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                tasks = [asyncio.create_task(http.post("/predict", json={"text": t}))
                         for t in texts]
                deadline = time.monotonic() + 10
                while await asyncio.to_thread(_queued, server.url) < n:
                    assert time.monotonic() < deadline, "requests never reached the batcher"
                    await asyncio.sleep(0.02)
                server.process.send_signal(signal.SIGTERM)
                # The listener closes at once: new connections are refused while the
                # requests already inside are still waiting for their batch.
                deadline = time.monotonic() + 1.0
                refused = False
                while time.monotonic() < deadline and not refused:
                    try:
                        await asyncio.to_thread(httpx.get, f"{server.url}/healthz", timeout=0.5)
                    except httpx.ConnectError:
                        refused = True
                    await asyncio.sleep(0.05)
                return await asyncio.gather(*tasks), refused

        responses, refused = asyncio.run(send_all())
        code = server.process.wait(30)
    # A clean drain exits 0 (uvicorn alone would re-raise the signal: "killed by TERM").
    assert code == 0, server.text()
    assert "Application shutdown complete" in server.text() and "drained cleanly" in server.text()
    assert refused, "the server kept accepting connections after SIGTERM"
    assert [r.status_code for r in responses] == [200] * n
    logged = predlog.read_predictions(server.log_dir)
    assert sorted(r["text"] for r in logged) == sorted(texts)
    assert "Traceback" not in server.text()


def test_sigterm_answers_what_cannot_finish_in_the_budget_with_503(tmp_path, tiny_model_dir):
    """Work that would outlast serve.shutdown_budget_s is answered 503 + Retry-After before the
    budget ends, nothing gets a 500 or a dropped connection, and the exit status is 0."""
    n, budget = 10, 2.0
    texts = [f"too late review {i}" for i in range(n)]
    # Each batch would wait 20 s for company: far past the budget (one lane, as above).
    with running_server(tiny_model_dir, tmp_path, "--set", "serve.max_wait_ms=20000",
                        "--set", "serve.max_batch_size=64", "--set", "serve.threads=1",
                        "--set", f"serve.shutdown_budget_s={budget}") as server:

        async def send_all():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                tasks = [asyncio.create_task(http.post("/predict", json={"text": t})) for t in texts]
                deadline = time.monotonic() + 10
                while await asyncio.to_thread(_queued, server.url) < n:
                    assert time.monotonic() < deadline, "requests never reached the batcher"
                    await asyncio.sleep(0.02)
                start = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                responses = await asyncio.gather(*tasks)
                return responses, time.monotonic() - start

        responses, answered_after = asyncio.run(send_all())
        code = server.process.wait(30)
    assert [r.status_code for r in responses] == [503] * n, server.text()
    assert all(r.headers.get("retry-after") for r in responses)
    assert answered_after < budget, f"answered {answered_after:.1f} s after SIGTERM"
    assert code == 0 and "drained cleanly" in server.text(), server.text()
    assert "Traceback" not in server.text()


def test_a_client_that_leaves_costs_no_forward_pass(tmp_path, tiny_model_dir):
    import socket

    # torch: its batches wait serve.max_wait_ms for company (ONNX's one-text lanes start at once),
    # which holds the request in the queue while its client leaves.
    with running_server(tiny_model_dir, tmp_path, "--runtime", "torch", "--set", "serve.max_wait_ms=1500",
                        "--set", "serve.max_batch_size=64") as server:
        def passes() -> float:
            samples = {}
            for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
                for sample in family.samples:
                    samples[sample.name] = sample.value
            return samples.get("sent_batch_size_count", 0.0), samples.get("sent_abandoned_requests_total", 0.0)

        before = passes()
        body = b'{"text": "nobody waits for me"}'
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            deadline = time.monotonic() + 5
            while _queued(server.url) < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        time.sleep(2.0)  # past the batch's wait: it would have run by now
        after = passes()
    assert after[1] == before[1] + 1, "the departure was not noticed"
    assert after[0] == before[0], "a forward pass ran for a client that had left"
    assert predlog.read_predictions(server.log_dir) == []


@pytest.mark.slow
def test_several_workers_share_metrics_and_the_log(tmp_path, tiny_model_dir):
    texts = [f"worker review {i}" for i in range(40)]
    with running_server(tiny_model_dir, tmp_path, "--workers", "2") as server:
        # A new connection per request, several at once: both workers get some.
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(
                lambda t: httpx.post(f"{server.url}/predict", json={"text": t}, timeout=60), texts))
        families = {f.name: f for f in text_string_to_metric_families(
            httpx.get(f"{server.url}/metrics").text)}
        code = server.stop()
    assert [r.status_code for r in responses] == [200] * len(texts), server.text()
    logged = predlog.read_predictions(server.log_dir)
    assert sorted(r["text"] for r in logged) == sorted(texts)
    writers = {p.name.split("-")[2] for p in server.log_dir.glob("predictions-*.jsonl")}
    assert len(writers) == 2, "one worker answered everything; the test proves nothing"
    # Counts from both processes, added up (PROMETHEUS_MULTIPROC_DIR set by `sent serve`).
    predicted = sum(s.value for s in families["sent_predictions"].samples
                    if s.name == "sent_predictions_total")
    assert predicted == len(texts)
    answered = sum(s.value for s in families["sent_http_requests"].samples
                   if s.name == "sent_http_requests_total" and s.labels["path"] == "/predict")
    assert answered == len(texts)
    assert code in (0, -signal.SIGTERM), server.text()


@pytest.mark.slow
def test_onnx_int8_workers_share_one_export_and_answer(tmp_path, tiny_model_dir):
    from sentiment_cli.model import weights_sha256

    # The gate reads eval.json of these weights from the server's working directory.
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "eval.json").write_text(json.dumps({
        "accuracy": 0.75, "weights_sha256": weights_sha256(tiny_model_dir),
        "variants": {"onnx-int8": {"accuracy": 0.745}}}))
    cache = tmp_path / "onnx-cache"
    texts = [f"onnx review {i}" for i in range(24)]
    with running_server(tiny_model_dir, tmp_path, "--workers", "2", "--runtime", "onnx", "--quantize",
                        "--set", f"paths.onnx_cache={cache}") as server:
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(
                lambda t: httpx.post(f"{server.url}/predict", json={"text": t}, timeout=60), texts))
        families = {f.name: f for f in text_string_to_metric_families(
            httpx.get(f"{server.url}/metrics").text)}
        server.stop()
    assert [r.status_code for r in responses] == [200] * len(texts), server.text()
    variants = {s.labels["variant"] for s in families["sent_model_info"].samples if s.value == 1}
    assert variants == {"onnx-int8"}
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # exported once, by the parent
    assert sorted(r["text"] for r in predlog.read_predictions(server.log_dir)) == sorted(texts)
