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


def run(cfg: Config) -> Path:
    """Fetch, validate and write the splits; returns the data folder."""
    splits, report = data.prepare(cfg)
    counts = {s: len(df) for s, df in splits.items()}
    meta = {
        "splits": counts,
        "labels": list(cfg.data.label_names),
        "label_counts": {s: {cfg.data.label_names[i]: int(n) for i, n in
                             df["label"].value_counts().sort_index().items()} for s, df in splits.items()},
        "source": cfg.data.source,
        "sha256": data.content_sha256(splits),
        "cleaning": {
            "dropped_empty": report.dropped_empty,
            "duplicates_within": report.duplicates_within,
            "overlap_with_train": report.overlap_with_train,
        },
        "data_config": config.to_dict(cfg)["data"],
        "sent_version": __version__,
    }
    out = data.write(splits, Path(cfg.paths.data_dir), meta)
    for line in report.lines():
        print(f"note: {line}")
    print(f"wrote {out}: train {counts['train']}, validation {counts['validation']}, "
          f"test {counts['test']} (sha256 {meta['sha256'][:12]})")
    return out
