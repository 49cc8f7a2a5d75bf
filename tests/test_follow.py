"""sent serve following a registry alias: the switch under load, refusals, the signed /reload
webhook, polling, against a stand-in registry (fast) and a real MLflow SQLite store."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import threading
import time
import uuid

import pytest
import registry_fixtures
import serve_fixtures
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families
from serve_fixtures import metric, scrape, serve_config, wait_ready

from sentiment_cli import config, predlog, serve, webhooks
from sentiment_cli.errors import SentError
from sentiment_cli.model import ModelError
from sentiment_cli.serve import follow

tiny_model_dir = serve_fixtures.tiny_model_dir
tiny_predictor = serve_fixtures.tiny_predictor
store = registry_fixtures.store
tiny_model = registry_fixtures.tiny_model
empty_store_db = registry_fixtures.empty_store_db

NAME, ALIAS = "sentiment-classifier", "champion"
SECRET = "s3cret-for-tests-only"




class Registry:
    """A stand-in for the registry: where the alias points, and what loading a version gives."""

    def __init__(self, base, version: str = "7") -> None:
        self.base, self.version = base, version
        self.loads: list[str] = []
        self.broken: dict[str, Exception] = {}  # version → what loading it raises

    def lookup(self) -> str:
        return self.version

    def load(self, version: str):
        self.loads.append(version)
        if version in self.broken:
            raise self.broken[version]
        p = copy.copy(self.base)
        p.version = version
        return p

    def factory(self, interval_s: float):
        return lambda service: follow.Follower(service, NAME, ALIAS, interval_s=interval_s,
                                               lookup=self.lookup, load=self.load)


def signed(body: dict | bytes, secret: str = SECRET, *, age_s: float = 0.0) -> tuple[bytes, dict]:
    """A delivery as MLflow sends it, signed with MLflow's own function."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    delivery, stamp = str(uuid.uuid4()), str(int(time.time() - age_s))
    return raw, {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery,
                 "X-MLflow-Timestamp": stamp,
                 "X-MLflow-Signature": _generate_hmac_signature(secret, delivery, stamp, raw.decode())}


def alias_event(version: str, name: str = NAME, alias: str = ALIAS) -> dict:
    return {"entity": "model_version_alias", "action": "created",
            "timestamp": "2026-12-01T00:00:00+00:00",
            "data": {"name": name, "alias": alias, "version": version}}


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def served_version(client) -> str:
    r = client.post("/predict", json={"text": "a fine film"})
    assert r.status_code == 200, r.text
    return r.json()["model"]["version"]


class Load:
    """Closed-loop clients: each sends its next request when the last one was answered."""

    def __init__(self, client, threads: int = 3) -> None:
        self.client, self.stop = client, threading.Event()
        self.answers: list[list[tuple[int, str | None]]] = [[] for _ in range(threads)]
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            r = self.client.post("/predict", json={"text": f"client {i} review {n}"})
            n += 1
            self.answers[i].append((r.status_code, r.json().get("model", {}).get("version")
                                    if r.status_code == 200 else r.text))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def seen(self) -> list[str]:
        return [v for a in self.answers for _, v in a[-3:]]


def collapsed(versions: list) -> list:
    return [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]


# ---------------------------------------------------------------- the switch, by polling


