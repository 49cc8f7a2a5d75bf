"""The prediction log: JSON lines written off the request path, rotated, read back in order."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import pytest

from sentiment_cli import predlog
from sentiment_cli.model import Prediction


def record(i: int, text: str | None = None) -> dict:
    probabilities = {"neg": 0.25, "pos": 0.75} if i % 2 else {"neg": 0.75, "pos": 0.25}
    p = Prediction(label="pos" if i % 2 else "neg", label_id=i % 2, score=0.75,
                   probabilities=probabilities)
    return predlog.make_record(text or f"review {i}", p, model_name="m", model_version="3",
                               latency_ms=1.5 + i)


def test_records_are_written_and_read_back_in_order(tmp_path: Path):
    with predlog.PredictionLog(tmp_path) as log:
        for i in range(0, 30, 3):
            log.write([record(i), record(i + 1), record(i + 2)])
    got = predlog.read_predictions(tmp_path)
    assert [r["text"] for r in got] == [f"review {i}" for i in range(30)]
    first = got[1]
    assert first["label"] == "pos" and first["label_id"] == 1 and first["score"] == 0.75
    assert first["probabilities"] == {"neg": 0.25, "pos": 0.75}
    assert first["model_name"] == "m" and first["model_version"] == "3"
    assert first["latency_ms"] == 2.5
    assert first["timestamp"].endswith("+00:00") and "T" in first["timestamp"]


def test_non_ascii_and_newlines_survive(tmp_path: Path):
    texts = ["très bien\nsecond line", "良い映画", 'quote " and \\ backslash', "emoji 🎬"]
    with predlog.PredictionLog(tmp_path) as log:
        log.write(record(i, t) for i, t in enumerate(texts))
    assert [r["text"] for r in predlog.read_predictions(tmp_path)] == texts


def test_a_request_handed_over_whole_is_written_as_make_record_writes_it(tmp_path: Path):
    """write_made (serve's path: the records made on the writer's thread) writes the same lines
    as write() of make_record's records, and the same JSON as the standard library's encoder."""
    texts = ["très bien", 'quote " \\ and \u2028', "review 2"]
    preds = [Prediction(label="pos", label_id=1, score=0.7345678912,
                        probabilities={"neg": 0.2654321088, "pos": 0.7345678912})] * 3
    at = 1_764_700_000.123456
    with predlog.PredictionLog(tmp_path / "made") as log:
        log.write_made(predlog.Made(texts, preds, "m", "3", 12.3456789, at))
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds")
    want = [predlog.make_record(t, p, model_name="m", model_version="3", latency_ms=12.3456789,
                                timestamp=stamp) for t, p in zip(texts, preds, strict=True)]
    with predlog.PredictionLog(tmp_path / "dicts") as log:
        log.write(want)
    made, dicts = (next((tmp_path / d).glob("*.jsonl")).read_bytes().decode().split("\n")[:-1]
                   for d in ("made", "dicts"))  # not splitlines(): U+2028 stays inside its line
    assert made == dicts
    assert made == [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in want]
    assert json.loads(made[0])["timestamp"] == "2025-12-02T18:26:40.123456+00:00"
    assert json.loads(made[0])["score"] == 0.734568


def test_a_request_whose_records_cannot_be_made_is_counted_and_the_writer_lives_on(tmp_path: Path):
    p = Prediction(label="pos", label_id=1, score=0.75, probabilities={"neg": 0.25, "pos": 0.75})
    with predlog.PredictionLog(tmp_path) as log:
        log.write_made(predlog.Made(["a", "b"], [p], "m", "3", 1.0, time.time()))  # 2 texts, 1 prediction
        log.write_made(predlog.Made(["c"], [p], "m", "3", 1.0, time.time()))
    assert (log.accepted, log.failed, log.written, log.unwritten) == (3, 2, 1, 0)
    assert [r["text"] for r in predlog.read_predictions(tmp_path)] == ["c"]


def test_files_rotate_by_size_and_sort_by_time(tmp_path: Path):
    with predlog.PredictionLog(tmp_path, rotate_bytes=1000) as log:
        for i in range(40):
            log.write([record(i)])
            log.flush()  # one record per flush: each file fills line by line
    files = sorted(tmp_path.glob("predictions-*.jsonl"))
    assert len(files) >= 5
    assert all(f.stat().st_size < 1000 + 400 for f in files)  # at most one line past the limit
    assert [f.name for f in files] == sorted(f.name for f in files)
    lines = [json.loads(line)["text"] for f in files for line in f.read_text().splitlines()]
    assert lines == [f"review {i}" for i in range(40)]  # name order is time order
    assert [r["text"] for r in predlog.read_predictions(tmp_path)] == lines


def test_limit_returns_the_most_recent_and_reads_only_what_it_needs(tmp_path, monkeypatch):
    with predlog.PredictionLog(tmp_path, rotate_bytes=600) as log:
        for i in range(50):
            log.write([record(i)])
            log.flush()
    n_files = len(list(tmp_path.glob("predictions-*.jsonl")))
    opened = []
    real = predlog._read_lines
    monkeypatch.setattr(predlog, "_read_lines", lambda path: opened.append(path) or real(path))
    got = predlog.read_predictions(tmp_path, limit=5)
    assert [r["text"] for r in got] == [f"review {i}" for i in range(45, 50)]
    assert len(opened) < n_files
    assert predlog.read_predictions(tmp_path, limit=0) == []
    assert len(predlog.read_predictions(tmp_path, limit=1000)) == 50


def test_two_writers_sharing_a_folder_are_merged_by_time(tmp_path: Path):
    a = predlog.PredictionLog(tmp_path, rotate_bytes=500)
    b = predlog.PredictionLog(tmp_path, rotate_bytes=500)
    assert a.writer_id != b.writer_id
    for i in range(20):
        (a if i % 3 else b).write([record(i)])
        (a if i % 3 else b).flush()
        time.sleep(0.001)  # distinct timestamps
    a.close()
    b.close()
    assert [r["text"] for r in predlog.read_predictions(tmp_path)] == [
        f"review {i}" for i in range(20)]
    assert [r["text"] for r in predlog.read_predictions(tmp_path, limit=4)] == [
        f"review {i}" for i in range(16, 20)]


def test_concurrent_writers_lose_nothing(tmp_path: Path):
    log = predlog.PredictionLog(tmp_path, rotate_bytes=4000)

    def worker(k: int) -> None:
        for i in range(50):
            log.write([record(i, f"t{k}-{i}")])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    texts = [r["text"] for r in predlog.read_predictions(tmp_path)]
    assert sorted(texts) == sorted(f"t{k}-{i}" for k in range(8) for i in range(50))
    assert log.written == 400 and log.errors == 0 and log.dropped == 0


def test_a_half_written_last_line_is_skipped(tmp_path: Path):
    with predlog.PredictionLog(tmp_path) as log:
        log.write([record(0), record(1)])
    (path,) = tmp_path.glob("predictions-*.jsonl")
    with path.open("a") as fh:
        fh.write('{"timestamp": "2099-01-01T00:00:00+00:00", "text": "cut o')
    assert [r["text"] for r in predlog.read_predictions(tmp_path)] == ["review 0", "review 1"]


def test_missing_location_reads_as_empty(tmp_path: Path):
    assert predlog.read_predictions(tmp_path / "nothing-here") == []
    assert predlog.read_predictions("memory://nothing-here") == []


def test_write_after_close_is_an_error_and_close_twice_is_fine(tmp_path: Path):
    log = predlog.PredictionLog(tmp_path)
    log.close()
    log.close()
    assert log.flush() is True
    with pytest.raises(RuntimeError, match="closed"):
        log.write([record(0)])


def test_the_writer_does_not_block_the_caller(tmp_path: Path, monkeypatch):
    """A slow sink delays the log, not the request that wrote to it."""
    log = predlog.PredictionLog(tmp_path)
    gate = threading.Event()
    real = log._append
    monkeypatch.setattr(log, "_append", lambda batch: (gate.wait(10), real(batch)))
    start = time.perf_counter()
    for i in range(100):
        log.write([record(i)])
    assert time.perf_counter() - start < 0.5
    gate.set()
    log.close()
    assert len(predlog.read_predictions(tmp_path)) == 100


def test_a_busy_writer_writes_what_arrived_during_its_pause_together(tmp_path: Path, monkeypatch):
    """After a write the thread pauses gather_s, so records arriving one by one are written a
    group at a time; a lone record is written at once and flush() does not wait for the pause."""
    log = predlog.PredictionLog(tmp_path, gather_s=0.2)
    writes: list[int] = []
    real = log._append_local
    monkeypatch.setattr(log, "_append_local", lambda data: (writes.append(data.count(b"\n")), real(data)))
    log.write([record(0)])
    deadline = time.monotonic() + 5
    while not writes:  # the first record after a quiet spell is not held back
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert time.monotonic() < deadline and writes == [1]
    for i in range(1, 21):  # 20 requests' records within the pause
        log.write([record(i)])
    start = time.monotonic()
    assert log.flush(timeout=5)
    assert time.monotonic() - start < 0.19  # flush cut the pause short
    assert writes[0] == 1 and sum(writes) == 21 and len(writes) <= 3, writes
    log.close()
    assert [r["text"] for r in predlog.read_predictions(tmp_path)] == [f"review {i}" for i in range(21)]


# ---------------------------------------------------------------- object stores (fsspec)


@pytest.fixture
def memory_url():
    fs = fsspec.filesystem("memory")
    url = f"memory://predlog-{time.monotonic_ns()}"
    yield url
    if fs.exists(url):
        fs.rm(url, recursive=True)


def _objects(url: str) -> list[str]:
    return predlog.list_files(url)


def test_object_store_writes_whole_objects_on_flush_and_rotation(memory_url: str):
    log = predlog.PredictionLog(memory_url, rotate_bytes=1200, flush_seconds=3600)
    log.write([record(i) for i in range(3)])
    time.sleep(0.1)
    assert _objects(memory_url) == []  # buffered: nothing is appended to an object
    log.write([record(i) for i in range(3, 12)])  # past rotate_bytes: the buffer goes out
    log.flush()
    assert len(_objects(memory_url)) == 1
    log.write([record(12)])
    log.flush()  # an explicit flush writes what is buffered, as a new object
    assert len(_objects(memory_url)) == 2
    log.write([record(13)])
    log.close()  # and so does close
    assert len(_objects(memory_url)) == 3
    assert [r["text"] for r in predlog.read_predictions(memory_url)] == [
        f"review {i}" for i in range(14)]
    assert [r["text"] for r in predlog.read_predictions(memory_url, limit=2)] == [
        "review 12", "review 13"]
    for path in _objects(memory_url):
        assert path.startswith("memory://") and path.rsplit("/", 1)[-1].startswith("predictions-")


def test_object_store_flushes_on_a_timer(memory_url: str):
    log = predlog.PredictionLog(memory_url, flush_seconds=0.2)
    log.write([record(0)])
    deadline = time.monotonic() + 5
    while not _objects(memory_url) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_objects(memory_url)) == 1
    log.close()
    assert len(predlog.read_predictions(memory_url)) == 1


def test_a_failing_sink_is_counted_not_raised(memory_url: str, monkeypatch, caplog):
    def broken_open(*args, **kwargs):
        raise OSError("bucket is gone")

    monkeypatch.setattr(fsspec, "open", broken_open)
    log = predlog.PredictionLog(memory_url, flush_seconds=3600)
    log.write([record(0)])
    log.close()
    assert log.errors == 1
    assert "bucket is gone" in caplog.text


# ---------------------------------------------------------------- failures are counted, lines whole


def test_a_write_that_fails_half_way_leaves_no_torn_line(tmp_path: Path, monkeypatch):
    """A full disk: the OS takes part of a write, then ENOSPC. The file is cut back to whole lines
    and the records are counted as failed, not as written."""
    import errno

    outcomes: list[tuple[str, int]] = []
    log = predlog.PredictionLog(tmp_path, on_outcome=lambda o, n: outcomes.append((o, n)))
    log.write([record(0)])
    assert log.flush(10)
    real_open = Path.open

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(bytes(data[: len(data) // 2]))  # half of it lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(Path, "open", lambda self, *a, **k: FullDisk(real_open(self, *a, **k)))
    log._close_file()  # the next write opens a new file, through the full disk
    log.write([record(1), record(2)])
    assert log.flush(10)
    monkeypatch.setattr(Path, "open", real_open)
    log.write([record(3)])
    log.close()
    for path in tmp_path.glob("predictions-*.jsonl"):
        data = path.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"torn line in {path.name}"
        for line in data.splitlines():
            json.loads(line)
    assert [r["text"] for r in predlog.read_predictions(tmp_path)] == ["review 0", "review 3"]
    assert (log.written, log.failed, log.dropped, log.unwritten) == (2, 2, 0, 0)
    assert outcomes == [("written", 1), ("failed", 2), ("written", 1)]


def test_an_unwritable_location_counts_every_record_and_recovers(tmp_path: Path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder should be")
    log = predlog.PredictionLog(blocker / "logs")  # starting never fails: the server comes up
    for i in range(5):
        log.write([record(i)])
    assert log.flush(10)
    assert log.failed == 5 and log.written == 0 and log.failing_since is not None
    assert "records lost" in caplog.text
    blocker.unlink()  # the operator fixes it: the next record is written and the streak ends
    log.write([record(5)])
    log.close()
    assert log.written == 1 and log.failing_since is None
    assert [r["text"] for r in predlog.read_predictions(blocker / "logs")] == ["review 5"]


def test_a_record_that_is_not_json_is_counted_and_the_writer_lives_on(tmp_path: Path):
    log = predlog.PredictionLog(tmp_path)
    log.write([{"text": object()}])
    log.write([record(1)])
    log.close()
    assert (log.failed, log.written) == (1, 1)


def test_object_store_failures_count_the_records_lost(memory_url: str, monkeypatch):
    def broken_open(*args, **kwargs):
        raise OSError("bucket is gone")

    monkeypatch.setattr(fsspec, "open", broken_open)
    log = predlog.PredictionLog(memory_url, flush_seconds=3600)
    log.write([record(0), record(1)])
    log.write([record(2)])
    log.close()
    assert (log.failed, log.written, log.unwritten) == (3, 0, 0)
