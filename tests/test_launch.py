"""launch.py: the launch derived from GPUs and Vertex AI's cluster description, the AIP_* folders,
secrets read inside the container. Fake CLUSTER_SPECs; nothing is started except in the last tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from sentiment_cli import config, launch
from sentiment_cli.cli import app


def _spec(chiefs, workers, kind="workerpool0", index=0, extra=None) -> str:
    cluster = {"workerpool0": chiefs, "workerpool1": workers, **(extra or {})}
    return json.dumps({"cluster": cluster, "environment": "cloud", "task": {"type": kind, "index": index}})


THREE = (["cmle-training-workerpool0-ab12-0:2222"],
         ["cmle-training-workerpool1-ab12-0:2222", "cmle-training-workerpool1-ab12-1:2222"])


@pytest.mark.parametrize(("kind", "index", "rank"), [("workerpool0", 0, 0), ("workerpool1", 0, 1),
                                                     ("workerpool1", 1, 2)])
def test_cluster_spec_gives_machine_ranks_chief_first(kind, index, rank):
    cluster = launch.cluster_from_env({"CLUSTER_SPEC": _spec(*THREE, kind=kind, index=index)})
    assert cluster == launch.Cluster(num_machines=3, machine_rank=rank,
                                     main_ip="cmle-training-workerpool0-ab12-0", main_port=2222)


def test_reduction_servers_and_evaluators_are_not_machines_of_the_launch():
    spec = _spec(*THREE, extra={"workerpool2": ["reducer-0:2222"], "workerpool3": ["eval-0:2222"]})
    assert launch.cluster_from_env({"CLUSTER_SPEC": spec}).num_machines == 3
    with pytest.raises(launch.LaunchError, match="does not train"):
        launch.cluster_from_env({"CLUSTER_SPEC": _spec(*THREE, extra={"workerpool2": ["r:1"]},
                                                       kind="workerpool2")})


def test_one_replica_is_no_cluster():
    assert launch.cluster_from_env({"CLUSTER_SPEC": _spec(["chief:2222"], [])}) is None
    assert launch.cluster_from_env({}) is None


def test_master_addr_rank_world_size_when_there_is_no_cluster_spec():
    env = {"MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "23456", "RANK": "1", "WORLD_SIZE": "2"}
    assert launch.cluster_from_env(env) == launch.Cluster(2, 1, "10.0.0.2", 23456)
    # CLUSTER_SPEC, when both are there, decides
    assert launch.cluster_from_env({**env, "CLUSTER_SPEC": _spec(*THREE, kind="workerpool1", index=1)}
                                   ).machine_rank == 2
    assert launch.cluster_from_env({**env, "WORLD_SIZE": "1", "RANK": "0"}) is None


@pytest.mark.parametrize("env", [
    {"CLUSTER_SPEC": "not json"},
    {"CLUSTER_SPEC": json.dumps({"cluster": {}})},
    {"CLUSTER_SPEC": _spec([], ["w:1"])},
    {"CLUSTER_SPEC": _spec(["chief-without-port"], ["w:1"])},
    {"CLUSTER_SPEC": _spec(["c:1"], ["w:1"], kind="workerpool1", index=5)},
    {"MASTER_ADDR": "h", "WORLD_SIZE": "two"},
    {"MASTER_ADDR": "h", "WORLD_SIZE": "2", "RANK": "2"},
    {"SENT_PROCESSES_PER_MACHINE": "0"},
])
def test_a_cluster_that_cannot_be_launched_is_a_usage_error(env):
    with pytest.raises(launch.LaunchError):
        launch.plan(env, gpus=1, train_args=[])


def _after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_one_gpu_or_none_runs_in_place():
    assert launch.plan({}, gpus=1, train_args=["--profile", "gpu"]) is None
    assert launch.plan({}, gpus=0, train_args=[]) is None


def test_local_gpus_become_processes():
    argv = launch.plan({}, gpus=4, train_args=["--profile", "gpu", "--set", "train.lr=1e-4"])
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in argv and _after(argv, "--num_processes") == "4" and _after(argv, "--num_machines") == "1"
    assert "--machine_rank" not in argv and _after(argv, "--main_process_port") == "0"  # any free port
    assert argv[argv.index("-m", 3):] == ["-m", "sentiment_cli.cli", "train", "--profile", "gpu",
                                          "--set", "train.lr=1e-4"]


def test_replicas_become_a_multi_node_launch_with_a_rendezvous_timeout():
    env = {"CLUSTER_SPEC": _spec(*THREE, kind="workerpool1", index=1)}
    argv = launch.plan(env, gpus=8, train_args=["--profile", "vertex"], rendezvous_timeout_s=600)
    assert _after(argv, "--num_processes") == "24"  # machines × GPUs
    assert _after(argv, "--num_machines") == "3"
    assert _after(argv, "--machine_rank") == "2"
    assert _after(argv, "--main_process_ip") == "cmle-training-workerpool0-ab12-0"
    assert _after(argv, "--main_process_port") == "2222"
    assert _after(argv, "--rdzv_conf") == "timeout=600"
    # one CPU-only replica each is still a launch (gloo), one process per machine
    assert _after(launch.plan(env, gpus=0, train_args=[]), "--num_processes") == "3"


def test_a_launched_process_is_never_launched_again():
    assert launch.plan({"LOCAL_RANK": "0", "CLUSTER_SPEC": _spec(*THREE)}, gpus=8, train_args=[]) is None


def test_processes_per_machine_override():
    argv = launch.plan({"SENT_PROCESSES_PER_MACHINE": "2"}, gpus=0, train_args=[])
    assert _after(argv, "--num_processes") == "2"


def test_the_argv_is_one_accelerate_accepts():
    from accelerate.commands.launch import launch_command_parser

    argv = launch.plan({"CLUSTER_SPEC": _spec(*THREE, kind="workerpool1", index=0)}, gpus=2,
                       train_args=["--profile", "vertex"])
    args = launch_command_parser().parse_args(argv[3:])
    assert (args.num_processes, args.num_machines, args.machine_rank) == (6, 3, 1)
    assert args.module and args.training_script == "sentiment_cli.cli"
    assert args.training_script_args == ["train", "--profile", "vertex"]


# ------------------------------------------------------------------------------------ outputs


def test_aip_folders_map_onto_paths_and_gs_becomes_the_fuse_path():
    env = {"AIP_MODEL_DIR": "gs://bucket/jobs/7/model/", "AIP_CHECKPOINT_DIR": "gs://bucket/jobs/7/checkpoints/",
           "AIP_TENSORBOARD_LOG_DIR": "gs://bucket/jobs/7/logs/"}
    assert launch.job_overrides(env) == ["paths.model_dir=/gcs/bucket/jobs/7/model/",
                                         "paths.checkpoint_dir=/gcs/bucket/jobs/7/checkpoints/",
                                         "paths.metrics_dir=/gcs/bucket/jobs/7/logs/"]
    cfg = config.load("vertex", [*launch.job_overrides(env), "paths.model_dir=/elsewhere"])
    assert cfg.paths.model_dir == "/elsewhere"  # an explicit --set wins
    assert cfg.paths.checkpoint_dir == "/gcs/bucket/jobs/7/checkpoints/"
    assert launch.job_overrides({}) == []


def test_object_storage_paths():
    assert launch.fuse_path("gs://b/x") == "/gcs/b/x" and launch.fuse_path("models/c") == "models/c"
    assert launch.on_object_storage("gs://b/x") and launch.on_object_storage("/gcs/b/x")
    assert not launch.on_object_storage("/gcsx/b") and not launch.on_object_storage("models/candidate")


def test_in_job():
    assert launch.in_job({"AIP_CHECKPOINT_DIR": "gs://b/c"}) and launch.in_job({"CLOUD_ML_JOB_ID": "12"})
    assert not launch.in_job({})


# ------------------------------------------------------------------------------------ secrets


def test_secrets_are_read_into_the_environment_and_an_existing_value_wins():
    env = {"SENT_SECRETS": json.dumps({"MLFLOW_TRACKING_TOKEN": "projects/p/secrets/t/versions/1",
                                       "HF_TOKEN": "projects/p/secrets/hf/versions/2"}),
           "HF_TOKEN": "already-here"}
    asked = []

    def access(version):
        asked.append(version)
        return "value-of-" + version.split("/")[3]

    assert launch.resolve_secrets(env, access) == ["MLFLOW_TRACKING_TOKEN"]
    assert env["MLFLOW_TRACKING_TOKEN"] == "value-of-t" and env["HF_TOKEN"] == "already-here"
    assert asked == ["projects/p/secrets/t/versions/1"]
    assert launch.resolve_secrets({}, access) == []


def test_a_bad_secrets_variable_is_an_error_without_values():
    with pytest.raises(launch.SecretError, match="JSON object"):
        launch.resolve_secrets({"SENT_SECRETS": "TOKEN=abc"})
    with pytest.raises(launch.SecretError):
        launch.resolve_secrets({"SENT_SECRETS": json.dumps(["x"])})


def test_secret_manager_is_asked_through_its_rest_api(monkeypatch):
    import base64

    from google.auth.credentials import AnonymousCredentials

    monkeypatch.setattr("google.auth.default", lambda scopes=None, **kw: (AnonymousCredentials(), "p"))
    seen = {}

    class Reply:
        def __init__(self, status, body):
            self.status_code, self._body = status, body

        def json(self):
            return self._body

    def get(self, url, timeout):
        seen["url"] = url
        if "missing" in url:
            return Reply(403, {})
        return Reply(200, {"payload": {"data": base64.b64encode(b"tok-123").decode()}})

    monkeypatch.setattr("google.auth.transport.requests.AuthorizedSession.get", get)
    assert launch._access_secret("projects/p/secrets/s/versions/4") == "tok-123"
    assert seen["url"] == "https://secretmanager.googleapis.com/v1/projects/p/secrets/s/versions/4:access"
    with pytest.raises(launch.SecretError, match="HTTP 403.*secretAccessor"):
        launch._access_secret("projects/p/secrets/missing/versions/1")


# ------------------------------------------------------------------------------------ the CLI


def test_train_launch_auto_starts_the_derived_launch(workdir, monkeypatch):
    started = []
    monkeypatch.setattr(launch, "run", lambda argv: started.append(argv) or 0)
    monkeypatch.setenv("SENT_PROCESSES_PER_MACHINE", "2")
    result = CliRunner().invoke(app, ["train", "--launch", "auto", "--profile", "tiny", "--set", "train.epochs=1",
                                      "--auto-resume"])
    assert result.exit_code == 0, result.output
    (argv,) = started
    assert _after(argv, "--num_processes") == "2"
    assert argv[argv.index("sentiment_cli.cli") + 1:] == ["train", "--profile", "tiny", "--set", "train.epochs=1",
                                                          "--auto-resume"]


def test_train_launch_must_be_none_or_auto(workdir):
    result = CliRunner().invoke(app, ["train", "--launch", "slurm"])
    assert result.exit_code == 2 and "--launch must be none or auto" in result.output


def test_the_launcher_passes_sigterm_on_and_returns_the_exit_status(tmp_path):
    ready = tmp_path / "ready"
    child = [sys.executable, "-c",
             "import signal, sys, time, pathlib; signal.signal(signal.SIGTERM, lambda *a: sys.exit(7)); "
             f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"]

    def preempt():
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)  # to us, the launcher: it must reach the child

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=preempt, daemon=True).start()
    started = time.monotonic()
    assert launch.run(child) == 7
    assert time.monotonic() - started < 30
    assert signal.getsignal(signal.SIGTERM) == before  # our handler is gone again


def test_an_incomplete_cluster_spec_fails_the_cli_in_one_line(workdir, monkeypatch):
    monkeypatch.setenv("CLUSTER_SPEC", "{broken")
    result = CliRunner().invoke(app, ["train", "--launch", "auto", "--profile", "tiny"])
    assert result.exit_code == 2 and "CLUSTER_SPEC" in result.output and "Traceback" not in result.output


def test_help_names_the_launch_options():
    done = subprocess.run([sys.executable, "-m", "sentiment_cli.cli", "train", "--help"], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"}, timeout=60)
    for text in ("--launch", "--auto-resume", "CLUSTER_SPEC", "--resume"):
        assert text in done.stdout, text


def test_a_machine_level_world_size_without_a_launch_is_a_clear_error(workdir, monkeypatch):
    """Vertex AI sets WORLD_SIZE to the number of machines: `sent train` alone must not train as
    if it were one process of several."""
    from conftest import FAST

    runner = CliRunner()
    sets = [a for s in FAST for a in ("--set", s)]
    assert runner.invoke(app, ["fetch", "--profile", "tiny", *sets]).exit_code == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["train", "--profile", "tiny", *sets])
    assert result.exit_code == 2, result.output
    assert "sent train --launch auto" in result.output and "Traceback" not in result.output
