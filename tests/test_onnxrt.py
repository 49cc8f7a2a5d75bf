"""The ONNX Runtime variant: export checked against torch, a verified cache, the same answers."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from sentiment_cli import config, model, onnxrt
from sentiment_cli.model import ModelError

TEXTS = [f"{w} movie with {x} acting" for w in ("great", "awful", "fine", "dull", "superb")
         for x in ("wooden", "lively", "plain")] + ["x", "a much longer review of a film " * 12]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    cfg = config.load("tiny", root=tmp_path_factory.mktemp("cfg"))
    tok, net = model.build(cfg, ["neg", "pos"], train_texts=TEXTS * 3)
    out = tmp_path_factory.mktemp("m") / "tiny"
    model.save(out, net, tok, {"config": config.to_dict(cfg)})
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("onnx-cache"))


def test_fp32_export_gives_the_torch_models_probabilities(folder, cache):
    torch_p = model.Predictor.from_folder(folder, batch_size=4)
    onnx_p = onnxrt.OnnxPredictor.from_folder(folder, quantize=False, cache=cache, batch_size=4)
    assert onnx_p.variant == "onnx-fp32" and onnx_p.labels == ["neg", "pos"]
    assert onnx_p.input_names[:2] == ["input_ids", "attention_mask"]
    np.testing.assert_allclose(onnx_p.predict_proba(TEXTS), torch_p.predict_proba(TEXTS), atol=1e-4)


def test_int8_is_close_and_lanes_change_nothing(folder, cache):
    reference = model.Predictor.from_folder(folder).predict_proba(TEXTS)
    int8 = onnxrt.OnnxPredictor.from_folder(folder, quantize=True, cache=cache, threads=2)
    assert int8.variant == "onnx-int8" and int8.lanes == 2 and int8.batch_size == 1
    parallel = int8.predict_proba(TEXTS)
    serial = int8.predict_proba(TEXTS, parallel=False)
    np.testing.assert_array_equal(parallel, serial)  # results land in input order from any lane
    assert np.abs(parallel - reference).max() < 0.05
    preds = int8.predict(TEXTS[:3], parallel=False)
    assert [p.label_id for p in preds] == parallel[:3].argmax(1).tolist()


class _Counting:
    """A session that counts its passes, run on the session it wraps."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, *args):
        self.runs += 1
        return self.session.run(*args)


def test_a_pass_alone_runs_on_a_second_session_on_more_threads_with_the_same_answers(folder, cache):
    p = onnxrt.OnnxPredictor.from_folder(folder, quantize=True, cache=cache, threads=2, alone_threads=2)
    assert p.alone is not None and p.alone is not p.session and p.alone_threads == 2
    assert p.alone.get_session_options().intra_op_num_threads == 2
    assert p.session.get_session_options().intra_op_num_threads == 1
    lanes, alone = p.session, p.alone
    p.session, p.alone = _Counting(lanes), _Counting(alone)
    side_by_side = p.predict_proba(TEXTS[:3], parallel=False)  # no pass_alone yet: the lanes' session
    assert (p.session.runs, p.alone.runs) == (3, 0)
    p.pass_alone(True)
    solo = p.predict_proba(TEXTS[:3], parallel=False)
    assert (p.session.runs, p.alone.runs) == (3, 3)
    seen = []
    with ThreadPoolExecutor(1) as other:  # the choice is the calling lane's, not every lane's
        other.submit(lambda: seen.append(p.predict_proba(TEXTS[:1], parallel=False))).result()
    assert (p.session.runs, p.alone.runs) == (4, 3)
    p.pass_alone(False)
    p.predict_proba(TEXTS[:1], parallel=False)
    assert (p.session.runs, p.alone.runs) == (5, 3)
    np.testing.assert_allclose(solo, side_by_side, atol=1e-5)

    one = onnxrt.OnnxPredictor.from_folder(folder, quantize=True, cache=cache, threads=2)
    assert one.alone is None and one.alone_threads == 1  # the default: no second copy
    one.pass_alone(True)
    np.testing.assert_allclose(one.predict_proba(TEXTS[:3], parallel=False), side_by_side, atol=1e-5)


