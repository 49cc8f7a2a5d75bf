import json
import shutil

import numpy as np
import pytest

from sentiment_cli import config, model
from sentiment_cli.model import ModelError

TEXTS = [f"{w} movie with {x} acting" for w in ("great", "awful", "fine", "dull", "superb")
         for x in ("wooden", "lively", "plain")]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    cfg = config.load("tiny", root=tmp_path_factory.mktemp("cfg"))
    tok, net = model.build(cfg, ["neg", "pos"], train_texts=TEXTS * 3)
    folder = tmp_path_factory.mktemp("m") / "tiny"
    model.save(folder, net, tok, {"config": config.to_dict(cfg), "note": "test"})
    return folder


def test_save_writes_a_self_describing_safetensors_folder(tiny_folder):
    names = {p.name for p in tiny_folder.iterdir()}
    assert {"config.json", "model.safetensors", model.META_FILE, "tokenizer.json"} <= names
    assert not any(n.endswith(".bin") for n in names)
    meta = model.read_meta(tiny_folder)
    assert meta["note"] == "test" and meta["weights_sha256"] == model.weights_sha256(tiny_folder)
    assert json.loads((tiny_folder / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}


def test_predictions_survive_a_save_load_round_trip_in_input_order(tiny_folder):
    pred = model.Predictor.from_folder(tiny_folder, batch_size=4)
    texts = ["x", "a much longer text about a movie " * 5, "ok", "great acting", "awful"]
    batched = pred.predict_proba(texts)
    one_by_one = np.vstack([pred.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)  # sorting by length never reorders results
    assert np.allclose(batched.sum(axis=1), 1.0, atol=1e-5)
    results = pred.predict(texts)
    assert [r.label_id for r in results] == batched.argmax(1).tolist()
    assert results[0].label in ("neg", "pos") and set(results[0].probabilities) == {"neg", "pos"}
    assert pred.max_length == 64  # taken from the saved config


def test_quantized_predictor_agrees_with_fp32(tiny_folder):
    fp32 = model.Predictor.from_folder(tiny_folder)
    int8 = model.Predictor.from_folder(tiny_folder, quantize=True)
    a, b = fp32.predict_proba(TEXTS), int8.predict_proba(TEXTS)
    assert np.abs(a - b).max() < 0.05


def test_weights_hash_changes_with_the_weights(tiny_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_folder, copy)
    assert model.weights_sha256(copy) == model.weights_sha256(tiny_folder)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert model.weights_sha256(copy) != model.weights_sha256(tiny_folder)


def test_untrusted_folders_are_refused_clearly(tiny_folder, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        model.load(tmp_path / "nope")
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_folder, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickled weights are never loaded"):
        model.load(pickled)
    remote = tmp_path / "remote"
    shutil.copytree(tiny_folder, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "evil.Model"}
    (remote / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="remote code is never run"):
        model.load(remote)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        model.load(broken)
    (broken / "config.json").unlink()
    with pytest.raises(ModelError, match="no config.json"):
        model.load(broken)


def test_offline_hub_name_fails_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = config.load("cpu", ["model.name=some-org/not-a-model"], root=tmp_path)
    with pytest.raises(ModelError, match="offline"):
        model.build(cfg, ["neg", "pos"])


def test_a_local_pretrained_folder_is_fine_tunable(tiny_folder, tmp_path):
    cfg = config.load("cpu", [f"model.name={tiny_folder}"], root=tmp_path)
    tok, net = model.build(cfg, ["bad", "okay", "good"])  # new head with three labels
    assert net.config.num_labels == 3 and net.config.id2label[2] == "good"
    assert tok("great movie")["input_ids"]


def test_save_replaces_atomically(tiny_folder, tmp_path):
    target = tmp_path / "out"
    tok, net, _ = model.load(tiny_folder)
    model.save(target, net, tok, {"v": 1})
    model.save(target, net, tok, {"v": 2})
    assert model.read_meta(target)["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------- the content hash covers what decides a prediction


def _swap_labels(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["id2label"] = {"0": cfg["id2label"]["1"], "1": cfg["id2label"]["0"]}
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("change", ["labels", "tokenizer", "new file"])
def test_the_content_hash_covers_config_and_tokenizer(tiny_folder, tmp_path, change):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_folder, copy)
    if change == "labels":
        _swap_labels(copy)  # every prediction inverted, weights untouched
    elif change == "tokenizer":
        tok = json.loads((copy / "tokenizer.json").read_text())
        tok["normalizer"]["lowercase"] = False
        (copy / "tokenizer.json").write_text(json.dumps(tok))
    else:
        (copy / "added_tokens.json").write_text('{"great": 7}')
    assert model.legacy_weights_sha256(copy) == model.legacy_weights_sha256(tiny_folder)
    assert model.weights_sha256(copy) != model.weights_sha256(tiny_folder)
    with pytest.raises(ModelError, match="does not match sent.json .*changed: ") as info:
        model.verify_weights(copy, model.read_meta(copy)["weights_sha256"], "sent.json")
    assert "\n" not in str(info.value)


def test_files_sent_never_loads_do_not_change_the_hash(tiny_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_folder, copy)
    (copy / "pytorch_model.bin").write_bytes(b"a pickle that is never loaded")
    (copy / "README.md").write_text("notes")
    assert model.weights_sha256(copy) == model.weights_sha256(tiny_folder)
    assert "pytorch_model.bin" not in {p.name for p in model.model_files(copy)}
    assert set(model.read_meta(tiny_folder)["files"]) == {p.name for p in model.model_files(tiny_folder)}


def test_a_version_registered_before_content_hashing_still_verifies_with_a_warning(tiny_folder, capsys):
    legacy = model.legacy_weights_sha256(tiny_folder)
    assert model.verify_weights(tiny_folder, legacy, "the registry tag") == model.weights_sha256(tiny_folder)
    assert "predates content hashing" in capsys.readouterr().err
