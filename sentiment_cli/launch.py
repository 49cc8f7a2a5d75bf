"""Inside a training job: which `accelerate launch` to start, where Vertex AI wants the outputs,
and the secrets the job needs.

Nothing here schedules anything: it reads what the platform already decided (the local GPUs,
Vertex AI's `CLUSTER_SPEC`, or `MASTER_ADDR`/`MASTER_PORT`/`RANK`/`WORLD_SIZE`) and turns it into
the arguments of Accelerate's launcher, which starts torch.distributed (torchrun) underneath.

- `plan(env, gpus)`: the launch for this machine, or None when one process in place is right.
- `job_overrides(env)`: `--set` overrides mapping `AIP_MODEL_DIR`, `AIP_CHECKPOINT_DIR` and
  `AIP_TENSORBOARD_LOG_DIR` onto `paths.*` (gs:// becomes its Cloud Storage FUSE path /gcs/...).
- `resolve_secrets(env)`: `SENT_SECRETS` names Secret Manager versions; their values are put into
  this process's environment, never into a job spec, a log line or a tracked parameter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from sentiment_cli.errors import SentError, UsageError

# Vertex AI's trainer pools: 0 holds the chief, 1 the other workers. Pool 2 runs reduction servers
# and pool 3 evaluators: neither trains, so neither is a machine of the launch.
TRAINER_POOLS = ("workerpool0", "workerpool1")
DEFAULT_PORT = 29500
RENDEZVOUS_TIMEOUT_S = 900  # Vertex starts replicas minutes apart: the chief waits this long for the rest
SECRETS_ENV = "SENT_SECRETS"  # JSON {ENV_NAME: "projects/P/secrets/S/versions/V"}
PROCESSES_ENV = "SENT_PROCESSES_PER_MACHINE"  # override the local GPU count (e.g. CPU processes)
# Set by torchrun / accelerate in the processes they start: such a process is already launched.
LAUNCHED_MARKERS = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")


class LaunchError(UsageError):
    """The job's environment describes a cluster that cannot be launched."""


@dataclass(frozen=True)
class Cluster:
    """The machines of one job, as this machine sees them."""

    num_machines: int
    machine_rank: int
    main_ip: str
    main_port: int


