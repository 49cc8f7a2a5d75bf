"""A bounded burst against `sent serve`: admission control on (the default bound) and off.

    python benchmarks/bench_overload.py                   # DistilBERT-base with random weights
    python benchmarks/bench_overload.py --requests 2000 --client-timeout 10 --runs 3

Each run starts `sent serve` twice on 127.0.0.1, one after the other, on the same model: with
serve.max_queued_texts at its default (128) and with a bound so large it never applies (what
sent serve did before admission control). Each gets the same burst: --requests single-review
requests sent at once by one aiohttp client whose per-request timeout is --client-timeout
seconds. Measured per server, from its answers and its own /metrics:

- how many were answered 200, 503 (refused, with Retry-After) or timed out at the client;
- p50/p99 latency of the accepted (200) requests, against the bound's worth of work (the bound
  divided by the throughput measured in the same run);
- wasted forward passes: texts the model computed minus texts answered 200 (work for clients
  that had gone), from sent_batch_size_sum;
- the server's resident memory before and after the burst (psutil), and how long it stayed busy
  after the last client answer or gave up (until sent_queued_texts reads 0).

The numbers go to benchmarks/results/overload.json (median over --runs) with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _metrics(url: str) -> dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in family.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
                            if s.labels else "")
            out[key] = out.get(key, 0.0) + s.value
    return out


async def burst(url: str, texts: list[str], timeout: float) -> dict:
    import aiohttp

    results: list[tuple[str, float]] = []

    async def one(text: str) -> None:
        start = time.perf_counter()
        try:
            async with session.post(f"{url}/predict", json={"text": text}) as r:
                await r.read()
                results.append((str(r.status), time.perf_counter() - start))
        except (TimeoutError, aiohttp.ClientError):
            results.append(("timeout", time.perf_counter() - start))

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(one(t) for t in texts))
        seconds = time.perf_counter() - start
    ok = sorted(lat for status, lat in results if status == "200")
    count = {s: sum(1 for st, _ in results if st == s) for s in {st for st, _ in results}}

    def pct(q: float) -> float:
        return ok[min(len(ok) - 1, int(q * len(ok)))] if ok else float("nan")

    return {"answered": count, "accepted_p50_s": pct(0.50), "accepted_p99_s": pct(0.99),
            "burst_seconds": seconds}


def measure(server_args: list[str], work: Path, texts: list[str], timeout: float) -> dict:
    import psutil

    from sentiment_cli import servers

    with servers.running(server_args, cwd=work, output=work / "server.log", ready_timeout=300) as srv:
        proc = psutil.Process(srv.process.pid)
        rss_before = proc.memory_info().rss
        before = _metrics(srv.url)
        result = asyncio.run(burst(srv.url, texts, timeout))
        ended = time.monotonic()
        while _metrics(srv.url).get("sent_queued_texts", 0) > 0:  # still computing for the burst
            time.sleep(0.1)
        busy_after = time.monotonic() - ended
        time.sleep(0.5)
        after = _metrics(srv.url)
        rss_after = proc.memory_info().rss
    computed = after.get("sent_batch_size_sum", 0) - before.get("sent_batch_size_sum", 0)
    passes_s = after.get("sent_forward_seconds_sum", 0) - before.get("sent_forward_seconds_sum", 0)
    answered_200 = result["answered"].get("200", 0)
    return {**result, "texts_computed": computed, "wasted_texts": computed - answered_200,
            "throughput_texts_per_s": computed / passes_s if passes_s else float("nan"),
            "busy_after_burst_s": busy_after, "rss_mb_before": rss_before / 2**20,
            "rss_mb_after": rss_after / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model folder (default: DistilBERT-base, random weights)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--client-timeout", type=float, default=10.0)
    ap.add_argument("--bound", type=int, default=128, help="serve.max_queued_texts with admission control")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "overload.json")
    args = ap.parse_args()
    from bench_serve import build_random_distilbert, machine, rt_split

    texts, _ = rt_split("test")
    burst_texts = [texts[i % len(texts)] for i in range(args.requests)]
    with tempfile.TemporaryDirectory(prefix="sent-overload-") as tmp:
        work = Path(tmp)
        folder = args.model or build_random_distilbert(work / "distilbert-random")
        base = [sys.executable, "-m", "sentiment_cli.cli", "serve", "--model", str(folder), "--no-accuracy-gate",
                "--set", f"paths.prediction_log={work / 'predictions'}"]
        setups = {"bounded": [*base, "--set", f"serve.max_queued_texts={args.bound}"],
                  "unbounded": [*base, "--set", "serve.max_queued_texts=100000000"]}
        runs: dict[str, list[dict]] = {name: [] for name in setups}
        info = machine()
        for r in range(args.runs):
            order = list(setups) if r % 2 == 0 else list(reversed(setups))
            for name in order:
                got = measure(setups[name], work, burst_texts, args.client_timeout)
                got["loadavg"] = round(os.getloadavg()[0], 2)
                runs[name].append(got)
                print(name, json.dumps(got), flush=True)
    summary = {}
    for name, got in runs.items():
        keys = [k for k, v in got[0].items() if isinstance(v, int | float)]
        summary[name] = {k: statistics.median(g[k] for g in got) for k in keys}
        summary[name]["answered"] = [g["answered"] for g in got]
    bounded = summary["bounded"]
    bounded["bound_work_s"] = args.bound / bounded["throughput_texts_per_s"]
    out = {"machine": info, "requests": args.requests, "client_timeout_s": args.client_timeout,
           "bound": args.bound, "runs": runs, "median": summary,
           "loadavg_at_end": round(os.getloadavg()[0], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
