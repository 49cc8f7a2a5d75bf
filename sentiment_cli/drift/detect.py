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

TESTS = ("labels", "confidence", "positive_probability", "mean_probability", "length_chars", "length_tokens",
         "uppercase", "oov", "word_pairs", "words", "embeddings")
# Holm weights (stats.holm), summing to 1: fixed in advance from what each test must see, not
# tuned on benchmark windows. A shift in the label prior (the drift operators meet most) is small
# where it matters and only the model's outputs show it: a 70/30 prior moves the mean positive
# probability by about 0.2 × (E[p | positive] − E[p | negative]), about 0.12 for a model of
# accuracy 0.82, some 4 standard errors at 200 texts against 1,000, so its test gets half of
# alpha. word_pairs, the one test made for a minority of foreign text, gets 0.15. Each other test
# keeps 0.35 / 9 of alpha (0.0019 at the first step), still above the smallest permutation
# p-value (1 / 1001): they see the shifts they are made for with far smaller p-values.
WEIGHTS = {"mean_probability": 0.5, "word_pairs": 0.15,
           **{t: 0.35 / 9 for t in ("labels", "confidence", "positive_probability", "length_chars", "length_tokens",
                                   "uppercase", "oov", "words", "embeddings")}}


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
    unseen_pairs: np.ndarray | None = None  # per text: share of word pairs not in the training split

    def __post_init__(self) -> None:
        if self.uppercase is None:
            self.uppercase = textstats.uppercase_share(self.texts)

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx) -> Features:
        idx = np.asarray(idx, dtype=np.int64)
        return Features([self.texts[i] for i in idx], self.probabilities[idx], self.length_chars[idx],
                        self.length_tokens[idx], self.oov[idx], self.bow[idx],
                        self._embeddings_at(idx), self.uppercase[idx],
                        None if self.unseen_pairs is None else self.unseen_pairs[idx])

    def _embeddings_at(self, idx: np.ndarray) -> np.ndarray | None:
        # embeddings may be a sample of their own (encoding is the slow part): then they stay
        if self.embeddings is None or len(self.embeddings) != len(self.texts):
            return self.embeddings
        return self.embeddings[idx]


class Vocabulary:
    """The training vocabulary as a set (OOV) and as a fixed word index (bag of words). The index
    is fixed before any window is seen, so permuting texts between the groups stays valid."""

    def __init__(self, words: list[str], pairs: list[str] | None = None):
        self.words = list(words)
        self.set = frozenset(self.words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pairs = None if pairs is None else frozenset(pairs)  # adjacent word pairs ("a b")


def features(texts: list[str], probabilities: np.ndarray, length_tokens: np.ndarray, vocab: Vocabulary,
             embeddings: np.ndarray | None = None) -> Features:
    pairs = None if vocab.pairs is None else textstats.unseen_pair_share(texts, vocab.pairs)
    return Features(list(texts), np.asarray(probabilities, dtype=np.float64), textstats.char_lengths(texts),
                    np.asarray(length_tokens, dtype=np.float64), textstats.oov_share(texts, vocab.set),
                    textstats.bag_of_words(texts, vocab.index), embeddings, unseen_pairs=pairs)


def _subsample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, size=cap, replace=False))


def sample_index(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """At most cap of n positions, sorted (all of them when n <= cap)."""
    return _subsample(n, cap, rng)


def compare(ref: Features, cur: Features, d, labels: list[str], seed: int,
            with_words: bool = True, whole: tuple[np.ndarray, np.ndarray] | None = None
            ) -> tuple[list[stats.TestResult], bool, dict]:
    """Every test of the current window against the reference; (results, drift, words).

    `d` is cfg.drift (alpha, permutations, samples, min_effect). The model's outputs and text
    lengths in characters are tested on the whole window; the text features (tokens, case, OOV,
    word pairs, words) on at most d.permutation_sample texts of it (their cost grows with the window: the
    permutation tests as N × B), the embeddings on at most d.embedding_sample per side.
    `whole` = (probabilities, characters) of the whole window when `cur` is already such a
    sample (sent drift computes text features only for the texts it tests)."""
    rng = np.random.default_rng(seed)
    floor = d.min_effect
    n_labels = len(labels)
    if whole is None:
        whole = (cur.probabilities, cur.length_chars)
        cur = cur.take(sample_index(len(cur), d.permutation_sample, rng)) if len(cur) > d.permutation_sample \
            else cur
    probs, chars = whole
    results = [
        stats.labels_test(ref.probabilities.argmax(axis=1), probs.argmax(axis=1), n_labels, floor.labels, labels),
        stats.ks_test("confidence", ref.probabilities.max(axis=1), probs.max(axis=1), floor.confidence),
        stats.ks_test("positive_probability", ref.probabilities[:, -1], probs[:, -1],
                      floor.positive_probability),
        stats.mean_test("mean_probability", ref.probabilities[:, -1], probs[:, -1], floor.mean_probability),
        stats.ks_test("length_chars", ref.length_chars, chars, floor.length_chars),
        stats.ks_test("length_tokens", ref.length_tokens, cur.length_tokens, floor.length_tokens),
        # Which texts have capitals, not how many: most texts have none or all have some, and KS
        # on such a lumpy feature is very conservative; Fisher's exact test on the share is not.
        stats.labels_test(ref.uppercase > 0, cur.uppercase > 0, 2, floor.uppercase, ["no", "yes"], "uppercase"),
    ]
    groups = stats.group_matrix(len(ref), len(cur), d.permutations, rng)
    results.append(stats.mean_diff_test("oov", ref.oov, cur.oov, groups, floor.oov))
    if ref.unseen_pairs is not None and cur.unseen_pairs is not None:
        results.append(stats.tail_test("word_pairs", "share of word pairs unseen in training", ref.unseen_pairs,
                                       cur.unseen_pairs, floor.word_pairs))
    results.append(stats.words_test(ref.bow, cur.bow, groups, floor.words))
    if d.embeddings and ref.embeddings is not None and cur.embeddings is not None and len(cur.embeddings):
        r = _subsample(len(ref.embeddings), d.embedding_sample, rng)
        c = _subsample(len(cur.embeddings), d.embedding_sample, rng)
        results.append(stats.mmd_test(ref.embeddings[r], cur.embeddings[c], d.permutations, rng,
                                      floor.embeddings))
    drift = stats.verdicts(results, d.alpha, WEIGHTS)
    words = {}
    if with_words:
        words = stats.log_odds(textstats.word_counts(ref.texts), textstats.word_counts(cur.texts))
    return results, drift, words
