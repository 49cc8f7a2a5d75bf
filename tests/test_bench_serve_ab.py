"""The serve A/B benchmark (benchmarks/bench_serve_ab.py): its order of sides and its summary, offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_serve_ab  # noqa: E402


def side(rps: float, cpu: float, errors: int = 0) -> dict:
    return {"rps": rps, "cpu_ms_per_req": cpu, "errors": errors}


def test_sides_alternate_so_neither_always_goes_first():
    assert [bench_serve_ab.order(i) for i in range(4)] == [("A", "B"), ("B", "A"), ("A", "B"), ("B", "A")]


def test_summary_gives_each_rounds_ratio_the_median_and_who_won():
    rounds = [{"A": side(100, 10.0), "B": side(110, 9.0)},
              {"A": side(100, 10.0), "B": side(90, 11.0, errors=2)},
              {"A": side(200, 8.0), "B": side(240, 8.0)}]
    s = bench_serve_ab.summarize(rounds)
    assert s["rounds"] == 3
    assert s["rps_ratio_b_over_a"] == [1.1, 0.9, 1.2]
    assert s["median_rps_ratio"] == 1.1
    assert s["rounds_b_more_rps"] == 2
    assert s["cpu_ratio_b_over_a"] == [0.9, 1.1, 1.0]
    assert s["median_cpu_ratio"] == 1.0
    assert s["rounds_b_less_cpu"] == 1
    assert s["median_rps"] == {"A": 100, "B": 110}
    assert s["median_cpu_ms_per_req"] == {"A": 10.0, "B": 9.0}
    assert s["errors"] == {"A": 0, "B": 2}


def test_a_side_that_answered_nothing_gives_no_ratio_rather_than_a_crash():
    s = bench_serve_ab.summarize([{"A": side(0, 0.0, errors=5), "B": side(50, 9.0)},
                                  {"A": side(100, 10.0), "B": side(105, 9.5)}])
    assert s["rps_ratio_b_over_a"] == [None, 1.05] and s["cpu_ratio_b_over_a"] == [None, 0.95]
    assert s["median_rps_ratio"] == 1.05 and s["rounds_b_more_rps"] == 1
    assert bench_serve_ab.summarize([])["median_rps_ratio"] is None
    json.dumps(s, allow_nan=False)  # the results file stays plain JSON
