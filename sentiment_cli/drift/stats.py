"""The statistics of `sent drift`, pure: numpy arrays in, numbers out; no files, no models.

Every test answers a TestResult: statistic, p-value, an effect size and the floor it must reach.
`verdicts()` adds Holm-adjusted p-values across the tests of one window (valid under any
dependence between them, unlike Fisher's combination) and the verdict: drift = significant
after Holm AND effect >= its floor, so a window of 10,000 does not alarm on a trivial shift.

Permutation p-values are (1 + #{null >= observed}) / (1 + B): the observed labelling is one of
the equally likely labellings, so a p-value is never 0. Permutations are done as matrix products
of one (B × N) group-indicator matrix with the pooled features: one pass for all B draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class TestResult:
    name: str
    method: str
    statistic: float
    p_value: float
    effect: float
    effect_name: str
    threshold: float
    n_reference: int
    n_current: int
    p_adjusted: float | None = None
    significant: bool | None = None
    drift: bool | None = None
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def perm_p_value(null: np.ndarray, observed: float) -> float:
    """(1 + #null >= observed) / (1 + B); a small tolerance counts float ties as ties."""
    null = np.asarray(null, dtype=np.float64)
    tol = 1e-12 * max(1.0, abs(observed))
    return float((1 + np.count_nonzero(null >= observed - tol)) / (1 + null.size))


def holm(p_values: Sequence[float], weights: Sequence[float] | None = None) -> list[float]:
    """Holm's step-down adjusted p-values, in input order: <= 1, never below the raw p-values.

    With weights (positive, fixed before the data are seen) this is Holm's weighted procedure:
    tests are ranked by p / w, and at each step the family-wise alpha is shared among the tests
    not yet rejected in proportion to their weights (reject while p_i <= alpha * w_i / W_left).
    Like plain Holm (equal weights, which it reduces to) it is valid under any dependence.
    Adjusted p-values are monotone in p / w."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return []
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != p.shape or not np.all(w > 0):
        raise ValueError("Holm weights must be positive, one per p-value")
    w = w / w.sum()
    order = np.argsort(p / w, kind="stable")
    left = w[order[::-1]].cumsum()[::-1]  # weight of the tests at this rank and after it
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, p[i] * left[rank] / w[i]))
        adjusted[i] = running
    return adjusted.tolist()


def verdicts(results: list[TestResult], alpha: float, weights: dict[str, float] | None = None) -> bool:
    """Fill in p_adjusted, significant and drift on each result; True when any test drifts.
    `weights`: Holm weights by test name (missing names weigh 1; None: plain Holm)."""
    w = None if weights is None else [float(weights.get(r.name, 1.0)) for r in results]
    for r, adj in zip(results, holm([r.p_value for r in results], w), strict=True):
        r.p_adjusted = float(adj)
        r.significant = bool(adj <= alpha)
        r.drift = bool(r.significant and r.effect >= r.threshold)
    return any(r.drift for r in results)


def group_matrix(n_ref: int, n_cur: int, permutations: int, rng: np.random.Generator) -> np.ndarray:
    """(B × N) float32 0/1 matrix: row b marks the n_cur pooled items drawn as "current" by
    permutation b (pooled order: reference first, then current)."""
    n = n_ref + n_cur
    keys = rng.random((permutations, n), dtype=np.float32)
    chosen = np.argpartition(keys, n_cur - 1, axis=1)[:, :n_cur] if n_cur < n else None
    out = np.zeros((permutations, n), dtype=np.float32)
    if chosen is None:
        out[:] = 1.0
    else:
        np.put_along_axis(out, chosen, 1.0, axis=1)
    return out


# --- tests on one feature ---------------------------------------------------------------------


def labels_test(ref_labels: np.ndarray, cur_labels: np.ndarray, n_labels: int, threshold: float,
                names: Sequence[str] | None = None, name: str = "labels") -> TestResult:
    """Shares of categories (predicted labels, or a yes/no property of each text): Fisher's
    exact test for two, chi-square for more. Effect: the largest absolute change in one share."""
    from scipy import stats

    ref = np.bincount(np.asarray(ref_labels, dtype=np.int64), minlength=n_labels)[:n_labels]
    cur = np.bincount(np.asarray(cur_labels, dtype=np.int64), minlength=n_labels)[:n_labels]
    ref_share = ref / max(1, ref.sum())
    cur_share = cur / max(1, cur.sum())
    effect = float(np.abs(cur_share - ref_share).max())
    table = np.vstack([ref, cur])
    used = table[:, table.sum(axis=0) > 0]
    if used.shape[1] < 2:  # one label only, in both: nothing to compare
        stat, p, method = 0.0, 1.0, "none (one label seen)"
    elif n_labels == 2:
        stat, p = stats.fisher_exact(table)
        stat, method = float(stat) if np.isfinite(stat) else float("inf"), "Fisher exact (two-sided)"
    else:
        res = stats.chi2_contingency(used, correction=False)
        stat, p, method = float(res.statistic), float(res.pvalue), "chi-square"
    names = list(names or range(n_labels))
    return TestResult(name, method, float(stat), float(min(1.0, max(p, 0.0)) or np.nextafter(0, 1)),
                      effect, "max |share change|", threshold, int(ref.sum()), int(cur.sum()),
                      detail={"reference_share": dict(zip(map(str, names), ref_share.round(4).tolist(), strict=True)),
                              "current_share": dict(zip(map(str, names), cur_share.round(4).tolist(), strict=True))})


def ks_test(name: str, ref: np.ndarray, cur: np.ndarray, threshold: float) -> TestResult:
    """Two-sample Kolmogorov-Smirnov; effect: the KS distance itself (sample-size free)."""
    from scipy import stats

    res = stats.ks_2samp(np.asarray(ref, dtype=np.float64), np.asarray(cur, dtype=np.float64))
    d = float(res.statistic)
    p = float(res.pvalue)
    return TestResult(name, "two-sample KS", d, max(min(p, 1.0), np.nextafter(0, 1)), d, "KS distance",
                      threshold, len(ref), len(cur),
                      detail={"reference_mean": float(np.mean(ref)), "current_mean": float(np.mean(cur))})


def mean_diff_test(name: str, ref: np.ndarray, cur: np.ndarray, groups: np.ndarray, threshold: float
                   ) -> TestResult:
    """Difference of means with a permutation null (two-sided); effect: |mean difference|."""
    ref = np.asarray(ref, dtype=np.float64)
    cur = np.asarray(cur, dtype=np.float64)
    pooled = np.concatenate([ref, cur])
    total = pooled.sum()
    n_c, n_r = len(cur), len(ref)
    obs = abs(cur.mean() - ref.mean())
    s_cur = groups.astype(np.float64) @ pooled
    null = np.abs(s_cur / n_c - (total - s_cur) / n_r)
    return TestResult(name, f"difference of means, {len(null)} permutations", float(obs),
                      perm_p_value(null, obs), float(obs), "|mean change|", threshold, n_r, n_c,
                      detail={"reference_mean": float(ref.mean()), "current_mean": float(cur.mean())})


def mean_test(name: str, ref: np.ndarray, cur: np.ndarray, threshold: float) -> TestResult:
    """Welch's t-test of two means (scipy), two-sided; effect: |mean change|. On the positive-class
    probability this is the direct test of a change in the label prior: for a calibrated model
    the mean probability estimates the share of positives, and the score test of a prior shift
    is exactly this mean (it uses every probability, not only which side of 0.5 it falls)."""
    from scipy import stats

    ref = np.asarray(ref, dtype=np.float64)
    cur = np.asarray(cur, dtype=np.float64)
    if min(len(ref), len(cur)) < 2:
        stat, p = 0.0, 1.0
    elif ref.var() == 0 and cur.var() == 0:  # constants: Welch's t is undefined
        stat, p = 0.0, 1.0 if ref.mean() == cur.mean() else 0.0
    else:
        res = stats.ttest_ind(cur, ref, equal_var=False)
        stat, p = float(res.statistic), float(res.pvalue)
    obs = float(abs(cur.mean() - ref.mean())) if len(cur) and len(ref) else 0.0
    return TestResult(name, "difference of means (Welch's t-test)", float(stat),
                      float(min(1.0, max(p, np.nextafter(0, 1)))), obs, "|mean change|", threshold,
                      len(ref), len(cur),
                      detail={"reference_mean": float(ref.mean()) if len(ref) else None,
                              "current_mean": float(cur.mean()) if len(cur) else None})


def _xlogx_rows(c: np.ndarray) -> np.ndarray:
    from scipy.special import xlogy

    return xlogy(c, c).sum(axis=-1)


def _js_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (bits) between rows of count matrices a and b:
    H(m) - (H(p) + H(q)) / 2 with p = a/A, q = b/B, m = (p + q)/2, from sums of x log x."""
    big_a = np.maximum(a.sum(axis=-1), 1e-300)
    big_b = np.maximum(b.sum(axis=-1), 1e-300)
    h_p = np.log(big_a) - _xlogx_rows(a) / big_a
    h_q = np.log(big_b) - _xlogx_rows(b) / big_b
    m = 0.5 * (a / big_a[..., None] + b / big_b[..., None])
    h_m = -_xlogx_rows(m)
    return np.maximum(h_m - 0.5 * (h_p + h_q), 0.0) / np.log(2)


RARE_COUNT = 3  # words seen fewer times in the pooled sample share one column


def words_test(ref_bow, cur_bow, groups: np.ndarray, threshold: float) -> TestResult:
    """Jensen-Shannon divergence of word frequencies (texts permuted, not words: words of one text
    are not independent). Words seen fewer than RARE_COUNT times in the pooled sample are one
    column (a choice made from the pooled data, so the permutation null stays exact). Effect:
    observed JS minus the null's mean, which removes the sampling bias JS has at small samples,
    so the floor means the same at 50 texts and at 10,000."""
    from scipy import sparse

    pooled = sparse.vstack([ref_bow, cur_bow]).tocsc()
    total = np.asarray(pooled.sum(axis=0)).ravel()
    common = np.flatnonzero(total >= RARE_COUNT)
    rare = np.flatnonzero((total > 0) & (total < RARE_COUNT))
    rare_col = sparse.csc_matrix(pooled[:, rare].sum(axis=1)) if len(rare) else None
    pooled = sparse.hstack([pooled[:, common], rare_col]).tocsr() if rare_col is not None \
        else pooled[:, common].tocsr()
    total = np.asarray(pooled.sum(axis=0)).ravel()
    n_r = ref_bow.shape[0]
    ref_counts = np.asarray(pooled[:n_r].sum(axis=0)).ravel()
    cur_counts = total - ref_counts
    obs = float(_js_rows(ref_counts, cur_counts))
    null_cur = np.asarray(pooled.T.tocsr() @ groups.T.astype(np.float64)).T  # (B × V) "current" counts
    null = _js_rows(total[None, :] - null_cur, null_cur)
    return TestResult("words", f"Jensen-Shannon of word frequencies, {len(null)} permutations", obs,
                      perm_p_value(null, obs), float(obs - null.mean()), "JS above null mean (bits)",
                      threshold, n_r, cur_bow.shape[0],
                      detail={"null_mean": float(null.mean()), "columns": int(len(total))})


def _sq_dists(x: np.ndarray) -> np.ndarray:
    sq = (x * x).sum(axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(d, 0.0, out=d)
    return d


def mmd_test(ref: np.ndarray, cur: np.ndarray, permutations: int, rng: np.random.Generator,
             threshold: float) -> TestResult:
    """MMD² with a Gaussian kernel (bandwidth: the median pooled distance) and a permutation null,
    all B draws as one product with the (N × N) kernel. Effect: MMD² minus the null mean."""
    x = np.concatenate([np.asarray(ref, dtype=np.float64), np.asarray(cur, dtype=np.float64)])
    n_r, n_c = len(ref), len(cur)
    d = _sq_dists(x)
    off = d[np.triu_indices(len(x), k=1)]
    median = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    k = np.exp(-d / median)  # exp(-|x-y|² / (2σ²)) with σ² = median/2
    groups = group_matrix(n_r, n_c, permutations, rng).T.astype(np.float64)  # (N × B)
    weights = groups / n_c - (1.0 - groups) / n_r
    null = np.einsum("nb,nb->b", k @ weights, weights)
    a = np.concatenate([np.full(n_r, -1.0 / n_r), np.full(n_c, 1.0 / n_c)])
    obs = float(a @ k @ a)
    return TestResult("embeddings", f"MMD² (Gaussian kernel), {permutations} permutations", obs,
                      perm_p_value(null, obs), float(obs - null.mean()), "MMD² above null mean",
                      threshold, n_r, n_c,
                      detail={"null_mean": float(null.mean()), "bandwidth_sq": median / 2,
                              "dimensions": int(x.shape[1])})


FAR_OUT_QUANTILE = 0.95  # "far out": at or above the pooled 95th percentile of a per-text score


def tail_test(name: str, what: str, ref: np.ndarray, cur: np.ndarray, threshold: float,
              quantile: float = FAR_OUT_QUANTILE, detail: dict | None = None) -> TestResult:
    """More far-out texts in the window than in the reference? For a minority of foreign text,
    which tests of the mean or of the whole distribution dilute.

    A text is far out when its score is above the pooled `quantile` of all scores (at or above it
    when nothing is above: the quantile is the largest score). The rule depends on the pooled
    scores only, so with no drift (the scores exchangeable) the number of window texts among the
    far-out ones is hypergeometric, ties included: Fisher's exact test, one-sided (more far-out
    texts than the reference), is exact. Effect: the window's share of far-out texts minus the
    reference's."""
    from scipy import stats

    ref = np.asarray(ref, dtype=np.float64)
    cur = np.asarray(cur, dtype=np.float64)
    n_r, n_c = len(ref), len(cur)
    pooled = np.concatenate([ref, cur])
    cut = float(np.quantile(pooled, quantile)) if n_r + n_c else 0.0
    far = np.greater if np.any(pooled > cut) else np.greater_equal  # many ties at the top: at or above
    a_ref, a_cur = int(far(ref, cut).sum()), int(far(cur, cut).sum())
    if n_r == 0 or n_c == 0 or a_ref + a_cur in (0, n_r + n_c):
        stat, p = 1.0, 1.0
    else:
        res = stats.fisher_exact([[a_cur, n_c - a_cur], [a_ref, n_r - a_ref]], alternative="greater")
        stat = float(res.statistic) if np.isfinite(res.statistic) else float("inf")
        p = float(res.pvalue)
    effect = a_cur / n_c - a_ref / n_r if n_r and n_c else 0.0
    return TestResult(name, f"share of far-out texts ({what} above the pooled {quantile:.0%} quantile), "
                      "Fisher's exact test (one-sided)", stat, float(min(1.0, max(p, np.nextafter(0, 1)))),
                      float(effect), "change in the share of far-out texts", threshold, n_r, n_c,
                      detail={"cut": cut, "reference_far_out": a_ref, "current_far_out": a_cur, **(detail or {})})


def log_odds(ref_counts: dict[str, int], cur_counts: dict[str, int], top: int = 10,
             min_count: int = 3) -> dict[str, list[dict]]:
    """Words most over- and under-represented in the current window: the log-odds ratio with
    add-half smoothing and its z-score (Monroe et al.'s "Fightin' Words", uninformative prior)."""
    vocab = sorted(set(ref_counts) | set(cur_counts))
    r = np.array([ref_counts.get(w, 0) for w in vocab], dtype=np.float64)
    c = np.array([cur_counts.get(w, 0) for w in vocab], dtype=np.float64)
    n_r, n_c = r.sum(), c.sum()
    keep = (r + c) >= min_count
    lo = np.log((c + 0.5) / (n_c - c + 0.5)) - np.log((r + 0.5) / (n_r - r + 0.5))
    z = lo / np.sqrt(1 / (c + 0.5) + 1 / (r + 0.5))
    idx = np.flatnonzero(keep)

    def row(i: int) -> dict:
        return {"word": vocab[i], "log_odds": round(float(lo[i]), 4), "z": round(float(z[i]), 3),
                "reference_count": int(r[i]), "current_count": int(c[i])}

    order = idx[np.argsort(-z[idx], kind="stable")]
    over = [row(i) for i in order[:top] if z[i] > 0]
    under = [row(i) for i in order[::-1][:top] if z[i] < 0]
    return {"over": over, "under": under}
