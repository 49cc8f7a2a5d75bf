"""What a training run records about itself (lineage.py): its name, the data fetch wrote rather
than the configuration's data section, a mismatch between them said out loud, and params that
shape the weights only."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAST
from registry_fixtures import TEXTS
from typer.testing import CliRunner

from sentiment_cli import config, lineage, model
from sentiment_cli.cli import app


def _meta(**data_config) -> dict:
    cfg = config.load("tiny")
    return {"source": data_config.get("source", "builtin:rt-polarity"), "labels": ["neg", "pos"],
            "sha256": "f" * 64, "data_config": {**config.to_dict(cfg)["data"], **data_config}}


def test_run_names_tell_runs_apart():
    cfg = config.load("tiny")
    at = datetime(2026, 12, 1, 10, 15, 0, tzinfo=UTC)
    assert lineage.run_name(cfg, "tiny", at) == "train-scratch-tiny-20261201-101500"
    assert lineage.run_name(config.load("tiny", ["model.name=org/distilbert-base-uncased"]), None, at) == \
        "train-distilbert-base-uncased-20261201-101500"
    assert lineage.run_name(config.load("tiny", ["model.name=models/base/"]), "gpu", at).startswith("train-base-gpu-")


def test_the_fetched_data_wins_and_each_difference_is_named():
    cfg = config.load("tiny")
    fetched, differ = lineage.fetched_data(cfg, _meta(source="reviews.csv", text_column="review"))
    assert fetched["source"] == "reviews.csv" and fetched["text_column"] == "review"
    assert differ == {"source": ("reviews.csv", "builtin:rt-polarity"), "text_column": ("review", "text")}
    line = lineage.mismatch_line("data/processed", differ)
    assert line.startswith("warning:") and "\n" not in line
    assert "data.source is 'reviews.csv' there, 'builtin:rt-polarity' here" in line
    assert "data.text_column is 'review' there, 'text' here" in line and "sent fetch" in line
    assert lineage.fetched_data(cfg, _meta())[1] == {}


def test_keys_fetch_was_given_are_a_note_the_others_a_warning(capsys):
    differ = {"source": ("reviews.csv", "builtin:rt-polarity"), "label_names": (["neg", "pos"], ["bad", "good"]),
              "split_seed": (42, 7)}
    lineage.warn_mismatch("data/processed", differ, ["label_names", "source", "text_column"])
    note, warning = capsys.readouterr().err.splitlines()
    assert note.startswith("note: training on the data `sent fetch` was given for data/processed: ")
    assert "data.source reviews.csv (configured: builtin:rt-polarity)" in note
    assert "data.label_names neg,pos (configured: bad,good)" in note and "params.yaml" in note
    assert "split_seed" not in note and "sent fetch` with this configuration" not in note
    assert warning == lineage.mismatch_line("data/processed", {"split_seed": (42, 7)})
    # a meta.json from before data_given: every key is the warning, as then
    lineage.warn_mismatch("data/processed", differ, None)
    assert capsys.readouterr().err.splitlines() == [lineage.mismatch_line("data/processed", differ)]
    lineage.warn_mismatch("data/processed", {}, ["source"])
    assert capsys.readouterr().err == ""


def test_inferred_labels_and_train_side_caps_are_not_mismatches():
    given = {**config.to_dict(config.load("tiny"))["data"], "label_names": None, "max_train_samples": 100}
    meta = {**_meta(max_train_samples=600), "labels": ["negative", "positive"]}
    fetched, differ = lineage.compare(given, meta)
    assert differ == {} and fetched["label_names"] == ["negative", "positive"]
    assert fetched["max_train_samples"] == 100  # the smaller cap is the one that trained
    _, differ = lineage.compare({**given, "label_names": ["bad", "good"]}, meta)
    assert differ == {"label_names": (["negative", "positive"], ["bad", "good"])}


def test_params_are_the_sections_that_shape_the_weights():
    cfg = config.load("tiny")
    params = lineage.params(lineage.effective_config(cfg, lineage.fetched_data(cfg, _meta())[0]))
    assert {k.split(".")[0] for k in params} == {"seed", "data", "model", "train"}
    assert params["model.scratch.hidden_size"] == "64" and params["data.label_names"] == '["neg", "pos"]'
    hub = config.load("tiny", ["model.name=distilbert-base-uncased"])
    assert not [k for k in lineage.params(config.to_dict(hub)) if k.startswith("model.scratch.")]


def test_dataset_names_and_digests():
    assert lineage.dataset_name("data/reviews.csv") == "reviews"
    assert lineage.dataset_name("hf:rotten_tomatoes") == "rotten_tomatoes"
    assert lineage.dataset_name("builtin:rt-polarity") == "rt-polarity"
    df = pd.DataFrame({"text": ["a", "b"], "label": [0, 1]})
    assert lineage.split_digest(df) == lineage.split_digest(df.copy()) != lineage.split_digest(df[::-1])
    assert len(lineage.split_digest(df)) == 16


def test_a_run_on_fetched_csv_data_records_that_data_and_notes_the_config(tmp_path, monkeypatch, capsys):
    """fetch --set data.source=reviews.csv, then train with the tiny profile's own source: the run,
    its datasets and sent.json all say reviews.csv, and a note (fetch was given that source: no
    stale data, no warning) names both sources; the run's tag names them too."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    rows = [{"text": f"{TEXTS[i % len(TEXTS)]} take {i}", "label": i % 2} for i in range(240)]
    pd.DataFrame(rows).to_csv("reviews.csv", index=False)
    runner = CliRunner()
    sets = [a for s in [*FAST[1:], "train.max_steps=2"] for a in ("--set", s)]
    fetched = runner.invoke(app, ["fetch", "--profile", "tiny", "--set", "data.source=reviews.csv"])
    assert fetched.exit_code == 0, fetched.output
    capsys.readouterr()
    trained = runner.invoke(app, ["train", "--profile", "tiny", *sets])
    assert trained.exit_code == 0, trained.output
    note = [line for line in trained.output.splitlines() if line.startswith("note: training on the data")]
    assert len(note) == 1 and "data.source reviews.csv (configured: builtin:rt-polarity)" in note[0]
    assert "warning: this run trains on" not in trained.output

    meta = model.read_meta("models/candidate")
    assert meta["data_source"] == meta["config"]["data"]["source"] == "reviews.csv"  # agrees with itself
    assert meta["labels"] == meta["config"]["data"]["label_names"]
    run = mlflow.MlflowClient().get_run(meta["mlflow_run_id"])
    assert run.data.params["data.source"] == "reviews.csv"
    assert "builtin:rt-polarity" in run.data.tags["sent.data_mismatch"]
    (train_input,) = [i for i in run.inputs.dataset_inputs if i.dataset.name == "reviews-train"]
    source = json.loads(train_input.dataset.source)
    assert os.path.samefile(source["uri"], tmp_path / "reviews.csv")
    assert train_input.dataset.source_type == "local"


@pytest.mark.parametrize("value", ["hf:rotten_tomatoes", "https://example.org/r.csv", "builtin:rt-polarity"])
def test_every_kind_of_source_becomes_an_mlflow_dataset_source(value):
    from sentiment_cli import registry

    source = registry._dataset_source(value)
    assert source.to_dict()  # serialisable, whatever the kind
    if value.startswith("hf:"):
        assert source.to_dict()["path"] == "rotten_tomatoes"
    if value.startswith("builtin:"):
        assert source.to_dict()["tags"] == {"sent.data.source": value}


def test_paths_stay_relative_in_the_config_but_absolute_in_the_dataset(tmp_path, monkeypatch):
    from sentiment_cli import registry

    monkeypatch.chdir(tmp_path)
    Path("r.csv").write_text("text,label\n")
    assert registry._dataset_source("r.csv").to_dict()["uri"] == str(tmp_path / "r.csv")