def test_polling_follows_a_promotion_and_a_rollback_under_load(tmp_path, tiny_predictor):
    cfg = serve_config(tmp_path / "log")
    reg = Registry(tiny_predictor, "7")
    app = serve.create_app(cfg, predictor=tiny_predictor, follower_factory=reg.factory(0.05))
    with TestClient(app) as c:
        wait_ready(c)
        before = scrape(c)
        with Load(c) as load:
            wait_for(lambda: sum(map(len, load.answers)) >= 6, what="the load to start")
            reg.version = "8"  # a promotion
            wait_for(lambda: set(load.seen()) == {"8"}, what="version 8 to answer")
            assert metric(scrape(c), "sent_model_info", version="8") == 1
            assert metric(scrape(c), "sent_model_info", version="7") == 0
            reg.version = "7"  # a rollback
            wait_for(lambda: set(load.seen()) == {"7"}, what="version 7 to answer again")
        after = scrape(c)
    answers = [a for per_client in load.answers for a in per_client]
    assert answers and all(status == 200 for status, _ in answers), answers[:5]
    for per_client in load.answers:  # each client saw 7, then 8, then 7: two changes
        assert collapsed([v for _, v in per_client]) == ["7", "8", "7"]
    assert reg.loads == ["8", "7"]
    assert metric(after, "sent_model_switches_total") - metric(before, "sent_model_switches_total") == 2
    assert metric(after, "sent_model_info", name="tiny", version="7") == 1
    # The prediction log says which version answered each request, as the responses did.
    logged = predlog.read_predictions(cfg.paths.prediction_log)
    by_text = {r["text"]: r["model_version"] for r in logged}
    for i, per_client in enumerate(load.answers):
        for n, (_, version) in enumerate(per_client):
            assert by_text[f"client {i} review {n}"] == version


def test_requests_in_flight_finish_on_the_old_version(tmp_path, tiny_predictor):
    """A batch running when the switch happens is answered by the version that computed it."""
    started, release = threading.Event(), threading.Event()

    class Slow:
        def __init__(self, inner) -> None:
            self.inner = inner
            self.name, self.version, self.labels = inner.name, inner.version, inner.labels

        def predict(self, texts, *args, **kwargs):
            if texts == ["held"]:
                started.set()
                assert release.wait(20)
            return self.inner.predict(texts)

    cfg = serve_config(tmp_path / "log")
    reg = Registry(tiny_predictor, "7")
    app = serve.create_app(cfg, predictor=Slow(tiny_predictor), follower_factory=reg.factory(0.05))
    with TestClient(app) as c:
        wait_ready(c)
        result: dict = {}
        held = threading.Thread(target=lambda: result.update(r=c.post("/predict", json={"text": "held"})))
        held.start()
        assert started.wait(10)
        reg.version = "8"
        # (not /predict: a request queued on version 7 behind the held batch would wait for it)
        wait_for(lambda: c.get("/readyz").json()["model"]["version"] == "8", what="the switch")
        assert served_version(c) == "8" and held.is_alive()  # new requests pass the held one
        release.set()
        held.join(20)
    assert result["r"].status_code == 200 and result["r"].json()["model"]["version"] == "7"
    logged = {r["text"]: r["model_version"] for r in predlog.read_predictions(cfg.paths.prediction_log)}
    assert logged["held"] == "7"


# ---------------------------------------------------------------- refusals


def test_a_version_that_fails_its_checks_is_refused_and_the_old_one_keeps_serving(
        tmp_path, tiny_predictor, caplog):
    cfg = serve_config(tmp_path / "log")
    reg = Registry(tiny_predictor, "7")
    reg.broken["8"] = ModelError("weights sha256 differs from the registry tag of version 8")
    app = serve.create_app(cfg, predictor=tiny_predictor, follower_factory=reg.factory(0.05))
    caplog.set_level(logging.ERROR, logger="sentiment_cli.serve.follow")
    with TestClient(app) as c:
        wait_ready(c)
        before = scrape(c)
        reg.version = "8"
        wait_for(lambda: reg.loads == ["8"], what="the load attempt")
        wait_for(lambda: "refused" in (c.get("/readyz").json().get("detail") or ""), what="readyz")
        time.sleep(0.3)  # several more polls: the refused version is not retried
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["model"]["version"] == "7"
        assert "version 8" in ready.json()["detail"] and "sha256" in ready.json()["detail"]
        assert served_version(c) == "7" and reg.loads == ["8"]
        after = scrape(c)
        delta = (metric(after, "sent_model_reload_failures_total", stage="load")
                 - metric(before, "sent_model_reload_failures_total", stage="load"))
        assert delta == 1
        assert any("refused sentiment-classifier version 8" in r.getMessage()
                   and "version 7 keeps serving" in r.getMessage() for r in caplog.records)
        reg.version = "9"  # the alias moves on to a good version: it is served, the note goes
        wait_for(lambda: served_version(c) == "9", what="version 9")
        assert c.get("/readyz").json()["detail"] is None


