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
    from collections.abc import Sequence

    from sentiment_cli.config import Config

log = logging.getLogger(__name__)


def run(cfg: Config, given: Sequence[str] = ()) -> Path:
    """Fetch, validate and write the splits; returns the data folder. `given`: the data keys named on
    fetch's own command line (meta.json's data_given), which train treats as chosen, not stale."""
    _check_dvc_dependency(cfg)  # before any work
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
        "data_given": sorted(given),
        "sent_version": __version__,
    }
    out = data.write(splits, Path(cfg.paths.data_dir), meta)
    for line in report.lines():
        print(f"note: {line}")
    print(f"wrote {out}: train {counts['train']}, validation {counts['validation']}, "
          f"test {counts['test']} (sha256 {meta['sha256'][:12]})")
    return out


def _check_dvc_dependency(cfg: Config) -> None:
    """Run by DVC (which sets DVC_STAGE for a stage's command) in a project whose fetch stage
    depends on ${data.dvc_dep}: a local data.source must be that path or lie inside it, or the
    table could change without `dvc status` seeing it. A plain `sent fetch` involves no DVC: no
    word about it on a first run."""
    source = cfg.data.source
    local = source.removeprefix("rt-polarity:")
    dvc_yaml = Path("dvc.yaml")
    if (not os.environ.get("DVC_STAGE") or "://" in local or ":" in local.split("/", 1)[0]
            or not Path(local).expanduser().exists() or not dvc_yaml.is_file()
            or "${data.dvc_dep}" not in dvc_yaml.read_text(errors="replace")):
        return
    dep = Path(cfg.data.dvc_dep).expanduser().resolve()
    path = Path(local).expanduser().resolve()
    if path != dep and not path.is_relative_to(dep):
        raise config.ConfigError(
            f"data.source {source} is outside data.dvc_dep ({cfg.data.dvc_dep}), what the DVC fetch stage "
            f"depends on: set data.dvc_dep: {local} in params.yaml (dvc exp run: -S data.dvc_dep={local}), "
            "or move the table into it, for `dvc status` to see it change (docs/dvc.md)")
