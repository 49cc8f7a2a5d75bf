"""sent submit-vertex: run `sent train` as a Vertex AI custom job.

Reads: the `vertex` section of the configuration, and the `--set` overrides it forwards to the
job's `sent train`. Writes nothing locally: prints the job as JSON (`--dry-run`), or submits it with
Application Default Credentials and prints its resource name and console link (`--wait` follows it
to the end).

The job is an `aiplatform_v1.CustomJob` built from a plain dict and validated by the SDK's own
message classes (an unknown field or enum value is a UsageError), offline. Secret values never
enter it: the container receives only the Secret Manager version names (`SENT_SECRETS`) and reads
them itself at start (launch.resolve_secrets).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sentiment_cli import config
from sentiment_cli.errors import SentError, UsageError, first_line

if TYPE_CHECKING:
    from sentiment_cli.config import Config

# Compute capability of each Vertex AI GPU (aiplatform_v1.AcceleratorType names).
GPU_CAPABILITY = {
    "NVIDIA_TESLA_K80": 3.7, "NVIDIA_TESLA_P100": 6.0, "NVIDIA_TESLA_P4": 6.1, "NVIDIA_TESLA_V100": 7.0,
    "NVIDIA_TESLA_T4": 7.5, "NVIDIA_TESLA_A100": 8.0, "NVIDIA_A100_80GB": 8.0, "NVIDIA_L4": 8.9,
    "NVIDIA_H100_80GB": 9.0, "NVIDIA_H100_MEGA_80GB": 9.0, "NVIDIA_H200_141GB": 9.0,
    "NVIDIA_B200": 10.0, "NVIDIA_GB200": 10.0, "NVIDIA_RTX_PRO_6000": 12.0,
}
# The oldest GPU each torch CUDA build runs on: torch's CUDA 12.8+ wheels dropped Maxwell, Pascal and
# Volta; its default PyPI wheel (torch 2.13) is CUDA 13, compute capability 7.5 and newer.
MIN_CAPABILITY = {"cu126": 5.0, "cu128": 7.5, "cu130": 7.5}
FAILED_STATES = {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED", "JOB_STATE_PARTIALLY_SUCCEEDED"}
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


class VertexError(SentError):
    """Vertex AI could not take or finish the job (exit 1)."""


class JobSpecError(UsageError):
    """The job as configured is not one Vertex AI can run (exit 2)."""


# ---------------------------------------------------------------------------------- the job


LOCAL_STORES = ("", "file", "sqlite")  # a store on the submitting machine: the job cannot reach it


def _tracking_uri(cfg: Config, env: Mapping[str, str]) -> str | None:
    """The job's MLFLOW_TRACKING_URI: vertex.tracking_uri, else the submitter's if it is a server."""
    uri = cfg.vertex.tracking_uri
    if not uri:
        uri = env.get("MLFLOW_TRACKING_URI")
        if uri and urlsplit(uri).scheme in LOCAL_STORES:
            uri = None
    if uri and urlsplit(uri).password:
        # the spec is readable by anyone who can list jobs, and printed by --dry-run
        raise JobSpecError("the MLflow tracking URI carries a password: remove it and name the secret in "
                           "vertex.secrets (MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN)")
    return uri


def output_dir(cfg: Config, now: datetime) -> str:
    v = cfg.vertex
    if v.base_output_dir:
        return v.base_output_dir.rstrip("/")
    if not v.staging_bucket:
        raise JobSpecError("set vertex.staging_bucket (gs://BUCKET) or vertex.base_output_dir: the job needs "
                           "somewhere to write its model and checkpoints")
    return f"{v.staging_bucket.rstrip('/')}/sent-jobs/{v.display_name}-{now.strftime('%Y%m%d-%H%M%S')}"


def train_args(cfg: Config, train_sets: Sequence[str]) -> list[str]:
    """What the container runs after `sent train`: the job's profile and the forwarded --set items."""
    return ["--launch", "auto", "--profile", cfg.vertex.profile, *[a for s in train_sets for a in ("--set", s)]]


