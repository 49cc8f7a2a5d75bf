"""containers/cloudrun/: the Cloud Run service, the drift job and its schedule, as checked specs.

Each committed file is parsed as its google-cloud-run / google-cloud-scheduler message (offline:
an unknown field, a wrong type or enum value raises) and compared with what the configuration
says: a change to a probe path, the queue bound or the shutdown budget that the platform cannot
honour fails here, not on the first deploy.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sentiment_cli import config

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "containers" / "cloudrun"

run_v2 = pytest.importorskip("google.cloud.run_v2", reason="pip install -e '.[dev]' (google-cloud-run)")
scheduler_v1 = pytest.importorskip("google.cloud.scheduler_v1", reason="google-cloud-scheduler")


def _render_module():
    spec = importlib.util.spec_from_file_location("cloudrun_render", FOLDER / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()


def _committed(name: str) -> dict:
    return json.loads((FOLDER / name).read_text())


def _container(service: dict) -> dict:
    (container,) = service["template"]["containers"]
    return container


@pytest.fixture(scope="module")
def cfg():
    return config.load(None, root=ROOT)


def _rendered(cfg, *argv: str) -> dict[str, dict]:
    return {name: json.loads(text) for name, text in render.render(cfg, render.options(list(argv))).items()}


def test_committed_files_are_what_the_configuration_renders() -> None:
    done = subprocess.run([sys.executable, str(FOLDER / "render.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + "\nrun: python containers/cloudrun/render.py"


@pytest.mark.parametrize(("name", "message"), [
    (render.SERVICE_FILE, "Service"), (render.JOB_FILE, "Job"), (render.SCHEDULE_FILE, "scheduler"),
])
def test_committed_files_parse_as_api_messages(name: str, message: str) -> None:
    kind = scheduler_v1.Job if message == "scheduler" else getattr(run_v2, message)
    text = (FOLDER / name).read_text()
    kind.from_json(text)  # ignore_unknown_fields=False: a misspelt field raises
    broken = json.loads(text)
    broken["tempalte"] = {}
    with pytest.raises(Exception, match="tempalte"):
        kind.from_json(json.dumps(broken))


def test_probes_use_the_routes_the_server_answers() -> None:
    """Startup on /readyz (200 only once the model is loaded and warmed up: the default TCP probe
    counts the instance ready when the port opens), liveness on /healthz, both on the port."""
    from litestar.testing import TestClient

    from sentiment_cli.web import Readiness, health_routes

    c = _container(_committed(render.SERVICE_FILE))
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "tcpSocket" not in c["startupProbe"]
    port = c["ports"][0]["containerPort"]
    assert c["startupProbe"]["httpGet"]["port"] == c["livenessProbe"]["httpGet"]["port"] == port == 8080
    for probe in (c["startupProbe"], c["livenessProbe"]):
        assert probe["timeoutSeconds"] <= probe["periodSeconds"]
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] <= 240  # Cloud Run's startup window

    from litestar import Litestar, Response

    state = {"status": "loading"}
    app = Litestar(route_handlers=health_routes(lambda: Readiness(status=state["status"])),
                   signature_namespace={"Response": Response})
    with TestClient(app) as client:
        assert client.get(c["livenessProbe"]["httpGet"]["path"]).status_code == 200
        assert client.get(startup["httpGet"]["path"]).status_code == 503  # loading: not yet
        state["status"] = "ready"
        assert client.get(startup["httpGet"]["path"]).status_code == 200


def test_the_image_listens_where_the_probes_look() -> None:
    text = (ROOT / "containers" / "serve.Dockerfile").read_text()
    port = _container(_committed(render.SERVICE_FILE))["ports"][0]["containerPort"]
    assert f"PORT={port}" in text and f"EXPOSE {port}" in text


def test_concurrency_is_the_admission_bound(cfg) -> None:
    """One-text requests up to the queue bound are admitted; more go elsewhere (Cloud Run), not 503."""
    s = cfg.serve
    concurrency = _committed(render.SERVICE_FILE)["template"]["maxInstanceRequestConcurrency"]
    assert concurrency == min(s.max_queued_texts * s.workers, 1000)
    assert s.max_batch_size <= concurrency  # single-text requests can fill a forward pass
    bound = config.load(None, ["serve.max_queued_texts=512"], root=ROOT)
    raised = _rendered(bound, "--set", "serve.max_queued_texts=512")[render.SERVICE_FILE]
    assert raised["template"]["maxInstanceRequestConcurrency"] == 512
    assert "serve.max_queued_texts=512" in _container(raised)["args"]  # the instance runs with it too
    with pytest.raises(render.RenderError, match="max_batch_size"):
        render.service(config.load(None, ["serve.max_queued_texts=64", "serve.max_batch_size=128"], root=ROOT),
                       render.options([]))


def test_shutdown_budget_fits_cloud_runs_ten_seconds(cfg) -> None:
    """Cloud Run sends SIGKILL 10 s after SIGTERM; the drain must be over by then."""
    assert 0 < cfg.serve.shutdown_budget_s < render.CLOUD_RUN_KILL_S == 10
    for budget in ("10", "12.5"):
        raised = config.load(None, [f"serve.shutdown_budget_s={budget}"], root=ROOT)
        with pytest.raises(render.RenderError, match="shutdown_budget_s"):
            render.render(raised, render.options([]))
    done = subprocess.run([sys.executable, str(FOLDER / "render.py"), "--check", "--set",
                           "serve.shutdown_budget_s=11"], capture_output=True, text=True)
    assert done.returncode == 2 and "shutdown_budget_s" in done.stderr


def test_cpu_stays_allocated_while_the_log_goes_to_an_object_store(cfg) -> None:
    committed = _container(_committed(render.SERVICE_FILE))
    assert committed["resources"]["cpuIdle"] is False  # the committed default logs to gs://
    assert committed["resources"]["startupCpuBoost"] is True
    assert "paths.prediction_log=gs://${LOG_BUCKET}/predictions" in committed["args"]
    local = _container(_rendered(cfg, "--prediction-log", "logs/predictions")[render.SERVICE_FILE])
    assert local["resources"]["cpuIdle"] is True  # nothing runs between requests
    # the message holds the same value the file says
    message = run_v2.Service.from_json((FOLDER / render.SERVICE_FILE).read_text())
    assert message.template.containers[0].resources.cpu_idle is False


def test_scaling_and_secrets(cfg) -> None:
    service = _committed(render.SERVICE_FILE)
    assert service["template"]["scaling"]["minInstanceCount"] >= 1  # a cold start loads the model
    env = {e["name"]: e for e in _container(service)["env"]}
    token = env["MLFLOW_TRACKING_TOKEN"]
    assert "value" not in token and token["valueSource"]["secretKeyRef"]["secret"]
    assert not any("TOKEN" in name or "PASSWORD" in name for name, e in env.items() if "value" in e)
    pinned = _rendered(cfg, "--secret", "MLFLOW_TRACKING_PASSWORD=projects/p/secrets/mlflow-pw:3")
    (pw,) = [e for e in _container(pinned[render.SERVICE_FILE])["env"] if e["name"] == "MLFLOW_TRACKING_PASSWORD"]
    assert pw["valueSource"]["secretKeyRef"] == {"secret": "projects/p/secrets/mlflow-pw", "version": "3"}


def test_placeholders_are_filled_by_the_options(cfg) -> None:
    files = _rendered(cfg, "--project", "proj", "--region", "europe-west4", "--serve-image",
                      "r/sent-serve@sha256:" + "0" * 64, "--prediction-log", "gs://logs/p")
    service, schedule = files[render.SERVICE_FILE], files[render.SCHEDULE_FILE]
    assert _container(service)["image"].endswith("@sha256:" + "0" * 64)
    assert schedule["httpTarget"]["uri"] == \
        "https://run.googleapis.com/v2/projects/proj/locations/europe-west4/jobs/sent-drift:run"
    assert "${" not in json.dumps(service["template"]["scaling"])
    assert "${PROJECT_ID}" in _committed(render.SCHEDULE_FILE)["httpTarget"]["uri"]


def test_serve_and_drift_arguments_are_real_sent_options() -> None:
    from test_infra import _check_sent_invocation

    serve_args = _container(_committed(render.SERVICE_FILE))["args"]
    assert _check_sent_invocation(["sent", "serve", *serve_args], render.SERVICE_FILE)
    job = _committed(render.JOB_FILE)["template"]["template"]
    drift_args = job["containers"][0]["args"]
    assert _check_sent_invocation(["sent", "drift", *drift_args], render.JOB_FILE)
    # the drift image's entry point is `sent drift`, so the job's args follow it
    entry = (ROOT / "containers" / "drift.Dockerfile").read_text()
    assert 'ENTRYPOINT ["sent", "drift"]' in entry


def test_drift_job_reports_through_its_exit_status(cfg) -> None:
    """--fail-on-drift: exit 4 on drift, 5 on too little data; the job does not retry a verdict,
    reads the same log serve writes and the reference from the mounted artifact bucket, where its
    ONNX encoder is cached too."""
    from sentiment_cli import drift

    job = _committed(render.JOB_FILE)["template"]["template"]
    args = job["containers"][0]["args"]
    assert "--fail-on-drift" in args and job["maxRetries"] == 0
    assert (drift.EXIT_DRIFT, drift.EXIT_NOT_ENOUGH_DATA) == (4, 5)
    serve_log = next(a for a in _container(_committed(render.SERVICE_FILE))["args"]
                     if a.startswith("paths.prediction_log="))
    assert args[args.index("--current") + 1] == serve_log.split("=", 1)[1]
    (mount,) = job["containers"][0]["volumeMounts"]
    (volume,) = job["volumes"]
    assert mount["name"] == volume["name"] and "gcs" in volume
    assert f"paths.metrics_dir={mount['mountPath']}/metrics" in args
    # the ONNX export lasts on the bucket, not in the container each execution starts afresh
    assert f"paths.onnx_cache={mount['mountPath']}/onnx-cache" in args
    assert volume["gcs"]["mountOptions"] == [f"rename-dir-limit={render.RENAME_DIR_LIMIT}"]  # the cache's swap
    assert args[args.index("--output-dir") + 1].startswith(mount["mountPath"] + "/")
    assert job["executionEnvironment"] == "EXECUTION_ENVIRONMENT_GEN2"  # Cloud Storage volumes need it


def test_schedule_runs_the_job() -> None:
    schedule = _committed(render.SCHEDULE_FILE)
    target = schedule["httpTarget"]
    assert target["httpMethod"] == "POST" and target["uri"].endswith("/jobs/sent-drift:run")
    assert "oauthToken" in target  # Google APIs take OAuth access tokens, not OIDC identity tokens
    assert len(shlex.split(schedule["schedule"])) == 5  # a cron line
