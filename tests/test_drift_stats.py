"""Properties of drift's statistics (stats.py, detect.compare), checked with hypothesis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

from sentiment_cli import config, textstats
from sentiment_cli.drift import detect, stats

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# compare() runs every test with 199 permutations: fewer examples keep the file under a minute
WINDOWS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
p_values = st.lists(st.floats(min_value=1e-12, max_value=1.0, allow_nan=False), min_size=1, max_size=12)


@SETTINGS
@given(p_values)
def test_holm_is_monotone_bounded_and_never_below_raw(ps):
    adj = stats.holm(ps)
    assert len(adj) == len(ps)
    for p, a in zip(ps, adj, strict=True):
        assert p <= a + 1e-15 and 0 < a <= 1.0
    order = np.argsort(ps, kind="stable")
    ranked = [adj[i] for i in order]
    assert all(x <= y + 1e-15 for x, y in zip(ranked, ranked[1:], strict=False))


def test_holm_known_values():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([]) == []


@SETTINGS
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=200), st.floats(-10, 10))
def test_permutation_p_value_is_never_zero_and_at_most_one(null, observed):
    p = stats.perm_p_value(np.array(null), observed)
    assert 1 / (len(null) + 1) <= p <= 1.0


def test_permutation_p_value_counts_the_observed_labelling():
    assert stats.perm_p_value(np.zeros(999), 5.0) == pytest.approx(1 / 1000)
    assert stats.perm_p_value(np.ones(9), 1.0) == 1.0  # ties count as "at least as extreme"


def test_group_matrix_marks_exactly_n_current_per_row():
    g = stats.group_matrix(30, 7, 50, np.random.default_rng(0))
    assert g.shape == (50, 37) and set(np.unique(g)) <= {0.0, 1.0}
    assert (g.sum(axis=1) == 7).all()
    assert len({tuple(r) for r in g}) > 40  # the rows are different draws


def _drift_cfg(**changes):
    d = config.load("tiny").drift
    return _Over(d, changes)


class _Over:
    def __init__(self, base, changes):
        self._b, self._c = base, changes

    def __getattr__(self, k):
        return self._c.get(k, getattr(self._b, k))


VOCAB = detect.Vocabulary(["good", "bad", "film", "movie", "great", "dull", "story", "acting", "the", "a"])
WORDS = ["good", "bad", "film", "movie", "great", "dull", "story", "acting", "the", "a"]


def _features(rng: np.random.Generator, n: int, shift: float = 0.0, foreign: bool = False) -> detect.Features:
    lens = rng.integers(3, 12, n)
    pool = ["zorg", "blip", "quux", "frob", "wibble"] if foreign else WORDS
    texts = [" ".join(rng.choice(pool, k)) for k in lens]
    pos = np.clip(rng.beta(2, 2, n) + shift, 0.001, 0.999)
    probs = np.stack([1 - pos, pos], axis=1)
    emb = rng.normal(shift * 3, 1.0, (n, 8))
    return detect.features(texts, probs, lens + 2, VOCAB, emb)


@WINDOWS
@given(st.integers(0, 10_000), st.integers(20, 120))
def test_a_sample_never_drifts_against_itself(seed, n):
    f = _features(np.random.default_rng(seed), n)
    results, drift, _ = detect.compare(f, f, _drift_cfg(permutations=199), ["neg", "pos"], seed)
    assert not drift
    for r in results:
        assert 0 < r.p_value <= 1 and 0 < r.p_adjusted <= 1
        assert r.effect <= max(r.threshold, 1e-9)  # identical samples: (almost) no effect at all


@WINDOWS
@given(st.integers(0, 10_000))
def test_p_values_lie_in_zero_one_and_permutation_ones_are_never_zero(seed):
    rng = np.random.default_rng(seed)
    results, _, _ = detect.compare(_features(rng, 150), _features(rng, 80, foreign=True),
                                   _drift_cfg(permutations=199), ["neg", "pos"], seed)
    for r in results:
        assert 0 < r.p_value <= 1, r
        if "permutations" in r.method:
            assert r.p_value >= 1 / 200


@WINDOWS
@given(st.integers(0, 10_000))
def test_a_shifted_sample_drifts(seed):
    rng = np.random.default_rng(seed)
    results, drift, _ = detect.compare(_features(rng, 300), _features(rng, 150, shift=0.4, foreign=True),
                                       _drift_cfg(permutations=199), ["neg", "pos"], seed)
    assert drift
    hit = {r.name for r in results if r.drift}
    assert {"oov", "words", "positive_probability", "embeddings"} <= hit


def test_a_trivial_shift_in_a_huge_window_is_significant_but_below_the_floor():
    rng = np.random.default_rng(1)
    ref = rng.binomial(1, 0.50, 20_000)
    cur = rng.binomial(1, 0.52, 100_000)
    r = stats.labels_test(ref, cur, 2, threshold=0.05)
    assert r.p_value < 0.001 and r.effect < 0.05
    stats.verdicts([r], alpha=0.05)
    assert r.significant and not r.drift


def test_ks_and_label_tests_on_identical_data():
    x = np.linspace(0, 1, 101)
    r = stats.ks_test("x", x, x, 0.1)
    assert r.statistic == 0 and r.p_value == 1.0
    lab = stats.labels_test(np.array([0, 1, 1]), np.array([0, 1, 1]), 2, 0.05)
    assert lab.effect == 0 and lab.p_value == pytest.approx(1.0)
    one = stats.labels_test(np.zeros(10, int), np.zeros(5, int), 2, 0.05)
    assert one.p_value == 1.0


def test_chi_square_for_more_than_two_labels():
    r = stats.labels_test(np.repeat([0, 1, 2], 100), np.repeat([0, 1, 2], [10, 10, 80]), 3, 0.05)
    assert r.method == "chi-square" and r.p_value < 1e-6 and r.effect > 0.4


def test_js_is_zero_for_equal_distributions_and_one_for_disjoint():
    a = np.array([[3.0, 1.0, 0.0]])
    assert stats._js_rows(a, 2 * a)[0] == pytest.approx(0.0, abs=1e-12)
    assert stats._js_rows(np.array([[1.0, 0.0]]), np.array([[0.0, 4.0]]))[0] == pytest.approx(1.0)


def test_words_and_oov_features():
    assert textstats.words("Don't SHOUT, it's 2 good!") == ["don't", "shout", "it's", "2", "good"]
    vocab = {"a", "good", "film"}
    assert textstats.oov_share(["a good film", "a zorg film", ""], vocab).tolist() == pytest.approx([0, 1 / 3, 0])
    bow = textstats.bag_of_words(["a a zorg"], {"a": 0, "good": 1})
    assert sparse.issparse(bow) and bow.toarray().tolist() == [[2, 0, 1]]
    assert textstats.vocabulary(["b a", "a c"], 2) == ["a", "b"]


def test_log_odds_names_the_words_that_moved():
    out = stats.log_odds({"film": 50, "good": 50, "bad": 50}, {"film": 5, "good": 50, "zorg": 60})
    assert out["over"][0]["word"] == "zorg"
    assert out["under"][0]["word"] in {"film", "bad"}


def test_a_big_window_is_tested_on_bounded_samples():
    """Outputs and characters on the whole window, text features on permutation_sample texts, the
    embeddings on a sample of their own (they may be fewer than the texts: encoding is slow)."""
    rng = np.random.default_rng(3)
    ref, cur = _features(rng, 200), _features(rng, 300)
    cur.embeddings = cur.embeddings[:50]
    results, _, _ = detect.compare(ref, cur, _drift_cfg(permutations=99, permutation_sample=100,
                                                        embedding_sample=40), ["neg", "pos"], 0)
    n = {r.name: r.n_current for r in results}
    assert n["labels"] == n["confidence"] == n["length_chars"] == 300
    assert n["length_tokens"] == n["uppercase"] == n["oov"] == n["words"] == 100
    assert n["embeddings"] == 40
