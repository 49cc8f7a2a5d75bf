"""sent submit-vertex: the job built, validated offline, and the exact request sent (mocked).

No network and no credentials: google.auth.default is replaced by anonymous credentials and
JobServiceClient.create_custom_job / get_custom_job are patched, as the SDK's own tests do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from unittest import mock

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1
from typer.testing import CliRunner

from sentiment_cli import config, vertex
from sentiment_cli.cli import app

BASE = ["--set", "vertex.staging_bucket=gs://sent-staging", "--set",
        "vertex.image_uri=us-central1-docker.pkg.dev/p/sent/sent-train@sha256:" + "a" * 64]
JOB_NAME = "projects/my-project/locations/europe-west4/customJobs/1234567890"
NOW = datetime(2026, 12, 1, 9, 30, 0, tzinfo=UTC)


def _sets(*items: str) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def _invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, ["submit-vertex", *args], env=env)


@pytest.fixture
def no_mlflow_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "GOOGLE_CLOUD_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def adc(monkeypatch):
    """Application Default Credentials, anonymous: no file, no metadata server, no network."""
    calls = []

    def default(scopes=None, **kwargs):
        calls.append(scopes)
        return AnonymousCredentials(), "adc-project"

    monkeypatch.setattr("google.auth.default", default)
    return calls


def test_dry_run_prints_only_the_job_and_it_parses_as_a_custom_job(tmp_path, no_mlflow_env):
    """stdout is the JSON alone (a real process: nothing else may reach stdout)."""
    args = [*BASE, *_sets("vertex.replica_count=3", "vertex.accelerator_type=NVIDIA_H100_80GB",
                          "vertex.accelerator_count=8", "vertex.machine_type=a3-highgpu-8g",
                          "vertex.scheduling=SPOT", "vertex.base_output_dir=gs://out/run1",
                          "train.lr=3e-5", "train.epochs=4")]
    done = subprocess.run([sys.executable, "-m", "sentiment_cli.cli", "submit-vertex", "--profile", "vertex",
                           *args, "--dry-run"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    job = aiplatform_v1.CustomJob.from_json(done.stdout)  # raises on anything that is not a CustomJob
    spec = job.job_spec
    pools = spec.worker_pool_specs
    assert [p.replica_count for p in pools] == [1, 2]  # 1 chief in pool 0, the other 2 in pool 1
    for pool in pools:
        assert pool.machine_spec.machine_type == "a3-highgpu-8g"
        assert pool.machine_spec.accelerator_type == aiplatform_v1.AcceleratorType.NVIDIA_H100_80GB
        assert pool.machine_spec.accelerator_count == 8
        assert list(pool.container_spec.command) == ["sent", "train"]
        assert list(pool.container_spec.args) == ["--launch", "auto", "--profile", "vertex",
                                                  "--set", "train.lr=3e-5", "--set", "train.epochs=4"]
        assert pool.container_spec.image_uri.endswith("@sha256:" + "a" * 64)
    assert spec.scheduling.strategy == aiplatform_v1.Scheduling.Strategy.SPOT
    assert spec.scheduling.restart_job_on_worker_restart is True
    assert spec.scheduling.timeout.total_seconds() == 86400
    assert spec.base_output_directory.output_uri_prefix == "gs://out/run1"
    assert job.display_name == "sent-train"
    # no vertex.* key is forwarded to the job's train, and no environment: nothing to leak
    assert "vertex." not in done.stdout and "env" not in json.loads(done.stdout)["job_spec"]["worker_pool_specs"][0][
        "container_spec"]


def test_one_replica_is_one_pool_and_the_output_folder_is_always_set(no_mlflow_env):
    cfg = config.load("vertex", BASE[1::2])
    job, message = vertex.build(cfg, [], env={}, now=NOW)
    assert len(job["job_spec"]["worker_pool_specs"]) == 1
    assert job["job_spec"]["base_output_directory"] == {
        "output_uri_prefix": "gs://sent-staging/sent-jobs/sent-train-20261201-093000"}
    assert message.job_spec.scheduling.strategy == aiplatform_v1.Scheduling.Strategy.STANDARD
    assert "max_wait_duration" not in job["job_spec"]["scheduling"]
    assert cfg.vertex.profile == "vertex"  # the job trains with the vertex profile unless told otherwise


def test_flex_start_waits_and_cpu_only_jobs_have_no_accelerator(no_mlflow_env):
    cfg = config.load(None, [*BASE[1::2], "vertex.scheduling=FLEX_START", "vertex.max_wait_s=7200",
                             "vertex.accelerator_type=null", "vertex.accelerator_count=0",
                             "vertex.machine_type=n2-standard-8", "vertex.service_account=sa@p.iam.gserviceaccount.com",
                             "vertex.network=projects/12/global/networks/vpc", "vertex.labels.team=ml"])
    job, message = vertex.build(cfg, [], env={}, now=NOW)
    assert job["job_spec"]["scheduling"]["max_wait_duration"] == "7200s"
    assert message.job_spec.scheduling.max_wait_duration.total_seconds() == 7200
    assert job["job_spec"]["worker_pool_specs"][0]["machine_spec"] == {"machine_type": "n2-standard-8"}
    assert message.job_spec.service_account == "sa@p.iam.gserviceaccount.com"
    assert message.job_spec.network == "projects/12/global/networks/vpc"
    assert dict(message.labels) == {"team": "ml"}


@pytest.mark.parametrize(("sets", "expected"), [
    (["vertex.accelerator_type=NVIDIA_TESLA_Z9"], "not a Vertex AI value: 'NVIDIA_TESLA_Z9'"),
    (["vertex.accelerator_type=NVIDIA_TESLA_V100"], "cannot run the image's torch cu130 build"),
    (["vertex.accelerator_type=NVIDIA_TESLA_K80"], "compute capability 3.7"),
    (["vertex.accelerator_type=NVIDIA_TESLA_P4"], "cannot run"),
    (["vertex.accelerator_type=NVIDIA_TESLA_P100"], "cannot run"),
    (["vertex.accelerator_type=TPU_V3"], "not TPUs"),
    (["vertex.scheduling=CHEAP"], "vertex.scheduling must be one of"),
    (["vertex.max_wait_s=60"], "only with vertex.scheduling FLEX_START"),
    (["vertex.scheduling=FLEX_START", "vertex.timeout_s=864000"], "at most 7 days"),
    (["vertex.replica_count=0"], "vertex.replica_count must be at least 1"),
    (["train.no_such_key=1"], "no_such_key"),
    (["vertex.image_uri=null"], "set vertex.image_uri"),
    (["vertex.staging_bucket=null"], "set vertex.staging_bucket"),
    (["vertex.secrets.TOKEN=hunter2"], "vertex.secrets maps ENV_NAME"),
])
def test_a_job_vertex_cannot_run_is_a_one_line_usage_error(sets, expected, no_mlflow_env):
    result = _invoke("--profile", "vertex", *BASE, *_sets(*sets), "--dry-run")
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_v100_is_fine_for_a_cuda_12_6_image(no_mlflow_env):
    result = _invoke(*BASE, *_sets("vertex.accelerator_type=NVIDIA_TESLA_V100", "vertex.image_cuda=cu126"),
                     "--dry-run")
    assert result.exit_code == 0, result.output


def test_unknown_fields_and_wrong_types_are_refused_by_the_message():
    with pytest.raises(vertex.JobSpecError, match="Unknown field"):
        vertex.validate({"display_name": "x", "job_spec": {"worker_pool_specs": [{"bogus": 1}]}})
    with pytest.raises(vertex.JobSpecError):
        vertex.validate({"display_name": "x", "job_spec": {"scheduling": {"strategy": "CHEAPEST"}}})


def test_the_tracking_uri_goes_to_the_job_but_never_a_password(no_mlflow_env):
    cfg = config.load(None, BASE[1::2])
    job, _ = vertex.build(cfg, [], env={"MLFLOW_TRACKING_URI": "https://mlflow.example.com"}, now=NOW)
    env = job["job_spec"]["worker_pool_specs"][0]["container_spec"]["env"]
    assert env == [{"name": "MLFLOW_TRACKING_URI", "value": "https://mlflow.example.com"}]
    job, _ = vertex.build(cfg, [], env={"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}, now=NOW)
    assert "env" not in job["job_spec"]["worker_pool_specs"][0]["container_spec"]  # a local store: not reachable
    result = _invoke(*BASE, "--dry-run", env={"MLFLOW_TRACKING_URI": "https://bob:s3cr3t-pw@mlflow.example.com"})
    assert result.exit_code == 2 and "carries a password" in result.stderr
    assert "s3cr3t-pw" not in result.output


def test_submit_sends_exactly_the_job_and_returns_at_once(adc, no_mlflow_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com")
    args = [*BASE, *_sets("vertex.project=my-project", "vertex.region=europe-west4",
                          "vertex.base_output_dir=gs://out/run2", "vertex.replica_count=2",
                          "vertex.secrets.MLFLOW_TRACKING_TOKEN=projects/my-project/secrets/mlflow/versions/3",
                          "train.epochs=2")]
    with mock.patch.object(aiplatform_v1.JobServiceClient, "create_custom_job",
                           return_value=aiplatform_v1.CustomJob(name=JOB_NAME)) as create, \
            mock.patch.object(aiplatform_v1.JobServiceClient, "get_custom_job") as get:
        result = _invoke("--profile", "vertex", *args)
    assert result.exit_code == 0, result.output
    container = {
        "image_uri": "us-central1-docker.pkg.dev/p/sent/sent-train@sha256:" + "a" * 64,
        "command": ["sent", "train"],
        "args": ["--launch", "auto", "--profile", "vertex", "--set", "train.epochs=2"],
        "env": [{"name": "MLFLOW_TRACKING_URI", "value": "https://mlflow.example.com"},
                {"name": "SENT_SECRETS",
                 "value": '{"MLFLOW_TRACKING_TOKEN": "projects/my-project/secrets/mlflow/versions/3"}'}],
    }
    machine = {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4", "accelerator_count": 1}
    expected = aiplatform_v1.CustomJob({
        "display_name": "sent-train",
        "job_spec": {
            "worker_pool_specs": [
                {"machine_spec": machine, "replica_count": 1, "container_spec": container},
                {"machine_spec": machine, "replica_count": 1, "container_spec": container},
            ],
            "scheduling": {"timeout": "86400s", "restart_job_on_worker_restart": True, "strategy": "STANDARD"},
            "base_output_directory": {"output_uri_prefix": "gs://out/run2"},
        },
    })
    create.assert_called_once_with(parent="projects/my-project/locations/europe-west4", custom_job=expected)
    get.assert_not_called()  # without --wait it returns at once
    assert adc == [vertex.SCOPES]
    lines = result.stdout.splitlines()
    assert lines[0] == JOB_NAME
    assert lines[1] == ("https://console.cloud.google.com/vertex-ai/locations/europe-west4/training/1234567890/cpu"
                        "?project=my-project")


def test_the_client_talks_to_the_regional_endpoint(adc, no_mlflow_env):
    c = vertex.client("asia-northeast1", AnonymousCredentials())
    assert c.api_endpoint == "asia-northeast1-aiplatform.googleapis.com"


def _state(name: str, message: str = "") -> aiplatform_v1.CustomJob:
    return aiplatform_v1.CustomJob(name=JOB_NAME, state=name, error={"message": message} if message else None)


@pytest.mark.parametrize(("states", "code", "expected"), [
    (["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"], 0, "JOB_STATE_SUCCEEDED"),
    (["JOB_STATE_RUNNING", ("JOB_STATE_FAILED", "The replica workerpool0-0 exited with a non-zero status of 1.")],
     1, "ended JOB_STATE_FAILED: The replica workerpool0-0 exited"),
    (["JOB_STATE_QUEUED", "JOB_STATE_CANCELLED"], 1, "ended JOB_STATE_CANCELLED"),
])
def test_wait_follows_the_job_to_its_end(states, code, expected, adc, no_mlflow_env, monkeypatch):
    monkeypatch.setattr(vertex.time, "sleep", lambda s: None)
    replies = [_state(*s) if isinstance(s, tuple) else _state(s) for s in states]
    with mock.patch.object(aiplatform_v1.JobServiceClient, "create_custom_job",
                           return_value=aiplatform_v1.CustomJob(name=JOB_NAME)), \
            mock.patch.object(aiplatform_v1.JobServiceClient, "get_custom_job", side_effect=replies) as get:
        result = _invoke(*BASE, "--set", "vertex.project=my-project", "--wait")
    assert result.exit_code == code, result.output
    assert expected in result.output
    assert get.call_count == len(states)
    assert get.call_args == mock.call(name=JOB_NAME)
    assert result.stdout.count("JOB_STATE_RUNNING") <= 1  # a state is printed when it changes


def test_missing_project_and_credentials_are_one_line_naming_what_to_set(no_mlflow_env, monkeypatch):
    result = _invoke(*BASE)
    assert result.exit_code == 1 and "set vertex.project (or GOOGLE_CLOUD_PROJECT)" in result.stderr
    from google.auth.exceptions import DefaultCredentialsError

    def no_credentials(**kwargs):
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr("google.auth.default", no_credentials)
    with mock.patch.object(aiplatform_v1.JobServiceClient, "create_custom_job") as create:
        result = _invoke(*BASE, env={"GOOGLE_CLOUD_PROJECT": "env-project"})
    assert result.exit_code == 1, result.output
    assert "gcloud auth application-default login" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    create.assert_not_called()


def test_a_refused_submission_is_one_line(adc, no_mlflow_env):
    from google.api_core.exceptions import PermissionDenied

    with mock.patch.object(aiplatform_v1.JobServiceClient, "create_custom_job",
                           side_effect=PermissionDenied("aiplatform.customJobs.create denied on project p")):
        result = _invoke(*BASE, "--set", "vertex.project=p")
    assert result.exit_code == 1
    assert "Vertex AI did not take the job: 403 aiplatform.customJobs.create denied" in result.stderr


def test_wait_and_dry_run_do_not_combine():
    result = _invoke(*BASE, "--dry-run", "--wait")
    assert result.exit_code == 2 and "--wait does nothing with --dry-run" in result.stderr


def test_help_explains_every_option():
    result = CliRunner().invoke(app, ["submit-vertex", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in ("--dry-run", "--wait", "--profile", "--set", "vertex.replica_count", "SPOT", "FLEX_START",
                 "Application Default Credentials", "vertex.secrets"):
        assert text in result.output, text


# ------------------------------------------------------------------------------------ secrets

SENTINELS = {"MLFLOW_TRACKING_TOKEN": "sentinel-token-8c1f2a", "MLFLOW_TRACKING_PASSWORD": "sentinel-pw-77d0e3",
             "GOOGLE_API_KEY": "sentinel-apikey-49be10"}


def _no_sentinel(where: str, text: str) -> None:
    for value in SENTINELS.values():
        assert value not in text, f"a secret value reached {where}"


def test_secret_values_reach_no_spec_no_output(adc, no_mlflow_env, monkeypatch):
    """Sentinel secrets in the submitter's environment: neither the dry run, nor the submitted
    request, nor anything printed carries them; only the Secret Manager names travel."""
    for name, value in SENTINELS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com")
    secrets = _sets(*(f"vertex.secrets.{name}=projects/p/secrets/{name.lower().replace('_', '-')}/versions/1"
                      for name in SENTINELS))
    dry = _invoke(*BASE, *secrets, "--dry-run")
    assert dry.exit_code == 0, dry.output
    _no_sentinel("the dry-run output", dry.output)
    assert "projects/p/secrets/mlflow-tracking-token/versions/1" in dry.stdout
    with mock.patch.object(aiplatform_v1.JobServiceClient, "create_custom_job",
                           return_value=aiplatform_v1.CustomJob(name=JOB_NAME)) as create:
        sent = _invoke(*BASE, *secrets, "--set", "vertex.project=p")
    assert sent.exit_code == 0, sent.output
    _no_sentinel("the submission output", sent.output)
    _no_sentinel("the submitted request", str(create.call_args) + aiplatform_v1.CustomJob.to_json(
        create.call_args.kwargs["custom_job"]))


def test_secret_values_reach_no_output_of_training_in_the_job(workdir, monkeypatch):
    """Inside the container: secrets named by SENT_SECRETS are read into the environment at start;
    training then prints, tracks and writes nothing that holds their values."""
    from conftest import FAST

    from sentiment_cli import launch, model

    sets = _sets(*FAST, "train.max_steps=4")
    assert CliRunner().invoke(app, ["fetch", "--profile", "tiny", *sets]).exit_code == 0
    names = {name: f"projects/p/secrets/{name.lower().replace('_', '-')}/versions/1" for name in SENTINELS}
    for name in SENTINELS:
        monkeypatch.setenv(name, "")  # unset for resolve_secrets; monkeypatch restores it afterwards
    monkeypatch.setenv("SENT_SECRETS", json.dumps(names))
    asked = []
    by_version = {v: SENTINELS[k] for k, v in names.items()}
    monkeypatch.setattr(launch, "_access_secret", lambda version: asked.append(version) or by_version[version])
    result = CliRunner().invoke(app, ["train", "--profile", "tiny", *sets])
    assert result.exit_code == 0, result.output
    assert sorted(asked) == sorted(names.values())
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == SENTINELS["MLFLOW_TRACKING_TOKEN"]  # the job has them
    _no_sentinel("train's stdout", result.stdout)
    _no_sentinel("train's stderr", result.stderr)
    meta = model.read_meta(workdir / "models/candidate")
    _no_sentinel("sent.json", (workdir / "models/candidate/sent.json").read_text())
    _no_sentinel("train.json", (workdir / "metrics/train.json").read_text())
    for state in workdir.glob("checkpoints/step-*/sent_state.json"):
        _no_sentinel(str(state), state.read_text())
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}").get_run(meta["mlflow_run_id"])
    _no_sentinel("MLflow params", json.dumps(run.data.params))
    _no_sentinel("MLflow tags", json.dumps(run.data.tags))
    assert run.data.params["world_size"] == "1"
