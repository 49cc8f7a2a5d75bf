"""Render the Cloud Run resources of sent from its configuration: the `sent serve` service, the
`sent drift` job and the Cloud Scheduler job that starts it.

    python containers/cloudrun/render.py                      # rewrite the committed templates
    python containers/cloudrun/render.py --check              # exit 1 when they are stale
    python containers/cloudrun/render.py --out /tmp/sent-run --project my-proj --region europe-west4 \
        --serve-image REGION-docker.pkg.dev/P/sent/sent-serve@sha256:... ...   # filled in, to deploy

What comes from the sent configuration (--profile, --set, as for every `sent` command): the queue
bound and batch size that decide the concurrency, the shutdown budget (refused unless it fits in
Cloud Run's 10 s), the prediction log (CPU stays allocated when it is not a local folder, because
the background flush needs CPU between requests), the probe paths the server answers. What comes
from the options: where it runs (project, region, images, identities, buckets, secrets). Left at
their defaults, the options are `${NAME}` placeholders, so the committed files are templates that
`envsubst` fills in (docs/containers.md lists the names).

Each resource is built as its google-cloud-run / google-cloud-scheduler message, so an unknown
field, a wrong type or a misspelt enum value fails here, before any API sees it; the files hold
the REST (JSON) form that the v2 API's create and patch calls accept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVICE_FILE, JOB_FILE, SCHEDULE_FILE = "service.json", "drift-job.json", "drift-schedule.json"

CLOUD_RUN_KILL_S = 10.0  # SIGKILL comes this long after SIGTERM; not configurable on Cloud Run
MAX_CONCURRENCY = 1000  # Cloud Run's upper limit on requests per instance
PORT = 8080  # the container port; Cloud Run passes it to the image as $PORT
STARTUP_PATH, LIVENESS_PATH = "/readyz", "/healthz"
# The model loads after the port opens: up to 48 × 5 s = 240 s of /readyz 503 before the
# instance is given up (loading DistilBERT from the registry takes tens of seconds).
STARTUP_PERIOD_S, STARTUP_FAILURES = 5, 48
LIVENESS_PERIOD_S, LIVENESS_FAILURES = 10, 3
PROBE_TIMEOUT_S = 3
REQUEST_TIMEOUT_S = 60  # far above a request's wait at the queue bound (a few seconds)


class RenderError(ValueError):
    """The configuration cannot run on Cloud Run as asked; the message says why."""


def _placeholder(name: str) -> str:
    return "${" + name + "}"


def _secret_env(secrets: dict[str, str]) -> list[dict[str, Any]]:
    """ENV=SECRET[:VERSION] → env entries read from Secret Manager when an instance starts."""
    out = []
    for env, ref in sorted(secrets.items()):
        secret, _, version = ref.partition(":")
        out.append({"name": env, "value_source": {"secret_key_ref": {"secret": secret,
                                                                     "version": version or "latest"}}})
    return out


def concurrency(cfg: Any) -> int:
    """Requests Cloud Run may send one instance at once.

    Each worker admits serve.max_queued_texts texts and answers more with a 503. Cloud Run sends no
    more one-text requests than that bound holds, so the limit that bites first is Cloud Run's own
    (it queues briefly or starts an instance) rather than a refusal. At least serve.max_batch_size,
    or single-text requests could never fill a forward pass."""
    s = cfg.serve
    wanted = s.max_queued_texts * s.workers
    if wanted < s.max_batch_size:
        raise RenderError(f"serve.max_queued_texts × serve.workers ({wanted}) is below serve.max_batch_size "
                          f"({s.max_batch_size}): a forward pass could never fill")
    return min(wanted, MAX_CONCURRENCY)


def check(cfg: Any) -> None:
    """What Cloud Run itself imposes on the configuration."""
    budget = cfg.serve.shutdown_budget_s
    if not 0 < budget < CLOUD_RUN_KILL_S:
        raise RenderError(f"serve.shutdown_budget_s is {budget}: Cloud Run kills an instance "
                          f"{CLOUD_RUN_KILL_S:.0f} s after SIGTERM, so the drain must end before that")


def cpu_always_allocated(prediction_log: str) -> bool:
    """An object-store log is flushed by a background thread every few seconds: with CPU only
    during requests (Cloud Run's request-based billing) that flush starves between requests."""
    return "://" in prediction_log and not prediction_log.startswith("file://")


def service(cfg: Any, opts: argparse.Namespace) -> dict[str, Any]:
    """The `sent serve` service as a run_v2.Service dict."""
    check(cfg)
    log = opts.prediction_log or cfg.paths.prediction_log
    probe = {"timeout_seconds": PROBE_TIMEOUT_S}
    args = ["--set", f"paths.prediction_log={log}", *(a for s in opts.set or [] for a in ("--set", s))]
    if opts.profile:
        args = ["--profile", opts.profile, *args]
    return {
        "description": "sent serve: the sentiment classifier behind /predict (rendered by "
                       "containers/cloudrun/render.py)",
        "ingress": "INGRESS_TRAFFIC_ALL",
        "invoker_iam_disabled": False,  # callers need roles/run.invoker (an identity token)
        "template": {
            "service_account": opts.serve_service_account,
            "execution_environment": "EXECUTION_ENVIRONMENT_GEN2",
            "scaling": {"min_instance_count": opts.min_instances, "max_instance_count": opts.max_instances},
            "max_instance_request_concurrency": concurrency(cfg),
            "timeout": f"{REQUEST_TIMEOUT_S}s",
            "containers": [{
                "name": "sent-serve",
                "image": opts.serve_image,
                "args": args,
                "ports": [{"name": "http1", "container_port": PORT}],
                "env": [{"name": "MLFLOW_TRACKING_URI", "value": opts.tracking_uri},
                        *_secret_env(opts.secrets)],
                "resources": {
                    "limits": {"cpu": opts.cpu, "memory": opts.memory},
                    "cpu_idle": not cpu_always_allocated(log),
                    "startup_cpu_boost": True,  # the model loads and warms up faster
                },
                "startup_probe": {**probe, "http_get": {"path": STARTUP_PATH, "port": PORT},
                                  "period_seconds": STARTUP_PERIOD_S, "failure_threshold": STARTUP_FAILURES},
                "liveness_probe": {**probe, "http_get": {"path": LIVENESS_PATH, "port": PORT},
                                   "period_seconds": LIVENESS_PERIOD_S, "failure_threshold": LIVENESS_FAILURES},
            }],
        },
    }


MOUNT = "/mnt/sent"  # the artifact bucket: eval's reference in, drift's report out, its ONNX cache
RENAME_DIR_LIMIT = 100  # files in a folder the mounted bucket may rename (an ONNX export holds a few)


def drift_job(cfg: Any, opts: argparse.Namespace) -> dict[str, Any]:
    """`sent drift --fail-on-drift` as a run_v2.Job dict: a failed execution is the alert."""
    log = opts.prediction_log or cfg.paths.prediction_log
    args = ["--current", log, "--fail-on-drift", "--output-dir", f"{MOUNT}/reports/drift",
            "--set", f"paths.metrics_dir={MOUNT}/metrics",
            # the ONNX encoder export (~20 s) kept on the bucket: each execution starts a fresh container
            "--set", f"paths.onnx_cache={MOUNT}/onnx-cache",
            *(a for s in opts.set or [] for a in ("--set", s))]
    if opts.profile:
        args = ["--profile", opts.profile, *args]
    return {
        "labels": {"app": "sent", "component": "drift"},
        "template": {
            "task_count": 1,
            "template": {
                "service_account": opts.drift_service_account,
                "execution_environment": "EXECUTION_ENVIRONMENT_GEN2",  # Cloud Storage volumes
                # exit 4 (drift) or 5 (too little traffic) is a verdict, not a flake: never rerun
                "max_retries": 0,
                "timeout": f"{opts.drift_timeout_s}s",
                "containers": [{
                    "name": "sent-drift",
                    "image": opts.drift_image,
                    "args": args,
                    "env": [{"name": "MLFLOW_TRACKING_URI", "value": opts.tracking_uri},
                            *_secret_env(opts.secrets)],
                    "resources": {"limits": {"cpu": opts.cpu, "memory": opts.memory}},
                    "volume_mounts": [{"name": "artifacts", "mount_path": MOUNT}],
                }],
                # the ONNX cache swaps a finished export folder in by renaming it, which Cloud
                # Storage FUSE does on a bucket without hierarchical namespace only up to this many files
                "volumes": [{"name": "artifacts", "gcs": {"bucket": opts.artifact_bucket, "read_only": False,
                                                          "mount_options": [f"rename-dir-limit={RENAME_DIR_LIMIT}"]}}],
            },
        },
    }


def drift_schedule(cfg: Any, opts: argparse.Namespace) -> dict[str, Any]:
    """The Cloud Scheduler job (scheduler_v1.Job dict) that runs the drift job on a cron."""
    run_url = (f"https://run.googleapis.com/v2/projects/{opts.project}/locations/{opts.region}"
               f"/jobs/{opts.drift_job}:run")
    return {
        "description": f"sent drift over the last {cfg.drift.window} predictions",
        "schedule": opts.schedule,
        "time_zone": opts.time_zone,
        "attempt_deadline": "180s",  # the :run call returns at once; the execution runs on
        "http_target": {
            "uri": run_url,
            "http_method": "POST",
            "oauth_token": {"service_account_email": opts.scheduler_service_account,
                            "scope": "https://www.googleapis.com/auth/cloud-platform"},
        },
    }


def _camel(value: Any) -> Any:
    """snake_case field names → the lowerCamelCase of the REST form (map keys here have no "_")."""
    if isinstance(value, dict):
        return {k.split("_")[0] + "".join(w.title() for w in k.split("_")[1:]): _camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def validated(kind: str, data: dict[str, Any]) -> str:
    """The REST JSON of `data`, after building it as its API message both ways: from the dict
    and from the JSON text (an unknown field, a wrong type or enum value raises).

    Written from the dict, not from the message: the message's JSON drops a `false` it holds
    (cpu_idle has no field presence), and what is meant should be what the file says."""
    from google.cloud import run_v2, scheduler_v1

    message = {"service": run_v2.Service, "job": run_v2.Job, "schedule": scheduler_v1.Job}[kind]
    message(data)
    text = json.dumps(_camel(data), indent=2) + "\n"
    message.from_json(text)
    return text


def render(cfg: Any, opts: argparse.Namespace) -> dict[str, str]:
    """File name → contents."""
    return {SERVICE_FILE: validated("service", service(cfg, opts)),
            JOB_FILE: validated("job", drift_job(cfg, opts)),
            SCHEDULE_FILE: validated("schedule", drift_schedule(cfg, opts))}


def _secret(item: str) -> tuple[str, str]:
    env, sep, ref = item.partition("=")
    if not sep or not env or not ref:
        raise argparse.ArgumentTypeError(f"--secret {item!r}: expected ENV=SECRET[:VERSION]")
    return env, ref


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add, ph = p.add_argument, _placeholder
    add("--profile", default=None, help="sent profile the resources run with (default: none, params.yaml)")
    add("--set", action="append", metavar="KEY=VALUE", help="sent configuration override, repeatable")
    add("--out", type=Path, default=HERE, help="folder to write (default: beside this script)")
    add("--check", action="store_true", help="compare with the files in --out instead of writing")
    add("--project", default=ph("PROJECT_ID"))
    add("--region", default=ph("REGION"))
    add("--serve-image", default=ph("SERVE_IMAGE"), help="sent-serve image, by digest (IMAGE@sha256:...)")
    add("--drift-image", default=ph("DRIFT_IMAGE"), help="sent-drift image, by digest")
    add("--serve-service-account", default=ph("SERVE_SERVICE_ACCOUNT"))
    add("--drift-service-account", default=ph("DRIFT_SERVICE_ACCOUNT"))
    add("--scheduler-service-account", default=ph("SCHEDULER_SERVICE_ACCOUNT"),
        help="identity Cloud Scheduler calls the Run API as (roles/run.invoker on the drift job)")
    add("--tracking-uri", default=ph("MLFLOW_TRACKING_URI"))
    add("--prediction-log", default=f"gs://{ph('LOG_BUCKET')}/predictions",
        help="where serve writes and drift reads the prediction log")
    add("--artifact-bucket", default=ph("ARTIFACT_BUCKET"),
        help="bucket holding metrics/ (eval's reference) and receiving reports/drift")
    add("--secret", dest="secret_items", action="append", type=_secret, metavar="ENV=SECRET[:VERSION]",
        help="environment variable from Secret Manager, repeatable "
             "(default MLFLOW_TRACKING_TOKEN=mlflow-tracking-token:latest)")
    add("--min-instances", type=int, default=1, help="instances kept warm (a cold start loads the model)")
    add("--max-instances", type=int, default=10)
    add("--cpu", default="2")
    add("--memory", default="4Gi")
    add("--drift-job", default="sent-drift", help="name of the Cloud Run job the schedule runs")
    add("--drift-timeout-s", type=int, default=1800)
    add("--schedule", default="0 * * * *", help="cron, in --time-zone (default: hourly)")
    add("--time-zone", default="Etc/UTC")
    return p


def options(argv: list[str] | None = None) -> argparse.Namespace:
    opts = parser().parse_args(argv)
    opts.secrets = dict(opts.secret_items or [("MLFLOW_TRACKING_TOKEN", "mlflow-tracking-token:latest")])
    return opts


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from sentiment_cli import config

    opts = options(argv)
    try:
        cfg = config.load(opts.profile, opts.set, root=ROOT)
        files = render(cfg, opts)
    except (config.ConfigError, RenderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stale = [name for name, text in files.items()
             if not (opts.out / name).is_file() or (opts.out / name).read_text() != text]
    if opts.check:
        for name in stale:
            print(f"{opts.out / name} is stale: run python containers/cloudrun/render.py", file=sys.stderr)
        return 1 if stale else 0
    opts.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        tmp = opts.out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(opts.out / name)
        print(opts.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
