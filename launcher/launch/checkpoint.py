"""Checkpoints on a storage path every node sees: atomic, keep-last-k, with a manifest.

A checkpoint is a directory ``step-000040/``. Writers fill a temporary directory
``.tmp-step-000040/`` (one writer, or every rank for sharded states), then one process
commits it: hashes the files, renames the directory into place, rewrites
``manifest.json`` atomically (temp + rename) and prunes to the newest ``keep_last``. A
write killed half-way leaves only a temporary directory, which the manifest never names,
so the previous checkpoint stays the latest loadable one.

The manifest is authenticated: with the job's checkpoint key (``checkpoint_key``: 32
random bytes in the launching user's private state directory, never in the checkpoint
storage; ranks get it in memory as ``GOSOK_CHECKPOINT_KEY``), ``commit`` adds an HMAC-SHA256
of the manifest and ``read_manifest`` refuses one whose HMAC does not match, before any file
is hashed or opened. Whoever can write the checkpoint storage but not read the key cannot
make a resume load their files (their hashes would have to be in an authenticated
manifest). Without a key (the recipe under plain torchrun) nothing is authenticated.

Use::

    store = CheckpointStore(path, keep_last=2, key=checkpoint_key(path))
    tmp = store.begin(step)            # every writer writes under tmp
    store.commit(step, meta={...})     # one process, after the writers are done
    entry = store.latest()             # None, or the newest checkpoint that verifies
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gosok.launcher.results.store import atomic_write_bytes

MANIFEST = "manifest.json"
FORMAT = "gosok.checkpoints/1"
KEY_ENV = "GOSOK_CHECKPOINT_KEY"


class UnauthenticatedCheckpointError(ValueError):
    """A manifest this job's key did not write: nothing of it is loaded."""


def checkpoint_key(checkpoint_dir: str | os.PathLike[str], state: Path) -> bytes:
    """The key of the checkpoints in ``checkpoint_dir``: made once (32 random bytes, 0600)
    in ``state/checkpoint-keys/`` (0700, checked on every use), found again on a resume."""
    import secrets

    from gosok.launcher.ranks.private import private_dir

    folder = private_dir(state / "checkpoint-keys")
    name = hashlib.sha256(str(Path(checkpoint_dir).resolve()).encode()).hexdigest()[:32]
    path = folder / f"{name}.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        fd = -1
    if fd >= 0:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    st = os.lstat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o077 or not os.path.isfile(path):
        raise UnauthenticatedCheckpointError(f"{path}: not a private key file of this user")
    return path.read_bytes()


def key_from_env(environ: dict[str, str] | None = None) -> bytes | None:
    """The checkpoint key gosok's driver gave this rank (taken out of the environment)."""
    value = (os.environ if environ is None else environ).pop(KEY_ENV, None)
    return bytes.fromhex(value) if value else None


