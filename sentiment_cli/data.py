"""Data: sources → clean, validated splits → parquet; and batches for training.

Sources (data.source):
  hf:NAME                   a Hugging Face dataset (needs the internet)
  rt-polarity:PATH_OR_URL   the original Cornell sentence-polarity files: a folder with
                            rt-polarity.pos/.neg, or the .tar.gz, local or http(s)
  builtin:rt-polarity       the same files, shipped inside this package (offline)
  FILE.csv|.tsv|.jsonl|.json|.parquet   one labelled table, split with data.split_seed
  FOLDER                    train.* and optionally validation.* / test.* tables in one folder

Labels: names from data.label_names, or when it is null the source's own (rt-polarity: neg, pos;
a Hugging Face ClassLabel), else the table's string labels sorted (integer ids 0..N-1 keep
their numbers as names). A missing column or an unknown label is a one-line DataError naming
the option that fixes it.

Output (paths.data_dir): train.parquet, validation.parquet, test.parquet (text: string,
label: int64) and meta.json. Written to a temporary folder, then renamed: a failed fetch leaves
the previous output untouched.

Longer than 400 lines because every source, and every check of what a source holds, lives here:
a user whose data is refused finds the reason in this one file.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sentiment_cli.errors import SentError, UsageError, first_line
from sentiment_cli.files import replaced_dir

if TYPE_CHECKING:
    from sentiment_cli.config import Config

SPLITS = ("train", "validation", "test")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
RT_FILES = {"pos": "rt-polarity.pos", "neg": "rt-polarity.neg"}


class DataError(SentError, ValueError):
    """The data source cannot be used; the message is one line and names the problem."""


@dataclass
class Report:
    """What cleaning did, reported rather than done silently."""

    dropped_empty: dict[str, int] = field(default_factory=dict)
    duplicates_within: dict[str, int] = field(default_factory=dict)
    overlap_with_train: dict[str, int] = field(default_factory=dict)
    label_names: list[str] = field(default_factory=list)
    labels_inferred: str = ""  # how the names were found when data.label_names was null

    def lines(self) -> list[str]:
        out = [f"labels {', '.join(self.label_names)} {self.labels_inferred}"] if self.labels_inferred else []
        for split in SPLITS:
            if self.dropped_empty.get(split):
                out.append(f"{split}: dropped {self.dropped_empty[split]} empty texts")
            if self.duplicates_within.get(split):
                out.append(f"{split}: {self.duplicates_within[split]} duplicate texts (kept)")
            if self.overlap_with_train.get(split):
                out.append(f"{split}: {self.overlap_with_train[split]} texts also in train (kept)")
        return out


# ---------------------------------------------------------------- sources


def _rt_split(lines: list[str], label: int) -> dict[str, list[tuple[str, int]]]:
    """The Hugging Face rotten_tomatoes rule: first 80% train, next 10% validation, rest test."""
    n = len(lines)
    n_train = int(n * 0.8 + 0.5)
    n_val = int(n * 0.1 + 0.5)
    parts = {"train": lines[:n_train], "validation": lines[n_train:n_train + n_val],
             "test": lines[n_train + n_val:]}
    return {k: [(t, label) for t in v] for k, v in parts.items()}


def _decode_rt(raw: bytes, name: str) -> list[str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # the original release is latin-1
    lines = [line.strip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataError(f"{name} is empty")
    return lines


def _rt_from_members(read: dict[str, bytes], origin: str) -> dict[str, pd.DataFrame]:
    missing = [f for f in RT_FILES.values() if f not in read]
    if missing:
        raise DataError(f"{origin}: missing {', '.join(missing)}")
    rows: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    for label, key in ((1, "pos"), (0, "neg")):  # positive first, as the HF dataset orders them
        for split, items in _rt_split(_decode_rt(read[RT_FILES[key]], RT_FILES[key]), label).items():
            rows[split].extend(items)
    return {s: pd.DataFrame(r, columns=["text", "label"]) for s, r in rows.items()}


def _read_tarball(raw: bytes, origin: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tar:
            for member in tar.getmembers():
                base = os.path.basename(member.name)
                if member.isfile() and base in RT_FILES.values():
                    fh = tar.extractfile(member)
                    if fh is not None:
                        found[base] = fh.read()
    except tarfile.TarError as exc:
        raise DataError(f"{origin}: not a readable tar archive ({exc})") from None
    return found


def load_rt_polarity(location: str) -> dict[str, pd.DataFrame]:
    if location.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(location, timeout=60) as resp:  # noqa: S310 - user's URL
                raw = resp.read()
        except OSError as exc:
            raise DataError(f"cannot download {location}: {exc}") from None
        return _rt_from_members(_read_tarball(raw, location), location)
    path = Path(location).expanduser()
    if path.is_dir():
        read = {f: (path / f).read_bytes() for f in RT_FILES.values() if (path / f).is_file()}
        if len(read) < len(RT_FILES):  # the tarball's layout: one folder down
            for sub in path.iterdir():
                if sub.is_dir():
                    read.update({f: (sub / f).read_bytes() for f in RT_FILES.values()
                                 if (sub / f).is_file() and f not in read})
        return _rt_from_members(read, str(path))
    if path.is_file():
        return _rt_from_members(_read_tarball(path.read_bytes(), str(path)), str(path))
    raise DataError(f"rt-polarity source {location} does not exist")


def builtin_rt_path() -> Path:
    return Path(str(resources.files("sentiment_cli") / "resources" / "rt-polaritydata.tar.gz"))


def read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, encoding="utf-8", keep_default_na=False, na_values=[""])
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t", encoding="utf-8", keep_default_na=False, na_values=[""])
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True, encoding="utf-8", dtype=False)
        if suffix == ".json":
            return pd.read_json(path, encoding="utf-8", dtype=False)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: unreadable encoding, expected UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        msg = first_line(exc)
        raise DataError(f"{path}: cannot parse as {suffix[1:]} ({msg})") from None
    raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")


def _table_split_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for split in SPLITS:
        for suffix in TABLE_SUFFIXES:
            candidate = folder / f"{split}{suffix}"
            if candidate.is_file():
                found[split] = candidate
                break
    if "train" not in found:
        raise DataError(f"{folder}: no train.csv/.tsv/.jsonl/.json/.parquet in the folder")
    return found


def load_hf(name: str, label_column: str = "label") -> tuple[dict[str, pd.DataFrame], list[str] | None]:
    """The dataset's splits, and its own label names when the label column is a ClassLabel."""
    from sentiment_cli import hub

    online = hub.go_offline_unless_reachable()  # offline: the local cache at once, not a minute of retries
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency
        raise DataError("the datasets package is not installed") from None
    try:
        ds = datasets.load_dataset(name)
    except Exception as exc:  # offline, unknown name, gated: all end in one clear line
        first = first_line(exc) if online else hub.unreachable_note(name)
        raise DataError(
            f"cannot load Hugging Face dataset {name!r}: {first} "
            "(offline? use data.source=builtin:rt-polarity or a local file)"
        ) from None
    aliases = {"train": "train", "validation": "validation", "valid": "validation",
               "dev": "validation", "test": "test"}
    frames = {aliases[s]: ds[s].to_pandas() for s in ds if s in aliases}
    feature = next((ds[s].features.get(label_column) for s in ds), None)
    names = getattr(feature, "names", None)
    return frames, [str(n) for n in names] if names else None


