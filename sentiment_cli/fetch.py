"""sent fetch: read data.source, validate and clean it, write the splits.

Reads: data.source (see sentiment_cli/data.py for the forms it takes).
Writes: paths.data_dir/{train,validation,test}.parquet and meta.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sentiment_cli import __version__, config, data

if TYPE_CHECKING:
    from sentiment_cli.config import Config

log = logging.getLogger(__name__)
RAW = Path("data/raw")  # what dvc.yaml's fetch stage depends on


def run(cfg: Config) -> Path:
    """Fetch, validate and write the splits; returns the data folder."""
    splits, report = data.prepare(cfg)
    counts = {s: len(df) for s, df in splits.items()}
    names = report.label_names
    data_config = {**config.to_dict(cfg)["data"], "label_names": names}
    meta = {
        "splits": counts,
        "labels": names,
        "labels_inferred": bool(report.labels_inferred),
        "label_counts": {s: {names[i]: int(n) for i, n in
                             df["label"].value_counts().sort_index().items()} for s, df in splits.items()},
        "source": cfg.data.source,
        "sha256": data.content_sha256(splits),
        "cleaning": {
            "dropped_empty": report.dropped_empty,
            "duplicates_within": report.duplicates_within,
            "overlap_with_train": report.overlap_with_train,
        },
        "data_config": data_config,
        "sent_version": __version__,
    }
    out = data.write(splits, Path(cfg.paths.data_dir), meta)
    for line in [*report.lines(), *_untracked_by_dvc(cfg.data.source)]:
        print(f"note: {line}")
    print(f"wrote {out}: train {counts['train']}, validation {counts['validation']}, "
          f"test {counts['test']} (sha256 {meta['sha256'][:12]})")
    return out


def _untracked_by_dvc(source: str) -> list[str]:
    """In a DVC project, a local table outside data/raw/ is not a dependency of the fetch stage."""
    path = Path(source).expanduser()
    if not Path("dvc.yaml").is_file() or ":" in source.split("/", 1)[0] or not path.exists():
        return []
    if path.resolve().is_relative_to(RAW.resolve()):
        return []
    return [f"{source} is outside {RAW}/, the folder the DVC fetch stage depends on: move it there "
            "for `dvc status` to see it change (docs/dvc.md)"]
