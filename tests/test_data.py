import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentiment_cli import batches, config, data
from sentiment_cli.data import DataError

SHARED_RT = Path(__file__).resolve().parents[2] / "shared" / "data" / "rt-polaritydata"


def cfg_for(tmp_path, source, *extra):
    return config.load("cpu", [f"data.source={source}", *extra], root=tmp_path)


def _check_hf_splits(splits):
    assert {s: len(df) for s, df in splits.items()} == {"train": 8530, "validation": 1066, "test": 1066}
    for df in splits.values():
        assert df["label"].value_counts().to_dict() == {1: len(df) // 2, 0: len(df) // 2}
    # the Hugging Face dataset's first training example is the first positive sentence
    assert splits["train"]["text"].iloc[0].startswith("the rock is destined to be the 21st century's new")
    assert splits["train"]["label"].iloc[0] == 1


def test_builtin_rt_polarity_gives_the_hugging_face_splits(tmp_path):
    splits, report = data.prepare(cfg_for(tmp_path, "builtin:rt-polarity"))
    _check_hf_splits(splits)
    assert report.dropped_empty == {"train": 0, "validation": 0, "test": 0}


@pytest.mark.skipif(not SHARED_RT.is_dir(), reason="the workplace's shared rt-polaritydata is not beside the repo")
def test_rt_polarity_folder_matches_builtin(tmp_path):
    from_folder, _ = data.prepare(cfg_for(tmp_path, f"rt-polarity:{SHARED_RT}"))
    builtin, _ = data.prepare(cfg_for(tmp_path, "builtin:rt-polarity"))
    _check_hf_splits(from_folder)
    assert data.content_sha256(from_folder) == data.content_sha256(builtin)


def test_rt_polarity_tarball_and_missing_member(tmp_path):
    splits, _ = data.prepare(cfg_for(tmp_path, f"rt-polarity:{data.builtin_rt_path()}"))
    _check_hf_splits(splits)
    bad = tmp_path / "bad.tar.gz"
    src = tmp_path / "rt-polarity.pos"
    src.write_text("good\n")
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(src, arcname="rt-polaritydata/rt-polarity.pos")
    with pytest.raises(DataError, match="missing rt-polarity.neg"):
        data.prepare(cfg_for(tmp_path, f"rt-polarity:{bad}"))
    with pytest.raises(DataError, match="does not exist"):
        data.prepare(cfg_for(tmp_path, f"rt-polarity:{tmp_path / 'nowhere'}"))


def _table(n=100, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"review": [f"review number {i} {'good' if i % 2 else 'bad'}" for i in range(n)],
                         "sentiment": ["pos" if i % 2 else "neg" for i in range(n)],
                         "noise": rng.random(n)})


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_local_table_with_named_columns_and_string_labels(tmp_path, suffix):
    df = _table()
    path = tmp_path / f"reviews{suffix}"
    {".csv": lambda: df.to_csv(path, index=False), ".tsv": lambda: df.to_csv(path, sep="\t", index=False),
     ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
     ".json": lambda: df.to_json(path, orient="records"), ".parquet": lambda: df.to_parquet(path)}[suffix]()
    cfg = cfg_for(tmp_path, path, "data.text_column=review", "data.label_column=sentiment")
    splits, _ = data.prepare(cfg)
    assert {s: len(x) for s, x in splits.items()} == {"train": 80, "validation": 10, "test": 10}
    merged = pd.concat(splits.values())
    assert sorted(merged["text"]) == sorted(df["review"])
    # labels were mapped by name: "pos" → 1
    by_text = dict(zip(merged["text"], merged["label"], strict=True))
    assert by_text["review number 1 good"] == 1 and by_text["review number 0 bad"] == 0


def test_folder_with_train_and_test_gets_a_seeded_validation_split(tmp_path):
    _table(60).rename(columns={"review": "text", "sentiment": "label"}).to_csv(tmp_path / "train.csv", index=False)
    _table(20, 1).rename(columns={"review": "text", "sentiment": "label"}).to_csv(tmp_path / "test.csv", index=False)
    a, _ = data.prepare(cfg_for(tmp_path, tmp_path))
    b, _ = data.prepare(cfg_for(tmp_path, tmp_path))
    assert len(a["test"]) == 20 and len(a["validation"]) == 6 and len(a["train"]) == 54
    assert a["validation"].equals(b["validation"])  # seeded
    c, _ = data.prepare(cfg_for(tmp_path, tmp_path, "data.split_seed=7"))
    assert not a["validation"]["text"].equals(c["validation"]["text"])


