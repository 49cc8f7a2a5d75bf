"""Several training processes on this CPU (gloo), as several GPUs or machines would run them.

Slow tier. Each run is the tiny profile on a few thousand examples: two processes through
`accelerate launch`, two simulated machines (two launches on 127.0.0.1 with machine ranks 0 and 1
from a fake Vertex AI CLUSTER_SPEC), and a SIGTERM sent to a two-process launch. Each must end with
one model folder, one MLflow run written by the main process, validation metrics over the whole
split (gathered from every process), accuracy in line with one process at the same global batch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sentiment_cli import model
from sentiment_cli.servers import free_port

pytestmark = pytest.mark.slow

SETS = ["data.max_train_samples=3000", "train.epochs=2", "train.log_every_steps=10",
        "train.checkpoint_every_steps=20"]
GLOBAL_BATCH = 64
VAL_SIZE = 1066  # the Rotten Tomatoes validation split
ACCURACY_TOLERANCE = 0.05  # shards see the same data in another order: not bit-identical, close


def _args(per_process_batch: int) -> list[str]:
    return ["--profile", "tiny", *[a for s in [*SETS, f"train.batch_size={per_process_batch}"] for a in ("--set", s)]]


def _env(root: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLUSTER_SPEC", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                        "AIP_CHECKPOINT_DIR", "AIP_MODEL_DIR", "SENT_PROCESSES_PER_MACHINE")}
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", **extra}


def _start(argv: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _sent(*args: str) -> list[str]:
    return [sys.executable, "-m", "sentiment_cli.cli", *args]


def _workdir(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    done = subprocess.run(_sent("fetch", *_args(GLOBAL_BATCH)), cwd=d, env=_env(d), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return d


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _train_json(d: Path) -> dict:
    return json.loads((d / "metrics/train.json").read_text())


def _runs(d: Path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _check_one_writer(d: Path, out: str, processes: int) -> float:
    """One model folder, one MLflow run, lines printed once, metrics over the whole split."""
    assert [p.name for p in (d / "models").iterdir()] == ["candidate"]
    meta = model.read_meta(d / "models/candidate")
    assert meta["weights_sha256"] == model.weights_sha256(d / "models/candidate")
    runs = _runs(d)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    assert run.info.run_id == meta["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.params["world_size"] == str(processes)
    assert out.count("epoch 1: val_loss") == 1 and out.count("epoch 2: val_loss") == 1, out
    assert out.count("wrote models/candidate") == 1 and out.count("MLflow run ") == 1, out
    history = _train_json(d)["history"]
    assert [h["val_samples"] for h in history] == [VAL_SIZE, VAL_SIZE]  # gathered from every process, once
    assert "has no .safetensors" not in out and "Traceback" not in out
    return max(h["val_accuracy"] for h in history)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> float:
    """The baseline: one process at the same global batch."""
    d = _workdir(tmp_path_factory.mktemp("single"), "one")
    out = _finish(_start(_sent("train", *_args(GLOBAL_BATCH)), d, _env(d)))
    accuracy = _check_one_writer(d, out, processes=1)
    assert accuracy > 0.6, out  # it learned something, or the comparison below means nothing
    return accuracy


def test_two_processes_through_accelerate_launch(tmp_path, single):
    d = _workdir(tmp_path, "two")
    # --multi_gpu selects Accelerate's torchrun launcher; without CUDA the processes use gloo
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "sentiment_cli.cli", "train",
              *_args(GLOBAL_BATCH // 2)]
    out = _finish(_start(launch, d, _env(d)))
    accuracy = _check_one_writer(d, out, processes=2)
    print(f"best val_accuracy: 2 processes {accuracy:.4f}, 1 process {single:.4f}")
    assert abs(accuracy - single) <= ACCURACY_TOLERANCE, (accuracy, single)
    assert _train_json(d)["global_step"] == _steps_at(GLOBAL_BATCH)


def _steps_at(global_batch: int) -> int:
    return 2 * -(-3000 // global_batch)  # two epochs of ceil(3000 / batch) steps


def _cluster_spec(port: int, kind: str) -> str:
    return json.dumps({"cluster": {"workerpool0": [f"127.0.0.1:{port}"], "workerpool1": ["127.0.0.1:1"]},
                       "environment": "cloud", "task": {"type": kind, "index": 0}})


def test_two_machines_from_a_cluster_spec(tmp_path, single):
    """Two `sent train --launch auto`, as Vertex AI starts one per replica; 127.0.0.1 only."""
    d = _workdir(tmp_path, "nodes")
    port = free_port()
    procs = [_start(_sent("train", "--launch", "auto", *_args(GLOBAL_BATCH // 2)), d,
                    _env(d, CLUSTER_SPEC=_cluster_spec(port, kind)))
             for kind in ("workerpool0", "workerpool1")]
    outs = [_finish(p) for p in procs]
    accuracy = _check_one_writer(d, "".join(outs), processes=2)
    assert "wrote models/candidate" in outs[0]  # machine rank 0 holds the main process
    print(f"best val_accuracy: 2 machines {accuracy:.4f}, 1 process {single:.4f}")
    assert abs(accuracy - single) <= ACCURACY_TOLERANCE, (accuracy, single)


def test_sigterm_stops_every_process_at_one_step_and_the_restart_resumes(tmp_path):
    """Preempting a two-process launch: every process checkpoints at the same step and exits;
    the restarted job (AIP_CHECKPOINT_DIR set) resumes and ends with the uninterrupted run's weights."""
    dirs = {name: _workdir(tmp_path, name) for name in ("straight", "stopped")}
    args = ["train", "--launch", "auto", *_args(GLOBAL_BATCH // 2)]

    def env(d: Path) -> dict:
        return _env(d, SENT_PROCESSES_PER_MACHINE="2", AIP_CHECKPOINT_DIR=str(d / "ckpt"))

    straight = _start(_sent(*args), dirs["straight"], env(dirs["straight"]))
    d = dirs["stopped"]
    victim = _start(_sent(*args), d, env(d))
    lines = []
    for line in victim.stdout:
        lines.append(line)
        if line.startswith("step 30:"):
            victim.send_signal(signal.SIGTERM)  # to `sent`, the launcher's parent, as a container's PID 1 gets it
            break
    out = "".join(lines) + victim.stdout.read()
    assert victim.wait(120) != 0, out
    assert out.count("SIGTERM: checkpoint") == 1, out  # written once, by the main process
    stopped_at = int(re.search(r"SIGTERM: checkpoint \S+ written at step (\d+)", out).group(1))
    assert stopped_at in (30, 40), out  # an agreed step boundary: every log_every_steps with 2 processes
    states = [json.loads(p.read_text()) for p in sorted((d / "ckpt").glob("step-*/sent_state.json"))]
    assert states[-1]["global_step"] == stopped_at
    assert not (d / "models").exists()

    deadline = time.monotonic() + 600
    restarted = _start(_sent(*args), d, env(d))
    out = _finish(restarted, timeout=deadline - time.monotonic())
    assert "resuming from" in out
    _finish(straight)
    a = load_file(dirs["straight"] / "models/candidate/model.safetensors")
    b = load_file(d / "models/candidate/model.safetensors")
    for key in a:
        assert (a[key] == b[key]).all(), f"{key} differs after a two-process resume"
    assert len(_runs(d)) == 1