def job_dict(cfg: Config, train_sets: Sequence[str], env: Mapping[str, str] | None = None,
             now: datetime | None = None) -> dict[str, Any]:
    """The CustomJob as the plain dict that aiplatform_v1.CustomJob(...) takes."""
    env = os.environ if env is None else env
    v = cfg.vertex
    if not v.image_uri:
        raise JobSpecError("set vertex.image_uri: the training image (containers/train.Dockerfile) in Artifact "
                           "Registry, e.g. REGION-docker.pkg.dev/PROJECT/sent/sent-train:TAG")
    machine: dict[str, Any] = {"machine_type": v.machine_type}
    if v.accelerator_type:
        machine |= {"accelerator_type": v.accelerator_type, "accelerator_count": v.accelerator_count}
    container_env = []
    uri = _tracking_uri(cfg, env)
    if uri:
        container_env.append({"name": "MLFLOW_TRACKING_URI", "value": uri})
    if v.secrets:
        container_env.append({"name": "SENT_SECRETS", "value": json.dumps(dict(v.secrets), sort_keys=True)})
    container = {"image_uri": v.image_uri, "command": ["sent", "train"], "args": train_args(cfg, train_sets)}
    if container_env:
        container["env"] = container_env
    chief = {"machine_spec": machine, "replica_count": 1, "container_spec": container}
    pools = [chief]
    if v.replica_count > 1:  # as the SDK's chief_worker_pool: 1 chief in pool 0, the rest in pool 1
        pools.append({**chief, "replica_count": v.replica_count - 1})
    scheduling: dict[str, Any] = {"timeout": f"{v.timeout_s}s",
                                  "restart_job_on_worker_restart": v.restart_on_worker_restart,
                                  "strategy": v.scheduling}
    if v.max_wait_s is not None:
        scheduling["max_wait_duration"] = f"{v.max_wait_s}s"
    spec: dict[str, Any] = {
        "worker_pool_specs": pools,
        "scheduling": scheduling,
        # always set: Vertex AI then gives the container AIP_MODEL_DIR, AIP_CHECKPOINT_DIR, ...
        "base_output_directory": {"output_uri_prefix": output_dir(cfg, now or datetime.now(UTC))},
    }
    if v.service_account:
        spec["service_account"] = v.service_account
    if v.network:
        spec["network"] = v.network
    job: dict[str, Any] = {"display_name": v.display_name, "job_spec": spec}
    if v.labels:
        job["labels"] = dict(v.labels)
    return job


def validate(job: dict[str, Any]):
    """The aiplatform_v1.CustomJob message for a job dict; anything it cannot run is a JobSpecError."""
    from google.cloud import aiplatform_v1

    try:
        message = aiplatform_v1.CustomJob(job)
    except KeyError as exc:  # proto-plus: an enum value that does not exist
        gpus = ", ".join(a.name for a in aiplatform_v1.AcceleratorType if a.name.startswith("NVIDIA_"))
        raise JobSpecError(f"not a Vertex AI value: {exc.args[0]!r} (accelerator types: {gpus})") from None
    except (ValueError, TypeError) as exc:
        raise JobSpecError(f"not a valid Vertex AI custom job: {first_line(exc)}") from None
    return message


def check_accelerator(cfg: Config) -> None:
    """Refuse a GPU the image's torch cannot run (it would fail only after the machine started)."""
    v = cfg.vertex
    if not v.accelerator_type:
        return
    if v.accelerator_type.startswith("TPU_"):
        raise JobSpecError(f"vertex.accelerator_type {v.accelerator_type}: the training image runs CUDA torch, "
                           "not TPUs; choose an NVIDIA GPU")
    capability, needed = GPU_CAPABILITY.get(v.accelerator_type), MIN_CAPABILITY[v.image_cuda]
    if capability is not None and capability < needed:
        raise JobSpecError(f"vertex.accelerator_type {v.accelerator_type} (compute capability {capability}) "
                           f"cannot run the image's torch {v.image_cuda} build (needs {needed} or newer): "
                           "choose NVIDIA_TESLA_T4, NVIDIA_L4, NVIDIA_TESLA_A100 or newer, or build the image "
                           "with --build-arg TORCH_CUDA=cu126 and set vertex.image_cuda=cu126")