@pytest.mark.parametrize(
    ("frame", "extra", "fragment"),
    [
        (pd.DataFrame({"text": ["a", "b"], "y": [0, 1]}), [], "no column 'label'"),
        (pd.DataFrame({"text": [1.5, 2.5, 3.5], "label": [0, 1, 0]}), [], "non-text values"),
        (pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 5]}), ["data.label_names=neg,pos"],
         "outside the label set"),
        (pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 5]}), [], "are not 0..N-1"),
        (pd.DataFrame({"text": ["a", "b", "c"], "label": ["neg", "pos", "meh"]}), ["data.label_names=[neg,pos]"],
         "use --labels meh,neg,pos"),
        (pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos", "pos", "pos"]}), [], "needs two or more"),
        (pd.DataFrame({"text": ["a", "b", "c"], "label": [0, None, 1]}), [], "no label"),
        (pd.DataFrame({"text": ["", "  ", None], "label": [0, 1, 0]}), [], "no rows with non-empty text"),
    ],
)
def test_bad_tables_fail_with_a_one_line_error(tmp_path, frame, extra, fragment):
    path = tmp_path / "bad.jsonl"
    frame.to_json(path, orient="records", lines=True)
    with pytest.raises(DataError) as info:
        data.prepare(cfg_for(tmp_path, path, *extra))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_encoding_and_missing_file(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9 tr\xe8s bon,1\nmauvais,0\n".encode("latin-1"))
    with pytest.raises(DataError, match="encoding"):
        data.prepare(cfg_for(tmp_path, path))
    with pytest.raises(DataError, match="does not exist"):
        data.prepare(cfg_for(tmp_path, tmp_path / "missing.csv"))


def test_empty_rows_are_dropped_and_duplicates_counted(tmp_path):
    texts = ["fine film", "", "   ", "fine film"] + [f"text {i}" for i in range(40)]
    frame = pd.DataFrame({"text": texts, "label": [i % 2 for i in range(len(texts))]})
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    splits, report = data.prepare(cfg_for(tmp_path, path))
    assert sum(len(x) for x in splits.values()) == len(texts) - 2
    assert sum(report.dropped_empty.values()) == 2
    assert any("dropped 2 empty texts" in line for line in report.lines())


def test_fetch_writes_atomically_and_keeps_old_output_on_failure(workdir):
    from sentiment_cli import fetch

    cfg = config.load("tiny", root=workdir)
    out = fetch.run(cfg)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"] == {"train": 8530, "validation": 1066, "test": 1066}
    assert meta["labels"] == ["neg", "pos"] and len(meta["sha256"]) == 64
    assert meta["source"] == "builtin:rt-polarity"
    train = pd.read_parquet(out / "train.parquet")
    assert list(train.columns) == ["text", "label"] and str(train["label"].dtype) == "int64"
    before = (out / "meta.json").read_text()
    with pytest.raises(DataError):
        fetch.run(config.load("tiny", [f"data.source={workdir / 'nope.csv'}"], root=workdir))
    assert (out / "meta.json").read_text() == before
    assert [p.name for p in workdir.joinpath("data").iterdir()] == ["processed"]  # no temp leftovers


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=3, max_size=300), st.integers(0, 2**31),
       st.floats(0.05, 0.3), st.floats(0.05, 0.3))
def test_split_frame_is_a_stratified_partition(labels, seed, val, test):
    df = pd.DataFrame({"text": [f"t{i}" for i in range(len(labels))], "label": labels})
    parts = data.split_frame(df, {"validation": val, "test": test}, seed)
    texts = [t for p in parts.values() for t in p["text"]]
    assert sorted(texts) == sorted(df["text"])  # every row exactly once
    for label, group in df.groupby("label"):
        n = len(group)
        got = (parts["validation"]["label"] == label).sum()
        assert abs(got - n * val) <= 1  # stratified: each class split in proportion
    again = data.split_frame(df, {"validation": val, "test": test}, seed)
    assert all(parts[s].equals(again[s]) for s in parts)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 128), min_size=1, max_size=500), st.integers(1, 64), st.integers(0, 1000))
def test_length_bucket_sampler_covers_every_index_once_per_epoch(lengths, batch, seed):
    sampler = batches.LengthBucketSampler(lengths, batch, seed)
    first = sampler.batches()
    assert sorted(i for b in first for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch for b in first) and len(first) == len(sampler)
    assert sampler.batches() == first  # deterministic for the same epoch
    sampler.use_epoch(1)
    second = sampler.batches()
    assert sorted(i for b in second for i in b) == list(range(len(lengths)))


def test_bucketing_reduces_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=4000)
    def padded(bucketing):
        cut = batches.LengthBucketSampler(lengths, 32, 0, bucketing=bucketing).batches()
        return sum(len(b) * lengths[b].max() for b in cut)
    assert padded(True) < 0.6 * padded(False)


def test_collator_pads_to_multiple_of_eight():
    batch = batches.Collator(pad_id=0)([([5, 6, 7], 1), ([5] * 10, 0)])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"].sum().item() == 13
    assert batch["labels"].tolist() == [1, 0] and batch["num_samples"] == 2
    assert batch["input_ids"][0, 3:].eq(0).all()


def test_hf_source_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="cannot load Hugging Face dataset"):
        data.prepare(cfg_for(tmp_path, "hf:rotten_tomatoes"))


def test_collator_fixed_shapes_pads_rows_the_loss_ignores():
    batch = batches.Collator(pad_id=0, multiple=16, fixed_batch=4)([([5, 6, 7], 1), ([5] * 17, 0)])
    assert batch["input_ids"].shape == (4, 32) and batch["num_samples"] == 2
    assert batch["labels"].tolist() == [1, 0, -100, -100]
    assert batch["attention_mask"][2:].sum(dim=1).tolist() == [1, 1]  # never an all-masked row
