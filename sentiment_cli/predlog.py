"""The prediction log: every prediction `sent serve` makes, one JSON object per line.

`sent serve` writes it, `sent drift` reads it. A location is a local folder (paths.prediction_log,
logs/predictions by default) or any fsspec URL (gs://bucket/prefix, s3://..., memory://...).

Files are named ``predictions-<UTC start time>-<writer id>-<sequence>.jsonl``, so a name sorts by
time and several writers (uvicorn workers, Cloud Run instances) can share one location without
clashing. A local file is appended to and flushed after each batch, and a new one starts past
`rotate_bytes`. Object stores cannot append, so there each flush writes a whole new object: when the
buffer reaches `rotate_bytes`, every `flush_seconds`, and on close.

Writing happens on a background thread fed by a queue: `PredictionLog.write` never waits for disk
or network. After each write the thread pauses `gather_s` (100 ms), so under load it wakes and
writes about ten times a second instead of once per request; `flush()` and `close()` cut the
pause short. `close()` drains the queue, so a server that shuts down cleanly loses nothing.

Longer than 400 lines because the writer and the reader of one format belong together: they
cannot disagree about names, ordering or what a torn line is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "predictions-"
SUFFIX = ".jsonl"
_STOP = object()
GATHER_S = 0.1  # the writer's pause after each write: records that arrive meanwhile go together


def utc_now() -> str:
    """An ISO 8601 UTC timestamp of fixed width, so strings sort like times."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def make_record(text: str, prediction: Any, *, model_name: str, model_version: str | None,
                latency_ms: float, timestamp: str | None = None) -> dict[str, Any]:
    """One log line for one prediction (a model.Prediction or anything with the same fields)."""
    return {
        "timestamp": timestamp or utc_now(),
        "text": text,
        "label": prediction.label,
        "label_id": prediction.label_id,
        "score": round(float(prediction.score), 6),
        "probabilities": {k: round(float(v), 6) for k, v in prediction.probabilities.items()},
        "model_name": model_name,
        "model_version": model_version,
        "latency_ms": round(float(latency_ms), 3),
    }


