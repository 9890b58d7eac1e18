"""The driver's watch over node reports, the node's report over its ranks, and the
in-process progress sampler: no Ray, no cluster."""

from __future__ import annotations

import threading
import time

import pytest

from gosok.launcher.launch.monitor import GroupWatch, WatchPolicy
from gosok.launcher.launch.supervisor import normalised
from gosok.launcher.ranks import progress
from gosok.launcher.ranks.node_report import NodeReporter


def answer(rank, step=None, tick=None, entered=0, inflight="", code=None, output=""):
    return {
        "rank": rank,
        "pid": 100 + rank,
        "returncode": code,
        "exit_unix": 5.0 if code is not None else None,
        "beat": {"step": step, "unix": 1.0} if step is not None else None,
        "progress": {"tick": tick, "entered": entered, "inflight": inflight},
        "output": output,
    }


def node(ranks, **kw):
    reporter = NodeReporter()
    for rank in ranks:
        reporter.add(answer(rank, **kw))
    return reporter


def watch(nodes=2, per_node=2, **policy):
    return GroupWatch(WatchPolicy(world=nodes * per_node, **policy), nodes, now=0.0)


def test_a_node_is_lost_only_after_several_missed_reports():
    w = watch(missed_reports=3)
    healthy = node([0, 1], tick=1).report()
    assert w.observe({0: healthy}, {}, 1.0) is None
    assert w.observe({0: healthy}, {}, 2.0) is None
    verdict = w.observe({0: healthy}, {}, 3.0)
    assert verdict.kind == "lost" and list(verdict.lost) == [1]
    assert "3 reports missed" in verdict.lost[1]


def test_a_report_resets_the_missed_count_and_a_death_is_lost_at_once():
    w = watch(missed_reports=2)
    a, b = node([0, 1], tick=1), node([2, 3], tick=1)
    assert w.observe({0: a.report()}, {}, 1.0) is None
    assert w.observe({0: a.report(), 1: b.report()}, {}, 2.0) is None
    assert w.observe({0: a.report()}, {}, 3.0) is None
    verdict = w.observe({0: a.report()}, {1: "its node agent is gone"}, 3.5)
    assert verdict.kind == "lost" and verdict.lost == {1: "its node agent is gone"}


def test_every_rank_exiting_zero_is_ok_and_the_earliest_failure_wins():
    w = watch()
    assert w.observe({0: node([0, 1], code=0).report()}, {}, 1.0) is None
    assert w.observe({1: node([2, 3], code=0).report()}, {}, 1.5).kind == "ok"
    w = watch()
    first, later = NodeReporter(), NodeReporter()
    first.add({**answer(0, code=1), "exit_unix": 9.0})
    first.add(answer(1, code=None))
    later.add({**answer(2, code=3), "exit_unix": 4.0})
    later.add(answer(3))
    verdict = w.observe({0: first.report(), 1: later.report()}, {}, 1.0)
    assert (verdict.kind, verdict.rank, verdict.code) == ("exit", 2, 3)


def test_hang_names_the_rank_that_never_entered_the_collective():
    w = watch(hang_timeout_s=10.0)
    a, b = NodeReporter(), NodeReporter()
    # ranks 0, 2, 3 wait in their 5th all_reduce; rank 1 sleeps after its 4th
    a.add(answer(0, tick=7, entered=5, inflight="all_reduce"))
    a.add(answer(1, tick=4, entered=4))
    b.add(answer(2, tick=7, entered=5, inflight="all_reduce"))
    b.add(answer(3, tick=7, entered=5, inflight="all_reduce"))
    assert w.observe({0: a.report(), 1: b.report()}, {}, 1.0) is None
    for now in range(2, 11):
        assert w.observe({0: a.report(), 1: b.report()}, {}, float(now)) is None
    verdict = w.observe({0: a.report(), 1: b.report()}, {}, 11.5)
    assert verdict.kind == "hang" and verdict.rank == 1 and verdict.stuck_for_s > 10


