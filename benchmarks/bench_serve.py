"""Benchmark `sent serve` against a naive server: same machine, same model, same load, one run.

    python benchmarks/bench_serve.py                      # a DistilBERT-base built with random weights
    python benchmarks/bench_serve.py --model FOLDER       # any model folder (model.save layout)

Every server configuration is started with uvicorn (1 worker) on 127.0.0.1 and warmed up; they
wait side by side, idle, and are driven one at a time (never two at once: they share the cores)
by a closed-loop load generator (each of C clients sends its next request when the last one
answers) at concurrency 1 and 16 for --duration seconds each, in two scenarios:

- quiet: nothing else of this script's running;
- busy: --busy background processes, each a pure-Python busy loop (one core each), started just
  before the scenario and stopped right after it (in a `finally`, and each ends by itself after
  a deadline, so no load outlives the script): a neighbour that wants that many cores, as on a
  shared CI runner or a busy host.

In each scenario the in-process ceiling is measured too: the ONNX int8 model run by this process
as `sent serve --runtime onnx --quantize` runs it (one text per pass, serve's default lanes), no
HTTP, under the same load: after every server, and just before and just after each ONNX int8
server at the highest concurrency, whose req/s is also reported over the mean of those two (the
machine's speed drifts by several percent within a minute here; between two adjacent ceilings it
cancels to first order). All of that --runs times, the server order rotated each run, and the median
of the runs is reported. For every server the script also records its CPU time per request
(/proc) and, for `sent serve`, the time per request spent inside the model call (its
sent_forward_seconds metric): at concurrency 1 the rest of the latency is the server's own
overhead (HTTP, JSON, batching, metrics, the prediction log) plus the load generator's. It also
records the CPU per request of `sent serve`'s event-loop thread: the HTTP and JSON part of the
server's own work, which the in-process ceiling does not do.
Then `sent serve` is driven open-loop (Poisson arrivals at a fixed rate, latency counted from the
scheduled send time) at half the peak it reached, on the quiet machine.
Last, each faster variant (torch int8, ONNX Runtime fp32 and int8) against the fp32 torch model
on the Rotten Tomatoes test split: agreement and accuracy (accuracy only means something for a
fine-tuned --model; with random weights `sent serve` runs with --no-accuracy-gate).

Requests are one review each, taken in turn from the Rotten Tomatoes test split. The load
generator runs in this process, on the same cores as the servers: by default (--client raw) it is
loadgen.py beside this script, a minimal HTTP/1.1 client on an asyncio.Protocol (one keep-alive
connection per closed-loop client, a pool of them in the open loop, each text's request bytes
built once), so that its own CPU per request (recorded as client_cpu_ms_per_req: about 0.3 ms on
this 2-core machine next to the ONNX int8 server) stays a small share of what it measures;
--client aiohttp drives the same load with aiohttp (about 0.8-0.9 ms there), as the figures
measured before the raw client were. The JSON output records which ("client").
Configurations: naive (thread pool, fp32), naive --serial (one forward pass at a time),
sent-default (sent serve with no runtime flags: serve.runtime=auto, ONNX Runtime fp32 for a model
that exports), sent-fp32 (--runtime torch: the torch fp32 model, the default before auto),
sent-fp32-passive (the same with OMP_WAIT_POLICY=PASSIVE: OpenMP's threads never spin, as sent
serve ran before its short spin), sent-int8 (--runtime torch --quantize), sent serve --runtime onnx
(fp32 and int8), sent-onnx-int8-noprefetch (int8 with serve.prefetch=false: a lane is handed its
next text only once it is free, as before prefetch), each sent one for every --threads value.
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
from dataclasses import asdict, dataclass, field
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
    env: dict[str, str] = field(default_factory=dict)  # on top of this script's environment


def configs(model: Path, work: Path, threads: list[int], onnx_cache: Path) -> list[Config]:
    sent = [sys.executable, "-m", "sentiment_cli.cli", "serve", "--model", str(model), "--no-accuracy-gate",
            "--set", f"paths.prediction_log={work / 'predictions'}", "--set", f"paths.onnx_cache={onnx_cache}"]
    naive = [sys.executable, str(HERE / "naive_server.py"), "--model", str(model)]
    out = [Config("naive", naive, "naive"), Config("naive-serial", [*naive, "--serial"], "naive")]
    for t in threads:
        suffix = f"-t{t}" if t else ""
        opts = ["--set", f"serve.threads={t}"]
        torch = [*sent, "--runtime", "torch"]
        # sent serve as it starts with no runtime flags (serve.runtime=auto, fp32): ONNX Runtime fp32
        out += [Config(f"sent-default{suffix}", [*sent, *opts], "sent"),
                Config(f"sent-fp32{suffix}", [*torch, "--no-quantize", *opts], "sent"),
                # OpenMP's threads never spinning, as sent serve had them before a short spin
                Config(f"sent-fp32-passive{suffix}", [*torch, "--no-quantize", *opts], "sent",
                       {"OMP_WAIT_POLICY": "PASSIVE"}),
                Config(f"sent-int8{suffix}", [*torch, "--quantize", *opts], "sent"),
                Config(f"sent-onnx-fp32{suffix}", [*sent, "--runtime", "onnx", "--no-quantize", *opts], "sent"),
                Config(f"sent-onnx-int8{suffix}", [*sent, "--runtime", "onnx", "--quantize", *opts], "sent"),
                # lanes handed work only when free, as before serve.prefetch
                Config(f"sent-onnx-int8-noprefetch{suffix}", [*sent, "--runtime", "onnx", "--quantize", *opts,
                                                              "--set", "serve.prefetch=false"], "sent")]
    return out


@contextlib.contextmanager
def server(config: Config, workdir: Path):
    """The server of `config` on a free port, ready (a servers.Server: url, process); stopped
    with SIGTERM (servers.running)."""
    from sentiment_cli import servers

    try:
        with servers.running(config.args, cwd=workdir, output=workdir / f"{config.name}.log",
                             ready_timeout=300, stop_timeout=60, env=config.env) as running:
            yield running
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
    mean_ms: float
    loadavg: float  # the machine's 1-minute load average at the end: other tenants show here
    loadavg_before: float | None = None
    cpu_ms_per_req: float | None = None  # the server process's CPU time (all its threads)
    client_cpu_ms_per_req: float | None = None  # the load generator's (this process), same cores
    model_ms_per_req: float | None = None  # sent serve: wall time inside the model call
    outside_ms: float | None = None  # mean latency less model_ms_per_req (meaningful at C = 1)
    loop_cpu_ms_per_req: float | None = None  # sent serve: its event loop's thread (the main one)


def summarize(latencies: list[float], errors: int, seconds: float) -> Result:
    lat = sorted(latencies) or [float("nan")]

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    return Result(requests=len(latencies), errors=errors, seconds=round(seconds, 2),
                  rps=round(len(latencies) / seconds, 2), p50_ms=round(pct(0.50), 1),
                  p99_ms=round(pct(0.99), 1), max_ms=round(lat[-1] * 1000, 1),
                  mean_ms=round(statistics.fmean(lat) * 1000, 2),
                  loadavg=round(os.getloadavg()[0], 2))


# ---------------------------------------------------------------- what a server spends


def process_cpu_s(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (all its threads), or of its thread tid, in seconds."""
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def forward_seconds(url: str) -> tuple[float, float]:
    """sent serve's sent_forward_seconds (sum, count): time inside the model call, passes."""
    from sentiment_cli import servers

    total = count = 0.0
    for line in servers.get(f"{url}/metrics", 10.0)[1].decode().splitlines():
        if line.startswith("sent_forward_seconds_sum"):
            total += float(line.split()[-1])
        elif line.startswith("sent_forward_seconds_count"):
            count += float(line.split()[-1])
    return total, count