def _stamp(unix_time: float) -> str:
    """utc_now()'s format for a time.time() value."""
    return datetime.fromtimestamp(unix_time, UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class Made:
    """One request's predictions as `sent serve` hands them to the log (PredictionLog.write_made):
    the records are made from it on the writer's thread, a batch at a time, not one by one on
    the event loop between requests (docs/performance.md)."""

    texts: Sequence[str]
    predictions: Sequence[Any]
    model_name: str
    model_version: str | None
    latency_ms: float
    unix_time: float  # time.time() when the predictions were ready

    def __len__(self) -> int:  # the records it makes
        return len(self.texts)

    def records(self) -> list[dict[str, Any]]:
        stamp = _stamp(self.unix_time)
        return [make_record(t, p, model_name=self.model_name, model_version=self.model_version,
                            latency_ms=self.latency_ms, timestamp=stamp)
                for t, p in zip(self.texts, self.predictions, strict=True)]


def _is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def _local_path(location: str) -> Path:
    return Path(location.removeprefix("file://")).expanduser()


def _file_name(writer_id: str, seq: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{PREFIX}{stamp}-{writer_id}-{seq:06d}{SUFFIX}"


class PredictionLog:
    """Append prediction records to a location from a background thread.

    Use as a context manager or call close(); write() after close() raises RuntimeError.
    """

    def __init__(self, location: str | os.PathLike, *, rotate_bytes: int = 10 * 1024 * 1024,
                 flush_seconds: float = 30.0, max_queue: int = 100_000,
                 on_outcome: Callable[[str, int], None] | None = None, gather_s: float = GATHER_S) -> None:
        self.location = str(location)
        self.rotate_bytes = max(1, int(rotate_bytes))
        self.flush_seconds = flush_seconds
        self.gather_s = gather_s
        self._hurry = threading.Event()  # set by flush() and close(): no gathering pause
        self.local = _is_local(self.location)
        # pid keeps workers of one machine apart, the random part keeps machines apart.
        self.writer_id = f"{os.getpid()}{secrets.token_hex(3)}"
        # Every record given to write() ends in exactly one of: written, dropped (the queue was
        # full), failed (the sink refused it); until then it is unwritten. on_outcome(outcome, n)
        # is told each time (serve turns it into metrics).
        self.accepted = 0
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self.errors = 0  # failed write attempts
        self.failing_since: float | None = None  # time.monotonic() of the first failure in a row
        self._on_outcome = on_outcome
        self._buffer_records = 0
        self._seq = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._file = None  # the open local file
        self._file_bytes = 0
        self._buffer: list[bytes] = []  # object stores: lines not yet written
        self._buffer_bytes = 0
        self._buffer_since = 0.0
        self._thread = threading.Thread(target=self._loop, name="prediction-log", daemon=True)
        self._thread.start()

    # --- the request side: cheap, never blocks ---------------------------------------------

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        if self._closed:
            raise RuntimeError("the prediction log is closed")
        self._enqueue(list(records))

    def write_made(self, made: Made) -> None:
        """write(made.records()), the records made on the writer's thread."""
        if self._closed:
            raise RuntimeError("the prediction log is closed")
        self._enqueue(made)

    def _enqueue(self, batch: list[dict[str, Any]] | Made) -> None:
        n = len(batch)
        if not n:
            return
        self.accepted += n
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            # The sink cannot keep up; serving matters more than logging.
            first = self.dropped == 0
            self._outcome("dropped", n)
            if first:
                log.error("prediction log queue is full; dropping records (sink too slow?)")

    @property
    def unwritten(self) -> int:
        """Records accepted that are neither written nor counted lost yet (queued or buffered)."""
        return self.accepted - self.written - self.dropped - self.failed

    def _outcome(self, outcome: str, n: int) -> None:
        if n <= 0:
            return
        setattr(self, outcome, getattr(self, outcome) + n)
        if outcome == "written":
            self.failing_since = None
        elif outcome == "failed" and self.failing_since is None:
            self.failing_since = time.monotonic()
        if self._on_outcome is not None:
            self._on_outcome(outcome, n)

    def _failed(self, n: int, what: str, exc: BaseException) -> None:
        self.errors += 1
        self._outcome("failed", n)
        log.error("prediction log: cannot %s (%d records lost) at %s: %s", what, n, self.location, exc)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written before this call is on the sink; False on timeout."""
        if self._closed:
            return True
        done = threading.Event()
        self._queue.put(done)
        self._hurry.set()
        return done.wait(timeout)

    def close(self, timeout: float | None = 60.0) -> None:
        """Write everything queued, then stop the thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._hurry.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("prediction log did not finish writing within %.0f s", timeout or 0)

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the writer thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._timeout())
            except queue.Empty:
                self._sync(force=False)
                continue
            items = [item]
            while True:  # take whatever else is waiting: one flush for many batches
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = False
            records: list[dict[str, Any]] = []  # consecutive batches: one write
            for it in items:
                if it is _STOP or isinstance(it, threading.Event):
                    if records:
                        self._append(records)
                        records = []
                    if it is _STOP:
                        stop = True
                    else:
                        self._sync(force=True)
                        it.set()
                elif isinstance(it, Made):
                    records.extend(self._made(it))
                else:
                    records.extend(it)
            if records:
                self._append(records)
            self._sync(force=stop)
            if stop:
                self._close_file()
                return
            # A pause before taking more: what arrives meanwhile is written in one go, so a busy
            # server wakes this thread (and writes) tens of times a second, not once per request.
            if self._hurry.wait(self.gather_s):
                self._hurry.clear()

    def _made(self, made: Made) -> list[dict[str, Any]]:
        try:
            return made.records()
        except Exception as exc:  # predictions that are not records must not stop the writer
            self._failed(len(made), "make records", exc)
            return []

    def _timeout(self) -> float | None:
        if self.local or not self._buffer:
            return None
        return max(0.0, self._buffer_since + self.flush_seconds - time.monotonic())

    def _append(self, batch: list[dict[str, Any]]) -> None:
        import msgspec

        encode = msgspec.json.Encoder().encode  # compact, UTF-8 as it is: json.dumps' output, 15x faster
        lines, bad, error = [], 0, None
        for r in batch:
            try:
                lines.append(encode(r) + b"\n")
            except (TypeError, ValueError, msgspec.EncodeError) as exc:  # not JSON: must not stop the writer
                bad, error = bad + 1, exc
        if error is not None:
            self._failed(bad, "encode", error)
        if not lines:
            return
        if self.local:
            try:
                self._append_local(b"".join(lines))
            except Exception as exc:  # a full disk must not take the server down
                self._failed(len(lines), "write", exc)
            else:
                self._outcome("written", len(lines))
            return
        if not self._buffer:
            self._buffer_since = time.monotonic()
        self._buffer.extend(lines)
        self._buffer_bytes += sum(map(len, lines))
        self._buffer_records += len(lines)
        if self._buffer_bytes >= self.rotate_bytes:
            self._write_object()

    def _append_local(self, data: bytes) -> None:
        """Append whole lines or nothing: a write that fails half-way (a full disk) is cut back,
        so the file never ends in a torn line."""
        if self._file is None:
            folder = _local_path(self.location)
            folder.mkdir(parents=True, exist_ok=True)  # here, not at start: a failure is counted
            self._seq += 1
            path = folder / _file_name(self.writer_id, self._seq)
            self._file = path.open("ab", buffering=0)  # unbuffered: each write reaches the OS
            self._file_bytes = 0
        start = self._file.tell()
        try:
            view = memoryview(data)
            while view:
                view = view[self._file.write(view):]
        except BaseException:
            with contextlib.suppress(OSError):
                self._file.truncate(start)
            self._close_file()  # a fresh file next time, in case this one is the problem
            raise
        self._file_bytes += len(data)
        if self._file_bytes >= self.rotate_bytes:
            self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self.errors += 1
                log.error("prediction log: cannot close %s: %s", self._file.name, exc)
            self._file = None

    def _sync(self, force: bool) -> None:
        # Local appends are unbuffered; object stores write the buffer as one new object.
        if not self.local and self._buffer and (
                force or time.monotonic() - self._buffer_since >= self.flush_seconds):
            self._write_object()

    def _write_object(self) -> None:
        import fsspec

        self._seq += 1
        url = f"{self.location.rstrip('/')}/{_file_name(self.writer_id, self._seq)}"
        data, n = b"".join(self._buffer), self._buffer_records
        self._buffer, self._buffer_bytes, self._buffer_records = [], 0, 0
        try:
            with fsspec.open(url, "wb") as fh:
                fh.write(data)
        except Exception as exc:  # an unreachable bucket must not take the server down
            self._failed(n, f"write {url.rsplit('/', 1)[-1]}", exc)
        else:
            self._outcome("written", n)


# --- reading ----------------------------------------------------------------------------------


def _writer_of(name: str) -> str:
    # predictions-<stamp>-<writer>-<seq>.jsonl
    parts = name[len(PREFIX):-len(SUFFIX)].split("-")
    return parts[1] if len(parts) == 3 else name


def list_files(location: str | os.PathLike) -> list[str]:
    """The log's files, oldest first (names sort by start time)."""
    import fsspec.core

    location = str(location)
    if _is_local(location):
        folder = _local_path(location)
        if not folder.is_dir():
            return []
        return [str(p) for p in sorted(folder.glob(f"{PREFIX}*{SUFFIX}"), key=lambda p: p.name)]
    fs, root = fsspec.core.url_to_fs(location)
    if not fs.exists(root):
        return []
    names = [p for p in fs.ls(root, detail=False) if p.rsplit("/", 1)[-1].startswith(PREFIX)
             and p.endswith(SUFFIX)]
    return [fs.unstrip_protocol(p) for p in sorted(names, key=lambda p: p.rsplit("/", 1)[-1])]


def _decode_lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """(records, corrupt lines): a line a crashed writer left half-written, or that is not an
    object, is counted and skipped, never fatal."""
    import msgspec

    decode = msgspec.json.Decoder().decode
    lines = [line for line in data.splitlines() if line.strip()]
    try:  # one call for the whole file; a file with a bad line is read line by line below
        records = decode(b"[" + b",".join(lines) + b"]")
        if len(records) == len(lines) and all(isinstance(r, dict) for r in records):
            return records, 0
    except msgspec.DecodeError:
        pass
    records = []
    corrupt = 0
    for line in lines:
        try:
            record = decode(line)
        except msgspec.DecodeError:
            corrupt += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            corrupt += 1
    return records, corrupt


def _read_file(path: str) -> tuple[list[dict[str, Any]], int]:
    import fsspec

    with fsspec.open(path, "rb") as fh:
        return _decode_lines(fh.read())


def _read_lines(path: str) -> Iterator[dict[str, Any]]:
    yield from _read_file(path)[0]


def parse_time(value: str | datetime) -> str:
    """A time as the log writes it (ISO 8601 UTC, microseconds), so strings compare as times.
    A time without a zone is UTC; ValueError for something that is not a time."""
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).strip())
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass
class LogRead:
    """What read_window found: the records (oldest first) and what it skipped."""

    records: list[dict[str, Any]]
    files: int = 0
    corrupt_lines: int = 0
    out_of_range: int = 0  # records outside since/until


