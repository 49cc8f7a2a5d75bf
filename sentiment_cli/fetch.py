"""sent fetch: read data.source, validate and clean it, write the splits.

Reads: data.source (see sentiment_cli/data.py for the forms it takes).
Writes: paths.data_dir/{train,validation,test}.parquet and meta.json.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sentiment_cli import __version__, config, data

if TYPE_CHECKING:
    from sentiment_cli.config import Config

log = logging.getLogger(__name__)


def run(cfg: Config) -> Path:
    """Fetch, validate and write the splits; returns the data folder."""
    dvc_notes = _untracked_by_dvc(cfg)  # before any work: run by DVC, a mismatch stops here
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
    for line in [*report.lines(), *dvc_notes]:
        print(f"note: {line}")
    print(f"wrote {out}: train {counts['train']}, validation {counts['validation']}, "
          f"test {counts['test']} (sha256 {meta['sha256'][:12]})")
    return out


def _untracked_by_dvc(cfg: Config) -> list[str]:
    """A local data.source must be data.dvc_dep or lie inside it: that path is what dvc.yaml's
    fetch stage depends on, and a table outside it could change without `dvc status` seeing it.
    Run by DVC (which sets DVC_STAGE) that stops the stage; a plain `sent fetch` gets a note."""
    source = cfg.data.source
    local = source.removeprefix("rt-polarity:")
    dvc_yaml = Path("dvc.yaml")
    if ("://" in local or ":" in local.split("/", 1)[0] or not Path(local).expanduser().exists()
            or not dvc_yaml.is_file() or "${data.dvc_dep}" not in dvc_yaml.read_text(errors="replace")):
        return []
    dep = Path(cfg.data.dvc_dep).expanduser().resolve()
    path = Path(local).expanduser().resolve()
    if path == dep or path.is_relative_to(dep):
        return []
    line = (f"data.source {source} is outside data.dvc_dep ({cfg.data.dvc_dep}), what the DVC fetch stage "
            f"depends on: set data.dvc_dep: {local} in params.yaml (dvc exp run: -S data.dvc_dep={local}), "
            "or move the table into it, for `dvc status` to see it change (docs/dvc.md)")
    if os.environ.get("DVC_STAGE"):
        raise config.ConfigError(line)
    return [line]