def test_serve_loads_a_session_for_a_pass_alone_on_its_workers_share_of_the_cores(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from sentiment_cli import loading

    asked = []

    def fake_from_folder(folder, *, threads=0, alone_threads=1, **kwargs):
        asked.append((threads, alone_threads))
        return SimpleNamespace(meta={}, version=None)

    monkeypatch.setattr(onnxrt.OnnxPredictor, "from_folder", staticmethod(fake_from_folder))
    monkeypatch.setattr(onnxrt, "usable_cores", lambda: 4)
    for overrides, wanted in [([], (8, 4)), (["serve.workers=2"], (8, 2)), (["serve.workers=8"], (8, 1)),
                              (["serve.alone_threads=1"], (8, 1)), (["serve.alone_threads=3"], (8, 3))]:
        asked.clear()
        cfg = config.load(root=tmp_path, overrides=overrides)
        loading.load_predictor(cfg, tmp_path, {"name": "served"}, gate=False, runtime="onnx")
        assert asked == [wanted], overrides
    asked.clear()
    loading.load_predictor(config.load(root=tmp_path), tmp_path, {"name": "drift"}, gate=False, runtime="onnx",
                           alone_threads=1)
    assert asked == [(8, 1)]


def test_the_export_is_built_once_and_reused(folder, cache, monkeypatch):
    first = onnxrt.build(folder, quantize=True, cache=cache)

    def export_again(*args, **kwargs):
        raise AssertionError("exported twice")

    monkeypatch.setattr(onnxrt, "_export_in_child", export_again)
    assert onnxrt.build(folder, quantize=True, cache=cache) == first
    manifest = json.loads((first.parent / "manifest.json").read_text())
    assert manifest["weights_sha256"] == model.weights_sha256(folder)
    assert manifest["max_prob_diff_fp32"] <= onnxrt.EXPORT_TOLERANCE
    assert set(manifest["files"]) == {"model.onnx", "model.int8.onnx"}
    assert manifest["last_layer_first_token_only"] is True  # and still equal to torch (test above)


def test_a_head_that_reads_other_tokens_keeps_the_whole_last_layer(folder, tmp_path, monkeypatch):
    real = onnxrt._compare

    def compare(model_, tokenizer, path, names, max_length):
        # as if the classifier pooled over all tokens: the trimmed graph no longer agrees
        return 0.3 if path.name == "trimmed.onnx" else real(model_, tokenizer, path, names, max_length)

    monkeypatch.setattr(onnxrt, "_compare", compare)
    out = tmp_path / "cache" / "entry"
    onnxrt._export_all(folder, out)  # the recipe in this process, where the patch applies
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["last_layer_first_token_only"] is False
    assert manifest["max_prob_diff_fp32"] <= onnxrt.EXPORT_TOLERANCE
    assert not (out / "trimmed.onnx").exists()


def test_new_weights_get_their_own_export(folder, cache, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert onnxrt.cache_dir(copy, cache) == onnxrt.cache_dir(folder, cache)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert onnxrt.cache_dir(copy, cache) != onnxrt.cache_dir(folder, cache)


def test_a_changed_cached_file_is_refused(folder, tmp_path, capfd):
    cache = str(tmp_path / "cache")
    path = onnxrt.build(folder, quantize=False, cache=cache)
    said = capfd.readouterr().err  # the export takes a while: it says so, and how it went (the child)
    assert f"exporting {folder} to ONNX" in said and "last layer trimmed to the first token" in said
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its manifest"):
        onnxrt.OnnxPredictor.from_folder(folder, cache=cache)


def test_an_export_that_disagrees_with_torch_is_not_kept(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(onnxrt, "_compare", lambda *args: 0.25)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match="differs from the torch model by 0.25"):
        onnxrt._export_all(folder, cache / "entry")  # the recipe in this process, where the patch applies
    assert [p for p in cache.iterdir() if p.is_dir()] == []  # nothing half-built is left to reuse


def test_the_export_runs_in_a_child_whose_failure_is_one_line_and_leaves_nothing(folder, tmp_path, capsys):
    import os

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "tokenizer.json").write_text("{not json")  # loads in no process: fails in the child
    cache = tmp_path / "cache"
    pid = os.getpid()
    with pytest.raises(ModelError) as raised:
        onnxrt.build(broken, quantize=False, cache=str(cache))
    message = str(raised.value)
    assert "\n" not in message and "Traceback" not in message and str(broken) in message, message
    assert f"exporting {broken} to ONNX" in capsys.readouterr().err
    assert [p for p in cache.iterdir() if p.is_dir()] == [] and os.getpid() == pid


def test_a_good_export_made_in_the_child_serves_here(folder, tmp_path):
    cache = str(tmp_path / "cache")
    path = onnxrt.build(folder, quantize=False, cache=cache)
    assert path.name == "model.onnx" and onnxrt._verified(path.parent, "model.onnx") == path
    got = onnxrt.OnnxPredictor.from_folder(folder, cache=cache).predict_proba(TEXTS)
    assert np.abs(got - model.Predictor.from_folder(folder).predict_proba(TEXTS)).max() <= onnxrt.EXPORT_TOLERANCE


def test_untrusted_folders_are_refused_before_export(folder, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(folder, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickled weights are never loaded"):
        onnxrt.build(pickled, quantize=True, cache=str(tmp_path / "cache"))


def test_variant_names():
    assert onnxrt.variant("onnx", True) == "onnx-int8" and onnxrt.variant("torch", False) == "torch-fp32"
    assert onnxrt.parse_variant("torch-int8") == ("torch", True)
    with pytest.raises(ModelError, match="unknown model variant"):
        onnxrt.parse_variant("onnx-fp16")


def test_the_default_cache_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert onnxrt.cache_root() == tmp_path / "sent" / "onnx"
    assert onnxrt.cache_root("~/elsewhere") != tmp_path / "sent" / "onnx"


def test_a_model_with_fewer_positions_than_its_recorded_max_length_exports_and_runs(tmp_path, capsys):
    """sent.json records the max_length asked for (64); the model's positions hold 16. The ONNX
    runtime uses what fits, as the torch Predictor does, instead of failing at export or at the
    first long text."""
    from transformers import BertConfig, BertForSequenceClassification

    tok = model.train_tokenizer(TEXTS * 3, 200)
    BertForSequenceClassification(BertConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2)).save_pretrained(tmp_path / "short")
    tok.save_pretrained(tmp_path / "short")
    cfg = config.load("cpu", [f"model.name={tmp_path / 'short'}", "model.max_length=64"], root=tmp_path)
    tok2, net2 = model.build(cfg, ["neg", "pos"])  # what sent train does with such a folder
    folder = model.save(tmp_path / "trained", net2, tok2, {"config": config.to_dict(cfg)})
    assert model.max_length_of(model.read_meta(folder)) == 64
    capsys.readouterr()
    long_texts = ["great movie " * 40, "dull film " * 30, "fine"]
    onnx_p = onnxrt.OnnxPredictor.from_folder(folder, quantize=False, cache=str(tmp_path / "cache"))
    assert onnx_p.max_length == 16
    assert "using 16 tokens" in capsys.readouterr().out
    torch_p = model.Predictor.from_folder(folder)
    np.testing.assert_allclose(onnx_p.predict_proba(long_texts), torch_p.predict_proba(long_texts), atol=1e-4)


def test_runtime_for_builds_only_for_auto_and_falls_back_to_torch_with_a_reason(tmp_path, monkeypatch, capsys):
    from sentiment_cli import loading

    calls = []

    def build(folder, *, quantize, cache=None):
        calls.append((folder, quantize))
        raise ModelError("cannot export Thing to ONNX: no symbolic for op Foo; use serve.runtime=torch")

    monkeypatch.setattr(onnxrt, "build", build)
    for runtime in ("torch", "onnx"):
        cfg = config.load("tiny", [f"serve.runtime={runtime}"])
        assert loading.runtime_for(cfg, tmp_path) == runtime
    assert calls == []  # named runtimes are taken as they are: no export attempted here

    cfg = config.load("tiny", ["serve.runtime=auto", "serve.quantize=true"])
    assert loading.runtime_for(cfg, tmp_path) == "torch"
    assert calls == [(tmp_path, True)]
    err = capsys.readouterr().err
    assert f"serve.runtime=auto: serving with torch, as {tmp_path} does not run in ONNX Runtime" in err
    assert "no symbolic for op Foo" in err

    monkeypatch.setattr(onnxrt, "build", lambda folder, *, quantize, cache=None: tmp_path / "model.onnx")
    assert loading.runtime_for(cfg, tmp_path) == "onnx"
    assert loading.needs_gate("onnx-int8") and loading.needs_gate("torch-int8")
    assert not loading.needs_gate("onnx-fp32") and not loading.needs_gate("torch-fp32")
