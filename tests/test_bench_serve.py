"""The serve benchmark (benchmarks/bench_serve.py): where its in-process ceilings are measured, offline."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_serve  # noqa: E402


def result(rps: float) -> bench_serve.Result:
    return bench_serve.Result(requests=int(rps), errors=0, seconds=1.0, rps=rps, p50_ms=1.0, p99_ms=1.0,
                              max_ms=1.0, mean_ms=1.0, loadavg=0.0, cpu_ms_per_req=1.0,
                              client_cpu_ms_per_req=0.1)


def test_each_int8_server_at_the_top_concurrency_sits_between_two_ceilings(monkeypatch):
    """The machine's speed drifts: the ceiling an int8 run is compared with is measured just before
    and just after it, and the run's share is its req/s over their mean."""
    events: list[str] = []
    ceilings = iter([100.0, 80.0, 60.0])  # before, after, then the scenario's own at the end
    served = {("naive", 1): 5.0, ("sent-onnx-int8", 1): 30.0, ("naive", 16): 6.0, ("sent-onnx-int8", 16): 81.0}

    def fake_ceiling(predictor, texts, duration):
        value = next(ceilings)
        events.append(f"ceiling {value:g}")
        return {"texts_per_s": value, "cpu_ms_per_text": 1.0, "loadavg_before": 0.0, "loadavg": 0.0}

    def fake_measure(srv, kind, texts, n, duration, client):
        events.append(f"{srv} c={n}")
        return result(served[(srv, n)])

    monkeypatch.setattr(bench_serve, "ceiling", fake_ceiling)
    monkeypatch.setattr(bench_serve, "measure", fake_measure)
    monkeypatch.setattr(bench_serve, "background_load", lambda n, max_s: contextlib.nullcontext())
    cfgs = [bench_serve.Config("naive", [], "naive"), bench_serve.Config("sent-onnx-int8", [], "sent")]
    args = argparse.Namespace(busy=1, concurrency=[1, 16], duration=1.0, client="raw")
    closed = {"quiet": {c.name: {1: [], 16: []} for c in cfgs}}
    scenario_ceilings: dict = {"quiet": []}
    adjacent: dict = {"quiet": {}}
    bench_serve.run_scenario("quiet", 0, cfgs, {c.name: c.name for c in cfgs}, args, ["a review"],
                             closed, object(), scenario_ceilings, adjacent)
    assert events == ["naive c=1", "sent-onnx-int8 c=1", "naive c=16",
                      "ceiling 100", "sent-onnx-int8 c=16", "ceiling 80", "ceiling 60"]
    assert adjacent == {"quiet": {"sent-onnx-int8": [
        {"served_rps": 81.0, "before": 100.0, "after": 80.0, "of_ceiling": 0.9}]}}
    assert [c["texts_per_s"] for c in scenario_ceilings["quiet"]] == [60.0]


def test_without_an_int8_server_no_ceiling_is_bracketed(monkeypatch):
    monkeypatch.setattr(bench_serve, "measure", lambda srv, kind, texts, n, duration, client: result(5.0))
    monkeypatch.setattr(bench_serve, "background_load", lambda n, max_s: contextlib.nullcontext())
    cfgs = [bench_serve.Config("naive", [], "naive")]
    args = argparse.Namespace(busy=1, concurrency=[16], duration=1.0, client="raw")
    adjacent: dict = {"busy": {}}
    bench_serve.run_scenario("busy", 0, cfgs, {"naive": "naive"}, args, ["a review"],
                             {"busy": {"naive": {16: []}}}, None, {"busy": []}, adjacent)
    assert adjacent == {"busy": {}}


def test_the_ceiling_runs_on_the_lanes_serve_runs_by_default(monkeypatch, tmp_path):
    """The ceiling is the served configuration without HTTP: the same lanes as `sent serve
    --runtime onnx --quantize` with serve.threads=0, which are two per core."""
    from types import SimpleNamespace

    from sentiment_cli import config, loading, onnxrt

    asked: list[tuple[str, int, bool]] = []

    def fake_from_folder(folder, *, quantize=False, threads=0, **kwargs):
        asked.append((kwargs.get("name") or "ceiling", threads, quantize))
        return SimpleNamespace(meta={}, version=None)

    monkeypatch.setattr(onnxrt.OnnxPredictor, "from_folder", staticmethod(fake_from_folder))
    monkeypatch.setattr(onnxrt, "usable_cores", lambda: 3)
    cfg = config.load(root=tmp_path, overrides=["serve.quantize=true"])
    loading.load_predictor(cfg, tmp_path, {"name": "served"}, gate=False, runtime="onnx")
    bench_serve.onnx_ceiling_predictor(tmp_path, tmp_path / "cache")
    assert asked == [("served", 6, True), ("ceiling", 6, True)]
    asked.clear()
    loading.load_predictor(config.load(root=tmp_path, overrides=["serve.threads=2"]), tmp_path, {"name": "served"},
                           gate=False, runtime="onnx")
    assert asked == [("served", 2, False)]


def test_a_threads_cpu_is_read_apart_from_its_process(tmp_path):
    """measure() records sent serve's event-loop thread's CPU per request from /proc/PID/task/TID:
    a thread that burns CPU shows it there, and the main thread does not get it."""
    script = tmp_path / "burn.py"
    script.write_text(textwrap.dedent("""
        import sys, threading, time
        def burn():
            end = time.thread_time() + 0.6
            while time.thread_time() < end:
                pass
        t = threading.Thread(target=burn)
        t.start()
        print(threading.get_native_id(), t.native_id, flush=True)
        t.join()
        sys.stdin.readline()
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        main_tid, burner_tid = map(int, proc.stdout.readline().split())
        assert main_tid == proc.pid  # the main thread's id is the process's
        deadline = time.monotonic() + 30
        while bench_serve.process_cpu_s(proc.pid) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        whole = bench_serve.process_cpu_s(proc.pid)
        main = bench_serve.process_cpu_s(proc.pid, main_tid)
        assert whole >= 0.5
        assert main < whole - 0.4  # the burner's CPU is not the main thread's
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(timeout=30)


def test_sent_servers_event_loop_cpu_per_request_is_recorded(monkeypatch):
    cpu = {None: [10.0, 12.0], 123: [1.0, 1.5]}  # the process, then its main thread: before, after

    monkeypatch.setattr(bench_serve, "process_cpu_s", lambda pid, tid=None: cpu[tid].pop(0))
    monkeypatch.setattr(bench_serve, "forward_seconds", lambda url: (0.0, 0.0))
    monkeypatch.setattr(bench_serve, "closed_loop", lambda *a, **k: result(100.0))
    srv = argparse.Namespace(process=argparse.Namespace(pid=123), url="http://x")
    r = bench_serve.measure(srv, "sent", bench_serve.Texts(["a"]), 16, 1.0)
    assert r.cpu_ms_per_req == 20.0  # 2 s over 100 requests
    assert r.loop_cpu_ms_per_req == 5.0  # 0.5 s over 100 requests
    cpu = {None: [10.0, 12.0]}
    monkeypatch.setattr(bench_serve, "process_cpu_s", lambda pid, tid=None: cpu[tid].pop(0))
    assert bench_serve.measure(srv, "naive", bench_serve.Texts(["a"]), 16, 1.0).loop_cpu_ms_per_req is None
