"""Features of texts that `sent eval` (the drift reference) and `sent drift` (the current window)
compute the same way: one definition, so a reference and a window are always comparable.

- words(): lower-cased word tokens by one regular expression (no nltk, nothing downloaded).
- vocabulary(): the most frequent words of a corpus (the training split), for out-of-vocabulary shares.
- uppercase_share(): per text, the share of its letters in upper case.
- oov_share(): per text, the share of its words missing from that vocabulary.
- word_pairs(), unseen_pair_share(): the most frequent adjacent word pairs of the training split,
  and per text the share of its pairs missing from them (text from elsewhere: new word orders).
- bag_of_words(): a sparse texts × words count matrix over a fixed word index (+ one "other" column).
- token_lengths(): tokens per text under the model's own tokenizer (truncated as the model sees it).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
LETTER = re.compile(r"[^\W\d_]")
UPPER = re.compile(r"[A-ZÀ-ÖØ-ÞΑ-ΩА-Я]")  # upper-case letters of the Latin, Greek and Cyrillic scripts
MAX_VOCABULARY = 30000  # words kept from the training split: RT's whole train vocabulary is ~18k
MAX_WORD_PAIRS = 150000  # adjacent word pairs kept from the training split: RT's train has ~90k


def words(text: str) -> list[str]:
    """Word tokens, lower-cased: letters and digits, with one inner apostrophe (don't, it's)."""
    return WORD.findall(text.lower())


def char_lengths(texts: Sequence[str]) -> np.ndarray:
    return np.fromiter((len(t) for t in texts), dtype=np.float64, count=len(texts))


def uppercase_share(texts: Sequence[str]) -> np.ndarray:
    """Per text, the share of its letters that are upper case (0 without letters): a model whose
    tokenizer lower-cases cannot see a change in case, this can."""
    out = np.zeros(len(texts), dtype=np.float64)
    for i, t in enumerate(texts):
        if t != t.lower():  # the common case (no capitals at all) without a loop over characters
            upper = len(UPPER.findall(t))
            letters = len(LETTER.findall(t))
            out[i] = upper / letters if letters else 0.0
    return out


def word_counts(texts: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for t in texts:
        counts.update(words(t))
    return counts


def vocabulary(texts: Iterable[str], max_size: int = MAX_VOCABULARY) -> list[str]:
    """The max_size most frequent words, most frequent first (ties alphabetical: deterministic)."""
    counts = word_counts(texts)
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_size]]


def oov_share(texts: Sequence[str], vocab: set[str] | frozenset[str]) -> np.ndarray:
    """Per text, the share of its words not in vocab (0 for a text without words)."""
    out = np.zeros(len(texts), dtype=np.float64)
    for i, t in enumerate(texts):
        ws = words(t)
        if ws:
            out[i] = sum(w not in vocab for w in ws) / len(ws)
    return out


def _pairs(text: str) -> list[str]:
    ws = words(text)
    return [f"{a} {b}" for a, b in zip(ws, ws[1:], strict=False)]


def word_pairs(texts: Iterable[str], max_size: int = MAX_WORD_PAIRS) -> list[str]:
    """The max_size most frequent adjacent word pairs ("a b"), most frequent first (ties
    alphabetical: deterministic)."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(_pairs(t))
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_size]]


def unseen_pair_share(texts: Sequence[str], pairs: set[str] | frozenset[str]) -> np.ndarray:
    """Per text, the share of its adjacent word pairs not in pairs (0 for a text of one word)."""
    out = np.zeros(len(texts), dtype=np.float64)
    for i, t in enumerate(texts):
        ps = _pairs(t)
        if ps:
            out[i] = sum(p not in pairs for p in ps) / len(ps)
    return out


def bag_of_words(texts: Sequence[str], index: dict[str, int]):
    """A scipy.sparse CSR matrix (texts × (len(index) + 1)); the last column counts other words."""
    from scipy import sparse

    other = len(index)
    rows, cols = [], []
    for i, t in enumerate(texts):
        for w in words(t):
            rows.append(i)
            cols.append(index.get(w, other))
    data = np.ones(len(rows), dtype=np.float64)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(texts), other + 1))


def token_lengths(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Tokens per text as the model sees it (special tokens included, truncated at max_length)."""
    if not len(texts):
        return np.zeros(0, dtype=np.float64)
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return np.array([len(x) for x in ids], dtype=np.float64)