def measure(srv, kind: str, texts: Texts, concurrency: int, duration: float, client: str = "raw"
            ) -> Result:
    """One closed-loop measurement, with the server's CPU and model time per request. Of sent
    serve also the CPU of its event loop (uvicorn's with one worker: the process's main thread),
    which with the prediction-log writer's is the server's own work beside the model's."""
    before_load = round(os.getloadavg()[0], 2)
    pid = srv.process.pid
    cpu0 = process_cpu_s(pid)
    loop0 = process_cpu_s(pid, pid) if kind == "sent" else None
    fwd0 = forward_seconds(srv.url) if kind == "sent" else None
    client0 = time.process_time()
    r = closed_loop(srv.url, texts, concurrency, duration, client)
    client = time.process_time() - client0
    r.loadavg_before = before_load
    done = max(1, r.requests + r.errors)
    r.cpu_ms_per_req = round((process_cpu_s(pid) - cpu0) * 1000 / done, 2)
    if loop0 is not None:
        r.loop_cpu_ms_per_req = round((process_cpu_s(pid, pid) - loop0) * 1000 / done, 2)
    r.client_cpu_ms_per_req = round(client * 1000 / done, 2)
    if fwd0 is not None:
        fwd1 = forward_seconds(srv.url)
        r.model_ms_per_req = round((fwd1[0] - fwd0[0]) * 1000 / done, 2)
        r.outside_ms = round(r.mean_ms - r.model_ms_per_req, 2)
    return r


