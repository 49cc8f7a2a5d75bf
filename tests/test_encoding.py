"""encoding.single_encoder: the Rust encoder alone, used only where it gives the tokenizer's own ids."""

from __future__ import annotations

import numpy as np
import pytest
import serve_fixtures

from sentiment_cli import encoding

tiny_model_dir = serve_fixtures.tiny_model_dir

TEXTS = ["good", "a dull , lifeless remake", "Café crème — 😀 " * 3, "unknownwordzz qq", "  spaced  out  ",
         "the performances are terrific and the script is sharp " * 30]  # the last: truncated


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)


def _names(tokenizer) -> list[str]:
    return list(tokenizer.model_input_names)


def test_the_direct_encoder_gives_the_tokenizers_own_arrays_and_leaves_it_unchanged(tokenizer):
    encode = encoding.single_encoder(tokenizer, 32, _names(tokenizer))
    assert encode is not None
    for text in TEXTS:
        want = tokenizer([text], padding=True, truncation=True, max_length=32, return_tensors="np")
        got = encode(text)
        assert set(got) == set(_names(tokenizer))
        for name in got:
            assert got[name].dtype == np.int64 and got[name].shape[0] == 1
            np.testing.assert_array_equal(got[name], want[name])
    assert encode(TEXTS[-1])["input_ids"].shape == (1, 32)  # truncated to max_length, specials kept
    # The tokenizer's own backend keeps its settings: an untruncated call is as long as before.
    assert len(tokenizer(TEXTS[-1])["input_ids"]) > 32


def test_no_direct_encoder_where_it_could_differ(tokenizer):
    class Slow:  # a tokenizer with no Rust backend
        is_fast = False

    class Different:  # a fast backend, but a call that gives other ids (a subclass that post-processes)
        is_fast, truncation_side = True, "right"
        backend_tokenizer = tokenizer.backend_tokenizer

        def __call__(self, texts, **kw):
            out = tokenizer(texts, **kw)
            out["input_ids"] = out["input_ids"][:, ::-1]
            return out

    assert encoding.single_encoder(Slow(), 32, ["input_ids"]) is None
    assert encoding.single_encoder(Different(), 32, ["input_ids", "attention_mask"]) is None
    assert encoding.single_encoder(tokenizer, 32, ["input_ids", "pixel_values"]) is None


def test_onnx_predictor_answers_the_same_with_and_without_the_direct_encoder(tiny_model_dir, tmp_path):
    from sentiment_cli.onnxrt import OnnxPredictor

    predictor = OnnxPredictor.from_folder(tiny_model_dir, threads=1, cache=str(tmp_path / "onnx"))
    assert predictor._encode_one is not None
    fast = predictor.predict_proba(TEXTS, parallel=False)
    predictor._encode_one = None  # the tokenizer's own call
    np.testing.assert_array_equal(predictor.predict_proba(TEXTS, parallel=False), fast)
