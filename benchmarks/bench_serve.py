"""Benchmark `sent serve` against a naive server: same machine, same model, same load, one run.

    python benchmarks/bench_serve.py                      # a DistilBERT-base built with random weights
    python benchmarks/bench_serve.py --model FOLDER       # any model folder (model.save layout)

Every server configuration is started with uvicorn (1 worker) on 127.0.0.1 and warmed up; they
wait side by side, idle, and are driven one at a time (never two at once: they share the cores)
by a closed-loop load generator (aiohttp; each of C clients sends its next request when the last
one answers) at concurrency 1 and 16 for --duration seconds each. All of that --runs times, the
order rotated each run, and the median of the runs is reported. Then `sent serve` is driven
open-loop (Poisson arrivals at a fixed rate, latency counted from the scheduled send time) at
half the peak it reached.
Last, each faster variant (torch int8, ONNX Runtime fp32 and int8) against the fp32 torch model
on the Rotten Tomatoes test split: agreement and accuracy (accuracy only means something for a
fine-tuned --model; with random weights `sent serve` runs with --no-accuracy-gate).

Requests are one review each, taken in turn from the Rotten Tomatoes test split.
Configurations: naive (thread pool, fp32), naive --serial (one forward pass at a time),
sent serve (fp32), sent serve --quantize (int8), sent serve --runtime onnx (fp32 and int8), each
sent one for every --threads value.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- inputs


def rt_split(split: str) -> tuple[list[str], list[int]]:
    from sentiment_cli import data

    frame = data.load_rt_polarity(str(data.builtin_rt_path()))[split]
    return frame["text"].tolist(), frame["label"].astype(int).tolist()


def build_random_distilbert(folder: Path) -> Path:
    """DistilBERT-base's architecture (DistilBertConfig defaults), random weights, a WordPiece
    tokenizer built from the Rotten Tomatoes train split: the real model's cost, no download."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from sentiment_cli import model

    torch.manual_seed(0)
    texts, _ = rt_split("train")
    tokenizer = model.train_tokenizer(texts, vocab_size=30522)
    config = DistilBertConfig(num_labels=2, id2label={0: "neg", 1: "pos"},
                              label2id={"neg": 0, "pos": 1}, pad_token_id=tokenizer.pad_token_id)
    net = DistilBertForSequenceClassification(config)
    meta = {"config": {"model": {"name": "distilbert-base (random weights)", "max_length": 128}}}
    return model.save(folder, net, tokenizer, meta)


# ---------------------------------------------------------------- servers


@dataclass
class Config:
    name: str
    args: list[str]
    kind: str  # naive | sent


def configs(model: Path, work: Path, threads: list[int]) -> list[Config]:
    sent = [sys.executable, "-m", "sentiment_cli.cli", "serve", "--model", str(model), "--no-accuracy-gate",
            "--set", f"paths.prediction_log={work / 'predictions'}", "--set", f"paths.onnx_cache={work / 'onnx'}"]
    naive = [sys.executable, str(HERE / "naive_server.py"), "--model", str(model)]
    out = [Config("naive", naive, "naive"), Config("naive-serial", [*naive, "--serial"], "naive")]
    for t in threads:
        suffix = f"-t{t}" if t else ""
        opts = ["--set", f"serve.threads={t}"]
        out += [Config(f"sent-fp32{suffix}", [*sent, "--no-quantize", *opts], "sent"),
                Config(f"sent-int8{suffix}", [*sent, "--quantize", *opts], "sent"),
                Config(f"sent-onnx-fp32{suffix}", [*sent, "--runtime", "onnx", "--no-quantize", *opts], "sent"),
                Config(f"sent-onnx-int8{suffix}", [*sent, "--runtime", "onnx", "--quantize", *opts], "sent")]
    return out


@contextlib.contextmanager
def server(config: Config, workdir: Path):
    """The server of `config` on a free port, ready; stopped with SIGTERM (servers.running)."""
    from sentiment_cli import servers

    try:
        with servers.running(config.args, cwd=workdir, output=workdir / f"{config.name}.log",
                             ready_timeout=300, stop_timeout=60) as running:
            yield running.url
    except servers.ServerFailed as exc:
        raise RuntimeError(f"{config.name}: {str(exc).splitlines()[0]}; see {config.name}.log") from None


# ---------------------------------------------------------------- load


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    loadavg: float  # the machine's 1-minute load average at the end: other tenants show here


def summarize(latencies: list[float], errors: int, seconds: float) -> Result:
    lat = sorted(latencies) or [float("nan")]

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    return Result(requests=len(latencies), errors=errors, seconds=round(seconds, 2),
                  rps=round(len(latencies) / seconds, 2), p50_ms=round(pct(0.50), 1),
                  p99_ms=round(pct(0.99), 1), max_ms=round(lat[-1] * 1000, 1),
                  loadavg=round(os.getloadavg()[0], 2))


