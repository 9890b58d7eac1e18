"""Results files: schema-versioned JSON, written atomically, sealed with a sha256.

The sha256 covers the canonical JSON (sorted keys, no spaces) of the whole document
except the ``sha256`` field itself, so any edit is detected by ``verify``. Every report,
table and plot is derived from such a file and can be re-derived later.

Use: ``write_results(path, doc)``; ``load_results(path)`` (raises on a bad seal);
``gosok report verify results.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

SCHEMA = "gosok.results/1"


class TamperedResultsError(ValueError):
    """The file's content does not match its sha256 seal."""


def canonical_bytes(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def seal(doc: dict[str, Any]) -> dict[str, Any]:
    doc = dict(doc)
    doc.setdefault("schema", SCHEMA)
    doc.setdefault("created_unix", time.time())
    doc["sha256"] = hashlib.sha256(canonical_bytes(doc)).hexdigest()
    return doc


def verify(doc: dict[str, Any]) -> bool:
    return doc.get("sha256") == hashlib.sha256(canonical_bytes(doc)).hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write to a temp file in the same directory, fsync, rename over ``path``, fsync the
    directory."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_results(path: str | os.PathLike[str], doc: dict[str, Any]) -> dict[str, Any]:
    sealed = seal(doc)
    atomic_write_bytes(path, (json.dumps(sealed, indent=1, allow_nan=False) + "\n").encode())
    return sealed


def load_results(path: str | os.PathLike[str], check: bool = True) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    if doc.get("schema", "").split("/")[0] != SCHEMA.split("/")[0]:
        raise ValueError(f"{path}: not a gosok results file (schema={doc.get('schema')!r})")
    if check and not verify(doc):
        raise TamperedResultsError(f"{path}: sha256 does not match the content (edited?)")
    return doc