def read_window(location: str | os.PathLike, limit: int | None = None, since: str | None = None,
                until: str | None = None) -> LogRead:
    """The most recent `limit` records with since <= timestamp < until (times as parse_time
    gives them), oldest first, merged across writers by timestamp; corrupt lines are counted.

    Each writer's files are read newest first and no further back than needed: one writer's
    files never overlap in time, so its newest files hold its newest records.
    """
    files = list_files(location)
    out = LogRead(records=[], files=len(files))
    if limit is not None and limit <= 0:
        return out
    by_writer: dict[str, list[str]] = {}
    for path in files:
        by_writer.setdefault(_writer_of(path.rsplit("/", 1)[-1]), []).append(path)

    def keep(r: dict[str, Any]) -> bool:
        t = str(r.get("timestamp", ""))
        return (since is None or t >= since) and (until is None or t < until)

    for paths in by_writer.values():
        taken: list[list[dict[str, Any]]] = []
        count = 0
        for path in reversed(paths):
            chunk, bad = _read_file(path)
            out.corrupt_lines += bad
            if since is not None or until is not None:
                kept = [r for r in chunk if keep(r)]
                out.out_of_range += len(chunk) - len(kept)
                chunk = kept
            taken.append(chunk)
            count += len(chunk)
            if limit is not None and count >= limit:
                break
        for chunk in reversed(taken):
            out.records.extend(chunk)
    out.records.sort(key=lambda r: str(r.get("timestamp", "")))  # stable: ties keep file order
    if limit is not None:
        out.records = out.records[-limit:]
    return out


def read_predictions(location: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """The logged records, oldest first; with `limit`, only the most recent `limit` of them.

    Records of several writers are merged by timestamp (see read_window).
    """
    return read_window(location, limit).records
