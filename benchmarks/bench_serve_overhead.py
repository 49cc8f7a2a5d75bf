"""What `sent serve` itself costs per request: server CPU with a model that takes no time.

    python benchmarks/bench_serve_overhead.py [--duration 5] [--runs 3] [--concurrency 16]

bench_serve.py measures whole servers around a real model; this script takes the model away, so
what is left is the server's own work per request: HTTP parsing, routing, the body's decoding and
checks, admission, the batcher's hand-off to a lane thread and back, metrics, the prediction log
and the response. The predictor answers at once (a fixed prediction per text) and says it has 3
lanes, like `sent serve --runtime onnx --quantize` on 2 cores, so requests take that path.

Configurations, each its own uvicorn process (1 worker) on 127.0.0.1, driven one at a time:

- naive: benchmarks/naive_server.py's app around the same instant predictor (a sync handler on
  the thread pool, no access log): the framework's floor, bench_serve.py's baseline;
- sent-before: `sent serve`'s app with Litestar's own Prometheus middleware and uvicorn's access
  log, which is how it ran before its own middleware and serve.access_log=false;
- sent-access-log: `sent serve` as it is, with serve.access_log=true;
- sent-handler: `sent serve` with every /predict answered by Litestar's handler, as before the
  plain-request path (create_app(plain_path=False));
- sent: `sent serve` as it is, defaults.

The load is bench_serve.py's closed loop (its lean client) at --concurrency for --duration
seconds; each measurement reads the server's CPU time from /proc. --runs rounds, the order rotated
each round; medians, and each figure as a ratio against sent-before and against naive in the same
run. The 1-minute load average is recorded before every measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ["naive", "sent-before", "sent-access-log", "sent-handler", "sent"]


class InstantPredictor:
    """A predictor whose forward pass takes no time: the same answer for every text."""

    name, version, variant, batch_size, lanes, labels = "instant", "1", "onnx-int8", 1, 3, ["neg", "pos"]

    def predict(self, texts: list[str], parallel: bool = True):
        from sentiment_cli.model import Prediction

        return [Prediction(label="pos", label_id=1, score=0.9, probabilities={"neg": 0.1, "pos": 0.9})
                for _ in texts]


def serve(name: str, host: str, port: int, log_dir: str) -> None:
    """Run configuration `name` until SIGTERM (this script runs itself with --serve)."""
    import uvicorn

    from sentiment_cli import config, web

    if name == "naive":
        sys.path.insert(0, str(HERE))
        import naive_server

        uvicorn.run(naive_server.create_app(InstantPredictor()), host=host, port=port,
                    log_level="warning", access_log=False)
        return
    from sentiment_cli.serve import app as app_mod

    overrides = [f"paths.prediction_log={log_dir}",
                 f"serve.access_log={name in ('sent-before', 'sent-access-log')}"]
    if name == "sent-before":
        from litestar.plugins.prometheus import PrometheusConfig

        def litestar_middleware(prefix: str, app_name: str = "sent", log_failures: bool = False):
            return PrometheusConfig(app_name=app_name, prefix=prefix, group_path=True,
                                    buckets=web.LATENCY_BUCKETS).middleware

        web.prometheus_middleware = litestar_middleware
    app = app_mod.create_app(config.load(None, overrides), predictor=InstantPredictor(),
                             plain_path=name not in ("sent-before", "sent-handler"))
    web.run_server(app, host=host, port=port, access_log=name in ("sent-before", "sent-access-log"))


def measure(name: str, work: Path, concurrency: int, duration: float, client: str) -> dict:
    import bench_serve

    from sentiment_cli import servers

    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", name,
            "--log-dir", str(work / f"log-{name}")]
    with servers.running(argv, cwd=work, output=work / f"{name}.log", ready_timeout=120) as srv:
        texts = bench_serve.Texts(bench_serve.rt_split("test")[0])
        bench_serve.closed_loop(srv.url, texts, concurrency, 1.0, client)  # warm
        load = round(os.getloadavg()[0], 2)
        cpu0 = bench_serve.process_cpu_s(srv.process.pid)
        r = bench_serve.closed_loop(srv.url, texts, concurrency, duration, client)
        cpu = bench_serve.process_cpu_s(srv.process.pid) - cpu0
    done = max(1, r.requests + r.errors)
    return {"rps": r.rps, "errors": r.errors, "requests": r.requests,
            "server_cpu_ms_per_req": round(cpu * 1000 / done, 3), "p50_ms": r.p50_ms,
            "loadavg_before": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--only", nargs="+", choices=NAMES, default=NAMES)
    parser.add_argument("--client", choices=["raw", "aiohttp"], default="raw",
                        help="bench_serve.py's load generator: raw (lean, the default) or aiohttp")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve", choices=NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--log-dir", help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.host, args.port, args.log_dir)
        return
    import tempfile

    sys.path.insert(0, str(HERE))
    import bench_serve

    bench_serve.stop_servers_on_sigterm()
    results: dict[str, list[dict]] = {n: [] for n in args.only}
    with tempfile.TemporaryDirectory(prefix="sent-overhead-") as tmp:
        for run in range(args.runs):
            order = args.only[run % len(args.only):] + args.only[:run % len(args.only)]
            for name in order:
                r = measure(name, Path(tmp), args.concurrency, args.duration, args.client)
                results[name].append(r)
                print(f"run {run + 1} {name:16s} {r['rps']:7.0f} req/s  server CPU "
                      f"{r['server_cpu_ms_per_req']:.3f} ms/req  errors {r['errors']}  "
                      f"load {r['loadavg_before']}", flush=True)
    med = {n: statistics.median(r["server_cpu_ms_per_req"] for r in rs) for n, rs in results.items()}
    report = {"machine": bench_serve.machine(), "args": {k: str(v) for k, v in vars(args).items()},
              "median_server_cpu_ms_per_req": med, "runs": results,
              "vs_sent_before": {n: round(v / med["sent-before"], 3) for n, v in med.items()}
              if "sent-before" in med else None,
              "vs_naive": {n: round(v / med["naive"], 3) for n, v in med.items()} if "naive" in med else None,
              "vs_sent_handler": {n: round(v / med["sent-handler"], 3) for n, v in med.items()}
              if "sent-handler" in med else None,
              "errors": sum(r["errors"] for rs in results.values() for r in rs)}
    print(json.dumps({k: report[k] for k in ("median_server_cpu_ms_per_req", "vs_sent_before",
                                             "vs_naive", "vs_sent_handler", "errors")}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if report["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