class Texts:
    def __init__(self, texts: list[str]):
        self.texts, self.i = texts, 0

    def next(self) -> str:
        self.i += 1
        return self.texts[self.i % len(self.texts)]


async def _post(session, url: str, text: str) -> bool:
    try:
        async with session.post(f"{url}/predict", json={"text": text}) as r:
            body = await r.read()
            return r.status == 200 and b'"predictions"' in body
    except Exception:
        return False


async def closed_loop(url: str, texts: Texts, concurrency: int, duration: float) -> Result:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=timeout) as session:
        start = time.perf_counter()
        end = start + duration

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                ok = await _post(session, url, texts.next())
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
        return summarize(latencies, errors, time.perf_counter() - start)


async def open_loop(url: str, texts: Texts, rate: float, duration: float, seed: int = 0
                    ) -> Result:
    """Poisson arrivals at `rate`/s; a late answer cannot delay the next send (no coordinated
    omission): latency runs from the scheduled send time."""
    import aiohttp

    rng = random.Random(seed)
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        start = time.perf_counter()

        async def one(at: float, text: str) -> None:
            nonlocal errors
            ok = await _post(session, url, text)
            if ok:
                latencies.append(time.perf_counter() - at)
            else:
                errors += 1

        tasks = []
        t = start
        while True:
            t += rng.expovariate(rate)
            if t > start + duration:
                break
            delay = t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(t, texts.next())))
        await asyncio.gather(*tasks)
        return summarize(latencies, errors, duration)


# ---------------------------------------------------------------- accuracy


def accuracy(model: Path, texts: list[str], labels: list[int], cache: Path) -> dict:
    """Each variant's accuracy and agreement with fp32 torch, and its in-process texts/s."""
    import numpy as np

    from sentiment_cli.model import CPU_CHUNK, Predictor
    from sentiment_cli.onnxrt import OnnxPredictor

    predictors = {
        "torch-fp32": lambda: Predictor.from_folder(model, batch_size=32),
        # as sent serve runs it on a CPU: dynamic int8 depends on what shares a pass
        "torch-int8": lambda: Predictor.from_folder(model, quantize=True, batch_size=CPU_CHUNK),
        "onnx-fp32": lambda: OnnxPredictor.from_folder(model, quantize=False, cache=str(cache)),
        "onnx-int8": lambda: OnnxPredictor.from_folder(model, quantize=True, cache=str(cache)),
    }
    y = np.asarray(labels)
    out: dict = {"examples": len(texts)}
    reference = None
    for name, make in predictors.items():
        predictor = make()
        start = time.perf_counter()
        probs = predictor.predict_proba(texts)
        seconds = time.perf_counter() - start
        if reference is None:
            reference = probs
        pred = probs.argmax(1)
        out[name] = {"accuracy": round(float((pred == y).mean()), 4),
                     "agreement": round(float((pred == reference.argmax(1)).mean()), 4),
                     "max_abs_prob_diff": round(float(np.abs(probs - reference).max()), 4),
                     "texts_per_s": round(len(texts) / seconds, 1),
                     "batch": predictor.batch_size, "lanes": predictor.lanes}
    # What the naive server does per request: fp32, one text per pass (speed only).
    one = Predictor.from_folder(model, batch_size=1)
    start = time.perf_counter()
    one.predict_proba(texts[:200])
    out["torch-fp32-batch1_texts_per_s"] = round(200 / (time.perf_counter() - start), 1)
    out["ceiling_onnx_int8_vs_fp32_batch1"] = round(
        out["onnx-int8"]["texts_per_s"] / out["torch-fp32-batch1_texts_per_s"], 2)
    return out


# ---------------------------------------------------------------- main


def machine() -> dict:
    from importlib.metadata import version

    import aiohttp
    import torch
    import transformers
    import uvicorn

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "transformers": transformers.__version__, "litestar": version("litestar"),
            "uvicorn": uvicorn.__version__, "aiohttp": aiohttp.__version__,
            "loadavg_at_start": round(os.getloadavg()[0], 2)}


