"""What eval hands downstream, keyed by the weights it measured: one entry per weights, so a
second evaluation never replaces the first one's baseline, and a reader never gets another
model's numbers."""

from __future__ import annotations

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
