"""MkDocs build hook (mkdocs.yml `hooks:`): drop the nav entries of optional pages not yet written.

`extra.optional_pages` in mkdocs.yml names pages that other work adds; each is in the nav as soon
as its file exists. Every other nav entry must exist, or the strict build fails as usual.
"""

from __future__ import annotations

from pathlib import Path


def _keep(entry, docs: Path, optional: set[str]):
    """The nav entry without the optional pages that do not exist; None if nothing is left."""
    if isinstance(entry, str):
        return None if entry in optional and not (docs / entry).is_file() else entry
    if isinstance(entry, dict):
        ((title, value),) = entry.items()
        if isinstance(value, list):
            kept = [k for k in (_keep(e, docs, optional) for e in value) if k is not None]
            return {title: kept} if kept else None
        return {title: value} if _keep(value, docs, optional) is not None else None
    return entry


def on_config(config):
    optional = set(config.extra.get("optional_pages") or [])
    docs = Path(config.docs_dir)
    if config.nav:
        config.nav = [k for k in (_keep(e, docs, optional) for e in config.nav) if k is not None]
    return config
