"""A first run on your own data, as a new user types it: own CSV, string labels, own columns."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from sentiment_cli.cli import app

runner = CliRunner()
QUIET = ["--set", "mlflow.enabled=false", "--set", "eval.compare=[]"]


def reviews_csv(folder, n=200):
    words = {"positive": ["wonderful", "moving", "brilliant", "funny"],
             "negative": ["dull", "tedious", "silly", "boring"]}
    rows = [(f"a {words[lab][i % 4]} film, review {i}", lab) for i in range(n)
            for lab in (("positive", "negative")[i % 2],)]
    path = folder / "reviews.csv"
    pd.DataFrame(rows, columns=["review", "sentiment"]).to_csv(path, index=False)
    return path


def one_line_error(result):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_positional_source_and_column_options_with_inferred_labels(workdir):
    reviews_csv(workdir)
    result = runner.invoke(app, ["fetch", "reviews.csv", "--text-column", "review", "--label-column", "sentiment"])
    assert result.exit_code == 0, result.output
    assert "labels negative, positive" in result.output  # reported on the terminal
    meta = json.loads((workdir / "data/processed/meta.json").read_text())
    assert meta["labels"] == ["negative", "positive"] and meta["labels_inferred"] is True
    assert meta["source"] == "reviews.csv"
    assert meta["data_config"]["text_column"] == "review" and meta["data_config"]["label_names"] == ["negative",
                                                                                                     "positive"]
    assert sum(meta["splits"].values()) == 200


def test_labels_option_and_comma_list_in_set_give_the_order(workdir):
    reviews_csv(workdir)
    base = ["fetch", "reviews.csv", "--text-column", "review", "--label-column", "sentiment"]
    for extra in (["--labels", "positive,negative"], ["--set", "data.label_names=positive,negative"]):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 0, result.output
        meta = json.loads((workdir / "data/processed/meta.json").read_text())
        assert meta["labels"] == ["positive", "negative"] and meta["labels_inferred"] is False
        train = pd.read_parquet(workdir / "data/processed/train.parquet")
        assert set(train.loc[train["text"].str.contains("wonderful"), "label"]) == {0}


def test_a_missing_column_names_the_options_that_fix_it(workdir):
    reviews_csv(workdir)
    result = runner.invoke(app, ["fetch", "reviews.csv"])
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "no column 'text' or 'label'; columns are review, sentiment: use --text-column review" in line
    assert "--label-column sentiment" in line
    result = runner.invoke(app, ["fetch", "reviews.csv", "--text-column", "review"])
    assert "no column 'label'; columns are review, sentiment: use --label-column sentiment" in one_line_error(result)


def test_labels_outside_the_given_names_say_which_labels_to_give(workdir):
    reviews_csv(workdir)
    result = runner.invoke(app, ["fetch", "reviews.csv", "--text-column", "review", "--label-column", "sentiment",
                                 "--labels", "neg,pos"])
    assert result.exit_code == 1
    assert "use --labels negative,positive" in one_line_error(result)


def test_an_unsupported_file_type_lists_the_supported_ones(workdir):
    (workdir / "reviews.xlsx").write_bytes(b"PK\x03\x04")
    result = runner.invoke(app, ["fetch", "reviews.xlsx"])
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "unsupported file type '.xlsx'" in line and ".csv, .tsv, .jsonl, .json, .parquet" in line


def test_a_profile_replacing_a_value_of_params_yaml_says_so(workdir):
    reviews_csv(workdir)
    (workdir / "params.yaml").write_text("data:\n  source: reviews.csv\n  text_column: review\n"
                                         "  label_column: sentiment\n")
    result = runner.invoke(app, ["fetch", "--profile", "tiny", "--set", "data.max_train_samples=100"])
    assert result.exit_code == 0, result.output
    assert ("note: profile tiny sets data.source=builtin:rt-polarity, replacing reviews.csv from ./params.yaml "
            "(keep yours: --set data.source=reviews.csv)") in result.output
    # restated on the command line: the user's value, and nothing to announce
    result = runner.invoke(app, ["fetch", "--profile", "tiny", "--set", "data.source=reviews.csv"])
    assert result.exit_code == 0, result.output
    assert "note: profile" not in result.output
    assert json.loads((workdir / "data/processed/meta.json").read_text())["source"] == "reviews.csv"


def test_a_table_outside_what_the_dvc_fetch_stage_depends_on_is_named_with_the_fix(workdir, monkeypatch):
    """In a project whose dvc.yaml fetch stage depends on ${data.dvc_dep}: an error (before any
    work) when DVC runs the stage, nothing once they agree; a plain `sent fetch` says nothing."""
    reviews_csv(workdir)
    (workdir / "dvc.yaml").write_text("stages:\n  fetch:\n    cmd: sent fetch\n    deps: [${data.dvc_dep}]\n")
    base = ["fetch", "reviews.csv", "--text-column", "review", "--label-column", "sentiment"]
    fix = ("data.source reviews.csv is outside data.dvc_dep (data/raw), what the DVC fetch stage depends on: "
           "set data.dvc_dep: reviews.csv in params.yaml (dvc exp run: -S data.dvc_dep=reviews.csv)")
    result = runner.invoke(app, base)
    assert result.exit_code == 0 and "dvc" not in result.output.lower(), result.output
    monkeypatch.setenv("DVC_STAGE", "fetch")  # what DVC sets for a stage's command
    (workdir / "data/processed/meta.json").unlink()
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and one_line_error(result).startswith(f"error: {fix}")
    assert not (workdir / "data/processed/meta.json").exists()
    for agreeing in ("data.dvc_dep=reviews.csv", "data.dvc_dep=."):  # the table, or a folder holding it
        result = runner.invoke(app, [*base, "--set", agreeing])
        assert result.exit_code == 0 and "dvc_dep" not in result.output, result.output
    result = runner.invoke(app, [*base, "--set", "data.dvc_dep=builtin:rt-polarity"])
    assert result.exit_code == 2 and "data.dvc_dep must be a local path" in one_line_error(result)


def test_a_model_folder_with_short_positions_is_trained_at_what_it_allows_with_one_note(workdir):
    """One note at train; sent.json records the clamped length, so eval (ONNX included) needs none."""
    from transformers import BertConfig, BertForSequenceClassification

    from sentiment_cli import model

    reviews_csv(workdir)
    texts = pd.read_csv(workdir / "reviews.csv")["review"].tolist()
    tok = model.train_tokenizer(texts, 200)
    BertForSequenceClassification(BertConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2)).save_pretrained(workdir / "short")
    tok.save_pretrained(workdir / "short")
    result = runner.invoke(app, ["fetch", "reviews.csv", "--text-column", "review", "--label-column", "sentiment"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--profile", "tiny", "--set", f"model.name={workdir / 'short'}",
                                 "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: model.max_length")]
    assert notes == [f"note: model.max_length 64 is more than {workdir / 'short'} allows; using 16 tokens"]
    meta = json.loads((workdir / "models/candidate/sent.json").read_text())
    assert meta["config"]["model"]["max_length"] == 16
    result = runner.invoke(app, ["eval", "--profile", "tiny", "--set", "eval.compare=[onnx-int8]",
                                 "--set", f"paths.onnx_cache={workdir / 'onnx'}"])
    assert result.exit_code == 0, result.output
    assert "note: model.max_length" not in result.output and "onnx-int8 accuracy" in result.output


def test_max_train_samples_given_to_train_cuts_the_fetched_split(workdir):
    reviews_csv(workdir)
    assert runner.invoke(app, ["fetch", "reviews.csv", "--text-column", "review",
                               "--label-column", "sentiment"]).exit_code == 0
    args = ["--profile", "tiny", *QUIET, "--set", "train.epochs=1", "--set", "data.max_train_samples=50"]
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    assert "training on 50 of the 160 fetched training texts" in result.output
    # 50 texts, one epoch of a model from scratch: nothing learned, and the run says so
    assert "val_accuracy 0.5000" in result.output and "warning: validation accuracy 0.500 is at chance" \
        in result.output
    assert json.loads((workdir / "metrics/train.json").read_text())["samples_seen"] == 50


@pytest.mark.parametrize("step", ["train", "eval"])
def test_a_fetch_key_given_to_a_later_step_is_an_error_unless_it_is_what_fetch_used(workdir, step):
    reviews_csv(workdir)
    assert runner.invoke(app, ["fetch", "reviews.csv", "--text-column", "review",
                               "--label-column", "sentiment"]).exit_code == 0
    result = runner.invoke(app, [step, "--profile", "tiny", *QUIET, "--set", "data.split_seed=7"])
    assert result.exit_code == 2
    assert "--set data.split_seed=7 acts at fetch" in one_line_error(result)
    assert "sent fetch --set data.split_seed=..." in result.output
    # the value fetch used is no contradiction (scripts pass one set of --set to every step)
    result = runner.invoke(app, ["eval", "--profile", "tiny", *QUIET, "--set", "data.source=reviews.csv",
                                 "--set", "data.text_column=review"])
    assert "acts at fetch" not in result.output


def test_accuracy_at_chance_is_a_warning_and_better_is_not():
    from sentiment_cli import metrics

    warning = metrics.at_chance(0.52, {"negative": 79, "positive": 81})
    assert warning and "at chance" in warning and "'positive' scores 0.506 on these 160 texts" in warning
    assert "train.epochs" in warning and "\n" not in warning
    assert metrics.at_chance(0.75, {"negative": 79, "positive": 81}) is None
    assert metrics.at_chance(0.91, {"a": 900, "b": 100}) is not None  # 90% is the majority's share
    assert metrics.at_chance(0.99, {"a": 900, "b": 100}) is None


def test_a_fetch_given_its_data_on_the_command_line_gives_train_a_note_not_the_warning(workdir):
    """fetch reviews.csv --text-column ... then train --profile tiny: the data keys fetch was given
    are a deliberate choice, so train says in one note what it trains on, with no advice to fetch
    again (which would fetch the profile's data)."""
    reviews_csv(workdir)
    result = runner.invoke(app, ["fetch", "reviews.csv", "--text-column", "review", "--label-column", "sentiment",
                                 "--set", "data.val_fraction=0.1"])
    assert result.exit_code == 0, result.output
    meta = json.loads((workdir / "data/processed/meta.json").read_text())
    assert meta["data_given"] == ["label_column", "source", "text_column", "val_fraction"]
    result = runner.invoke(app, ["train", "--profile", "tiny", *QUIET, "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    assert "warning: this run trains on" not in result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: training on the data")]
    assert len(notes) == 1, result.output
    assert "data.source reviews.csv (configured: builtin:rt-polarity)" in notes[0]
    assert "data.text_column review (configured: text)" in notes[0]
    assert "data.label_column sentiment (configured: label)" in notes[0]
    assert "params.yaml" in notes[0] and "run `sent fetch`" not in notes[0]
    sent = json.loads((workdir / "models/candidate/sent.json").read_text())
    assert sent["config"]["data"]["source"] == "reviews.csv"


def test_data_keys_changed_in_params_yaml_after_a_fetch_still_warn(workdir):
    """fetch reads data.source from ./params.yaml; params.yaml then names another table: the
    fetched data is stale, and train keeps the warning that says to fetch again."""
    reviews_csv(workdir)
    keys = "  text_column: review\n  label_column: sentiment\n"
    (workdir / "params.yaml").write_text(f"data:\n  source: reviews.csv\n{keys}")
    result = runner.invoke(app, ["fetch"])
    assert result.exit_code == 0, result.output
    assert json.loads((workdir / "data/processed/meta.json").read_text())["data_given"] == []
    (workdir / "params.yaml").write_text(f"data:\n  source: more-reviews.csv\n{keys}")
    result = runner.invoke(app, ["train", *QUIET, "--set", "model.name=scratch", "--set", "model.max_length=64",
                                 "--set", "train.epochs=1", "--set", "train.lr=2e-3"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: this run trains on")]
    assert len(warnings) == 1, result.output
    assert "data.source is 'reviews.csv' there, 'more-reviews.csv' here" in warnings[0]
    assert "run `sent fetch` with this configuration" in warnings[0]
    assert "note: training on the data" not in result.output
