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


def test_one_text_is_predicted_exactly_as_predict_proba_gives_it_and_overrides_are_kept(tiny_folder):
    """One text (each pass of serve's one-text lanes) skips predict_proba's batch machinery:
    predict gives the same probabilities to the bit as predict_proba and as a batch's row for it,
    the first highest label; a predictor whose predict_proba is its own still goes through it."""
    pred = model.Predictor.from_folder(tiny_folder, batch_size=4)
    for text in ["x", "great acting", "a much longer text about a movie " * 5]:
        (got,), row = pred.predict([text]), pred.predict_proba([text])[0]
        assert got.label_id == int(row.argmax()) and got.label == pred.labels[got.label_id]
        assert got.score == float(row[got.label_id])
        assert got.probabilities == {name: float(p) for name, p in zip(pred.labels, row, strict=True)}
        assert all(type(v) is float for v in got.probabilities.values())
        np.testing.assert_allclose(row, pred.predict_proba([text, "ok"])[0], atol=1e-5)
        assert row.dtype == np.float32 and row.shape == (len(pred.labels),)

    class Fixed(model.Predictor):
        def predict_proba(self, texts, parallel=True):
            return np.array([[0.5, 0.5]] * len(texts), dtype=np.float32)  # a tie: the first wins

    fixed = Fixed(pred.model, pred.tokenizer)
    assert [(p.label_id, p.score) for p in fixed.predict(["anything"])] == [(0, 0.5)]


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


def test_an_unreachable_hub_fails_at_once_with_the_hint_without_asking_it(tmp_path, monkeypatch):
    """Offline without HF_HUB_OFFLINE: one refused connect, then the cache only (no retries)."""
    import os

    import huggingface_hub.constants as hub_constants
    import huggingface_hub.file_download as file_download

    from sentiment_cli import hub, servers

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{servers.free_port()}")  # nothing listens there
    asked = []

    def metadata(*args, **kwargs):  # the request huggingface_hub retries when the network is down
        asked.append(args)
        raise AssertionError("asked the Hub")

    monkeypatch.setattr(file_download, "get_hf_file_metadata", metadata)
    hub.reachable.cache_clear()
    cfg = config.load("cpu", ["model.name=some-org/not-a-model"], root=tmp_path)
    try:
        with pytest.raises(ModelError) as info:
            model.build(cfg, ["neg", "pos"])
        assert "the Hugging Face Hub cannot be reached and 'some-org/not-a-model' is not in the local cache" \
            in str(info.value) and "offline?" in str(info.value) and "\n" not in str(info.value)
        assert asked == []
        assert os.environ["HF_HUB_OFFLINE"] == "1" and hub_constants.HF_HUB_OFFLINE is True  # for the process
    finally:
        hub.reachable.cache_clear()


def test_reachable_asks_once_and_honours_hf_hub_offline(monkeypatch):
    from sentiment_cli import hub

    calls = []
    monkeypatch.setattr(hub.socket, "create_connection", lambda *a, **k: calls.append(a) or __import__("io").BytesIO())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    hub.reachable.cache_clear()
    try:
        assert hub.reachable() and hub.reachable() and len(calls) == 1
        hub.reachable.cache_clear()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert not hub.reachable() and len(calls) == 1  # offline by choice: not even one connect
    finally:
        hub.reachable.cache_clear()


def test_a_folder_with_fewer_positions_than_max_length_is_clamped_with_one_line(tmp_path, capsys):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from sentiment_cli import batches

    tok = model.train_tokenizer(TEXTS * 3, 200)
    net = BertForSequenceClassification(BertConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2))
    folder = tmp_path / "short"
    net.save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = config.load("cpu", [f"model.name={folder}", "model.max_length=64"], root=tmp_path)
    long_text = "great movie " * 40
    tok2, net2 = model.build(cfg, ["neg", "pos"])
    out = capsys.readouterr().out
    assert f"note: model.max_length 64 is more than {folder} allows; using 16 tokens" in out
    ds = batches.EncodedDataset(tok2, [long_text], [0], cfg.model.max_length)  # what train feeds it
    assert ds.lengths == [16]
    assert net2(input_ids=torch.tensor(ds.input_ids)).logits.shape == (1, 2)
    # eval and serve: a Predictor asked for more (sent.json's or the default 128) gets what fits
    pred = model.Predictor(net2, tok2, max_length=128, name="short")
    assert pred.max_length == 16 and pred.predict([long_text])[0].label in ("neg", "pos")
    assert "using 16 tokens" in capsys.readouterr().out