def test_a_version_that_fails_its_warm_up_is_refused(tmp_path, tiny_predictor):
    class Broken:
        name, version, labels = "tiny", "8", ["neg", "pos"]

        def predict(self, texts, *args, **kwargs):
            raise RuntimeError("CUDA error: out of memory")

    cfg = serve_config(tmp_path / "log")
    reg = Registry(tiny_predictor, "7")
    reg.load = lambda version: Broken()  # type: ignore[method-assign]
    app = serve.create_app(cfg, predictor=tiny_predictor, follower_factory=reg.factory(0.05))
    with TestClient(app) as c:
        wait_ready(c)
        before = metric(scrape(c), "sent_model_reload_failures_total", stage="warmup")
        reg.version = "8"
        wait_for(lambda: "warmup" in (c.get("/readyz").json().get("detail") or ""), what="refusal")
        assert served_version(c) == "7"
        assert metric(scrape(c), "sent_model_reload_failures_total", stage="warmup") == before + 1


def test_a_registry_that_cannot_be_read_leaves_the_model_serving(tmp_path, tiny_predictor):
    cfg = serve_config(tmp_path / "log")
    reg = Registry(tiny_predictor, "7")

    def down() -> str:
        raise SentError("MLflow at http://mlflow:5000: connection refused")

    reg.lookup = down  # type: ignore[method-assign]
    app = serve.create_app(cfg, predictor=tiny_predictor, follower_factory=reg.factory(0.05))
    with TestClient(app) as c:
        wait_ready(c)
        wait_for(lambda: metric(scrape(c), "sent_model_follow_errors_total") >= 2, what="lookups")
        assert served_version(c) == "7" and c.get("/readyz").status_code == 200


# ---------------------------------------------------------------- the /reload webhook


@pytest.fixture
def hooked(tmp_path, tiny_predictor, monkeypatch):
    """An app that follows by webhook only (no polling), with the secret set."""
    monkeypatch.setenv(follow.SECRET_ENV, SECRET)
    cfg = serve_config(tmp_path / "log")
    reg = Registry(tiny_predictor, "7")
    app = serve.create_app(cfg, predictor=tiny_predictor, follower_factory=reg.factory(0))
    with TestClient(app) as c:
        wait_ready(c)
        yield c, reg


def test_a_signed_alias_webhook_switches_at_once(hooked):
    c, reg = hooked
    reg.version = "8"
    body, headers = signed(alias_event("8"))
    r = c.post("/reload", content=body, headers=headers)
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "accepted", "name": NAME, "alias": ALIAS, "version": "8",
                        "serving": "7"}
    wait_for(lambda: served_version(c) == "8", timeout=10, what="the switch")


def test_the_webhook_is_a_hint_the_alias_in_the_registry_decides(hooked):
    """A late delivery for a version the alias has already left changes nothing."""
    c, reg = hooked
    body, headers = signed(alias_event("5"))  # the registry still says 7
    assert c.post("/reload", content=body, headers=headers).status_code == 202
    time.sleep(0.3)
    assert served_version(c) == "7" and reg.loads == []


@pytest.mark.parametrize("tamper", ["secret", "body", "headers", "old", "future", "garbled"])
def test_a_delivery_that_is_not_authentic_is_401_and_changes_nothing(hooked, tamper):
    c, reg = hooked
    reg.version = "8"
    body, headers = signed(alias_event("8"), "wrong-secret" if tamper == "secret" else SECRET,
                           age_s={"old": 600, "future": -600}.get(tamper, 0))
    if tamper == "body":
        body = body.replace(b'"8"', b'"9"')
    if tamper == "headers":
        del headers["X-MLflow-Signature"]
    if tamper == "garbled":
        headers["X-MLflow-Timestamp"] = "yesterday"
    r = c.post("/reload", content=body, headers=headers)
    assert r.status_code == 401, r.text
    assert SECRET not in r.text and "wrong-secret" not in r.text
    assert r.json()["detail"]
    time.sleep(0.1)
    assert reg.loads == [] and served_version(c) == "7"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"entity": "model_version_alias"}',
                                  json.dumps(alias_event("")).encode(), b"\xff\xfe"])