# ---------------------------------------------------------------- validation and splitting


def _labels_to_ids(series: pd.Series, label_names: Sequence[str], where: str) -> pd.Series:
    names = list(label_names)
    if series.isna().any():
        raise DataError(f"{where}: {int(series.isna().sum())} rows have no label")
    if pd.api.types.is_bool_dtype(series):
        series = series.astype(int)
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy()
        if not np.all(np.equal(np.mod(values, 1), 0)):
            raise DataError(f"{where}: labels must be whole numbers or names from {names}")
        ids = series.astype("int64")
        bad = sorted(set(ids[(ids < 0) | (ids >= len(names))].tolist()))
        if bad:
            raise DataError(f"{where}: labels {bad[:5]} outside the label set 0..{len(names) - 1} ({names})")
        return ids
    as_str = series.astype(str)
    unknown = sorted(set(as_str) - set(names))
    if unknown:
        # "0"/"1" written as strings are ids, not names
        if all(u.isdigit() for u in set(as_str)) and all(int(u) < len(names) for u in set(as_str)):
            return as_str.astype("int64")
        raise DataError(f"{where}: labels {unknown[:5]} are not in data.label_names {names}: use --labels "
                        f"{','.join(sorted(set(as_str)))} (or data.label_names=null to infer them)")
    return as_str.map({n: i for i, n in enumerate(names)}).astype("int64")


