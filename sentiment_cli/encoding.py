"""One text → the model's input arrays, through the tokenizer's Rust encoder alone.

A Hugging Face fast tokenizer's call wraps its Rust encoder in Python: argument checks, padding
and truncation strategies, a BatchEncoding, the conversion to arrays. For a short review that
wrapper costs more than the encoding itself, and it holds the GIL that the event loop and the
other lanes of `sent serve` need. ONNX Runtime's lanes run one text per pass, so it ran once per
request. `single_encoder` returns a function that calls the encoder directly, and only when it
gives exactly what the tokenizer's own call gives: the same ids, mask and type ids on probe texts
that are short, long (truncated), accented and emoji, checked once when the model is loaded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

# What each model input is called on a tokenizers Encoding.
_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def _probes(texts: Sequence[str]) -> list[str]:
    long = " ".join(texts) or "a long review"
    return [*texts, "Café crème, naïve — 😀 !!", long * 40]  # long * 40: past any max_length


def single_encoder(tokenizer: Any, max_length: int, names: Sequence[str],
                   probes: Sequence[str] = ()) -> Callable[[str], dict[str, Any]] | None:
    """text → {name: int64 array of shape (1, tokens)} for each of the model's input names, the
    same arrays as tokenizer([text], padding=True, truncation=True, max_length=max_length) gives;
    None when the tokenizer is not a fast one, an input is not one an encoding has, or the
    direct call differs from the tokenizer's own on any probe text."""
    import numpy as np

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False) or any(n not in _FIELDS for n in names):
        return None
    try:
        encoder = copy.deepcopy(backend)  # settings of its own: the tokenizer's stay as they were
        encoder.no_padding()
        encoder.enable_truncation(max_length, strategy="longest_first",
                                  direction=getattr(tokenizer, "truncation_side", "right"))
    except Exception:  # a backend without these settings: the tokenizer's call it is
        return None
    fields = [(name, _FIELDS[name]) for name in names]

    def encode(text: str) -> dict[str, Any]:
        e = encoder.encode(text)
        return {name: np.array([getattr(e, field)], dtype=np.int64) for name, field in fields}

    for text in _probes(probes):
        want = tokenizer([text], padding=True, truncation=True, max_length=max_length, return_tensors="np")
        got = encode(text)
        if any(name not in want or not np.array_equal(got[name], np.asarray(want[name], dtype=np.int64))
               for name in names):
            return None
    return encode
