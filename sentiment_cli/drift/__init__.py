"""sent drift: does the text the service sees still look like the held-out data the model was
evaluated on? Tests a window of live traffic against the reference `sent eval` made for the
same weights.

Reads: the model (--model / serve.model, resolved and hash-checked as `sent serve` does), its
drift reference (metrics/by-weights/<sha256>/reference.json + .npz, artifacts.reference_for), and
the current window: the prediction log (paths.prediction_log, any fsspec URL) or a CSV / TSV /
JSONL / Parquet table with data.text_column (the model is run over its texts).
Writes: <output-dir>/drift.json and drift.html (atomically), and prints a summary table.

Exit statuses with --fail-on-drift: 0 no drift, 4 drift found, 5 not enough data; errors stay
1 (could not run) and 2 (bad usage). Without --fail-on-drift every completed run exits 0.

The package: stats.py (the statistics, pure), detect.py (features → tests), report.py (JSON,
HTML, terminal table), service.py (`sent drift --serve`), encoder.py (the window's embeddings
in ONNX Runtime, drift.encoder=onnx; torch is loaded only to score a table, for
drift.encoder=torch, or with drift.embeddings=false, whose token counts come from the model's
tokenizer), here: loading the model, the reference and the window.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sentiment_cli import artifacts, predlog
from sentiment_cli.drift import detect
from sentiment_cli.errors import SentError, UsageError, first_line

if TYPE_CHECKING:
    from sentiment_cli.config import Config

EXIT_DRIFT = 4
EXIT_NOT_ENOUGH_DATA = 5
DRIFT, NO_DRIFT, NOT_ENOUGH = "drift", "no drift", "not enough data"
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
TYPICAL_TEXTS = 5


class DriftError(SentError):
    """The window or the reference cannot be read; one line that says what to do."""


@dataclass
class Outcome:
    report: dict[str, Any]
    json_path: Path
    html_path: Path

    @property
    def status(self) -> str:
        return self.report["status"]

    def exit_code(self, fail_on_drift: bool) -> int:
        if not fail_on_drift:
            return 0
        return {DRIFT: EXIT_DRIFT, NOT_ENOUGH: EXIT_NOT_ENOUGH_DATA}.get(self.status, 0)


def _time_bound(value: str | None, flag: str) -> str | None:
    if value in (None, ""):
        return None
    try:
        return predlog.parse_time(value)
    except ValueError:
        raise UsageError(f"{flag} {value!r} is not an ISO 8601 time, e.g. 2026-12-01T08:00:00Z") from None


def _is_table(location: str) -> bool:
    return location.lower().rsplit("?", 1)[0].endswith(TABLE_SUFFIXES)


def _exists(location: str) -> bool:
    if "://" not in location or location.startswith("file://"):
        return Path(location.removeprefix("file://")).exists()
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(location)
    return fs.exists(root)


class Monitor:
    """The model, its reference and the reference's features, loaded once; report() tests a
    window against them (the drift service calls it on every interval)."""

    def __init__(self, cfg: Config, model_uri: str | None = None):
        from sentiment_cli import loading, model

        self.cfg = cfg
        uri = model_uri or cfg.serve.model
        self.folder, self.info = loading.resolve(cfg, uri, cfg.serve.verify_hash)
        meta = model.read_meta(self.folder)
        # The hash eval files its reference under: computed from the files, as eval computes it
        # (a registry tag may be older than the hashing rule).
        self.sha = model.weights_sha256(self.folder)
        self.version = loading.model_version(self.info, meta)  # what serve writes in each record
        self.model_name = str(self.info.get("name") or self.folder.name)
        self.model_uri = uri
        self.reference, self.reference_path = artifacts.reference_for(cfg, self.sha)
        sample = self.reference.get("sample") or {}
        vocab = (self.reference.get("vocabulary") or {}).get("words")
        pairs = (self.reference.get("word_pairs") or {}).get("pairs")  # None: made before word pairs
        arrays = artifacts.reference_arrays(self.reference_path, self.sha)
        if not sample.get("texts") or vocab is None or "probabilities" not in arrays:
            raise artifacts.ArtifactError(f"{self.reference_path} was made by an older sent (no held-out "
                                          "sample): run `sent eval` on this model again")
        self.labels = [str(x) for x in self.reference["labels"]]
        self.vocab = detect.Vocabulary(vocab, pairs)
        self.ref = detect.features(sample["texts"], arrays["probabilities"], arrays["length_tokens"],
                                   self.vocab, arrays.get("embeddings"))
        self._predictor = None
        self._encoder: Any = None  # encoder.Encoder, or False once it could not be built

    @property
    def predictor(self):
        """Loaded on first use, as `sent serve` loads it (a log carries outputs, not tokens)."""
        if self._predictor is None:
            from sentiment_cli import loading

            self._predictor = loading.load_predictor(self.cfg, self.folder, self.info, gate=False,
                                                      alone_threads=1)
            if self._predictor.lanes == 1:  # torch: big batches, not serve's latency-bound chunks
                self._predictor.batch_size = max(self._predictor.batch_size, self.cfg.eval.batch_size)
        return self._predictor

    def encoder(self):
        """The ONNX encoder (drift.encoder=onnx: no torch at run time), built on first use; None
        for drift.encoder=torch, or when these weights cannot be exported (said once, on stderr)."""
        if self._encoder is None:
            self._encoder = False
            if self.cfg.drift.encoder == "onnx":
                from sentiment_cli.drift import encoder

                try:
                    self._encoder = encoder.load(self.folder, self.sha, self.cfg.paths.onnx_cache)
                except SentError as exc:
                    print(f"note: {first_line(exc)}", file=sys.stderr, flush=True)
                except OSError as exc:  # e.g. a read-only cache folder: slower, not broken
                    print(f"note: no ONNX encoder ({first_line(exc)}); drift encodes with torch",
                          file=sys.stderr, flush=True)
        return self._encoder or None

    def _token_lengths(self, texts: list[str]) -> np.ndarray:
        enc = self._encoder or None  # only when the embedding test asked for it
        if enc is not None:  # its build checked that tokenizer.json gives the model tokenizer's ids
            return enc.tokens.lengths(texts)
        from sentiment_cli import textstats

        return textstats.token_lengths(self.predictor.tokenizer, texts, self.predictor.max_length)

    def _embed(self, texts: list[str]) -> np.ndarray:
        enc = self.encoder()
        if enc is not None:
            return enc.embed(texts)
        embed = getattr(self.predictor, "embed", None)
        if embed is None:  # e.g. the ONNX runtime: embeddings come from the same weights in torch
            from sentiment_cli.model import Predictor

            self._predictor = Predictor.from_folder(self.folder, name=self.model_name,
                                                    batch_size=self.cfg.eval.batch_size)
            embed = self._predictor.embed
        return embed(texts)

    # --- the window ---------------------------------------------------------------------------

    def _from_log(self, location: str, since: str | None, until: str | None) -> dict[str, Any]:
        if not _exists(location):
            raise DriftError(f"no prediction log at {location}: start `sent serve` (it writes "
                             "paths.prediction_log) or pass --current")
        read = predlog.read_window(location, self.cfg.drift.window, since, until)
        kept, other, bad = [], 0, 0
        for r in read.records:
            probs = r.get("probabilities")
            if not isinstance(r.get("text"), str) or not isinstance(probs, dict):
                bad += 1
            elif r.get("model_version") != self.version:
                other += 1
            elif not all(isinstance(probs.get(name), int | float) for name in self.labels):
                bad += 1
            else:
                kept.append(r)
        texts = [r["text"] for r in kept]
        probs = np.array([[r["probabilities"][n] for n in self.labels] for r in kept], dtype=np.float64)
        stamps = [str(r.get("timestamp")) for r in kept]
        return {"kind": "prediction log", "texts": texts, "probabilities": probs.reshape(len(kept), len(self.labels)),
                "files": read.files, "corrupt_lines": read.corrupt_lines + bad, "other_version": other,
                "first": stamps[0] if stamps else None, "last": stamps[-1] if stamps else None}

    def _from_table(self, location: str) -> dict[str, Any]:
        from sentiment_cli import data

        column = self.cfg.data.text_column
        if "://" in location and not location.startswith("file://"):
            import fsspec

            if not _exists(location):
                raise DriftError(f"no table at {location}")
            suffix = Path(location.rsplit("?", 1)[0]).suffix
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / f"current{suffix}"
                with fsspec.open(location, "rb") as src:
                    local.write_bytes(src.read())
                df = data.read_table(local)
        else:
            df = data.read_table(Path(location.removeprefix("file://")))
        if column not in df.columns:
            raise DriftError(f"{location} has no text column {column!r} (columns: "
                             f"{', '.join(map(str, df.columns)) or 'none'}); set data.text_column")
        rows = df[column].tolist()[-self.cfg.drift.window:]
        texts = [t for t in rows if isinstance(t, str) and t.strip()]
        probs = self.predictor.predict_proba(texts) if texts else np.zeros((0, len(self.labels)))
        return {"kind": "table", "texts": texts, "probabilities": np.asarray(probs, dtype=np.float64),
                "files": 1, "corrupt_lines": len(rows) - len(texts),  # empty or not text
                "other_version": 0, "first": None, "last": None}

    def report(self, current: str | None = None, since: str | None = None, until: str | None = None
               ) -> dict[str, Any]:
        """The drift report of one window, as drift.json holds it."""
        from sentiment_cli import textstats
        from sentiment_cli.drift import report as reporting

        d = self.cfg.drift
        location = str(current or self.cfg.paths.prediction_log)
        since = _time_bound(since if since is not None else d.since, "--since")
        until = _time_bound(until if until is not None else d.until, "--until")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        table = _is_table(location)
        win = self._from_table(location) if table else self._from_log(location, since, until)
        timings["read_s"] = time.perf_counter() - start
        texts = win["texts"]
        window = {"source": location, "kind": win["kind"], "n": len(texts), "requested": d.window,
                  "since": since, "until": until, "first_timestamp": win["first"],
                  "last_timestamp": win["last"], "model_version": self.version,
                  "left_out_other_model_version": win["other_version"],
                  "corrupt_lines_skipped": win["corrupt_lines"], "files": win["files"]}
        base = {"drift_detected": False, "window": window, "reference": self._reference_info(),
                "alpha": d.alpha, "min_window": d.min_window, "tests": [], "words": {},
                "typical_texts": [], "histograms": {}, "timings": timings,
                "created": predlog.utc_now()}
        if len(texts) < d.min_window:
            return {**base, "status": NOT_ENOUGH,
                    "message": f"{len(texts)} usable record(s) in the window, fewer than drift.min_window "
                               f"({d.min_window}): no verdict"}
        if d.embeddings and self.ref.embeddings is not None:
            t = time.perf_counter()
            self.encoder()  # built once per weights; its tokenizer also counts the tokens below
            timings["encoder_load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        rng = np.random.default_rng(self.cfg.seed)
        # Text features only for the texts their tests use (detect.compare): tokenising 100,000
        # texts would cost more than every test together.
        sub = detect.sample_index(len(texts), d.permutation_sample, rng)
        sub_texts = [texts[i] for i in sub]
        lengths = self._token_lengths(sub_texts)
        cur = detect.features(sub_texts, win["probabilities"][sub], lengths, self.vocab)
        whole = (win["probabilities"], textstats.char_lengths(texts))
        timings["features_s"] = time.perf_counter() - t
        if d.embeddings and self.ref.embeddings is not None:
            t = time.perf_counter()
            idx = detect.sample_index(len(sub_texts), d.embedding_sample, rng)
            cur.embeddings = self._embed([sub_texts[i] for i in idx])
            timings["encode_s"] = time.perf_counter() - t
        t = time.perf_counter()
        results, drift, words = detect.compare(self.ref, cur, d, self.labels, self.cfg.seed, whole=whole)
        timings["tests_s"] = time.perf_counter() - t
        pick = rng.choice(len(texts), size=min(TYPICAL_TEXTS, len(texts)), replace=False)
        drifted = [r.name for r in results if r.drift]
        return {**base, "reference": self._reference_info(),  # now saying which encoder ran
                "status": DRIFT if drift else NO_DRIFT, "drift_detected": drift,
                "message": (f"drift in {', '.join(drifted)}" if drift else
                            "no test is both significant (Holm-adjusted) and above its effect floor"),
                "tests": [r.to_dict() for r in results], "words": words,
                "typical_texts": [texts[i][:300] for i in sorted(pick)],
                "histograms": reporting.histograms(self.ref, cur)}

    def _reference_info(self) -> dict[str, Any]:
        r = self.reference
        return {"model": self.model_name, "model_uri": self.model_uri, "model_version": self.version,
                "weights_sha256": self.sha, "split": r.get("split"), "n": r.get("n"),
                "sample_n": len(self.ref), "path": str(self.reference_path),
                "embeddings": self.ref.embeddings is not None,
                "encoder": None if self._encoder is None else ("onnx" if self._encoder else "torch")}


def run(cfg: Config, current: str | None = None, model_uri: str | None = None,
        output_dir: str | Path | None = None, since: str | None = None, until: str | None = None,
        monitor: Monitor | None = None) -> Outcome:
    """Test one window; write drift.json and drift.html under output_dir (paths.reports_dir)."""
    from sentiment_cli.drift import report as reporting

    start = time.perf_counter()
    monitor = monitor or Monitor(cfg, model_uri)
    doc = monitor.report(current, since, until)
    out = Path(output_dir or cfg.paths.reports_dir)
    doc["timings"]["before_writing_s"] = time.perf_counter() - start
    json_path, html_path = reporting.write(doc, out)
    reporting.print_summary(doc, json_path, html_path)
    return Outcome(doc, json_path, html_path)