def infer_label_names(labels: Sequence[pd.Series], where: str) -> tuple[list[str], str]:
    """Label names when data.label_names is null, and how they were found (for the terminal):
    string labels sorted, or integer ids 0..N-1 named by their numbers."""
    values = pd.concat([s.dropna() for s in labels])
    if pd.api.types.is_bool_dtype(values):
        values = values.astype(int)
    as_str = values.astype(str)
    if pd.api.types.is_numeric_dtype(values) or all(v.isdigit() for v in set(as_str)):
        try:
            ids = sorted({int(float(v)) for v in as_str})
        except ValueError:
            ids = []
        if len(ids) < 2 or ids != list(range(len(ids))):
            raise DataError(f"{where}: integer labels {ids[:6]} are not 0..N-1 (N >= 2): name them with "
                            "--labels NAME0,NAME1,... (data.label_names)")
        return [str(i) for i in ids], "(integer ids; name them with --labels NAME0,NAME1,...)"
    names = sorted(set(as_str))
    if len(names) < 2:
        raise DataError(f"{where}: every row has the label {names[0]!r}: a classifier needs two or more")
    return names, "(inferred from the data, sorted; --labels sets them and their order)"


def _guess_column(df: pd.DataFrame, role: str, not_this: str | None) -> str | None:
    """The column a user most likely meant: for text the one with the longest strings, for labels
    the one with the fewest distinct values."""
    cols = [c for c in df.columns if str(c) != not_this]
    if role == "text":
        text = [c for c in cols if df[c].map(lambda v: isinstance(v, str)).mean() > 0.5]
        return str(max(text, key=lambda c: df[c].astype(str).str.len().mean())) if text else None
    varied = [c for c in cols if df[c].nunique() >= 2]
    return str(min(varied, key=lambda c: df[c].nunique())) if varied else None


def _check_columns(df: pd.DataFrame, text_col: str, label_col: str, where: str) -> None:
    """A missing column is an error that names the option (and key) fixing it."""
    missing = [(role, col) for role, col in (("text", text_col), ("label", label_col)) if col not in df.columns]
    if not missing:
        return
    fixes = []
    for role, _ in missing:
        other = label_col if role == "text" else (text_col if text_col in df.columns
                                                  else _guess_column(df, "text", None))
        guess = _guess_column(df, role, other)
        fixes.append(f"--{role}-column {guess or 'COLUMN'} (data.{role}_column)")
    names = " or ".join(repr(col) for _, col in missing)
    raise DataError(f"{where}: no column {names}; columns are {', '.join(map(str, df.columns))}: "
                    f"use {' '.join(fixes)}")


