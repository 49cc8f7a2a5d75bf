"""How close the ONNX int8 `sent serve` comes to its own in-process ceiling, in enough rounds to
put an interval on it.

    python benchmarks/bench_share.py --model FOLDER --onnx-cache DIR [--rounds 60] [--block 10]
        [--duration 8] [--concurrency 16] [--out benchmarks/results/serve-share.json]
    python benchmarks/bench_share.py --pool RESULTS.json [RESULTS.json ...]   # summarise runs together

bench_serve.py measures the share beside everything else it measures, three rounds per run; one
round's share spreads by several per cent because this machine's speed moves within seconds
(docs/performance.md). This script measures only that: one `sent serve --runtime onnx --quantize`
(bench_serve.py's sent-onnx-int8 configuration), started and warmed up once, and the ceiling
(bench_serve.ceiling: the same model and lanes in this process, no HTTP). In a block of --block
rounds it chains the measurements C0 S1 C1 S2 C2 ... Sn Cn, each --duration seconds: C a
ceiling, S the server driven by bench_serve.measure's closed loop at --concurrency. Round i's
share is S_i's req/s over the mean of C_(i-1) and C_i, the ceilings just before and just after.
Blocks of the two scenarios (quiet; busy: bench_serve.background_load's --busy busy loops, for
that block only) alternate until each has --rounds rounds, so both see the same stretch of the
machine's day.

The summary per scenario: the median share with a distribution-free interval between two order
statistics (its exact coverage stated), the geometric mean share with a moving-block bootstrap
interval (seeded; blocks of consecutive rounds of one chain, because neighbouring rounds share a
ceiling), how many rounds fell short of --goal, and the medians of the event loop's and the
client's CPU per request. Without --model a random-weight DistilBERT-base is built, as
bench_serve.py does. --pool measures nothing: it prints the summary of the blocks of earlier
results files together (each block stays its own chain).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import bench_serve

HERE = Path(__file__).resolve().parent
CONFIG = "sent-onnx-int8"
SCENARIOS = ("quiet", "busy")


def chain_shares(ceilings: list[float], served: list[float]) -> list[float]:
    """Each served req/s over the mean of the ceilings on either side of it: len(ceilings) must be
    len(served) + 1 (C0 S1 C1 ... Sn Cn)."""
    if len(ceilings) != len(served) + 1:
        raise ValueError(f"{len(served)} served measurements need {len(served) + 1} ceilings, "
                         f"not {len(ceilings)}")
    return [s / ((ceilings[i] + ceilings[i + 1]) / 2) for i, s in enumerate(served)]


def median_interval(values: list[float], coverage: float = 0.95) -> dict:
    """The median and the narrowest pair of order statistics (k-th smallest, k-th largest) whose
    interval covers the median with at least `coverage`, from the binomial distribution (no
    assumption on the values' distribution beyond independence); the exact coverage is returned."""
    xs, n = sorted(values), len(values)
    if n == 0:
        return {"median": None, "low": None, "high": None, "coverage": None, "order_statistics": None}

    def below(k: int) -> float:  # P(Binomial(n, 1/2) < k)
        return sum(math.comb(n, j) for j in range(k)) / 2 ** n

    best = None
    for k in range(1, n // 2 + 1):
        cover = 1 - 2 * below(k)
        if cover >= coverage:
            best = (k, cover)
    if best is None:
        return {"median": round(statistics.median(xs), 4), "low": None, "high": None, "coverage": None,
                "order_statistics": None}
    k, cover = best
    return {"median": round(statistics.median(xs), 4), "low": xs[k - 1], "high": xs[n - k],
            "coverage": round(cover, 4), "order_statistics": [k, n - k + 1]}


def block_bootstrap_geomean(chains: list[list[float]], block: int = 4, resamples: int = 10000,
                            seed: int = 0, coverage: float = 0.95) -> dict:
    """The geometric mean of all shares and a percentile interval for it from a moving-block
    bootstrap: each resample joins blocks of `block` consecutive rounds, drawn with replacement
    from within the chains (a block never spans two chains), up to the number of rounds."""
    shares = [s for c in chains for s in c]
    if not shares:
        return {"geomean": None, "low": None, "high": None, "coverage": coverage, "block": block}
    blocks = [c[i:i + block] for c in chains for i in range(max(1, len(c) - block + 1))]
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        logs: list[float] = []
        while len(logs) < len(shares):
            logs.extend(math.log(s) for s in rng.choice(blocks))
        means.append(math.exp(statistics.fmean(logs[:len(shares)])))
    means.sort()
    tail = (1 - coverage) / 2
    return {"geomean": round(math.exp(statistics.fmean(math.log(s) for s in shares)), 4),
            "low": round(means[int(tail * resamples)], 4),
            "high": round(means[min(resamples - 1, int((1 - tail) * resamples))], 4),
            "coverage": coverage, "block": block, "resamples": resamples, "seed": seed}


def _median_of(rows: list[dict], key: str) -> float | None:
    known = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(known), 3) if known else None


def summarize(blocks: list[dict], goal: float) -> dict:
    """Per scenario: rounds, the median and geometric-mean shares with their intervals, the rounds
    below `goal`, and the medians of the event loop's and the client's CPU per request."""
    out = {}
    for scenario in SCENARIOS:
        mine = [b for b in blocks if b["scenario"] == scenario]
        chains = [b["shares"] for b in mine]
        shares = [s for c in chains for s in c]
        served = [r for b in mine for r in b["served"]]
        out[scenario] = {"rounds": len(shares), "median": median_interval(shares),
                         "geomean": block_bootstrap_geomean(chains),
                         "rounds_below_goal": sum(s < goal for s in shares), "goal": goal,
                         "smallest": min(shares, default=None), "largest": max(shares, default=None),
                         "median_loop_cpu_ms_per_req": _median_of(served, "loop_cpu_ms_per_req"),
                         "median_client_cpu_ms_per_req": _median_of(served, "client_cpu_ms_per_req"),
                         "median_served_rps": _median_of(served, "rps"),
                         "median_ceiling_texts_per_s": round(statistics.median(
                             c["texts_per_s"] for b in mine for c in b["ceilings"]), 3) if mine else None}
    return out


def plan(rounds: int, block: int) -> list[tuple[str, int]]:
    """(scenario, rounds in the block) in the order they run: the scenarios alternate, quiet first,
    until each has `rounds`."""
    left = {s: rounds for s in SCENARIOS}
    out = []
    while any(left.values()):
        for s in SCENARIOS:
            if left[s]:
                n = min(block, left[s])
                out.append((s, n))
                left[s] -= n
    return out


def run_block(srv, predictor, scenario: str, n: int, texts: list[str], args) -> dict:
    busy = args.busy if scenario == "busy" else 0
    planned = (2 * n + 1) * (args.duration + 2) + 60
    ceilings, served = [], []
    with bench_serve.background_load(busy, max_s=planned):
        ceilings.append(bench_serve.ceiling(predictor, bench_serve.Texts(texts), args.duration))
        for _ in range(n):
            r = bench_serve.measure(srv, "sent", bench_serve.Texts(texts), args.concurrency,
                                    args.duration, args.client)
            served.append(asdict(r))
            ceilings.append(bench_serve.ceiling(predictor, bench_serve.Texts(texts), args.duration))
            share = chain_shares([c["texts_per_s"] for c in ceilings[-2:]], [r.rps])[0]
            print(f"{scenario:5s} {r.rps:6.1f} req/s between ceilings {ceilings[-2]['texts_per_s']:6.1f} and "
                  f"{ceilings[-1]['texts_per_s']:6.1f}: share {share:.3f}  loop {r.loop_cpu_ms_per_req} "
                  f"client {r.client_cpu_ms_per_req} ms/req  errors {r.errors}  load {r.loadavg_before}"
                  f"->{r.loadavg}", flush=True)
    return {"scenario": scenario, "ceilings": ceilings, "served": served,
            "shares": [round(s, 4) for s in chain_shares([c["texts_per_s"] for c in ceilings],
                                                         [s["rps"] for s in served])]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The ONNX int8 sent serve's share of its in-process ceiling, measured in rounds "
                    "chained between ceilings, with intervals (see the module's docstring).")
    parser.add_argument("--model", type=Path, help="a model folder; default: random DistilBERT-base")
    parser.add_argument("--onnx-cache", type=Path, help="the ONNX exports (default: a fresh folder)")
    parser.add_argument("--rounds", type=int, default=60, help="rounds per scenario")
    parser.add_argument("--block", type=int, default=10, help="rounds per block of one scenario")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--busy", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="busy-loop processes in the busy scenario (default: half the cores)")
    parser.add_argument("--client", choices=bench_serve.CLIENTS, default="raw")
    parser.add_argument("--goal", type=float, default=0.95, help="the share a round is counted against")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve-share.json")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="RESULTS",
                        help="summarise these results files together instead of measuring")
    args = parser.parse_args()
    for name in ("rounds", "block", "duration", "concurrency"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be above 0, not {getattr(args, name)}")
    if args.busy < 0:
        parser.error(f"--busy must be 0 or more, not {args.busy}")
    return args


def pooled(files: list[Path], goal: float) -> dict:
    """The summary of the blocks of several results files, with where they came from."""
    blocks, runs = [], []
    for f in files:
        try:
            data = json.loads(f.read_text())
            blocks += data["blocks"]
        except (OSError, ValueError, KeyError) as exc:
            sys.exit(f"{f}: not a results file of this script ({exc})")
        runs.append({"file": str(f), "started": data.get("started"), "finished": data.get("finished")})
    return {"runs": runs, "summary": summarize(blocks, goal)}


def main() -> None:
    args = parse_args()
    if args.pool:
        print(json.dumps(pooled(args.pool, args.goal), indent=2))
        return
    bench_serve.stop_servers_on_sigterm()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="bench-share-"))
    model = args.model or bench_serve.build_random_distilbert(work / "distilbert-random")
    onnx_cache = args.onnx_cache or work / "onnx"
    texts = bench_serve.rt_split("test")[0]
    cfg = next(c for c in bench_serve.configs(model, work, [0], onnx_cache) if c.name == CONFIG)
    results: dict = {"machine": bench_serve.machine(), "model": str(args.model or "distilbert-base random"),
                     "configuration": CONFIG, "concurrency": args.concurrency, "duration_s": args.duration,
                     "busy_processes": args.busy, "client": args.client,
                     "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "loadavg_before": round(os.getloadavg()[0], 2)}
    blocks = []
    with bench_serve.server(cfg, work) as srv:
        bench_serve.closed_loop(srv.url, bench_serve.Texts(texts), args.concurrency, 3.0, args.client)
        predictor = bench_serve.onnx_ceiling_predictor(model, onnx_cache)  # the export the server made
        for scenario, n in plan(args.rounds, args.block):
            blocks.append(run_block(srv, predictor, scenario, n, texts, args))
    results.update(finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   loadavg_after=round(os.getloadavg()[0], 2), summary=summarize(blocks, args.goal),
                   blocks=blocks)
    print(json.dumps(results["summary"], indent=2))
    bench_serve.write_results(args.out, results)


if __name__ == "__main__":
    main()
