"""The content hash of a model folder: what `sent.json` and the registry's weights_sha256 tag record,
and the check every reader (serve, drift, eval, promote) makes before it trusts a folder.

One sha256 over the name and sha256 of every file that decides a prediction: the .safetensors
weights, config.json (id2label), the tokenizer's files. Files a model never loads (pickles beside
the safetensors, notes) are left out, and are not uploaded to the registry either.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from sentiment_cli.errors import ModelError, SentError

META_FILE = "sent.json"


# Files that never decide a prediction: sent's own record, pickles sent never loads, notes.
NOT_LOADED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "*.h5", "*.msgpack", "*.onnx",
              "*.md", "*.txt.lock", ".gitattributes")


def model_files(folder: str | Path) -> list[Path]:
    """The files that decide what a model folder predicts, in name order: the weights, config.json
    (id2label!), the tokenizer's files, and any other top-level file but sent.json and NOT_LOADED."""
    out = []
    for path in sorted(Path(folder).iterdir(), key=lambda p: p.name):
        if not path.is_file() or path.name == META_FILE or any(path.match(g) for g in NOT_LOADED):
            continue
        out.append(path)
    return out


def _feed(digest, path: Path):
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def file_sha256(path: str | Path) -> str:
    """The sha256 of one file, read in 1 MiB chunks."""
    return _feed(hashlib.sha256(), Path(path)).hexdigest()


def file_manifest(folder: str | Path) -> dict[str, str]:
    """name → sha256 of each file in model_files: says which file changed when the hash differs."""
    return {path.name: file_sha256(path) for path in model_files(folder)}


def weights_sha256(folder: str | Path) -> str:
    """The content hash of a model folder: one sha256 over the name and sha256 of every file that
    decides a prediction (model_files). Swapping id2label in config.json or editing the tokenizer
    changes it as surely as a flipped weight does. (The name is kept from when it covered only
    the .safetensors files; registry tags and sent.json carry it under that name.)"""
    if not list(Path(folder).glob("*.safetensors")):
        raise ModelError(f"{folder} has no .safetensors weights")
    digest = hashlib.sha256()
    for name, sha in file_manifest(folder).items():
        digest.update(f"{name}\0{sha}\n".encode())
    return digest.hexdigest()


def legacy_weights_sha256(folder: str | Path) -> str:
    """The hash versions registered before content hashing carry: the .safetensors files only."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        digest.update(path.name.encode())
        _feed(digest, path)
    return digest.hexdigest()


def _changed_files(folder: Path) -> str:
    try:
        recorded = json.loads((folder / META_FILE).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(recorded, dict):
        return ""
    now = file_manifest(folder)
    changed = sorted(n for n in set(recorded) | set(now) if recorded.get(n) != now.get(n))
    return f" (changed: {', '.join(changed)})" if changed else ""


def verify_weights(folder: str | Path, expected: str | None, against: str, *,
                   error: type[SentError] = ModelError, action: str = "refusing to serve") -> str:
    """The folder's content hash, after checking it equals `expected` (what `against` recorded).

    Raises `error` (one line naming both hashes and, when sent.json lists them, the files that
    changed) on a mismatch; an empty `expected` checks nothing. A version registered before
    content hashing matches on its weights alone, with a warning that nothing else was checked.
    """
    folder = Path(folder)
    actual = weights_sha256(folder)
    if expected and actual != expected:
        if legacy_weights_sha256(folder) == expected:
            print(f"warning: {against} predates content hashing: only {folder}'s .safetensors are "
                  "verified, not config.json or the tokenizer (register it again to cover them)",
                  file=sys.stderr)
            return actual
        raise error(f"{folder}: content sha256 {actual[:12]}… does not match {against} "
                    f"({str(expected)[:12]}…){_changed_files(folder)}; {action}")
    return actual