def test_progress_on_any_rank_and_finished_ranks_are_not_hangs():
    w = watch(nodes=1, per_node=2, hang_timeout_s=5.0)
    r = NodeReporter()
    r.add(answer(0, code=0))  # finished long ago: never "behind"
    for now in range(1, 30):
        r.add(answer(1, tick=now, entered=1))  # still moving (e.g. a long save writing)
        assert w.observe({0: r.report()}, {}, float(now)) is None
    assert r.report()["behind"]["rank"] == 1


def test_no_hang_before_armed_but_beating_jobs_have_a_startup_timeout():
    w = watch(nodes=1, hang_timeout_s=1.0, startup_timeout_s=50.0)
    quiet = node([0, 1], tick=1)
    for now in range(1, 50):
        assert w.observe({0: quiet.report()}, {}, float(now)) is None
    assert w.observe({0: quiet.report()}, {}, 51.0).kind == "startup_timeout"


def test_node_report_carries_new_output_once_and_exits_always():
    r = NodeReporter()
    r.add(answer(0, output="a\n"))
    r.add(answer(0, output="b\n"))
    first = r.report()
    assert first["output"] == {0: "a\nb\n"}
    r.add(answer(0, code=0))
    second = r.report()
    assert second["output"] == {} and second["exited"] == {0: [0, 5.0]}
    assert r.report()["exited"] == {0: [0, 5.0]}


def test_signatures_ignore_pids_ports_addresses_and_times():
    one = normalised("RuntimeError: [127.0.0.1]:29500 pid 4242 at 0x7f12ab 12:01:33.5")
    two = normalised("RuntimeError: [10.0.0.12]:41133 pid 977 at 0x55aa01 13:44:02.1")
    assert one == two
    assert normalised("KeyError: 'x'") != normalised("KeyError: 'y'")


def test_sampler_sees_stack_moves_and_stops_when_the_thread_blocks(tmp_path):
    path = tmp_path / "progress"
    stop = threading.Event()
    ready = threading.Event()

    def blocked():
        ready.set()
        stop.wait()

    thread = threading.Thread(target=blocked)
    thread.start()
    ready.wait()
    time.sleep(0.05)
    sampler = progress.Sampler(str(path), thread.ident)
    try:
        assert sampler.sample()  # first sample: a change
        assert not any(sampler.sample() for _ in range(5))  # blocked: one stack
        assert sampler.tick == 1 and path.read_text().startswith('{"tick": 1')
    finally:
        stop.set()
        thread.join()


def test_collectives_are_counted_once_wrapped():
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not built")
    import os

    import torch

    assert progress.wrap_collectives()
    assert getattr(dist.all_reduce, "__gosok_counted__", False)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        before = progress.counts()[0]
        dist.all_reduce(torch.ones(2))
        dist.barrier()
        entered, done, inflight = progress.counts()
        assert entered - before == 2 and done == entered and inflight == ""
    finally:
        dist.destroy_process_group()


def test_a_long_save_moves_while_it_writes_and_stops_moving_when_it_stalls(tmp_path):
    stop = threading.Event()
    ready = threading.Event()

    def save_checkpoint():  # stands for torch.save blocked in one C call while it writes
        ready.set()
        stop.wait()

    thread = threading.Thread(target=save_checkpoint)
    thread.start()
    ready.wait()
    time.sleep(0.05)
    sampler = progress.Sampler(str(tmp_path / "progress"), thread.ident)
    try:
        assert progress.saving(thread.ident)
        sampler.sample()
        with open(tmp_path / "data", "wb") as handle:
            for _ in range(3):
                handle.write(b"x" * 4096)
                handle.flush()
                assert sampler.sample()  # the same stack, but bytes went out
        assert not sampler.sample()  # nothing written since: no progress
    finally:
        stop.set()
        thread.join()


def test_a_job_that_beats_is_watched_for_hangs_only_from_its_first_beat():
    w = watch(nodes=1, hang_timeout_s=5.0, startup_timeout_s=100.0)
    building = node([0, 1], tick=1, entered=3)  # a collective, then minutes in one build
    for now in range(1, 60):
        assert w.observe({0: building.report()}, {}, float(now)) is None
    for rank in (0, 1):
        building.add(answer(rank, step=1, tick=2, entered=4))  # the first beat
    assert w.observe({0: building.report()}, {}, 60.0) is None
    assert w.observe({0: building.report()}, {}, 66.0).kind == "hang"
