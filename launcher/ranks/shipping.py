"""Ship a job's code to every node: nothing is assumed to exist on a node except declared
shared storage. The driver packs the code directory once (the script's own unless
``job.code_dir`` says; only the script when that is a shared temporary directory such as
/tmp; files matching ``.gosokignore`` left out; a gzip'd tar in memory, ``MAX_BYTES`` at
most, with a clear error above); each node unpacks it once into its own
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
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pathspec

MAX_BYTES = 64 << 20
SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "outputs", "multirun", "wandb", ".tox"}


class ShippingError(ValueError):
    """The directory cannot be shipped (too large, unreadable)."""


@dataclass(frozen=True)
class Bundle:
    sha256: str
    data: bytes
    files: int
    left_out: tuple[str, ...] = ()  # credentials and .gosokignore matches, as paths


IGNORE_FILE = ".gosokignore"


def is_shared_temp(directory: Path) -> bool:
    """A directory every user writes to (world-writable and sticky, such as /tmp): not a
    project's code directory, so only the script itself is shipped from it."""
    mode = directory.stat().st_mode
    return bool(mode & stat.S_ISVTX and mode & stat.S_IWOTH)


# Credentials never travel with the code, whatever .gosokignore says.
NEVER_SHIPPED = [
    ".env", ".env.*", ".netrc", ".ssh/", ".git-credentials", ".pypirc", ".aws/", ".docker/",
    "*.pem", "*.key", "*.p12", "id_rsa*", "id_ed25519*",
]  # fmt: skip


def ignore_spec(directory: Path) -> pathspec.GitIgnoreSpec:
    """What is left out: the credentials above, then ``<directory>/.gosokignore`` (gitignore
    syntax: ``data/``, ``*.ckpt``, ``!keep.me``)."""
    path = directory / IGNORE_FILE
    lines = path.read_text().splitlines() if path.is_file() else []
    return pathspec.GitIgnoreSpec.from_lines([*lines, *NEVER_SHIPPED])


def _largest(files: list[tuple[str, int]], count: int = 3) -> str:
    sizes: dict[str, int] = {}
    for relative, size in files:
        top = relative.split("/", 1)[0]
        sizes[top] = sizes.get(top, 0) + size
    biggest = sorted(sizes.items(), key=lambda item: -item[1])[:count]
    return ", ".join(f"{name} ({size / (1 << 20):.1f} MiB)" for name, size in biggest)


def pack(directory: Path, limit: int = MAX_BYTES, only: list[Path] | None = None) -> Bundle:
    """The directory's files (symlinks, skipped folders and ``.gosokignore`` matches left
    out), or just the ``only`` files in it, as one tar.gz."""
    directory = directory.resolve()
    spec = ignore_spec(directory)
    chosen: list[tuple[str, int]] = []
    left_out: list[str] = []
    if only is not None:
        chosen = [(str(p.resolve().relative_to(directory)), p.stat().st_size) for p in only]
    else:
        for root, dirs, files in os.walk(directory):
            base = Path(root).relative_to(directory)
            kept_dirs = []
            for d in sorted(dirs):
                if d in SKIP_DIRS:
                    continue
                if spec.match_file(f"{(base / d).as_posix()}/"):
                    left_out.append(f"{(base / d).as_posix()}/")
                else:
                    kept_dirs.append(d)
            dirs[:] = kept_dirs
            for name in sorted(files):
                path = Path(root) / name
                relative = (base / name).as_posix()
                if path.is_symlink() or not path.is_file():
                    continue
                if spec.match_file(relative):
                    left_out.append(relative)
                    continue
                chosen.append((relative, path.stat().st_size))
    total = sum(size for _, size in chosen)
    if total > limit:
        raise ShippingError(
            f"{directory} holds {total / (1 << 20):.0f} MiB of files, more than the "
            f"{limit >> 20} MiB gosok ships to every node (largest: "
            f"{_largest(chosen)}); leave them out with a {IGNORE_FILE} there (one "
            "glob per line), ship a smaller directory with job.code_dir=..., or put data on "
            "shared storage"
        )
    buffer = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=3) as tar:
        for relative, _ in chosen:
            path = directory / relative
            info = tar.gettarinfo(str(path), arcname=relative)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
            count += 1
    data = buffer.getvalue()
    return Bundle(hashlib.sha256(data).hexdigest(), data, count, tuple(left_out))


def cache_root() -> Path:
    """Where this node keeps unpacked bundles (node-local, private to the user)."""
    from gosok.launcher.ranks.private import private_dir

    return private_dir(Path(tempfile.gettempdir()) / f"gosok-code-{os.getuid()}")


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
