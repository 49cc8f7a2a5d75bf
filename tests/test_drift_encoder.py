"""The ONNX encoder `sent drift` embeds the window with (drift.encoder=onnx): the same token
ids, lengths and embeddings as the torch model `sent eval` made the reference with, the same
report, built once per weights and refused when its file changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sentiment_cli import config, predlog, textstats
from sentiment_cli.config import ConfigError
from sentiment_cli.drift import Monitor, encoder
from sentiment_cli.errors import ModelError
from sentiment_cli.model import Prediction, Predictor

LONG = "an overlong review that goes on and on , " * 40  # truncated at max_length


def _texts(pipeline: Path, n: int) -> list[str]:
    texts = pd.read_parquet(pipeline / "data" / "processed" / "validation.parquet")["text"].tolist()[:n]
    return [*texts, LONG, "!", "ÉMIGRÉS and CAPITALS, 3 dogs 🔥"]


def _cfg(pipeline: Path, cache: Path, *more: str):
    return config.load("tiny", [f"paths.metrics_dir={pipeline / 'metrics'}", "mlflow.enabled=false",
                                f"paths.onnx_cache={cache}", *more])


def _sha(folder: Path) -> str:
    return json.loads((folder / "sent.json").read_text())["weights_sha256"]


@pytest.fixture(scope="module")
def built(pipeline, tmp_path_factory):
    """One export of the pipeline's model, in a cache of this module's own."""
    cache = tmp_path_factory.mktemp("drift-onnx")
    folder = pipeline / "models" / "candidate"
    return folder, cache, encoder.load(folder, _sha(folder), str(cache))


def test_tokens_and_embeddings_equal_the_torch_models(pipeline, built):
    folder, _, enc = built
    torch = Predictor.from_folder(folder)
    texts = _texts(pipeline, 300)
    assert enc.tokens.max_length == torch.max_length
    want_ids = torch.tokenizer(texts, truncation=True, max_length=torch.max_length)["input_ids"]
    assert enc.tokens.ids(texts) == [list(x) for x in want_ids]
    np.testing.assert_array_equal(enc.tokens.lengths(texts),
                                  textstats.token_lengths(torch.tokenizer, texts, torch.max_length))
    want, got = torch.embed(texts), enc.embed(texts)
    assert got.shape == want.shape and got.dtype == np.float32
    rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
    assert rel.max() <= encoder.TOLERANCE
    assert enc.embed([]).shape == (0, want.shape[1])
    assert enc.manifest["max_relative_diff"] <= encoder.TOLERANCE


def test_the_export_is_reused_and_a_changed_file_refused(built, monkeypatch):
    folder, cache, enc = built
    monkeypatch.setattr(encoder, "_build", lambda *a: pytest.fail("exported again"))
    again = encoder.load(folder, _sha(folder), str(cache))
    assert again.manifest == enc.manifest
    # other weights (another hash) get their own entry: never the export of these
    assert encoder.cache_dir("0" * 64, str(cache)) != encoder.cache_dir(_sha(folder), str(cache))
    path = encoder.cache_dir(_sha(folder), str(cache)) / encoder.FILE
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ModelError, match="does not match its manifest"):
            encoder.load(folder, _sha(folder), str(cache))
    finally:
        path.write_bytes(original)


def _log(folder: Path, texts: list[str], version: str, predictor: Predictor) -> None:
    preds: list[Prediction] = predictor.predict(texts)
    with predlog.PredictionLog(folder) as log:
        log.write([predlog.make_record(t, p, model_name="m", model_version=version, latency_ms=1.0)
                   for t, p in zip(texts, preds, strict=True)])


def test_the_report_is_that_of_torch(pipeline, built, tmp_path):
    folder, cache, _ = built
    texts = _texts(pipeline, 250)
    onnx = Monitor(_cfg(pipeline, cache), str(folder))
    torch = Monitor(_cfg(pipeline, cache, "drift.encoder=torch"), str(folder))
    _log(tmp_path / "log", texts, onnx.version, torch.predictor)
    a, b = onnx.report(str(tmp_path / "log")), torch.report(str(tmp_path / "log"))
    assert a["reference"]["encoder"] == "onnx" and b["reference"]["encoder"] == "torch"
    assert "encoder_load_s" in a["timings"]
    assert [t["name"] for t in a["tests"]] == [t["name"] for t in b["tests"]]
    assert "embeddings" in {t["name"] for t in a["tests"]}
    for x, y in zip(a["tests"], b["tests"], strict=True):
        if x["name"] == "embeddings":  # float32 sums in another order: the same up to rounding
            assert x["statistic"] == pytest.approx(y["statistic"], rel=1e-3, abs=1e-6)
            assert x["drift"] == y["drift"]
        else:
            assert (x["statistic"], x["p_value"], x["drift"]) == (y["statistic"], y["p_value"], y["drift"])
    assert a["status"] == b["status"] and a["histograms"] == b["histograms"]


def _report_on_a_log(pipeline: Path, tmp_path: Path, cache: Path, n: int) -> dict:
    """drift's report on a log of n held-out texts served by the pipeline's candidate."""
    monitor = Monitor(_cfg(pipeline, cache), str(pipeline / "models" / "candidate"))
    _log(tmp_path / "log", _texts(pipeline, n), monitor.version, monitor.predictor)
    return monitor.report(str(tmp_path / "log"))


def test_a_model_that_cannot_be_exported_is_encoded_by_torch(pipeline, tmp_path, monkeypatch, capsys):
    def refuse(*args):
        raise ModelError("cannot export FancyModel's encoder to ONNX: unsupported; drift encodes with torch")

    monkeypatch.setattr(encoder, "_export", refuse)
    doc = _report_on_a_log(pipeline, tmp_path, tmp_path / "cache", 80)
    assert doc["reference"]["encoder"] == "torch" and "embeddings" in {t["name"] for t in doc["tests"]}
    assert "note: cannot export FancyModel's encoder to ONNX" in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("drift-encoder-*/manifest.json"))  # nothing half-built kept


def test_a_cache_that_cannot_be_written_means_torch(pipeline, tmp_path, capsys):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    doc = _report_on_a_log(pipeline, tmp_path, blocked / "cache", 60)
    assert doc["reference"]["encoder"] == "torch" and "embeddings" in {t["name"] for t in doc["tests"]}
    assert "drift encodes with torch" in capsys.readouterr().err


def test_drift_encoder_is_onnx_or_torch(pipeline, tmp_path):
    with pytest.raises(ConfigError, match="drift.encoder must be one of"):
        _cfg(pipeline, tmp_path, "drift.encoder=tensorflow")
