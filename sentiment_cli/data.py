"""Data: sources → clean, validated splits → parquet; and batches for training.

Sources (data.source):
  hf:NAME                   a Hugging Face dataset (needs the internet)
  rt-polarity:PATH_OR_URL   the original Cornell sentence-polarity files: a folder with
                            rt-polarity.pos/.neg, or the .tar.gz, local or http(s)
  builtin:rt-polarity       the same files, shipped inside this package (offline)
  FILE.csv|.tsv|.jsonl|.json|.parquet   one labelled table, split with data.split_seed
  FOLDER                    train.* and optionally validation.* / test.* tables in one folder

Output (paths.data_dir): train.parquet, validation.parquet, test.parquet (text: string,
label: int64) and meta.json. Written to a temporary folder, then renamed: a failed fetch leaves
the previous output untouched.
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

from sentiment_cli.errors import SentError, first_line
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

    def lines(self) -> list[str]:
        out = []
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


def load_hf(name: str) -> dict[str, pd.DataFrame]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency
        raise DataError("the datasets package is not installed") from None
    try:
        ds = datasets.load_dataset(name)
    except Exception as exc:  # offline, unknown name, gated: all end in one clear line
        first = first_line(exc)
        raise DataError(
            f"cannot load Hugging Face dataset {name!r}: {first} "
            "(offline? use data.source=builtin:rt-polarity or a local file)"
        ) from None
    aliases = {"train": "train", "validation": "validation", "valid": "validation",
               "dev": "validation", "test": "test"}
    return {aliases[s]: ds[s].to_pandas() for s in ds if s in aliases}


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
        raise DataError(f"{where}: labels {unknown[:5]} are not in data.label_names {names}")
    return as_str.map({n: i for i, n in enumerate(names)}).astype("int64")


def clean(df: pd.DataFrame, text_col: str, label_col: str, label_names: Sequence[str],
          where: str, report: Report, split: str) -> pd.DataFrame:
    """Validated (text, label) columns; empty texts dropped and counted."""
    for col in (text_col, label_col):
        if col not in df.columns:
            raise DataError(f"{where}: no column {col!r}; columns are {list(map(str, df.columns))}")
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


def resolve_source(cfg: Config) -> tuple[dict[str, pd.DataFrame], bool]:
    """Raw splits from the configured source, and whether they are already in (text, label)."""
    source = cfg.data.source.strip()
    if source.startswith("hf:"):
        return load_hf(source[3:]), False
    if source.startswith("rt-polarity:"):
        return load_rt_polarity(source[len("rt-polarity:"):]), True
    if source == "builtin:rt-polarity":
        return load_rt_polarity(str(builtin_rt_path())), True
    path = Path(source).expanduser()
    if path.is_dir():
        return {s: read_table(p) for s, p in _table_split_files(path).items()}, False
    if path.suffix.lower() in TABLE_SUFFIXES:
        return {"train": read_table(path)}, False
    if not path.exists():
        raise DataError(f"data source {source!r} does not exist (expected hf:NAME, rt-polarity:PATH, "
                        f"builtin:rt-polarity, a folder or a {'/'.join(TABLE_SUFFIXES)} file)")
    raise DataError(f"data source {source!r}: unsupported file type")


def prepare(cfg: Config) -> tuple[dict[str, pd.DataFrame], Report]:
    raw, canonical = resolve_source(cfg)
    text_col, label_col = ("text", "label") if canonical else (cfg.data.text_column, cfg.data.label_column)
    report = Report()
    splits = {s: clean(df, text_col, label_col, cfg.data.label_names, f"{cfg.data.source} [{s}]", report, s)
              for s, df in raw.items()}
    missing = {s: f for s, f in (("validation", cfg.data.val_fraction), ("test", cfg.data.test_fraction))
               if s not in splits}
    if missing:
        if any(f <= 0 for f in missing.values()):
            raise DataError(f"source has no {' or '.join(missing)} split and its fraction is 0")
        splits.update(split_frame(splits["train"], missing, cfg.data.split_seed))
    cap = cfg.data.max_train_samples
    if cap is not None and cap < len(splits["train"]):
        splits["train"] = splits["train"].sample(n=cap, random_state=cfg.data.split_seed).sort_index()
        splits["train"] = splits["train"].reset_index(drop=True)
    train_texts = set(splits["train"]["text"])
    for s in ("validation", "test"):
        report.overlap_with_train[s] = int(splits[s]["text"].isin(train_texts).sum())
        if splits[s].empty:
            raise DataError(f"the {s} split is empty")
    return {s: splits[s] for s in SPLITS}, report


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