# ---------------------------------------------------------------- a busy host

BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end: pass\n"


@contextlib.contextmanager
def background_load(processes: int, max_s: float):
    """`processes` busy loops (one core each) while the block runs: stopped when it ends, and
    each ends by itself after max_s even if this script is killed."""
    import subprocess

    procs = []
    try:
        for _ in range(processes):
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(max_s)],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        time.sleep(1.0 if processes else 0)  # let the scheduler see them before measuring
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def onnx_ceiling_predictor(model: Path, cache: Path):
    """The model as `sent serve --runtime onnx --quantize` runs it: int8, one text per pass,
    serve's default lanes (loading.load_predictor), in this process."""
    from sentiment_cli.model import ONNX_CHUNK
    from sentiment_cli.onnxrt import OnnxPredictor, serve_lanes

    return OnnxPredictor.from_folder(model, quantize=True, threads=serve_lanes(),
                                     batch_size=ONNX_CHUNK, cache=str(cache))


def ceiling(predictor, texts: Texts, duration: float) -> dict:
    """The predictor's texts/s with no HTTP, groups of 64 texts, for about `duration` seconds."""
    predictor.predict_proba([texts.next() for _ in range(8)])  # warm
    n, start, cpu0 = 0, time.perf_counter(), time.process_time()
    load0 = round(os.getloadavg()[0], 2)
    while time.perf_counter() - start < duration:
        group = [texts.next() for _ in range(64)]
        predictor.predict_proba(group)
        n += len(group)
    seconds = time.perf_counter() - start
    return {"texts_per_s": round(n / seconds, 2), "cpu_ms_per_text": round(
        (time.process_time() - cpu0) * 1000 / n, 2), "loadavg_before": load0,
        "loadavg": round(os.getloadavg()[0], 2)}


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


CLIENTS = ("raw", "aiohttp")


def closed_loop(url: str, texts: Texts, concurrency: int, duration: float, client: str = "raw") -> Result:
    """`concurrency` clients, each sending its next request when the last one answered."""
    if client == "aiohttp":
        return asyncio.run(aiohttp_closed_loop(url, texts, concurrency, duration))
    import loadgen

    return summarize(*asyncio.run(loadgen.closed_loop(url, texts, concurrency, duration)))


def open_loop(url: str, texts: Texts, rate: float, duration: float, seed: int = 0, client: str = "raw"
              ) -> Result:
    """Poisson arrivals at `rate`/s; a late answer cannot delay the next send (no coordinated
    omission): latency runs from the scheduled send time."""
    if client == "aiohttp":
        return asyncio.run(aiohttp_open_loop(url, texts, rate, duration, seed))
    import loadgen

    return summarize(*asyncio.run(loadgen.open_loop(url, texts, rate, duration, seed)))


async def aiohttp_closed_loop(url: str, texts: Texts, concurrency: int, duration: float) -> Result:
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


async def aiohttp_open_loop(url: str, texts: Texts, rate: float, duration: float, seed: int = 0
                            ) -> Result:
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
            "onnxruntime": version("onnxruntime"),
            "thread_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "MKL_"))},
            "loadavg_at_start": round(os.getloadavg()[0], 2)}


