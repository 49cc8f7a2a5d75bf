"""The share-of-ceiling benchmark (benchmarks/bench_share.py): its shares, intervals and plan, offline."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_share  # noqa: E402


def test_each_served_measurement_is_divided_by_the_mean_of_the_ceilings_beside_it():
    assert bench_share.chain_shares([100.0, 120.0, 80.0], [99.0, 95.0]) == pytest.approx([0.9, 0.95])
    with pytest.raises(ValueError, match="2 served measurements need 3 ceilings, not 2"):
        bench_share.chain_shares([100.0, 120.0], [99.0, 95.0])


def test_the_median_interval_takes_the_order_statistics_its_coverage_allows():
    s = bench_share.median_interval([float(x) for x in range(24, 0, -1)])  # order does not matter
    assert s["median"] == 12.5
    # P(Binomial(24, 1/2) <= 6) = 0.0113: the 7th smallest and 7th largest cover 97.7%; the 8th
    # would cover only 93.6%
    assert (s["low"], s["high"], s["order_statistics"], s["coverage"]) == (7.0, 18.0, [7, 18], 0.9773)


def test_too_few_rounds_for_the_coverage_give_no_interval_rather_than_a_wrong_one():
    assert bench_share.median_interval([1.0, 2.0, 3.0, 4.0, 5.0])["low"] is None  # 2/32 > 5%
    six = bench_share.median_interval([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # 2/64 < 5%
    assert (six["low"], six["high"], six["coverage"]) == (1.0, 6.0, 0.9688)
    assert bench_share.median_interval([])["median"] is None


def test_the_bootstrap_interval_is_of_the_geometric_mean_and_seeded():
    same = bench_share.block_bootstrap_geomean([[0.96] * 12])
    assert same["geomean"] == same["low"] == same["high"] == 0.96
    mixed = [[0.9, 1.0, 0.95, 0.92, 0.99, 0.97, 0.93, 1.01]]
    a = bench_share.block_bootstrap_geomean(mixed, resamples=2000, seed=3)
    assert a == bench_share.block_bootstrap_geomean(mixed, resamples=2000, seed=3)
    assert a["geomean"] == round(math.exp(sum(map(math.log, mixed[0])) / 8), 4)
    assert a["low"] < a["geomean"] < a["high"]


def test_a_bootstrap_block_never_joins_the_end_of_one_chain_to_the_start_of_the_next():
    # each chain is one block of 4: a resample of 8 rounds is two whole chains, so its geometric
    # mean is 0.5, 1 or 2; a block spanning the two chains would give values in between
    r = bench_share.block_bootstrap_geomean([[0.5] * 4, [2.0] * 4], block=4, resamples=500)
    assert r["geomean"] == 1.0
    assert {r["low"], r["high"]} <= {0.5, 1.0, 2.0} and r["low"] < r["high"]


def test_the_scenarios_alternate_in_blocks_until_each_has_its_rounds():
    assert bench_share.plan(25, 10) == [("quiet", 10), ("busy", 10), ("quiet", 10), ("busy", 10),
                                        ("quiet", 5), ("busy", 5)]


def test_the_summary_counts_rounds_short_of_the_goal_per_scenario():
    def block(scenario: str, ceilings: list[float], rps: list[float], loop: float) -> dict:
        return {"scenario": scenario, "ceilings": [{"texts_per_s": c} for c in ceilings],
                "served": [{"rps": r, "loop_cpu_ms_per_req": loop, "client_cpu_ms_per_req": 0.2}
                           for r in rps],
                "shares": bench_share.chain_shares(ceilings, rps)}

    s = bench_share.summarize([block("quiet", [100, 100, 100], [97, 94], 0.5),
                               block("busy", [80, 90, 70], [84, 70], 0.9)], goal=0.95)
    assert s["quiet"]["rounds"] == 2 and s["quiet"]["rounds_below_goal"] == 1
    assert s["quiet"]["smallest"] == 0.94 and s["quiet"]["median_served_rps"] == 95.5
    assert s["busy"]["rounds_below_goal"] == 1  # 84/85 = 0.988, 70/80 = 0.875
    assert s["busy"]["median_loop_cpu_ms_per_req"] == 0.9 and s["busy"]["median_ceiling_texts_per_s"] == 80
    json.dumps(s, allow_nan=False)


def test_pooling_summarises_the_blocks_of_several_runs_and_refuses_other_files(tmp_path, capsys):
    def run(name: str, shares: list[float]) -> Path:
        served = [{"rps": 100 * s, "loop_cpu_ms_per_req": 0.5, "client_cpu_ms_per_req": 0.2} for s in shares]
        block = {"scenario": "quiet", "ceilings": [{"texts_per_s": 100.0}] * (len(shares) + 1),
                 "served": served, "shares": shares}
        (tmp_path / name).write_text(json.dumps({"started": name, "blocks": [block]}))
        return tmp_path / name

    p = bench_share.pooled([run("a.json", [0.94, 0.96]), run("b.json", [0.97])], goal=0.95)
    assert [r["started"] for r in p["runs"]] == ["a.json", "b.json"]
    assert p["summary"]["quiet"]["rounds"] == 3 and p["summary"]["quiet"]["rounds_below_goal"] == 1
    assert p["summary"]["busy"]["rounds"] == 0
    (tmp_path / "other.json").write_text('{"summary": {}}')
    with pytest.raises(SystemExit, match="other.json: not a results file of this script"):
        bench_share.pooled([tmp_path / "other.json"], goal=0.95)
