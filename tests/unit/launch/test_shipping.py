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
