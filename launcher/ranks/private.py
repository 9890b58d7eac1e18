"""Per-user directories on a shared node: only their owner may write there.

``/tmp`` is shared by every user of a login or compute node. A directory gosok keeps there
(unpacked code, a rank's working files) is created 0700, and an
existing one is used only when it is a real directory (not a symlink) owned by this user
with no access for anyone else; one of ours that others could write to is set aside and
made afresh; anything else is refused, naming it. Another user who
creates it first cannot plant code that gosok then runs.

A directory holding state worth keeping (the state dir with cluster records, tokens and
checkpoint keys; the default ledger's directory) is checked the same way on every use by
``own_dir``, but one of ours that others could reach is tightened to 0700 in place, not set
aside: what it holds is the user's.

Use: ``path = private_dir(Path("/tmp/gosok-code-1000"))``; ``own_dir(state_dir)``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from pathlib import Path

from gosok.launcher.errors import GosokError


class UnsafeDirectoryError(GosokError, PermissionError):
    """A per-user directory exists but someone else owns it or can write to it (the CLI
    prints it without a traceback, exit 1)."""


def private_dir(
    path: Path, set_aside: bool = True, hint: str = "or set TMPDIR to a directory of your own"
) -> Path:
    """``path`` created 0700 (with missing parents), or checked when it exists. One of ours
    that others could write to (an older gosok made it 0755, or it was loosened) is set
    aside, never trusted: renamed ``<name>.unsafe-<time>`` and made afresh (``set_aside=
    False``: refused like the others, for a directory the user named)."""
    if set_aside and os.path.lexists(path):
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
            with contextlib.suppress(FileNotFoundError):  # another rank set it aside first
                os.rename(path, path.with_name(f"{path.name}.unsafe-{time.time_ns()}"))
    if not os.path.lexists(path):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else f"uid {st.st_uid}"
        raise UnsafeDirectoryError(
            f"{path} must be a directory owned by uid {os.getuid()} with mode 0700, and it is "
            f"{kind}, mode {oct(stat.S_IMODE(st.st_mode))}: another user may have made it; "
            f"remove it ({hint})"
        )
    return path


def own_dir(path: Path, hint: str = "or name another directory of your own") -> Path:
    """``path`` created 0700, or checked when it exists; one of ours (not a symlink) that
    others could reach, as an older gosok left it, is tightened to 0700; anything else is
    refused (``UnsafeDirectoryError`` naming it)."""
    if not os.path.lexists(path):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return private_dir(path, set_aside=False, hint=hint)
