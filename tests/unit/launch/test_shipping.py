"""Code shipped to nodes: packed once, unpacked once per node, sized and sanitised."""

from __future__ import annotations

import pytest

from gosok.launcher.ranks.shipping import Bundle, ShippingError, pack, unpack


def test_round_trip_skips_caches_and_links(tmp_path):
    src = tmp_path / "job"
    (src / "pkg").mkdir(parents=True)
    (src / "train.py").write_text("print('hi')\n")
    (src / "pkg" / "util.py").write_text("X = 1\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "junk.pyc").write_bytes(b"x")
    (src / "link.py").symlink_to(src / "train.py")
    bundle = pack(src)
    assert bundle.files == 2 and pack(src).sha256 == bundle.sha256  # reproducible
    root = tmp_path / "node-cache"
    root.mkdir()
    out = unpack(bundle, root)
    assert (out / "train.py").read_text() == "print('hi')\n"
    assert (out / "pkg" / "util.py").exists() and not (out / "__pycache__").exists()
    assert unpack(bundle, root) == out


def test_too_large_and_damaged_bundles_are_refused(tmp_path):
    src = tmp_path / "job"
    src.mkdir()
    (src / "data.bin").write_bytes(b"0" * 4096)
    with pytest.raises(ShippingError, match="MiB"):
        pack(src, limit=1024)
    bundle = pack(src)
    with pytest.raises(ShippingError, match="damaged"):
        unpack(Bundle(bundle.sha256, bundle.data[:-3], 1), tmp_path)


def test_gosokignore_narrows_and_the_refusal_names_the_fixes(tmp_path):
    src = tmp_path / "job"
    (src / "data" / "shards").mkdir(parents=True)
    (src / "train.py").write_text("print('hi')\n")
    (src / "data" / "shards" / "big.bin").write_bytes(b"0" * 8192)
    (src / "notes.ckpt").write_bytes(b"0" * 4096)
    with pytest.raises(ShippingError) as refused:
        pack(src, limit=4096)
    said = str(refused.value)
    assert "data (0.0 MiB)" in said and ".gosokignore" in said and "job.code_dir" in said
    (src / ".gosokignore").write_text("# data stays on shared storage\ndata/\n*.ckpt\n")
    bundle = pack(src, limit=4096)
    assert bundle.files == 2  # train.py and .gosokignore
    assert set(bundle.left_out) == {"data/", "notes.ckpt"}


def test_credentials_never_ship(tmp_path):
    src = tmp_path / "job"
    (src / ".ssh").mkdir(parents=True)
    (src / ".ssh" / "id_ed25519").write_text("secret")
    for name in (".env", ".env.local", ".netrc", "provider.key", "tls.pem", "train.py"):
        (src / name).write_text("x")
    (src / ".gosokignore").write_text("!provider.key\n")  # cannot be brought back
    bundle = pack(src)
    assert bundle.files == 2  # train.py, .gosokignore
    assert {".ssh/", ".env", ".env.local", ".netrc", "provider.key", "tls.pem"} <= set(
        bundle.left_out
    )


def test_from_a_shared_temp_directory_only_the_script_is_shipped(tmp_path):
    import os

    from gosok.launcher.ranks.shipping import is_shared_temp

    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    (shared / "probe.py").write_text("print('probe')\n")
    (shared / "someone-elses.bin").write_bytes(b"0" * 8192)
    assert is_shared_temp(shared) and not is_shared_temp(tmp_path)
    bundle = pack(shared, limit=4096, only=[shared / "probe.py"])
    assert bundle.files == 1
