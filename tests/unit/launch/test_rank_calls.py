"""A benchmark rank's call channel, without Ray: a rank serving calls on one end of a
socketpair (as the node agent holds the other), descriptors passed with a message, and the
framing's limits."""

from __future__ import annotations

import os
import pickle
import socket
import threading

import pytest

from gosok.launcher.ranks import forked, workers

RANK_ENV = {
    "RANK": "3",
    "LOCAL_RANK": "1",
    "GROUP_RANK": "1",
    "WORLD_SIZE": "4",
    "LOCAL_WORLD_SIZE": "2",
    "GOSOK_NODE_ID": "node-b",
}


def where(ctx, extra):
    return (ctx.rank, ctx.local_rank, ctx.node_rank, ctx.world_size, ctx.node_id, extra)


def fails(ctx):
    raise KeyError(f"rank {ctx.rank} has no such key")


def unpicklable(ctx):
    return threading.Lock()


def call(sock, fn, *args):
    forked.send_message(sock, pickle.dumps((fn, args, {})))
    return pickle.loads(forked.read_message(sock))


@pytest.fixture
def rank(monkeypatch):
    for key, value in RANK_ENV.items():
        monkeypatch.setenv(key, value)
    ours, theirs = socket.socketpair()
    served = threading.Thread(target=workers.serve, args=(theirs.detach(),), daemon=True)
    served.start()
    yield ours
    ours.close()
    served.join(10)
    assert not served.is_alive(), "the rank did not end when its channel closed"


def test_a_call_runs_with_the_ranks_context(rank):
    ok, value, text = call(rank, where, "x")
    assert ok and text == ""
    assert value == (3, 1, 1, 4, "node-b", "x")


def test_a_failure_comes_back_with_its_type_and_traceback(rank):
    ok, value, text = call(rank, fails)
    assert not ok and isinstance(value, KeyError) and "rank 3" in str(value)
    assert "fails" in text and "KeyError" in text
    ok, value, _ = call(rank, where, 1)  # the rank serves on
    assert ok and value[-1] == 1


def test_a_result_that_does_not_pickle_is_an_error_not_a_dead_rank(rank):
    ok, value, text = call(rank, unpicklable)
    assert not ok and "pickle" in f"{value}{text}".lower()
    assert call(rank, where, 2)[0]


def test_a_descriptor_travels_with_a_message():
    ours, theirs = socket.socketpair()
    read_end, write_end = os.pipe()
    try:
        forked.send_message(ours, b"with a channel", [write_end])
        passed: list[int] = []
        assert forked.read_message(theirs, passed) == b"with a channel"
        assert len(passed) == 1 and passed[0] != write_end
        os.write(passed[0], b"through the passed copy")
        os.close(passed[0])
        assert os.read(read_end, 100) == b"through the passed copy"
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        ours.close()
        theirs.close()


def test_framing_ends_cleanly_and_refuses_oversized_messages():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        forked.send_message(ours, b"x" * 100)
        with pytest.raises(ValueError, match="over 10"):
            forked.read_message(theirs, limit=10)
    ours, theirs = socket.socketpair()
    with theirs:
        ours.close()
        assert forked.read_message(theirs) is None
        assert forked.read_message(theirs, []) is None
