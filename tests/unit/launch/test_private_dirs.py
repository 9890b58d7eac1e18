"""Per-user directories in a shared /tmp: made 0700, and one that another user made first
(or loosened, or replaced by a symlink) is refused, never used."""

from __future__ import annotations

import os

import pytest

from gosok.launcher.ranks import shipping
from gosok.launcher.ranks.private import UnsafeDirectoryError, private_dir


def test_made_private_and_reused(tmp_path):
    path = private_dir(tmp_path / "a" / "b")
    assert path.stat().st_mode & 0o777 == 0o700
    assert private_dir(path) == path


def test_one_of_ours_that_others_could_write_is_set_aside(tmp_path):
    loose = tmp_path / "gosok-ranks"
    loose.mkdir()
    os.chmod(loose, 0o777)
    (loose / "planted.py").write_text("print('planted')\n")
    fresh = private_dir(loose)
    assert fresh.stat().st_mode & 0o777 == 0o700 and not list(fresh.iterdir())
    assert len(list(tmp_path.glob("gosok-ranks.unsafe-*"))) == 1


@pytest.mark.parametrize("how", ["symlink", "other-owner"])
def test_a_planted_directory_is_refused(tmp_path, how):
    planted = tmp_path / "gosok-code"
    if how == "symlink":
        (tmp_path / "elsewhere").mkdir()
        planted.symlink_to(tmp_path / "elsewhere")
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to make a directory another uid owns")
        planted.mkdir()
        os.chmod(planted, 0o777)
        os.chown(planted, 65534, 65534)
    with pytest.raises(UnsafeDirectoryError, match="gosok-code"):
        private_dir(planted)


def test_the_code_cache_never_uses_planted_code(tmp_path, monkeypatch):
    monkeypatch.setattr(shipping.tempfile, "gettempdir", lambda: str(tmp_path))
    planted = tmp_path / f"gosok-code-{os.getuid()}"
    (planted / "abc").mkdir(parents=True)
    (planted / "abc" / ".complete").touch()
    os.chmod(planted, 0o777)
    root = shipping.cache_root()
    assert root == planted and not (root / "abc").exists()


def test_the_state_dir_is_checked_on_every_use(tmp_path, monkeypatch):
    """The state dir holds cluster records, tokens and checkpoint keys: made 0700, one of
    ours left open by an older gosok is tightened (its contents kept), a symlink refused."""
    from gosok.launcher.cluster.local import state_dir

    state = tmp_path / "state"
    monkeypatch.setenv("GOSOK_STATE_DIR", str(state))
    assert state_dir() == state and state.stat().st_mode & 0o777 == 0o700
    (state / "checkpoint_key").write_text("kept")
    os.chmod(state, 0o755)
    assert state_dir() == state and state.stat().st_mode & 0o777 == 0o700
    assert (state / "checkpoint_key").read_text() == "kept"
    link = tmp_path / "link"
    link.symlink_to(state)
    monkeypatch.setenv("GOSOK_STATE_DIR", str(link))
    with pytest.raises(UnsafeDirectoryError, match="link"):
        state_dir()