def median_result(results: list[Result]) -> dict:
    keys = ["rps", "p50_ms", "p99_ms", "max_ms", "mean_ms", "loadavg", "loadavg_before",
            "cpu_ms_per_req", "client_cpu_ms_per_req", "model_ms_per_req", "outside_ms",
            "loop_cpu_ms_per_req"]
    out = {k: round(statistics.median(getattr(r, k) for r in results), 2) for k in keys
           if all(getattr(r, k) is not None for r in results)}
    out["errors"] = sum(r.errors for r in results)
    out["requests"] = sum(r.requests for r in results)
    out["runs"] = [asdict(r) for r in results]
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model folder; default: random DistilBERT-base")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--only", nargs="+", help="configuration names to run")
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="serve.threads values for sent serve (0 = the default); "
                             "1 adds sent-fp32-t1 and sent-int8-t1")
    parser.add_argument("--scenarios", nargs="+", choices=["quiet", "busy"], default=["quiet", "busy"])
    parser.add_argument("--busy", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="busy-loop processes in the busy scenario (default: half the cores)")
    parser.add_argument("--skip-open-loop", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="only compare int8 with fp32 predictions (needs --model)")
    parser.add_argument("--onnx-cache", type=Path,
                        help="where the ONNX exports are kept (default: a fresh folder each run)")
    parser.add_argument("--client", choices=CLIENTS, default="raw",
                        help="the load generator: raw (loadgen.py, lean) or aiohttp (as before)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args()


def of_adjacent_ceiling(rps: float, before: dict, after: dict) -> dict:
    """A served req/s over the mean of the ceilings measured just before and just after it: a
    drift of the machine's speed over those three measurements cancels, to first order."""
    mean = (before["texts_per_s"] + after["texts_per_s"]) / 2
    return {"served_rps": round(rps, 2), "before": before["texts_per_s"], "after": after["texts_per_s"],
            "of_ceiling": round(rps / mean, 3)}


def run_scenario(scenario: str, run: int, cfgs: list[Config], servers: dict, args, texts: list[str],
                 closed: dict, ceil_predictor, ceilings: dict, adjacent: dict) -> None:
    """Every configuration at every concurrency, then the in-process ceiling, under one load; each
    ONNX int8 server at the highest concurrency also between two ceilings (`adjacent`)."""
    order = cfgs[run % len(cfgs):] + cfgs[:run % len(cfgs)]  # rotate: no fixed slot
    busy = args.busy if scenario == "busy" else 0
    bracketed = sum(c.name.startswith("sent-onnx-int8") for c in order) if ceil_predictor is not None else 0
    planned = (len(order) * len(args.concurrency) + 2 * bracketed) * (args.duration + 2) + args.duration + 60
    with background_load(busy, max_s=planned):
        for n in args.concurrency:
            for cfg in order:
                bracket = ceil_predictor is not None and cfg.name.startswith("sent-onnx-int8") \
                    and n == max(args.concurrency)
                if bracket:
                    before = ceiling(ceil_predictor, Texts(texts), args.duration)
                r = measure(servers[cfg.name], cfg.kind, Texts(texts), n, args.duration, args.client)
                closed[scenario][cfg.name][n].append(r)
                if bracket:
                    adjacent[scenario].setdefault(cfg.name, []).append(
                        of_adjacent_ceiling(r.rps, before, ceiling(ceil_predictor, Texts(texts), args.duration)))
                    a = adjacent[scenario][cfg.name][-1]
                    print(f"run {run + 1} {scenario:5s} {cfg.name:14s} ceiling just before {a['before']:.1f}, "
                          f"just after {a['after']:.1f} texts/s: of ceiling {a['of_ceiling']:.3f}", flush=True)
                extra = "" if r.outside_ms is None else (
                    f"  model {r.model_ms_per_req:6.1f} ms/req  outside {r.outside_ms:6.1f} ms"
                    f"  event loop {r.loop_cpu_ms_per_req:5.2f} ms/req")
                print(f"run {run + 1} {scenario:5s} {cfg.name:14s} c={n:<3d} {r.rps:7.1f} req/s  "
                      f"p50 {r.p50_ms:7.1f} ms  p99 {r.p99_ms:7.1f} ms  errors {r.errors}  "
                      f"cpu {r.cpu_ms_per_req:6.1f} (client {r.client_cpu_ms_per_req:4.1f}) ms/req{extra}"
                      f"  load {r.loadavg_before}"
                      f"->{r.loadavg}", flush=True)
        if ceil_predictor is not None:
            c = ceiling(ceil_predictor, Texts(texts), args.duration)
            ceilings[scenario].append(c)
            print(f"run {run + 1} {scenario:5s} ceiling onnx-int8 in-process {c['texts_per_s']:7.1f} "
                  f"texts/s  cpu {c['cpu_ms_per_text']:6.1f} ms/text  load {c['loadavg_before']}"
                  f"->{c['loadavg']}", flush=True)


def write_results(out: Path, results: dict) -> None:
    """The results as indented JSON at `out` (its folder made if need be), and a line saying so."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


def stop_servers_on_sigterm() -> None:
    """SIGTERM (a `kill`, a CI timeout) unwinds like Ctrl-C: the `with server(...)` blocks then stop
    the servers this script started, which a plain SIGTERM would leave running."""
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main() -> None:
    args = parse_args()
    stop_servers_on_sigterm()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model = args.model
    if model is None:
        model = build_random_distilbert(work / "distilbert-random")
        print(f"built {model} (DistilBERT-base architecture, random weights)", flush=True)
    test_texts, test_labels = rt_split("test")
    onnx_cache = args.onnx_cache or work / "onnx"
    if args.accuracy_only:
        print(json.dumps({"model": str(model), **accuracy(model, test_texts, test_labels, onnx_cache)},
                         indent=2))
        return
    results: dict = {"machine": machine(), "model": str(args.model or "distilbert-base random"),
                     "duration_s": args.duration, "runs": args.runs, "busy_processes": args.busy,
                     "client": args.client,
                     "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    cfgs = [c for c in configs(model, work, args.threads, onnx_cache)
            if not args.only or c.name in args.only]
    closed = {sc: {c.name: {n: [] for n in args.concurrency} for c in cfgs} for sc in args.scenarios}
    ceilings: dict[str, list[dict]] = {sc: [] for sc in args.scenarios}
    adjacent: dict[str, dict[str, list[dict]]] = {sc: {} for sc in args.scenarios}
    with contextlib.ExitStack() as stack:
        # All servers run side by side, idle unless measured, so that every run measures each
        # configuration within the same minute: the machine's other tenants come and go.
        running = {}
        for cfg in cfgs:
            running[cfg.name] = stack.enter_context(server(cfg, work))
            closed_loop(running[cfg.name].url, Texts(test_texts), max(args.concurrency), 3.0, args.client)
        ceil_predictor = None
        if any(c.name.startswith("sent-onnx-int8") for c in cfgs):
            ceil_predictor = onnx_ceiling_predictor(model, onnx_cache)  # the export the server made
        for run in range(args.runs):
            for scenario in args.scenarios:
                run_scenario(scenario, run, cfgs, running, args, test_texts, closed,
                             ceil_predictor, ceilings, adjacent)
        results["closed_loop"] = {sc: {name: {str(n): median_result(rs) for n, rs in by_n.items()}
                                       for name, by_n in by_name.items()}
                                  for sc, by_name in closed.items()}
        results["ceiling_onnx_int8"] = {sc: {
            "texts_per_s": statistics.median(c["texts_per_s"] for c in cs),
            "cpu_ms_per_text": statistics.median(c["cpu_ms_per_text"] for c in cs), "runs": cs}
            for sc, cs in ceilings.items() if cs}
        results["onnx_int8_of_adjacent_ceiling"] = {sc: {name: {
            "median": statistics.median(a["of_ceiling"] for a in runs), "runs": runs}
            for name, runs in by_name.items()} for sc, by_name in adjacent.items() if by_name}
        results["open_loop"] = {} if args.skip_open_loop else open_loops(cfgs, running, args, test_texts,
                                                                         results["closed_loop"])

    if not args.skip_accuracy:
        results["variants_vs_fp32"] = accuracy(model, test_texts, test_labels, onnx_cache)

    print_report(results, args.concurrency)
    if args.out:
        write_results(args.out, results)


def open_loops(cfgs: list[Config], running: dict, args, texts: list[str], closed: dict) -> dict:
    """Each sent configuration at half the median peak it reached, on the quiet machine."""
    out = {}
    base = closed.get("quiet") or next(iter(closed.values()))
    for cfg in cfgs:
        if cfg.kind != "sent":
            continue
        rate = max(base[cfg.name][str(n)]["rps"] for n in args.concurrency) / 2
        runs = []
        for run in range(args.runs):
            r = open_loop(running[cfg.name].url, Texts(texts), rate, args.duration, seed=run, client=args.client)
            runs.append(r)
            print(f"open {cfg.name:13s} {rate:6.1f}/s  p50 {r.p50_ms:7.1f} ms  "
                  f"p99 {r.p99_ms:7.1f} ms  errors {r.errors}  load {r.loadavg}", flush=True)
        out[cfg.name] = {"rate": round(rate, 2), **median_result(runs)}
    return out


def ratios(results: dict, concurrency: list[int]) -> dict:
    """Each server's req/s over naive's at each concurrency, per scenario (of the medians), and
    ONNX int8's served req/s at the highest concurrency over its in-process ceiling."""
    out: dict = {}
    for sc, closed in results["closed_loop"].items():
        if "naive" not in closed:
            continue
        out[sc] = {name: {str(n): round(closed[name][str(n)]["rps"] / closed["naive"][str(n)]["rps"], 2)
                          for n in concurrency} for name in closed if name != "naive"}
        ceil = results.get("ceiling_onnx_int8", {}).get(sc)
        hi = str(max(concurrency))
        for name in closed:
            if ceil and name.startswith("sent-onnx-int8"):
                key = "onnx_int8_of_ceiling" + name.removeprefix("sent-onnx-int8").replace("-", "_")
                out[sc][key] = round(closed[name][hi]["rps"] / ceil["texts_per_s"], 3)
    return out


def print_report(results: dict, concurrency: list[int]) -> None:
    for sc, closed in results["closed_loop"].items():
        print(f"\n== closed loop, {sc} (median of runs) ==")
        print(f"{'server':14s} {'c':>3s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'cpu ms':>7s} "
              f"{'model ms':>8s} {'outside':>8s} {'errors':>6s}")
        for name, by_n in closed.items():
            for n in concurrency:
                m = by_n[str(n)]
                print(f"{name:14s} {n:3d} {m['rps']:8.1f} {m['p50_ms']:8.1f} {m['p99_ms']:8.1f} "
                      f"{m.get('cpu_ms_per_req', float('nan')):7.1f} "
                      f"{m.get('model_ms_per_req', float('nan')):8.1f} "
                      f"{m.get('outside_ms', float('nan')):8.1f} {m['errors']:6d}")
        if sc in results.get("ceiling_onnx_int8", {}):
            c = results["ceiling_onnx_int8"][sc]
            print(f"ceiling onnx-int8 in-process: {c['texts_per_s']:.1f} texts/s, "
                  f"{c['cpu_ms_per_text']:.1f} ms CPU/text")
    results["ratios"] = ratios(results, concurrency)
    print("\n== ratios (medians) ==\n" + json.dumps(results["ratios"], indent=2))
    for sc, by_name in results.get("onnx_int8_of_adjacent_ceiling", {}).items():
        for name, a in by_name.items():
            print(f"{sc:5s} {name}: of the ceilings just before and after it, median {a['median']:.3f} "
                  f"(runs {', '.join(str(r['of_ceiling']) for r in a['runs'])})")
    if results["open_loop"]:
        print("\n== open loop at half peak, quiet (median of runs) ==")
    for name, m in results["open_loop"].items():
        print(f"{name:14s} {m['rate']:6.1f}/s  p50 {m['p50_ms']:.1f} ms  p99 {m['p99_ms']:.1f} ms"
              f"  errors {m['errors']}")
    if "variants_vs_fp32" in results:
        print("\n== faster variants vs fp32 torch on the Rotten Tomatoes test split ==")
        print(json.dumps(results["variants_vs_fp32"], indent=2))
    print("\n" + json.dumps(results["machine"]))


if __name__ == "__main__":
    main()