def check_train_sets(cfg: Config, train_sets: Sequence[str]) -> None:
    """The job's `sent train` loads vertex.profile with these overrides: catch a bad key here, not
    after a GPU machine has started."""
    config.load(cfg.vertex.profile, list(train_sets))


def build(cfg: Config, train_sets: Sequence[str], env: Mapping[str, str] | None = None,
          now: datetime | None = None) -> tuple[dict[str, Any], Any]:
    """The job dict and its validated aiplatform_v1.CustomJob message."""
    check_train_sets(cfg, train_sets)
    job = job_dict(cfg, train_sets, env, now)
    message = validate(job)
    check_accelerator(cfg)
    return job, message


# ---------------------------------------------------------------------------------- submitting


def _project(cfg: Config, env: Mapping[str, str]) -> str:
    project = cfg.vertex.project or env.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise VertexError("set vertex.project (or GOOGLE_CLOUD_PROJECT): the Google Cloud project to run the job in")
    return project


def _credentials():
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError:
        raise VertexError("no Google Cloud credentials: run `gcloud auth application-default login`, or set "
                          "GOOGLE_APPLICATION_CREDENTIALS (in CI: google-github-actions/auth)") from None
    return credentials


def client(region: str, credentials):
    from google.cloud import aiplatform_v1

    return aiplatform_v1.JobServiceClient(credentials=credentials,
                                          client_options={"api_endpoint": f"{region}-aiplatform.googleapis.com"})


def console_url(name: str) -> str:
    """https://console.cloud.google.com/... for projects/P/locations/R/customJobs/ID."""
    parts = name.split("/")
    project, region, job_id = parts[1], parts[3], parts[5]
    return (f"https://console.cloud.google.com/vertex-ai/locations/{region}/training/{job_id}/cpu"
            f"?project={project}")


def _api_errors() -> tuple[type[BaseException], ...]:
    from google.api_core.exceptions import GoogleAPIError

    return (GoogleAPIError,)


def follow(jobs, name: str, poll_s: float = 30.0, echo=print) -> str:
    """Poll the job until it ends; returns its final state, raises VertexError unless it succeeded."""
    last = None
    while True:
        try:
            job = jobs.get_custom_job(name=name)
        except _api_errors() as exc:
            raise VertexError(f"cannot read {name}: {first_line(exc)}") from None
        state = job.state.name
        if state != last:
            echo(f"{datetime.now(UTC):%H:%M:%S} {state}")
            last = state
        if state == "JOB_STATE_SUCCEEDED":
            return state
        if state in FAILED_STATES:
            lines = job.error.message.strip().splitlines()
            why = f": {lines[0]}" if lines else ""
            raise VertexError(f"job {name} ended {state}{why}")
        time.sleep(poll_s)


def run(cfg: Config, train_sets: Sequence[str] = (), dry_run: bool = False, wait: bool = False,
        env: Mapping[str, str] | None = None, poll_s: float = 30.0) -> str:
    """Dry run: print the job JSON (only that, on stdout). Otherwise submit it; returns the job's
    resource name (and, with wait, only once it succeeded)."""
    env = os.environ if env is None else env
    job, message = build(cfg, train_sets, env)
    if dry_run:
        print(json.dumps(job, indent=2))
        return ""
    project = _project(cfg, env)
    jobs = client(cfg.vertex.region, _credentials())
    if not _tracking_uri(cfg, env):
        print("note: the job has no MLflow tracking server (set MLFLOW_TRACKING_URI to one, or "
              "vertex.tracking_uri); the model still lands in the job's output folder", file=sys.stderr)
    try:
        created = jobs.create_custom_job(parent=f"projects/{project}/locations/{cfg.vertex.region}",
                                         custom_job=message)
    except _api_errors() as exc:
        raise VertexError(f"Vertex AI did not take the job: {first_line(exc)}") from None
    print(created.name)
    print(console_url(created.name))
    print(f"outputs: {job['job_spec']['base_output_directory']['output_uri_prefix']}")
    if wait:
        follow(jobs, created.name, poll_s)
    return created.name