def median_result(results: list[Result]) -> dict:
    keys = ["rps", "p50_ms", "p99_ms", "max_ms", "loadavg"]
    out = {k: round(statistics.median(getattr(r, k) for r in results), 2) for k in keys}
    out["errors"] = sum(r.errors for r in results)
    out["requests"] = sum(r.requests for r in results)
    out["runs"] = [asdict(r) for r in results]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model folder; default: random DistilBERT-base")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--only", nargs="+", help="configuration names to run")
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="serve.threads values for sent serve (0 = torch's default); "
                             "1 adds sent-fp32-t1 and sent-int8-t1")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="only compare int8 with fp32 predictions (needs --model)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model = args.model
    if model is None:
        model = build_random_distilbert(work / "distilbert-random")
        print(f"built {model} (DistilBERT-base architecture, random weights)", flush=True)
    test_texts, test_labels = rt_split("test")
    if args.accuracy_only:
        print(json.dumps({"model": str(model), **accuracy(model, test_texts, test_labels, work / "onnx")},
                         indent=2))
        return
    results: dict = {"machine": machine(), "model": str(args.model or "distilbert-base random"),
                     "duration_s": args.duration, "runs": args.runs,
                     "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    cfgs = [c for c in configs(model, work, args.threads)
            if not args.only or c.name in args.only]
    closed: dict[str, dict[int, list[Result]]] = {c.name: {n: [] for n in args.concurrency}
                                                 for c in cfgs}
    with contextlib.ExitStack() as stack:
        # All servers run side by side, idle unless measured, so that every run measures each
        # configuration within the same minute: the machine's other tenants come and go.
        urls = {}
        for cfg in cfgs:
            urls[cfg.name] = stack.enter_context(server(cfg, work))
            asyncio.run(closed_loop(urls[cfg.name], Texts(test_texts), max(args.concurrency), 3.0))
        for run in range(args.runs):
            order = cfgs[run % len(cfgs):] + cfgs[:run % len(cfgs)]  # rotate: no fixed slot
            for n in args.concurrency:
                for cfg in order:
                    r = asyncio.run(closed_loop(urls[cfg.name], Texts(test_texts), n,
                                                args.duration))
                    closed[cfg.name][n].append(r)
                    print(f"run {run + 1} {cfg.name:13s} c={n:<3d} {r.rps:7.1f} req/s  "
                          f"p50 {r.p50_ms:7.1f} ms  p99 {r.p99_ms:7.1f} ms  errors {r.errors}"
                          f"  load {r.loadavg}", flush=True)
        results["closed_loop"] = {name: {str(n): median_result(rs) for n, rs in by_n.items()}
                                  for name, by_n in closed.items()}

        # Open loop: each sent configuration at half the median peak it reached.
        results["open_loop"] = {}
        for cfg in cfgs:
            if cfg.kind != "sent":
                continue
            peak = max(results["closed_loop"][cfg.name][str(n)]["rps"] for n in args.concurrency)
            rate = peak / 2
            runs = []
            for run in range(args.runs):
                r = asyncio.run(open_loop(urls[cfg.name], Texts(test_texts), rate, args.duration,
                                          seed=run))
                runs.append(r)
                print(f"open {cfg.name:13s} {rate:6.1f}/s  p50 {r.p50_ms:7.1f} ms  "
                      f"p99 {r.p99_ms:7.1f} ms  errors {r.errors}  load {r.loadavg}", flush=True)
            results["open_loop"][cfg.name] = {"rate": round(rate, 2), **median_result(runs)}

    if not args.skip_accuracy:
        results["variants_vs_fp32"] = accuracy(model, test_texts, test_labels, work / "onnx")

    print_report(results, args.concurrency)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


def print_report(results: dict, concurrency: list[int]) -> None:
    closed = results["closed_loop"]
    print("\n== closed loop (median of runs) ==")
    print(f"{'server':14s} {'c':>3s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s}")
    for name, by_n in closed.items():
        for n in concurrency:
            m = by_n[str(n)]
            print(f"{name:14s} {n:3d} {m['rps']:8.1f} {m['p50_ms']:8.1f} {m['p99_ms']:8.1f} "
                  f"{m['errors']:6d}")
    if "naive" in closed:
        hi = str(max(concurrency))
        base = closed["naive"][hi]["rps"]
        for name in closed:
            if name != "naive":
                print(f"{name} / naive at c={hi}: {closed[name][hi]['rps'] / base:.2f}x")
    print("\n== open loop at half peak (median of runs) ==")
    for name, m in results["open_loop"].items():
        print(f"{name:14s} {m['rate']:6.1f}/s  p50 {m['p50_ms']:.1f} ms  p99 {m['p99_ms']:.1f} ms"
              f"  errors {m['errors']}")
    if "variants_vs_fp32" in results:
        print("\n== faster variants vs fp32 torch on the Rotten Tomatoes test split ==")
        print(json.dumps(results["variants_vs_fp32"], indent=2))
    print("\n" + json.dumps(results["machine"]))


if __name__ == "__main__":
    main()
