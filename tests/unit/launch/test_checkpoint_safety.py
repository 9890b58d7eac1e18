"""Checkpoints are data: the manifest cannot send gosok outside its directory, states load
with ``weights_only=True``, files are private, and stale build locks are cleared."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from gosok.launcher.launch.checkpoint import CheckpointStore, load_state, save_state
from gosok.launcher.recipe.train import STALE_LOCK_S, clear_stale_build_locks


def test_state_round_trip_is_weights_only_and_private(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    model = torch.nn.Linear(3, 2)
    optim = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optim.step()
    save_state(store, 10, {"model": model.state_dict(), "optim": optim.state_dict()}, {})
    entry = store.latest()
    assert entry is not None and entry.step == 10
    assert (entry.path / "state.pt").stat().st_mode & 0o077 == 0
    state = load_state(entry)
    assert torch.equal(state["model"]["weight"], model.state_dict()["weight"])


def test_code_in_a_checkpoint_is_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    tmp = store.begin(5)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    torch.save({"x": Payload()}, tmp / "state.pt")
    entry = store.commit(5, {})
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_state(entry)
    assert not (tmp_path / "owned").exists()


@pytest.mark.parametrize(
    "entry",
    [
        {"step": 1, "dir": "../../etc", "files": {}, "meta": {}, "created_unix": 0},
        {"step": 1, "dir": "step-000002", "files": {}, "meta": {}, "created_unix": 0},
        {"step": 1, "dir": "step-000001", "files": {"../x": "0"}, "meta": {}, "created_unix": 0},
        {"step": "1", "dir": "step-000001", "files": {}, "meta": {}, "created_unix": 0},
    ],
)
def test_manifest_entries_outside_their_directory_are_refused(tmp_path, entry):
    (tmp_path / "manifest.json").write_text(json.dumps({"checkpoints": [entry]}))
    with pytest.raises(ValueError):
        CheckpointStore(tmp_path).latest()


def test_stale_extension_locks_are_cleared(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    old = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "py311_cpu" / "other_op" / "lock"
    for lock in (old, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    past = time.time() - STALE_LOCK_S - 60
    os.utime(old, (past, past))
    assert clear_stale_build_locks() == [old]
    assert fresh.exists() and not old.exists()


def test_resume_is_decided_once_and_ranks_verify_only_their_files(tmp_path, monkeypatch):
    from gosok.launcher.recipe.train import RESUME_ENV, resume_entry

    store = CheckpointStore(tmp_path, keep_last=3)
    for step in (10, 20):
        tmp = store.begin(step)
        for rank in range(2):
            (tmp / f"shard-{rank}.pt").write_bytes(f"{step}-{rank}".encode())
        store.commit(step, {})
    (tmp_path / "step-000020" / "shard-1.pt").unlink()  # half of the newest is gone
    assert store.resume_point().step == 10  # the driver's choice: sizes, no hashing
    monkeypatch.setenv(RESUME_ENV, "10")
    assert resume_entry(store, ["shard-0.pt"]).step == 10
    (tmp_path / "step-000010" / "shard-1.pt").write_bytes(b"damaged")
    assert resume_entry(store, ["shard-0.pt"]).step == 10  # rank 0 reads only its shard
    with pytest.raises(RuntimeError, match="damaged"):
        resume_entry(store, ["shard-1.pt"])
    monkeypatch.setenv(RESUME_ENV, "0")
    assert resume_entry(store, ["shard-0.pt"]) is None


def test_a_full_disk_is_told_apart_from_other_write_errors(tmp_path):
    import errno

    from gosok.launcher.launch.checkpoint import disk_full

    said = disk_full(tmp_path, OSError(errno.ENOSPC, "No space left on device"))
    assert said.startswith(f"No space left on device: {tmp_path}") and "MiB free of" in said
    # torch.save reports a full disk as a RuntimeError; a roomy disk means another cause
    assert disk_full(tmp_path, RuntimeError("unexpected pos 576 vs 534")) is None
    assert disk_full(tmp_path, PermissionError(errno.EACCES, "denied")) is None


def test_a_manifest_rewritten_without_the_jobs_key_is_refused_before_any_file_opens(tmp_path):
    """Whoever can write the checkpoint storage replaces a state file with a pickle that runs
    code and rewrites the manifest's hashes to match: the resume refuses the manifest,
    naming it, and nothing runs (even a loader that would unpickle never sees the file)."""
    from gosok.launcher.launch.checkpoint import (
        UnauthenticatedCheckpointError,
        checkpoint_key,
        file_sha256,
    )

    storage, state = tmp_path / "ckpt", tmp_path / "state"
    key = checkpoint_key(storage, state)
    assert len(key) == 32 and checkpoint_key(storage, state) == key
    assert checkpoint_key(tmp_path / "other", state) != key
    assert (state / "checkpoint-keys").stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (state / "checkpoint-keys").iterdir())
    store = CheckpointStore(storage, key=key)
    save_state(store, 10, {"w": torch.ones(2)}, {})
    assert CheckpointStore(storage, key=key).latest().step == 10
    manifest = json.loads((storage / "manifest.json").read_text())
    assert "hmac" in manifest

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    planted = storage / "step-000010" / "state.pt"
    torch.save({"x": Payload()}, planted)
    manifest["checkpoints"][0]["files"]["state.pt"] = file_sha256(planted)
    (storage / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnauthenticatedCheckpointError, match="manifest.json"):
        CheckpointStore(storage, key=key).latest()
    with pytest.raises(UnauthenticatedCheckpointError):
        CheckpointStore(storage, key=checkpoint_key(tmp_path / "other", state)).entries()
    assert not (tmp_path / "owned").exists()
    # plain torchrun (no key from gosok's driver): as before, hashes only
    assert CheckpointStore(storage).latest().step == 10


def test_the_key_reaches_ranks_only_in_memory_and_leaves_their_environment(monkeypatch):
    from gosok.launcher.launch.checkpoint import KEY_ENV, key_from_env

    monkeypatch.setenv(KEY_ENV, "ab" * 32)
    assert key_from_env() == bytes.fromhex("ab" * 32)
    assert KEY_ENV not in os.environ
    from gosok.launcher.config.secrets import is_secret_name

    assert is_secret_name(KEY_ENV)
