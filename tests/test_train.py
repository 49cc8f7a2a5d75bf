import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAST
from safetensors.torch import load_file
from typer.testing import CliRunner

from sentiment_cli import config, model
from sentiment_cli.cli import app


def _mlflow_client(root: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def test_pipeline_writes_a_self_describing_model(pipeline):
    folder = pipeline / "models" / "candidate"
    meta = model.read_meta(folder)
    assert meta["labels"] == ["neg", "pos"]
    assert meta["config"]["model"]["name"] == "scratch"
    assert meta["data_sha256"] == json.loads((pipeline / "data/processed/meta.json").read_text())["sha256"]
    assert meta["weights_sha256"] == model.weights_sha256(folder)
    assert 0.0 <= meta["metrics"]["val_accuracy"] <= 1.0
    train = json.loads((pipeline / "metrics" / "train.json").read_text())
    assert json.loads((pipeline / "metrics" / "train.info.json").read_text())["mlflow_run_id"] == meta["mlflow_run_id"]
    assert train["train_samples_per_second"] > 0 and train["epochs_run"] == 1
    # loads without importing training code, with its own tokenizer and labels
    pred = model.Predictor.from_folder(folder)
    assert pred.labels == ["neg", "pos"]


def test_pipeline_is_tracked_in_mlflow(pipeline):
    client = _mlflow_client(pipeline)
    run_id = model.read_meta(pipeline / "models" / "candidate")["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["sent.kind"] == "train"
    assert run.data.params["train.lr"] == "0.002" and run.data.params["model.name"] == "scratch"
    assert run.data.params["data.sha256"]
    for key in ("val_loss", "val_accuracy", "val_f1", "train_samples_per_second",
                "test_accuracy", "test_f1", "test_precision", "test_recall", "test_loss",
                "test_accuracy_torch_int8", "test_accuracy_onnx_int8", "test_agreement_onnx_int8"):
        assert key in run.data.metrics, key
    losses = client.get_metric_history(run_id, "train_loss")
    assert len(losses) >= 3 and [m.step for m in losses] == sorted(m.step for m in losses)
    assert client.get_metric_history(run_id, "learning_rate")
    # the model is a LoggedModel of the run, an MLflow model around the folder train wrote
    (lm,) = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert lm.name == "model" and lm.params["train.lr"] == "0.002"
    stored = Path(lm.artifact_location)
    assert (stored / "MLmodel").is_file() and (stored / "artifacts/model/model.safetensors").is_file()
    assert {"test_accuracy", "best_val_accuracy"} <= {m.key for m in lm.metrics}  # linked to its metrics
    assert {a.path for a in client.list_artifacts(run_id, "eval")} >= {"eval/eval.json", "eval/reference.json"}


def test_the_run_has_a_name_its_data_and_only_the_params_that_shape_the_weights(pipeline):
    import yaml

    client = _mlflow_client(pipeline)
    run = client.get_run(model.read_meta(pipeline / "models" / "candidate")["mlflow_run_id"])
    assert run.info.run_name.startswith("train-scratch-tiny-") and run.data.tags["sent.profile"] == "tiny"
    sections = {k.split(".")[0] for k in run.data.params}
    # (weights_sha256: MLflow logs the model's model_config, the hash pyfunc loading checks)
    assert sections == {"seed", "data", "model", "train", "world_size", "total_steps", "weights_sha256"}
    assert run.data.params["data.source"] == "builtin:rt-polarity"
    assert run.data.params["data.label_names"] == '["neg", "pos"]'
    assert "sent.data_mismatch" not in run.data.tags
    # the whole resolved configuration is an artifact instead
    local = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(pipeline / "dl-config")))
    resolved = yaml.safe_load(local.read_text())
    assert resolved["serve"]["port"] == 8000 and resolved["data"]["source"] == "builtin:rt-polarity"
    # the data it trained on: the fetched splits, with digest and source
    fetched = json.loads((pipeline / "data/processed/meta.json").read_text())
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"rt-polarity-train", "rt-polarity-validation"}
    train_input = inputs["rt-polarity-train"]
    assert {t.key: t.value for t in train_input.tags}["mlflow.data.context"] == "training"
    assert {t.key: t.value for t in train_input.tags}["sent.data_sha256"] == fetched["sha256"]
    assert len(train_input.dataset.digest) == 16
    assert json.loads(train_input.dataset.profile)["num_rows"] == fetched["splits"]["train"]


