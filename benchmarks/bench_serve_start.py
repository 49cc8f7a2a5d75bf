"""What the default runtime costs at start: `sent serve` from launch to ready, and its peak memory.

    python benchmarks/bench_serve_start.py [--model FOLDER] [--runs 3] [--out FILE]

serve.runtime=auto exports a model to ONNX the first time it sees its weights, before the port is
bound; later starts load the cached export. This script measures, --runs times each, with the
same model (by default bench_serve.py's random DistilBERT-base):

- first: `sent serve` with an empty ONNX cache (the export, then the load and warm-up);
- cached: `sent serve` again on that cache;
- torch: `sent serve --runtime torch`, the baseline: no export, the torch model loaded.

Each is timed from launch until /readyz answers 200; the peak resident memory is the server
process's VmHWM (/proc) just before it is stopped, and that of the export's child process
(`python -m sentiment_cli.onnxrt`, polled every 0.1 s while the server starts). Medians, each as a
ratio against torch's in the same run, and the 1-minute load average before every start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

KINDS = ("first", "cached", "torch")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


class ExportWatch:
    """The largest VmHWM of any `python -m sentiment_cli.onnxrt` process while the block runs."""

    def __init__(self) -> None:
        import threading

        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    if b"sentiment_cli.onnxrt" in (proc / "cmdline").read_bytes():
                        self.peak_mb = max(self.peak_mb, peak_rss_mb(int(proc.name)))
                except (OSError, ValueError):
                    continue  # gone meanwhile

    def __enter__(self) -> ExportWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def start_once(model: Path, work: Path, cache: Path, runtime: str | None) -> dict:
    from sentiment_cli import servers

    argv = [sys.executable, "-m", "sentiment_cli.cli", "serve", "--model", str(model), "--no-accuracy-gate",
            "--set", f"paths.prediction_log={work / 'predictions'}", "--set", f"paths.onnx_cache={cache}"]
    if runtime:
        argv += ["--runtime", runtime]
    load = round(os.getloadavg()[0], 2)
    start = time.perf_counter()
    log = work / f"server-{time.monotonic_ns()}.log"  # one per start: the line read is this start's
    with ExportWatch() as export, servers.running(argv, cwd=work, output=log, ready_timeout=600,
                                                 stop_timeout=60) as srv:
        ready = time.perf_counter() - start
        rss = peak_rss_mb(srv.process.pid)
        variant = next((line.split(" ready as ")[1].split()[0] for line in log.read_text().splitlines()
                        if " ready as " in line), None)
    return {"ready_s": round(ready, 2), "peak_rss_mb": rss, "export_peak_rss_mb": export.peak_mb,
            "variant": variant, "loadavg_before": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model folder; default: random DistilBERT-base")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import bench_serve

    bench_serve.stop_servers_on_sigterm()

    with tempfile.TemporaryDirectory(prefix="sent-start-") as tmp:
        work = Path(tmp)
        model = args.model or bench_serve.build_random_distilbert(work / "model")
        runs: dict[str, list[dict]] = {k: [] for k in KINDS}
        for run in range(args.runs):
            cache = work / f"onnx-{run}"  # empty: this run's first start exports
            for kind in KINDS:
                r = start_once(model, work, cache, "torch" if kind == "torch" else None)
                runs[kind].append(r)
                print(f"run {run + 1} {kind:6s} ready in {r['ready_s']:6.1f} s  peak {r['peak_rss_mb']:7.0f} MB  "
                      f"export child {r['export_peak_rss_mb']:6.0f} MB  {r['variant']}  load {r['loadavg_before']}",
                      flush=True)
    med = {k: {m: statistics.median(r[m] for r in rs) for m in ("ready_s", "peak_rss_mb", "export_peak_rss_mb")}
           for k, rs in runs.items()}
    ratios = {k: {m: round(med[k][m] / med["torch"][m], 2) for m in ("ready_s", "peak_rss_mb")} for k in KINDS}
    results = {"model": str(args.model or "distilbert-base (random weights)"), "runs": runs,
               "median": med, "vs_torch": ratios, "cores": os.cpu_count()}
    print(json.dumps({"median": med, "vs_torch": ratios}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