def _split_host(address: str, where: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LaunchError(f"{where}: expected host:port, got {address!r}")
    return host, int(port)


def cluster_from_env(env: Mapping[str, str]) -> Cluster | None:
    """The cluster described by CLUSTER_SPEC (preferred) or MASTER_ADDR/RANK/WORLD_SIZE; None for one machine."""
    spec = env.get("CLUSTER_SPEC")
    if spec:
        return _from_cluster_spec(spec)
    if "MASTER_ADDR" in env and "WORLD_SIZE" in env:
        try:
            world, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", "0"))
            port = int(env.get("MASTER_PORT", DEFAULT_PORT))
        except ValueError:
            raise LaunchError("MASTER_PORT, RANK and WORLD_SIZE must be integers") from None
        if world <= 1:
            return None
        if not 0 <= rank < world:
            raise LaunchError(f"RANK {rank} is outside WORLD_SIZE {world}")
        return Cluster(world, rank, env["MASTER_ADDR"], port)
    return None


def _from_cluster_spec(text: str) -> Cluster | None:
    try:
        spec = json.loads(text)
        pools = spec["cluster"]
        task = spec["task"]
        kind, index = task["type"], int(task.get("index", 0))
    except (ValueError, KeyError, TypeError):
        raise LaunchError("CLUSTER_SPEC is not Vertex AI's JSON ({cluster: {...}, task: {type, index}})") from None
    chiefs, workers = list(pools.get("workerpool0") or []), list(pools.get("workerpool1") or [])
    if len(chiefs) != 1:
        raise LaunchError(f"CLUSTER_SPEC: workerpool0 must hold exactly one chief, it holds {len(chiefs)}")
    if kind not in TRAINER_POOLS:
        raise LaunchError(f"CLUSTER_SPEC: this replica is in {kind}, which does not train; "
                          "run `sent train` only in workerpool0 and workerpool1")
    machines = 1 + len(workers)
    if machines == 1:
        return None
    rank = 0 if kind == "workerpool0" else index + 1
    if not 0 <= rank < machines:
        raise LaunchError(f"CLUSTER_SPEC: task {kind}[{index}] is not in the cluster")
    host, port = _split_host(chiefs[0], "CLUSTER_SPEC workerpool0[0]")
    return Cluster(machines, rank, host, port)


def already_launched(env: Mapping[str, str]) -> bool:
    return any(k in env for k in LAUNCHED_MARKERS)


def processes_per_machine(env: Mapping[str, str], gpus: int) -> int:
    """SENT_PROCESSES_PER_MACHINE if set, else one per local GPU, else one."""
    raw = env.get(PROCESSES_ENV)
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise LaunchError(f"{PROCESSES_ENV} must be a positive integer, got {raw!r}")
        return int(raw)
    return max(gpus, 1)


def plan(env: Mapping[str, str], gpus: int, train_args: Sequence[str],
         rendezvous_timeout_s: int = RENDEZVOUS_TIMEOUT_S) -> list[str] | None:
    """The `accelerate launch` argv that runs `sent train TRAIN_ARGS` on this machine, or None
    when a single process in place is the right launch (or this process was launched already)."""
    if already_launched(env):
        return None
    cluster = cluster_from_env(env)
    per_machine = processes_per_machine(env, gpus)
    if cluster is None and per_machine == 1:
        return None
    machines = cluster.num_machines if cluster else 1
    argv = [sys.executable, "-m", "accelerate.commands.launch",
            # --multi_gpu selects Accelerate's torchrun launcher; without CUDA the processes use
            # gloo on the CPU (train.py asks Accelerate for the CPU then). `--cpu` would select the
            # MPI launcher instead, which starts one process when no mpirun hostfile is given.
            "--multi_gpu",
            "--num_processes", str(machines * per_machine),
            "--num_machines", str(machines),
            "--mixed_precision", "no",  # the Accelerator takes train.mixed_precision itself
            "--dynamo_backend", "no"]
    if not cluster:  # one machine: any free port, so that two launches on one host never collide
        argv += ["--main_process_port", "0"]
    else:
        argv += ["--machine_rank", str(cluster.machine_rank),
                 "--main_process_ip", cluster.main_ip,
                 "--main_process_port", str(cluster.main_port),
                 "--rdzv_conf", f"timeout={int(rendezvous_timeout_s)}"]
    return [*argv, "-m", "sentiment_cli.cli", "train", *train_args]


def run(argv: Sequence[str]) -> int:
    """Start the launcher and wait; SIGTERM and SIGINT are passed on, so that every training
    process checkpoints and exits (torchrun forwards them to its workers)."""
    child = subprocess.Popen(list(argv))

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ------------------------------------------------------------------------------- outputs on Vertex


def fuse_path(path: str) -> str:
    """gs://BUCKET/PATH → /gcs/BUCKET/PATH, where Vertex AI mounts Cloud Storage; others unchanged."""
    if path.startswith("gs://"):
        return "/gcs/" + path[len("gs://"):].lstrip("/")
    return path


def on_object_storage(path: str) -> bool:
    """A Cloud Storage FUSE path: renaming a folder there is not atomic (flat buckets)."""
    p = fuse_path(str(path))
    return p == "/gcs" or p.startswith("/gcs/")


AIP_PATHS = {  # what Vertex AI sets when the job has base_output_directory → the key it fills
    "AIP_MODEL_DIR": "paths.model_dir",
    "AIP_CHECKPOINT_DIR": "paths.checkpoint_dir",
    # sent tracks curves in MLflow, not TensorBoard; train.json lands in the job's log folder
    "AIP_TENSORBOARD_LOG_DIR": "paths.metrics_dir",
}


def job_overrides(env: Mapping[str, str]) -> list[str]:
    """`--set` items for the AIP_* folders Vertex AI set; explicit --set items given after them win."""
    return [f"{key}={fuse_path(env[name])}" for name, key in AIP_PATHS.items() if env.get(name)]


def in_job(env: Mapping[str, str]) -> bool:
    """Running as a Vertex AI job (or anything that sets its checkpoint folder): resume by itself."""
    return bool(env.get("AIP_CHECKPOINT_DIR")) or bool(env.get("CLOUD_ML_JOB_ID"))


# ------------------------------------------------------------------------------- secrets


class SecretError(SentError):
    """A secret the job names cannot be read; the message never holds a secret value."""


def secret_names(env: Mapping[str, str]) -> dict[str, str]:
    raw = env.get(SECRETS_ENV)
    if not raw:
        return {}
    try:
        names = json.loads(raw)
    except ValueError:
        raise SecretError(f"{SECRETS_ENV} must be a JSON object {{ENV_NAME: secret version}}") from None
    if not isinstance(names, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
        raise SecretError(f"{SECRETS_ENV} must be a JSON object {{ENV_NAME: secret version}}")
    return names


def _access_secret(version: str) -> str:
    """One Secret Manager version's payload, through its REST API with the job's credentials."""
    import base64

    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    response = AuthorizedSession(credentials).get(f"https://secretmanager.googleapis.com/v1/{version}:access",
                                                  timeout=30)
    if response.status_code != 200:
        raise SecretError(f"cannot read secret {version}: HTTP {response.status_code}; grant the job's "
                          "service account roles/secretmanager.secretAccessor on it")
    return base64.b64decode(response.json()["payload"]["data"]).decode()


def resolve_secrets(env: MutableMapping[str, str], access=None) -> list[str]:
    """Fill env with the secrets SENT_SECRETS names (a value already set wins); returns the names
    filled. Values are never printed, logged or returned."""
    access = access or _access_secret
    filled = []
    for name, version in secret_names(env).items():
        if env.get(name):
            continue
        env[name] = access(version)
        filled.append(name)
    return filled


def prepare_job(env: MutableMapping[str, str] | None = None) -> list[str]:
    """What `sent train` does first in a job: secrets into the environment, AIP_* paths as overrides."""
    env = os.environ if env is None else env
    resolve_secrets(env)
    return job_overrides(env)
