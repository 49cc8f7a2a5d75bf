"""What eval hands downstream, keyed by the weights it measured: one entry per weights, so a
second evaluation never replaces the first one's baseline, and a reader never gets another
model's numbers."""

from __future__ import annotations

import json

import pytest

from sentiment_cli import artifacts, config

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
def cfg(tmp_path):
    return config.load("tiny", [f"paths.metrics_dir={tmp_path / 'metrics'}"], root=tmp_path)


def test_evaluating_another_model_keeps_the_first_models_reference(cfg):
    artifacts.write_reference(cfg, {"weights_sha256": A, "n": 100})
    artifacts.write_reference(cfg, {"weights_sha256": B, "n": 200})  # another folder evaluated
    (ref_a, path_a), (ref_b, _) = artifacts.reference_for(cfg, A), artifacts.reference_for(cfg, B)
    assert ref_a["n"] == 100 and ref_b["n"] == 200 and A in str(path_a)
    latest = artifacts._dir(cfg) / artifacts.REFERENCE_FILE  # DVC's output: the latest one
    assert '"n": 200' in latest.read_text()


def test_a_reference_for_other_weights_is_a_one_line_error_saying_what_to_run(cfg):
    artifacts.write_reference(cfg, {"weights_sha256": A, "n": 1})
    with pytest.raises(artifacts.ArtifactError) as info:
        artifacts.reference_for(cfg, C)
    assert "run `sent eval`" in str(info.value) and "\n" not in str(info.value)


def test_scores_and_variant_accuracy_come_only_from_the_same_weights(cfg):
    artifacts.write_eval(cfg, {"weights_sha256": A, "split": "test", "accuracy": 0.8, "f1": 0.79,
                               "variants": {"onnx-int8": {"accuracy": 0.795}}})
    artifacts.write_eval(cfg, {"weights_sha256": B, "split": "test", "accuracy": 0.6, "variants": {}})
    result, _ = artifacts.eval_for(cfg, A)
    assert artifacts.scores(result) == {"test_accuracy": 0.8, "test_f1": 0.79}
    assert artifacts.variant_accuracy(cfg, A, "onnx-int8")[:2] == (0.8, 0.795)
    assert artifacts.variant_accuracy(cfg, B, "onnx-int8") is None
    assert artifacts.eval_for(cfg, C) is None


def test_a_hash_that_is_not_one_is_refused(cfg):
    with pytest.raises(artifacts.ArtifactError):
        artifacts.reference_for(cfg, "../../etc")
    with pytest.raises(artifacts.ArtifactError):
        artifacts.write_eval(cfg, {"accuracy": 1.0})  # no weights_sha256: cannot be filed


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_the_metrics_file_holds_numbers_only_and_readers_still_get_everything(cfg):
    result = {"weights_sha256": B, "data_sha256": C, "split": "test", "labels": ["neg", "pos"],
              "model_dir": "models/candidate", "mlflow_run_id": "0123abcd", "accuracy": 0.8, "n": 10,
              "per_label": {"neg": {"f1": 0.7}}, "confusion_matrix": [[4, 1], [1, 4]],
              "variants": {"torch-int8": {"accuracy": 0.79}, "onnx-int8": {"error": "cannot export"}}}
    path = artifacts.write_eval(cfg, result)
    numbers = dict(_leaves(json.loads(path.read_text())))
    assert all(isinstance(v, int | float | list) and not isinstance(v, bool) for v in numbers.values()), numbers
    assert not set(artifacts.INFO_KEYS) & {k.split(".")[0] for k in numbers}
    info = json.loads(artifacts.info_path(path).read_text())
    assert info["weights_sha256"] == B and info["mlflow_run_id"] == "0123abcd" and info["split"] == "test"
    assert info["variants"] == {"onnx-int8": {"error": "cannot export"}}
    # the keyed copy and the joined latest pair both give back the whole record
    assert artifacts.read_metrics(path) == result
    artifacts._keyed(cfg, B, artifacts.EVAL_FILE).unlink()
    found, where = artifacts.eval_for(cfg, B)
    assert found == result and where == path
    assert artifacts.variant_accuracy(cfg, B, "torch-int8")[:2] == (0.8, 0.79)


def test_an_eval_json_from_an_older_sent_with_everything_in_it_still_reads(cfg):
    path = artifacts._dir(cfg) / artifacts.EVAL_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"weights_sha256": A, "split": "test", "accuracy": 0.7}))
    assert artifacts.eval_for(cfg, A)[0]["accuracy"] == 0.7