def clean(df: pd.DataFrame, text_col: str, label_col: str, label_names: Sequence[str],
          where: str, report: Report, split: str) -> pd.DataFrame:
    """Validated (text, label) columns; empty texts dropped and counted."""
    _check_columns(df, text_col, label_col, where)
    text = df[text_col]
    present = text.notna()
    non_str = present & ~text.map(lambda v: isinstance(v, str))
    if non_str.any():
        first = int(np.flatnonzero(non_str.to_numpy())[0])
        raise DataError(f"{where}: column {text_col!r} holds non-text values (first at row {first}: "
                        f"{text.iloc[first]!r})")
    keep = present & text.fillna("").str.strip().ne("")
    report.dropped_empty[split] = int((~keep).sum())
    df = df.loc[keep]
    if df.empty:
        raise DataError(f"{where}: no rows with non-empty text")
    out = pd.DataFrame({
        "text": df[text_col].str.strip().astype(str).to_numpy(),
        "label": _labels_to_ids(df[label_col], label_names, where).to_numpy(),
    })
    report.duplicates_within[split] = int(out["text"].duplicated().sum())
    return out


def split_frame(df: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[str, pd.DataFrame]:
    """Seeded, stratified split of one table into the given fractions (the rest is train)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in ("train", *fractions)}
    for _, group in df.groupby("label", sort=True):
        idx = rng.permutation(group.index.to_numpy())
        start = 0
        for split, frac in fractions.items():
            n = int(math.floor(len(idx) * frac + 0.5))
            parts[split].append(idx[start:start + n])
            start += n
        parts["train"].append(idx[start:])
    return {s: df.loc[np.sort(np.concatenate(p))].reset_index(drop=True) for s, p in parts.items()}


def resolve_source(cfg: Config) -> tuple[dict[str, pd.DataFrame], bool, list[str] | None]:
    """Raw splits from the configured source, whether they are already in (text, label), and the
    source's own label names (None when the labels themselves must say)."""
    source = cfg.data.source.strip()
    if source.startswith("hf:"):
        frames, names = load_hf(source[3:], cfg.data.label_column)
        return frames, False, names
    if source.startswith("rt-polarity:"):
        return load_rt_polarity(source[len("rt-polarity:"):]), True, ["neg", "pos"]
    if source == "builtin:rt-polarity":
        return load_rt_polarity(str(builtin_rt_path())), True, ["neg", "pos"]
    path = Path(source).expanduser()
    if path.is_dir():
        return {s: read_table(p) for s, p in _table_split_files(path).items()}, False, None
    if path.suffix.lower() in TABLE_SUFFIXES:
        return {"train": read_table(path)}, False, None
    kinds = (f"hf:NAME, rt-polarity:PATH, builtin:rt-polarity, a folder or a {', '.join(TABLE_SUFFIXES)} "
             "file")
    if not path.exists():
        raise DataError(f"data source {source!r} does not exist (expected {kinds})")
    raise DataError(f"data source {source!r}: unsupported file type {path.suffix or '(none)'!r}; "
                    f"supported: {kinds}")


def _label_names(cfg: Config, raw: dict[str, pd.DataFrame], label_col: str, own: list[str] | None,
                 report: Report) -> list[str]:
    if cfg.data.label_names is not None:
        return list(cfg.data.label_names)
    if own is not None:
        names, how = own, "(the source's own names)"
    else:
        present = [df[label_col] for df in raw.values() if label_col in df.columns]
        if len(present) < len(raw):  # let clean() name the missing column and its fix
            return []
        names, how = infer_label_names(present, f"{cfg.data.source} [{label_col}]")
    report.labels_inferred = how
    return names


def prepare(cfg: Config) -> tuple[dict[str, pd.DataFrame], Report]:
    """Clean splits; report.label_names holds the names used (data.label_names, or inferred)."""
    raw, canonical, own = resolve_source(cfg)
    text_col, label_col = ("text", "label") if canonical else (cfg.data.text_column, cfg.data.label_column)
    report = Report()
    report.label_names = _label_names(cfg, raw, label_col, own, report)
    splits = {s: clean(df, text_col, label_col, report.label_names, f"{cfg.data.source} [{s}]", report, s)
              for s, df in raw.items()}
    missing = {s: f for s, f in (("validation", cfg.data.val_fraction), ("test", cfg.data.test_fraction))
               if s not in splits}
    if missing:
        if any(f <= 0 for f in missing.values()):
            raise DataError(f"source has no {' or '.join(missing)} split and its fraction is 0")
        splits.update(split_frame(splits["train"], missing, cfg.data.split_seed))
    splits["train"] = cap_train(splits["train"], cfg)
    train_texts = set(splits["train"]["text"])
    for s in ("validation", "test"):
        report.overlap_with_train[s] = int(splits[s]["text"].isin(train_texts).sum())
        if splits[s].empty:
            raise DataError(f"the {s} split is empty")
    return {s: splits[s] for s in SPLITS}, report


def cap_train(train: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """The training split cut to data.max_train_samples rows, a seeded sample in the original order
    (the same rows at fetch and at train: train applies it to the fetched split)."""
    cap = cfg.data.max_train_samples
    if cap is None or cap >= len(train):
        return train
    return train.sample(n=cap, random_state=cfg.data.split_seed).sort_index().reset_index(drop=True)


def training_splits(cfg: Config) -> dict[str, pd.DataFrame]:
    """What train reads: the fetched train and validation splits, the train split capped by
    data.max_train_samples when that is given to train and is below what fetch kept."""
    splits = load_splits(cfg.paths.data_dir, ("train", "validation"))
    capped = cap_train(splits["train"], cfg)
    if len(capped) < len(splits["train"]):
        print(f"note: training on {len(capped)} of the {len(splits['train'])} fetched training texts "
              f"(data.max_train_samples, seed data.split_seed={cfg.data.split_seed})", flush=True)
    return {**splits, "train": capped}


# Keys only fetch acts on (data.max_train_samples also acts at train, on the fetched split).
FETCH_ONLY = ("source", "text_column", "label_column", "label_names", "split_seed", "val_fraction",
              "test_fraction")


def check_fetched_with(cfg: Config, overrides: Sequence[str], step: str) -> None:
    """A --set data.KEY given to train or eval either matches what the fetched splits were made
    with (meta.json), or is a UsageError that says to fetch with it: otherwise it would silently
    change nothing. Nothing to compare before the first fetch (the step then says to fetch)."""
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    given = [k.split(".", 1)[1] for k in sorted(keys) if k.startswith("data.") and k.split(".", 1)[1] in FETCH_ONLY]
    path = Path(cfg.paths.data_dir) / "meta.json"
    if not given or not path.is_file():
        return
    used = read_meta(cfg.paths.data_dir).get("data_config", {})
    for name in given:
        value = cfg.data[name]
        value = list(value) if value is not None and name == "label_names" else value
        if name in used and value != used[name] and not (name == "label_names" and value is None):
            raise UsageError(f"--set data.{name}={value} acts at fetch, and {cfg.paths.data_dir} was fetched "
                             f"with {used[name]}: run `sent fetch --set data.{name}=...` first, then {step}")


def content_sha256(splits: dict[str, pd.DataFrame]) -> str:
    """A hash of the split contents, independent of the parquet writer."""
    digest = hashlib.sha256()
    for split in SPLITS:
        df = splits[split]
        digest.update(f"\x00{split}\x00{len(df)}\x00".encode())
        for text, label in zip(df["text"], df["label"], strict=True):
            digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()


def write(splits: dict[str, pd.DataFrame], out_dir: Path, meta: dict[str, Any]) -> Path:
    with replaced_dir(out_dir) as tmp:
        for split, df in splits.items():
            df.astype({"text": "string", "label": "int64"}).to_parquet(tmp / f"{split}.parquet", index=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return Path(out_dir)


def load_splits(data_dir: str | Path, splits: Sequence[str] = SPLITS) -> dict[str, pd.DataFrame]:
    data_dir = Path(data_dir)
    out = {}
    for split in splits:
        path = data_dir / f"{split}.parquet"
        if not path.is_file():
            raise DataError(f"{path} does not exist; run `sent fetch` first")
        out[split] = pd.read_parquet(path)
    return out


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist; run `sent fetch` first")
    return json.loads(path.read_text())