def _mac(key: bytes, manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "hmac"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


@dataclass
class CheckpointEntry:
    step: int
    path: Path
    files: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    created_unix: float = 0.0


FULL_SLACK_BYTES = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CheckpointStore:
    def __init__(
        self, root: str | os.PathLike[str], keep_last: int = 2, key: bytes | None = None
    ) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last} must be >= 1")
        self.root = Path(root)
        self.keep_last = keep_last
        self.key = key

    @staticmethod
    def name(step: int) -> str:
        return f"step-{step:06d}"

    def tmp_path(self, step: int) -> Path:
        return self.root / f".tmp-{self.name(step)}"

    def begin(self, step: int, clean: bool = True) -> Path:
        """The temporary directory for ``step``; with clean, a leftover one is emptied
        (call clean=True from one process only, before the others write)."""
        tmp = self.tmp_path(step)
        if clean and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, with every entry checked: a ``dir`` outside ``step-NNNNNN`` or a
        file path leaving its directory is refused, never followed or removed."""
        path = self.root / MANIFEST
        if not path.exists():
            return {"format": FORMAT, "checkpoints": []}
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("checkpoints"), list):
            raise ValueError(f"{path}: not a gosok checkpoint manifest")
        if self.key is not None and not (
            isinstance(manifest.get("hmac"), str)
            and hmac.compare_digest(manifest["hmac"], _mac(self.key, manifest))
        ):
            raise UnauthenticatedCheckpointError(
                f"{path}: not written with this job's checkpoint key (edited, or written by "
                "someone else); refusing to load any checkpoint it lists"
            )
        for entry in manifest["checkpoints"]:
            problem = _entry_problem(entry)
            if problem:
                raise ValueError(f"{path}: {problem}")
        return manifest

    def commit(self, step: int, meta: dict[str, Any] | None = None) -> CheckpointEntry:
        tmp = self.tmp_path(step)
        if not tmp.is_dir():
            raise FileNotFoundError(f"no checkpoint being written for step {step} ({tmp})")
        files = {
            str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        final = self.root / self.name(step)
        manifest = self.read_manifest()
        entries = [e for e in manifest["checkpoints"] if e["step"] != step]
        if final.exists():  # written by an attempt that died before its manifest update
            shutil.rmtree(final)
        os.replace(tmp, final)
        entry = {
            "step": step,
            "dir": final.name,
            "files": files,
            "meta": dict(meta or {}),
            "created_unix": time.time(),
        }
        entries = sorted([*entries, entry], key=lambda e: e["step"])
        kept, dropped = entries[-self.keep_last :], entries[: -self.keep_last]
        manifest.update(format=FORMAT, checkpoints=kept, latest_step=kept[-1]["step"])
        manifest.pop("hmac", None)
        if self.key is not None:
            manifest["hmac"] = _mac(self.key, manifest)
        atomic_write_bytes(self.root / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        for old in dropped:
            shutil.rmtree(self.root / old["dir"], ignore_errors=True)
        self._remove_stale_tmp(keep=None)
        return self._entry(entry)

    def _remove_stale_tmp(self, keep: Path | None) -> None:
        for tmp in self.root.glob(".tmp-step-*"):
            if tmp != keep:
                shutil.rmtree(tmp, ignore_errors=True)

    def _entry(self, raw: dict[str, Any]) -> CheckpointEntry:
        return CheckpointEntry(
            raw["step"], self.root / raw["dir"], raw["files"], raw["meta"], raw["created_unix"]
        )

    def entries(self) -> list[CheckpointEntry]:
        return [self._entry(e) for e in self.read_manifest()["checkpoints"]]

    def verify(self, entry: CheckpointEntry, names: list[str] | None = None) -> bool:
        """Every file (or only ``names``: a rank checks the shards it reads) matches its
        sha256 in the manifest."""
        wanted = entry.files if names is None else {n: entry.files.get(n) for n in names}
        try:
            return all(
                h is not None and file_sha256(entry.path / n) == h for n, h in wanted.items()
            )
        except OSError:
            return False

    def entry(self, step: int) -> CheckpointEntry | None:
        return next((e for e in self.entries() if e.step == step), None)

    def resume_point(self) -> CheckpointEntry | None:
        """The step a restarted job resumes from, decided once (by the driver): the newest
        checkpoint whose files are all present. Reading sizes only, it costs the same at
        4,080 ranks as at 4; each rank then hashes just what it loads."""
        for entry in reversed(self.entries()):
            if all((entry.path / name).is_file() for name in entry.files):
                return entry
        return None

    def latest(self, verify: bool = True) -> CheckpointEntry | None:
        """The newest checkpoint in the manifest whose files are all present and intact."""
        for entry in reversed(self.entries()):
            if not verify or self.verify(entry):
                return entry
        return None


STEP_DIR = re.compile(r"^step-\d{6,}$")


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
        return f"malformed checkpoint entry {entry!r}"
    if entry.get("dir") != CheckpointStore.name(entry["step"]) or not STEP_DIR.match(entry["dir"]):
        return f"checkpoint dir {entry.get('dir')!r} is not step-NNNNNN of step {entry['step']}"
    files = entry.get("files")
    if not isinstance(files, dict):
        return f"checkpoint {entry['dir']}: malformed file list"
    for name in files:
        parts = Path(str(name)).parts
        if not parts or Path(str(name)).is_absolute() or ".." in parts:
            return f"checkpoint {entry['dir']}: file path {name!r} leaves its directory"
    return None


def disk_full(root: str | os.PathLike[str], err: BaseException) -> str | None:
    """Why a checkpoint write failed when the cause is a full disk (the error says so, or
    the storage is all but full), else None."""
    code = getattr(err, "errno", None)
    try:
        usage = shutil.disk_usage(root)
    except OSError:
        usage = None
    nearly = usage is not None and usage.free < max(FULL_SLACK_BYTES, usage.total // 200)
    if code not in (errno.ENOSPC, errno.EDQUOT) and not nearly:
        return None
    room = f" ({usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB)" if usage else ""
    return f"No space left on device: {root}{room}"


def save_state(store: CheckpointStore, step: int, state: dict[str, Any], meta: dict) -> Path:
    """Single-writer save of a torch state dict (the DDP path)."""
    import torch

    tmp = store.begin(step)
    torch.save(state, tmp / "state.pt")
    os.chmod(tmp / "state.pt", 0o600)
    return store.commit(step, meta).path


def load_state(entry: CheckpointEntry) -> dict[str, Any]:
    import torch

    return torch.load(entry.path / "state.pt", map_location="cpu", weights_only=True)
