"""From texts and the model's outputs to the tests of one window against the reference.

`Features` holds per-text features computed the same way for the reference sample (from what
`sent eval` stored) and for the current window (textstats); `compare()` runs every test in
stats.py on two Features and returns them with the overall verdict. No files are read here, so
the benchmark runs thousands of windows over precomputed features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sentiment_cli import textstats
from sentiment_cli.drift import stats

TESTS = ("labels", "confidence", "positive_probability", "length_chars", "length_tokens", "uppercase",
         "oov", "words", "embeddings")


@dataclass
class Features:
    texts: list[str]
    probabilities: np.ndarray  # (n, labels)
    length_chars: np.ndarray
    length_tokens: np.ndarray
    oov: np.ndarray  # per text: share of words outside the training vocabulary
    bow: Any  # scipy.sparse CSR (n, vocabulary + 1)
    embeddings: np.ndarray | None = None
    uppercase: np.ndarray | None = None  # per text: share of letters in upper case

    def __post_init__(self) -> None:
        if self.uppercase is None:
            self.uppercase = textstats.uppercase_share(self.texts)

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx) -> Features:
        idx = np.asarray(idx, dtype=np.int64)
        return Features([self.texts[i] for i in idx], self.probabilities[idx], self.length_chars[idx],
                        self.length_tokens[idx], self.oov[idx], self.bow[idx],
                        None if self.embeddings is None else self.embeddings[idx], self.uppercase[idx])


class Vocabulary:
    """The training vocabulary as a set (OOV) and as a fixed word index (bag of words). The index
    is fixed before any window is seen, so permuting texts between the groups stays valid."""

    def __init__(self, words: list[str]):
        self.words = list(words)
        self.set = frozenset(self.words)
        self.index = {w: i for i, w in enumerate(self.words)}


def features(texts: list[str], probabilities: np.ndarray, length_tokens: np.ndarray, vocab: Vocabulary,
             embeddings: np.ndarray | None = None) -> Features:
    return Features(list(texts), np.asarray(probabilities, dtype=np.float64), textstats.char_lengths(texts),
                    np.asarray(length_tokens, dtype=np.float64), textstats.oov_share(texts, vocab.set),
                    textstats.bag_of_words(texts, vocab.index), embeddings)


def _subsample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, size=cap, replace=False))


def compare(ref: Features, cur: Features, d, labels: list[str], seed: int,
            with_words: bool = True) -> tuple[list[stats.TestResult], bool, dict]:
    """Every test of the current window against the reference; (results, drift, words).

    `d` is cfg.drift (alpha, permutations, samples, min_effect). The embedding test runs when
    both sides carry embeddings."""
    rng = np.random.default_rng(seed)
    floor = d.min_effect
    n_labels = len(labels)
    ref_pred, cur_pred = ref.probabilities.argmax(axis=1), cur.probabilities.argmax(axis=1)
    results = [
        stats.labels_test(ref_pred, cur_pred, n_labels, floor.labels, labels),
        stats.ks_test("confidence", ref.probabilities.max(axis=1), cur.probabilities.max(axis=1),
                      floor.confidence),
        stats.ks_test("positive_probability", ref.probabilities[:, -1], cur.probabilities[:, -1],
                      floor.positive_probability),
        stats.ks_test("length_chars", ref.length_chars, cur.length_chars, floor.length_chars),
        stats.ks_test("length_tokens", ref.length_tokens, cur.length_tokens, floor.length_tokens),
        stats.ks_test("uppercase", ref.uppercase, cur.uppercase, floor.uppercase),
    ]
    # Permutation tests on a bounded sample of the current window: their cost grows with N × B.
    sub = _subsample(len(cur), d.permutation_sample, rng)
    groups = stats.group_matrix(len(ref), len(sub), d.permutations, rng)
    results.append(stats.mean_diff_test("oov", ref.oov, cur.oov[sub], groups, floor.oov))
    results.append(stats.words_test(ref.bow, cur.bow[sub], groups, floor.words))
    if d.embeddings and ref.embeddings is not None and cur.embeddings is not None and len(cur.embeddings):
        r = _subsample(len(ref.embeddings), d.embedding_sample, rng)
        c = _subsample(len(cur.embeddings), d.embedding_sample, rng)
        results.append(stats.mmd_test(ref.embeddings[r], cur.embeddings[c], d.permutations, rng,
                                      floor.embeddings))
    drift = stats.verdicts(results, d.alpha)
    words = {}
    if with_words:
        words = stats.log_odds(textstats.word_counts(ref.texts),
                               textstats.word_counts(cur.texts[i] for i in sub))
    return results, drift, words
