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
@given(p_values, st.data())
def test_weighted_holm_is_bounded_never_below_raw_and_monotone_in_p_over_w(ps, data):
    ws = data.draw(st.lists(st.floats(0.01, 10.0), min_size=len(ps), max_size=len(ps)))
    adj = stats.holm(ps, ws)
    for p, a in zip(ps, adj, strict=True):
        assert p <= a + 1e-15 and 0 < a <= 1.0
    ratio = np.array(ps) / np.array(ws)
    ranked = [adj[i] for i in np.argsort(ratio, kind="stable")]
    assert all(x <= y + 1e-15 for x, y in zip(ranked, ranked[1:], strict=False))


def test_weighted_holm_known_values_and_equal_weights_are_plain_holm():
    ps = [0.01, 0.04, 0.03]
    assert stats.holm(ps, [2.0, 2.0, 2.0]) == pytest.approx(stats.holm(ps))
    # weights 0.5/0.25/0.25: 0.01/0.5 ranks first (x 1/0.5), then 0.03/0.25 (x 0.5/0.25), then 0.04
    assert stats.holm(ps, [0.5, 0.25, 0.25]) == pytest.approx([0.02, 0.06, 0.06])
    with pytest.raises(ValueError):
        stats.holm(ps, [1.0, 0.0, 1.0])


def test_weighted_holm_keeps_the_family_wise_error_rate_under_the_null():
    rng = np.random.default_rng(3)
    weights = list(detect.WEIGHTS.values())
    assert sum(weights) == pytest.approx(1.0) and set(detect.WEIGHTS) == set(detect.TESTS)
    # correlated uniform p-values (a shared factor), one per test, all null
    z = rng.normal(size=(4000, 1)) * 0.8 + rng.normal(size=(4000, len(weights))) * 0.6
    from scipy.stats import norm

    p = 2 * norm.sf(np.abs(z / np.sqrt(0.8**2 + 0.6**2)))
    rejected = np.array([min(stats.holm(row, weights)) <= 0.05 for row in p])
    assert rejected.mean() <= 0.05 + 0.01  # 4000 draws: 0.01 is about three standard errors


def test_mean_test_sees_a_prior_shift_and_not_identical_samples():
    rng = np.random.default_rng(0)
    ref = rng.beta(0.5, 0.5, 1000)
    same = stats.mean_test("m", ref, ref, 0.05)
    assert same.p_value == pytest.approx(1.0) and same.effect == 0
    # 70/30 instead of 50/50: positives' probabilities near 1, negatives' near 0
    pos, neg = rng.beta(5, 1, 140), rng.beta(1, 5, 60)
    shifted = stats.mean_test("m", ref, np.concatenate([pos, neg]), 0.05)
    assert shifted.p_value < 1e-3 and shifted.effect > 0.1
    tiny = stats.mean_test("m", ref, ref[:1], 0.05)
    assert tiny.p_value == 1.0


@SETTINGS
@given(st.integers(0, 10_000), st.integers(30, 300))
def test_tail_test_is_exact_enough_and_never_fires_on_exchangeable_scores(seed, n):
    rng = np.random.default_rng(seed)
    scores = rng.choice([0.0, 0.5, 1.0], size=3 * n, p=[0.6, 0.3, 0.1])  # heavy ties
    r = stats.tail_test("t", "score", scores[n:], scores[:n], 0.05)
    assert 0 < r.p_value <= 1
    far = r.detail["reference_far_out"] + r.detail["current_far_out"]
    assert far in ((scores > r.detail["cut"]).sum(), (scores >= r.detail["cut"]).sum()) and far > 0


def test_tail_test_keeps_its_level_under_the_null():
    rng = np.random.default_rng(11)
    p = [stats.tail_test("t", "score", rng.normal(size=1000), rng.normal(size=200), 0.0).p_value
         for _ in range(400)]
    assert np.mean(np.array(p) <= 0.05) <= 0.05 + 0.03  # one-sided, discrete: at most alpha (+ noise)


def test_word_pairs_see_a_minority_of_word_salad():
    train = ["a fine film with a good story", "the acting is dull and the story is thin",
             "a good film", "the story is good"] * 10
    pairs = frozenset(textstats.word_pairs(train))
    assert "a good" in pairs and "good a" not in pairs
    assert textstats.unseen_pair_share(["a good film", "film good a", "word"], pairs).tolist() == [0.0, 1.0, 0.0]
    rng = np.random.default_rng(2)
    reviews = [" ".join(t.split()[: rng.integers(2, 7)]) for t in rng.choice(train, 1200)]
    vocab = sorted({w for t in train for w in t.split()})
    salad = [" ".join(rng.choice(vocab, 6)) for _ in range(20)]
    ref = textstats.unseen_pair_share(reviews[:1000], pairs)
    cur = textstats.unseen_pair_share(reviews[1000:1180] + salad, pairs)
    r = stats.tail_test("word_pairs", "unseen pairs", ref, cur, 0.05)
    assert r.p_value < 1e-4 and r.effect > 0.05


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


WORDS = ["good", "bad", "film", "movie", "great", "dull", "story", "acting", "the", "a"]
VOCAB = detect.Vocabulary(WORDS, [f"{a} {b}" for a in ("the", "a", "good", "bad", "film") for b in WORDS])


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
    assert {"oov", "words", "positive_probability", "mean_probability", "word_pairs", "embeddings"} <= hit


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
