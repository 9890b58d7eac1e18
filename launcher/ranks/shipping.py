"""Ship a job's code to every node: nothing is assumed to exist on a node except declared
shared storage. The driver packs the script's directory once (a gzip'd tar in memory,
``MAX_BYTES`` at most, with a clear error above); each node unpacks it once into its own
cache, keyed by the content's sha256, and ranks run the script from there.

Use::

    bundle = pack(Path("train.py").parent)          # on the driver
    root = unpack(bundle, cache_root())             # on a node (idempotent)
    script = root / "train.py"
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

MAX_BYTES = 64 << 20
SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "outputs", "multirun", "wandb", ".tox"}


class ShippingError(ValueError):
    """The directory cannot be shipped (too large, unreadable)."""


@dataclass(frozen=True)
class Bundle:
    sha256: str
    data: bytes
    files: int


def pack(directory: Path, limit: int = MAX_BYTES) -> Bundle:
    """The directory's files (symlinks and skipped folders left out) as one tar.gz."""
    directory = directory.resolve()
    buffer = io.BytesIO()
    count, total = 0, 0
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=3) as tar:
        for root, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            for name in sorted(files):
                path = Path(root) / name
                if path.is_symlink() or not path.is_file():
                    continue
                total += path.stat().st_size
                if total > limit:
                    raise ShippingError(
                        f"{directory} holds more than {limit >> 20} MiB of files; gosok ships "
                        "the script's directory to every node: move data out of it or put it "
                        "on shared storage"
                    )
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(directory)))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
                count += 1
    data = buffer.getvalue()
    return Bundle(hashlib.sha256(data).hexdigest(), data, count)


def cache_root() -> Path:
    """Where this node keeps unpacked bundles (node-local, private to the user)."""
    root = Path(tempfile.gettempdir()) / f"gosok-code-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def unpack(bundle: Bundle, root: Path) -> Path:
    """The bundle's directory under ``root``, unpacked once; only plain files inside it."""
    if hashlib.sha256(bundle.data).hexdigest() != bundle.sha256:
        raise ShippingError("code bundle damaged in transit (sha256 differs)")
    target = root / bundle.sha256[:24]
    if (target / ".complete").exists():
        return target
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        for member in tar.getmembers():
            inside = (staging / member.name).resolve()
            if not member.isfile() or not inside.is_relative_to(staging.resolve()):
                raise ShippingError(f"code bundle entry {member.name!r} is not a plain file")
        tar.extractall(staging, filter="data")
    (staging / ".complete").touch()
    try:
        staging.rename(target)
    except OSError:  # another rank of this node unpacked it first
        pass
    return target