def test_eval_outputs(pipeline):
    ev = json.loads((pipeline / "metrics" / "eval.json").read_text())
    assert ev["n"] == 1066 and json.loads((pipeline / "metrics" / "eval.info.json").read_text())["split"] == "test"
    for key in ("accuracy", "f1", "precision", "recall", "loss"):
        assert ev[key] >= 0.0 and (key == "loss" or ev[key] <= 1.0)
    cm = ev["confusion_matrix"]
    assert sum(map(sum, cm)) == 1066 and ev["accuracy"] == pytest.approx((cm[0][0] + cm[1][1]) / 1066)
    # eval.compare (default torch-int8, onnx-int8): each faster variant scored on the same texts
    assert set(ev["variants"]) == {"torch-int8", "onnx-int8"}
    for v in ev["variants"].values():
        assert abs(v["accuracy"] - ev["accuracy"]) < 0.05 and v["agreement"] > 0.9
        assert 0 <= v["max_prob_diff"] < 0.5 and v["texts_per_s"] > 0
    ref = json.loads((pipeline / "metrics" / "reference.json").read_text())
    assert sum(ref["predicted_label_distribution"].values()) == pytest.approx(1.0)
    assert len(ref["samples"]["confidence"]) == 1066 and ref["text_length_chars"]["mean"] > 10
    reports = pipeline / "reports"
    assert (reports / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert (reports / "confusion_matrix.csv").read_text().startswith("actual,predicted\n")
    mis = pd.read_csv(reports / "misclassified.csv")
    wrong = 1066 - cm[0][0] - cm[1][1]
    assert list(mis.columns) == ["text", "actual", "predicted", "confidence"] and len(mis) == min(wrong, 200)
    assert (mis["actual"] != mis["predicted"]).all()
    assert mis["confidence"].is_monotonic_decreasing  # the most confident mistakes first


def _run_sent(args, cwd, env):
    return subprocess.Popen([sys.executable, "-m", "sentiment_cli.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _env(root: Path) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_a_variant_that_cannot_be_built_is_noted_and_never_served(pipeline, workdir, monkeypatch):
    import shutil

    from sentiment_cli import onnxrt
    from sentiment_cli.model import ModelError

    for part in ("data/processed", "models/candidate"):
        shutil.copytree(pipeline / part, workdir / part)

    def cannot(*args, **kwargs):
        raise ModelError("cannot export FancyModel to ONNX: unsupported operator")

    monkeypatch.setattr(onnxrt.OnnxPredictor, "from_folder", cannot)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--profile", "tiny", "--set", "mlflow.enabled=false"])
    assert result.exit_code == 0, result.output  # the fp32 evaluation is not lost to it
    assert "note: onnx-int8 not measured: cannot export FancyModel" in result.output
    ev = json.loads((workdir / "metrics" / "eval.info.json").read_text())  # not a number: beside eval.json
    assert "error" in ev["variants"]["onnx-int8"]
    assert "accuracy" in json.loads((workdir / "metrics" / "eval.json").read_text())["variants"]["torch-int8"]
    result = runner.invoke(app, ["serve", "--profile", "tiny", "--set", "mlflow.enabled=false",
                                 "--model", "models/candidate", "--runtime", "onnx", "--quantize"])
    assert result.exit_code == 1 and "onnx-int8 has no accuracy measurement" in result.output


def test_kill_and_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    sets = [a for s in [*FAST, "train.epochs=2"] for a in ("--set", s)]
    args = ["--profile", "tiny", *sets]
    dirs = {name: tmp_path / name for name in ("straight", "resumed")}
    for d in dirs.values():
        d.mkdir()
        assert _run_sent(["fetch", *args], d, _env(d)).wait(120) == 0
    straight = _run_sent(["train", *args], dirs["straight"], _env(dirs["straight"]))

    d = dirs["resumed"]
    victim = _run_sent(["train", *args], d, _env(d))
    deadline = time.monotonic() + 240
    while not list((d / "checkpoints").glob("step-000000[1-9]*")) and victim.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(30)
    assert not (d / "models" / "candidate").exists()  # killed before the end: nothing half-written
    run_id = json.loads(sorted((d / "checkpoints").glob("step-*/sent_state.json"))[-1].read_text())["run_id"]

    resumed = _run_sent(["train", "--resume", *args], d, _env(d))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert straight.wait(300) == 0

    a = load_file(dirs["straight"] / "models/candidate/model.safetensors")
    b = load_file(d / "models/candidate/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), f"{key} differs after resume"
    assert model.read_meta(d / "models/candidate")["mlflow_run_id"] == run_id  # the same MLflow run
    assert _mlflow_client(d).get_run(run_id).info.status == "FINISHED"


def _same_weights(a_dir: Path, b_dir: Path) -> None:
    a = load_file(a_dir / "models/candidate/model.safetensors")
    b = load_file(b_dir / "models/candidate/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), f"{key} differs after resume"


def test_sigterm_checkpoints_and_the_restarted_job_resumes_to_the_same_weights(tmp_path):
    """Spot preemption: SIGTERM → a checkpoint at the next step and exit 143; the restarted job
    (AIP_CHECKPOINT_DIR set, as Vertex AI does) resumes by itself and ends bit-identical."""
    sets = [a for s in [*FAST, "train.epochs=2", "train.checkpoint_every_steps=1000"] for a in ("--set", s)]
    args = ["--profile", "tiny", *sets]
    dirs = {name: tmp_path / name for name in ("straight", "stopped")}
    for d in dirs.values():
        d.mkdir()
        assert _run_sent(["fetch", *args], d, _env(d)).wait(120) == 0
    straight = _run_sent(["train", *args], dirs["straight"], _env(dirs["straight"]))

    d = dirs["stopped"]
    job_env = {**_env(d), "AIP_CHECKPOINT_DIR": str(d / "job-checkpoints")}
    victim = _run_sent(["train", *args], d, job_env)
    lines = []
    for line in victim.stdout:  # wait until training is under way, then preempt it
        lines.append(line)
        if line.startswith("step 10:"):
            victim.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + victim.stdout.read()
    assert victim.wait(60) == 143, out
    assert "SIGTERM" in out and "Traceback" not in out
    assert not (d / "models" / "candidate").exists()
    ckpts = sorted((d / "job-checkpoints").glob("step-*/sent_state.json"))
    assert ckpts, "no checkpoint written on SIGTERM"  # checkpoint_every_steps=1000: only SIGTERM wrote it
    stopped_at = json.loads(ckpts[-1].read_text())
    assert 10 <= stopped_at["global_step"] < 19  # the next step boundary, inside epoch 1 (19 steps)
    # a newer folder without its state file (a save cut short) is not a checkpoint
    (d / "job-checkpoints" / "step-00009999").mkdir()

    restarted = _run_sent(["train", *args], d, job_env)  # no --resume: a restarted job finds it
    out, _ = restarted.communicate(timeout=300)
    assert restarted.returncode == 0, out
    assert f"resuming from {d / 'job-checkpoints' / ckpts[-1].parent.name}" in out
    assert straight.wait(300) == 0
    _same_weights(dirs["straight"], d)
    run_id = stopped_at["run_id"]
    assert model.read_meta(d / "models/candidate")["mlflow_run_id"] == run_id  # the same MLflow run
    assert _mlflow_client(d).get_run(run_id).info.status == "FINISHED"


def test_auto_resume_without_checkpoints_starts_fresh(workdir):
    runner = CliRunner()
    sets = [a for s in [*FAST, "train.max_steps=3"] for a in ("--set", s)]
    assert runner.invoke(app, ["fetch", "--profile", "tiny", *sets]).exit_code == 0
    result = runner.invoke(app, ["train", "--profile", "tiny", "--auto-resume", *sets])
    assert result.exit_code == 0, result.output
    assert "resuming" not in result.output
    assert json.loads(Path("metrics/train.json").read_text())["global_step"] == 3
    # best-EPOCH/ and the step checkpoints carry their markers; no folder is left half-named
    names = sorted(p.name for p in Path("checkpoints").iterdir())
    assert names == ["best-0001", "step-00000003", "tokenizer"], names
    assert (Path("checkpoints/best-0001") / "sent_best.json").is_file()
    assert not list(Path("checkpoints").glob("*.tmp")) and not list(Path("checkpoints").glob(".*"))


def test_vertex_output_folders_become_paths(workdir, monkeypatch):
    runner = CliRunner()
    sets = [a for s in [*FAST, "train.max_steps=2"] for a in ("--set", s)]
    assert runner.invoke(app, ["fetch", "--profile", "tiny", *sets]).exit_code == 0
    for name, sub in (("AIP_MODEL_DIR", "model"), ("AIP_CHECKPOINT_DIR", "checkpoints"),
                      ("AIP_TENSORBOARD_LOG_DIR", "logs")):
        monkeypatch.setenv(name, str(workdir / "job" / sub))
    result = runner.invoke(app, ["train", "--profile", "tiny", *sets, "--set", "mlflow.enabled=false"])
    assert result.exit_code == 0, result.output
    assert model.read_meta(workdir / "job/model")["labels"] == ["neg", "pos"]
    assert (workdir / "job/logs/train.json").is_file()
    assert list((workdir / "job/checkpoints").glob("step-*/sent_state.json"))
    assert not (workdir / "models").exists() and not (workdir / "checkpoints").exists()


def test_resume_without_checkpoints_is_a_clear_error(workdir):
    runner = CliRunner()
    assert runner.invoke(app, ["fetch", "--profile", "tiny"]).exit_code == 0
    result = runner.invoke(app, ["train", "--profile", "tiny", "--resume"])
    assert result.exit_code == 1
    assert "no complete checkpoint" in result.output and "Traceback" not in result.output


def test_train_without_data_is_a_clear_error(workdir):
    result = CliRunner().invoke(app, ["train", "--profile", "tiny"])
    assert result.exit_code == 1
    assert "run `sent fetch` first" in result.output


def test_max_steps_and_early_stopping_bound_training(workdir):
    runner = CliRunner()
    sets = [a for s in [*FAST, "train.epochs=5", "train.max_steps=7"] for a in ("--set", s)]
    assert runner.invoke(app, ["fetch", "--profile", "tiny", *sets]).exit_code == 0
    result = runner.invoke(app, ["train", "--profile", "tiny", *sets])
    assert result.exit_code == 0, result.output
    train = json.loads(Path("metrics/train.json").read_text())
    assert train["global_step"] == 7 and train["epochs_run"] == 1
    cfg = config.load("tiny", [*FAST[:1], "train.epochs=6", "train.early_stopping_patience=1",
                               "train.lr=1e-9", "train.warmup_ratio=0"])
    from sentiment_cli import train as step

    step.run(cfg)  # a learning rate this small cannot improve val accuracy after epoch 1
    train = json.loads(Path("metrics/train.json").read_text())
    assert train["epochs_run"] == 2 and train["best_epoch"] == 1


@pytest.mark.slow
def test_train_and_eval_log_to_a_remote_tracking_server(tracking_server, tmp_path, monkeypatch):
    # tracking_server comes from registry_fixtures (a pytest plugin, see conftest.py)
    url, artifacts = tracking_server
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    sets = [a for s in FAST for a in ("--set", s)]
    for step in ("fetch", "train", "eval"):
        result = runner.invoke(app, [step, "--profile", "tiny", *sets])
        assert result.exit_code == 0, result.output
    run_id = model.read_meta(tmp_path / "models/candidate")["mlflow_run_id"]
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=url).get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert {"val_accuracy", "test_accuracy", "train_loss"} <= set(run.data.metrics)
    assert list(artifacts.rglob("model.safetensors"))  # uploaded through the server
    assert not (tmp_path / "mlruns").exists()  # no local artifact store was used


def test_on_cloud_storage_fuse_the_model_folder_is_copied_in_with_sent_json_last(pipeline, tmp_path, monkeypatch):
    """No folder rename on /gcs/ (not atomic on flat buckets): built locally, then copied, the file
    readers check last; a previous model there stops counting before its files are replaced."""
    from sentiment_cli import checkpoints, launch

    monkeypatch.setattr(launch, "on_object_storage", lambda path: True)
    tokenizer, net, meta = model.load(pipeline / "models" / "candidate")
    out = tmp_path / "gcs-model"
    out.mkdir()
    (out / "sent.json").write_text("{}")  # an older model's
    copied = []
    real_copy = checkpoints.shutil.copyfile
    monkeypatch.setattr(checkpoints.shutil, "copyfile", lambda a, b: copied.append(Path(b).name) or real_copy(a, b))
    checkpoints.publish(out, net, tokenizer, {k: v for k, v in meta.items() if k != "weights_sha256"})
    assert copied[-1] == "sent.json" and "model.safetensors" in copied
    assert model.read_meta(out)["weights_sha256"] == model.weights_sha256(out)
    assert not list(tmp_path.glob(".gcs-model*"))  # nothing was built beside it


def test_a_run_whose_loss_stops_being_finite_ends_in_one_line_and_writes_no_model(workdir):
    """train.lr=inf is refused by the configuration; a finite but absurd rate diverges at run time."""
    runner = CliRunner()
    sets = [a for s in [*FAST, "train.log_every_steps=1", "train.max_steps=30", "train.lr=1e12",
                        "train.warmup_ratio=0", "mlflow.enabled=false"] for a in ("--set", s)]
    assert runner.invoke(app, ["fetch", "--profile", "tiny", *sets]).exit_code == 0
    result = runner.invoke(app, ["train", "--profile", "tiny", *sets])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1, result.output
    assert len(errors) == 1 and "diverged" in errors[0] and "train.lr" in errors[0], result.output
    assert "Traceback" not in result.output
    assert not (workdir / "models" / "candidate").exists()