def test_a_signed_body_that_is_not_an_mlflow_event_is_400(hooked, body):
    c, reg = hooked
    from mlflow.webhooks.delivery import _generate_hmac_signature

    delivery, stamp = "d-1", str(int(time.time()))
    # MLflow signs text; for bytes that are not UTF-8 sign what arrives, as our check does.
    sig = (_generate_hmac_signature(SECRET, delivery, stamp, body.decode()) if body != b"\xff\xfe"
           else webhooks.sign(SECRET, delivery, stamp, body))
    r = c.post("/reload", content=body, headers={
        "X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp, "X-MLflow-Signature": sig})
    assert r.status_code == 400, r.text
    assert r.json()["detail"] and SECRET not in r.text
    assert reg.loads == []


@pytest.mark.parametrize("event", [
    alias_event("8", name="another-model"), alias_event("8", alias="staging"),
    {"entity": "model_version", "action": "created", "data": {"name": NAME, "version": "8"}},
])
def test_other_events_models_and_aliases_are_ignored_with_200(hooked, event):
    c, reg = hooked
    reg.version = "8"
    body, headers = signed(event)
    r = c.post("/reload", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "ignored", r.text
    time.sleep(0.2)
    assert reg.loads == []


def test_without_a_secret_the_webhook_is_off_403(tmp_path, tiny_predictor, monkeypatch):
    monkeypatch.delenv(follow.SECRET_ENV, raising=False)
    cfg = serve_config(tmp_path / "log")
    app = serve.create_app(cfg, predictor=tiny_predictor,
                           follower_factory=Registry(tiny_predictor).factory(0))
    with TestClient(app) as c:
        body, headers = signed(alias_event("8"))
        r = c.post("/reload", content=body, headers=headers)
    assert r.status_code == 403 and follow.SECRET_ENV in r.json()["detail"]


def test_a_server_of_a_fixed_model_answers_409(tmp_path, tiny_predictor, monkeypatch):
    monkeypatch.setenv(follow.SECRET_ENV, SECRET)
    cfg = serve_config(tmp_path / "log")
    with TestClient(serve.create_app(cfg, predictor=tiny_predictor)) as c:  # follows nothing
        body, headers = signed(alias_event("8"))
        assert c.post("/reload", content=body, headers=headers).status_code == 409


# ---------------------------------------------------------------- the signature, on its own


def test_sign_is_mlflows_signature():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = json.dumps(alias_event("3"))
    assert webhooks.sign("k", "id-1", "1700000000", body.encode()) == \
        _generate_hmac_signature("k", "id-1", "1700000000", body)


def test_verify_accepts_any_of_several_signatures_and_checks_the_clock():
    body, now = b'{"a": 1}', 1_700_000_000
    good = webhooks.sign("new", "d", str(now), body)
    headers = {"x-mlflow-delivery-id": "d", "X-MLFLOW-TIMESTAMP": str(now),
               "X-MLflow-Signature": f"v1,AAAA {good}"}
    assert webhooks.verify("new", headers, body, now=now + 10) == "d"
    with pytest.raises(webhooks.Rejected, match="away from this server's clock"):
        webhooks.verify("new", headers, body, now=now + 301)
    with pytest.raises(webhooks.Rejected, match="does not match"):
        webhooks.verify("old", headers, body, now=now)


def test_follow_interval_must_not_be_negative():
    with pytest.raises(config.ConfigError, match="follow_interval_s"):
        config.load("tiny", ["serve.follow_interval_s=-1"])


def test_only_an_alias_is_followed():
    assert follow.followed("models:/m@champion") == ("m", "champion")
    assert follow.followed("models:/m/3") is None
    assert follow.followed("models/candidate") is None


# ---------------------------------------------------------------- a real MLflow store


def test_following_a_real_registry_checks_each_new_versions_hash(store, tmp_path):
    from sentiment_cli import promote, registry

    first = store.train_run(0.80)
    assert registry_fixtures.promote_cli("--run-id", first).exit_code == 0
    cfg = serve_config(tmp_path / "log", "serve.follow_interval_s=0.1")
    app = serve.create_app(cfg, model_uri=f"models:/{NAME}@{ALIAS}")
    with TestClient(app) as c:
        wait_ready(c, 60)
        assert served_version(c) == "1"
        second = store.train_run(0.90)
        assert registry_fixtures.promote_cli("--run-id", second).exit_code == 0
        wait_for(lambda: served_version(c) == "2", 60, "version 2")
        # A version whose weights are not what the registry recorded is refused.
        third = store.train_run(0.95)
        registry.create_version(cfg, NAME, registry.get_run(cfg, third),
                                {"weights_sha256": "0" * 64, "test_accuracy": "0.95"})
        registry.set_alias(cfg, NAME, ALIAS, "3")
        wait_for(lambda: "refused" in (c.get("/readyz").json().get("detail") or ""), 60, "refusal")
        assert served_version(c) == "2"
        assert "sha256" in c.get("/readyz").json()["detail"]
        assert promote.rollback(cfg).action == "rolled_back"  # 3 → 2: nothing to switch
        assert served_version(c) == "2"


def test_the_loader_of_a_new_version_applies_the_accuracy_gate(store, tmp_path):
    """A faster variant of a version `sent eval` never measured is refused like at startup."""
    run = store.train_run(0.80)
    assert registry_fixtures.promote_cli("--run-id", run).exit_code == 0
    load = follow.registry_loader(serve_config(tmp_path / "log", "serve.quantize=true"), NAME)
    with pytest.raises(ModelError, match="no accuracy measurement"):
        load("1")
    assert follow.registry_loader(serve_config(tmp_path / "log"), NAME)("1").version == "1"


def test_a_folder_model_stays_put(tmp_path, tiny_model_dir):
    cfg = serve_config(tmp_path / "log", "serve.follow_interval_s=0.05")
    app = serve.create_app(cfg, model_uri=str(tiny_model_dir))
    with TestClient(app) as c:
        wait_ready(c)
        time.sleep(0.2)
        r = c.post("/predict", json={"text": "ok"})
        assert r.status_code == 200 and r.json()["model"]["version"].startswith("sha256:")



# ---------------------------------------------------------------- end to end: mlflow server + webhook


def webhook_server_env() -> dict[str, str]:
    """What a local `mlflow server` needs to deliver webhooks to a replica on 127.0.0.1."""
    from cryptography.fernet import Fernet

    return {
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",  # https only by default
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",  # SSRF protection refuses loopback otherwise
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
    }


@pytest.mark.slow
def test_serve_follows_promote_and_rollback_by_webhook_from_a_real_mlflow_server(
        store, tmp_path, monkeypatch):
    """`mlflow server` (SQLite) with a webhook registered, `sent serve` of @champion under three
    closed-loop clients, `sent promote` of a better run, then `sent promote --rollback`. Polling
    is off: only the webhook can move the server. About a minute, most of it starting servers."""
    import mlflow
    import requests

    from sentiment_cli import servers

    server_dir = tmp_path / "mlflow-server"
    server_dir.mkdir()
    shutil.copyfile(store.root / "mlflow.db", server_dir / "backend.db")
    proc, url = registry_fixtures.start_mlflow_server(server_dir, env=webhook_server_env())
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        first = store.train_run(0.80)
        assert registry_fixtures.promote_cli("--run-id", first).exit_code == 0
        port = servers.free_port()
        mlflow.MlflowClient(tracking_uri=url, registry_uri=url).create_webhook(
            name="sent-serve", url=f"http://127.0.0.1:{port}/reload",
            events=["model_version_alias.created"], secret=SECRET)
        log_dir = tmp_path / "predictions"
        argv = servers.sent_command(
            "serve", "--profile", "tiny", "--model", f"models:/{NAME}@{ALIAS}",
            "--set", f"paths.prediction_log={log_dir}", "--set", "serve.follow_interval_s=0")
        with servers.running(argv, cwd=tmp_path, output=tmp_path / "serve.out", port=port,
                             env={follow.SECRET_ENV: SECRET, "MLFLOW_TRACKING_URI": url}) as server:
            answers = closed_loop(server.url, [
                lambda: registry_fixtures.promote_cli("--run-id", store.train_run(0.90)),
                lambda: registry_fixtures.promote_cli("--rollback"),
            ], ["2", "1"])
            scraped = requests.get(f"{server.url}/metrics", timeout=5).text
            assert server.stop() == 0, server.text()
        out = server.text()
    finally:
        registry_fixtures.stop_mlflow_server(proc)
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(scraped) for s in family.samples}
    assert metric(samples, "sent_model_info", name=NAME, version="1") == 1
    assert metric(samples, "sent_model_info", version="2") == 0  # taken down at the rollback
    assert metric(samples, "sent_model_webhooks_total", outcome="accepted") >= 2
    assert metric(samples, "sent_model_switches_total") == 2
    flat = [a for per_client in answers for a in per_client]
    assert len(flat) > 30 and all(status == 200 for status, _ in flat), flat[:5]
    for per_client in answers:
        assert collapsed([v for _, v in per_client]) == ["1", "2", "1"], collapsed(
            [v for _, v in per_client])
    assert "now serving version 2 (was 1)" in out and "now serving version 1 (was 2)" in out, out
    logged = {r["text"]: r["model_version"] for r in predlog.read_predictions(str(log_dir))}
    for i, per_client in enumerate(answers):
        for n, (_, version) in enumerate(per_client):
            assert logged[f"client {i} review {n}"] == version


def closed_loop(base: str, changes, expect: list[str], clients: int = 3, timeout: float = 90.0):
    """Run `clients` closed-loop clients against base/predict; apply each change in turn and wait
    until every client's latest answers come from the expected version. Returns each client's
    (status, version) answers in order."""
    import requests

    stop = threading.Event()
    answers: list[list[tuple[int, str | None]]] = [[] for _ in range(clients)]

    def client(i: int) -> None:
        with requests.Session() as s:
            n = 0
            while not stop.is_set():
                r = s.post(f"{base}/predict", json={"text": f"client {i} review {n}"}, timeout=30)
                n += 1
                answers[i].append((r.status_code, r.json()["model"]["version"]
                                   if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(len(a) >= 5 for a in answers), timeout, "the clients to start")
        for change, version in zip(changes, expect, strict=True):
            result = change()
            assert result.exit_code == 0, result.output
            marks = [len(a) for a in answers]
            wait_for(lambda v=version, m=marks: all(
                len(a) > k + 2 and all(x == v for _, x in a[-2:]) for a, k in zip(answers, m, strict=True)),
                timeout, f"version {version} to answer every client")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    return answers


@pytest.mark.slow
def test_every_worker_of_a_multi_worker_server_follows_by_polling(store, tmp_path):
    """`sent serve --workers 2`: each worker process polls on its own and switches."""
    import requests

    from sentiment_cli import servers

    first = store.train_run(0.80)
    assert registry_fixtures.promote_cli("--run-id", first).exit_code == 0
    argv = servers.sent_command(
        "serve", "--profile", "tiny", "--model", f"models:/{NAME}@{ALIAS}", "--workers", "2",
        "--set", f"paths.prediction_log={tmp_path / 'predictions'}", "--set", "serve.follow_interval_s=0.5")
    with servers.running(argv, cwd=tmp_path, output=tmp_path / "serve.out") as server:
        wait_for(lambda: requests.post(f"{server.url}/predict", json={"text": "x"}, timeout=10).status_code
                 == 200, 60, "both workers")
        assert registry_fixtures.promote_cli("--run-id", store.train_run(0.90)).exit_code == 0
        wait_for(lambda: server.text().count("now serving version 2 (was 1)") == 2, 60, "both switches")
        versions = [requests.post(f"{server.url}/predict", json={"text": f"t{i}"}, timeout=10).json()[
            "model"]["version"] for i in range(40)]
        out = server.text()
    assert set(versions) == {"2"}, versions
    assert out.count("now serving version 2 (was 1)") == 2, out
