"""The supervisor's driver at scale: driver CPU per second and detection latency, with 510
simulated nodes x 8 ranks (the defaults), in one run, no cluster.

Run: ``python -m gosok.benchmarks.overhead.supervisor [--nodes 510 --ranks-per-node 8]``.
Writes JSON (``--out``, default benchmarks/results/cpu/supervisor_sim.json).

1. Driver CPU, two designs side by side on the same simulated ranks, polls interleaved:

   - per-node (gosok now, ``RankGroup.poll``): each node's agent folds its ranks' answers
     into one report (real ``NodeReporter`` objects, not charged to the driver); the
     driver decodes one message per node and runs ``GroupWatch.observe``;
   - per-rank (one call per rank): the driver decodes one answer per rank, folds them
     itself (a ``NodeReporter`` per node) and runs ``GroupWatch.observe``.

   ``pickle.loads`` of messages pickled outside the timed region stands in for the
   transport's decode. Driver CPU is ``time.thread_time()`` around the driver's part only;
   median over ``--polls`` after ``--warmup`` polls. Driver CPU per second = CPU per poll /
   poll_s (a fraction of one core).

2. Detection latency of the per-node driver in virtual time (a clock advancing poll_s per
   poll, poll_s + report_timeout_s when a node is silent, as the real driver waits that
   long for a late report). Each fault happens right after a poll (t0); latency = virtual
   time of the verdict - t0. Scenarios: a node goes silent (link cut), a node's agent dies,
   a rank exits 1, the job hangs (every rank waits in a collective that one rank never
   entered). The verdict must name the right node or rank, else this exits 1.
"""

from __future__ import annotations

import argparse
import math
import pickle
import platform
import statistics
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from gosok.launcher.config.launch_schema import FaultConfig
from gosok.launcher.launch.monitor import GroupWatch, Verdict, WatchPolicy
from gosok.launcher.ranks.fingerprint import cpu_model
from gosok.launcher.ranks.node_report import NodeReporter
from gosok.launcher.results.store import write_results

UNIX0 = 1.7e9  # the simulated wall clock at virtual time 0
METHOD = (
    "simulation in one process: no Ray transport, no network, no rank processes. Each poll "
    "every simulated rank produces a poll_rank-shaped answer (heartbeat with step and two "
    "metrics, a progress record, returncode None, output: rank 0 a line each poll, every "
    "rank a line every 40 polls); all running ranks move every poll, the step every 2nd. "
    "per-node: real NodeReporter objects fold each node's answers into one report, pickled;"
    " this node-side work (fold + pickle.dumps) is timed apart, per node, and not charged "
    "to the driver. per-rank: each answer pickled. Timed with time.thread_time() around the"
    " driver's part only: pickle.loads of every message (standing in for the transport's "
    "decode), for per-rank the fold into one NodeReporter per node, then "
    "GroupWatch.observe; the two designs alternate which goes first each poll; median CPU "
    "over the timed polls. Not included: Ray's per-message cost (ray.wait / ray.get, object"
    " store, RPC), the per-rank bookkeeping around the fold, output writing. "
    "Detection latency: virtual clock, each poll lasting poll_s, or poll_s + "
    "report_timeout_s when a node is silent; a fault happens right after a poll (t0); a "
    "dead agent is reported at the next poll (Ray's own failure detection time is not "
    "modelled); latency = verdict time - t0."
)


@dataclass
class SimRank:
    rank: int
    node_id: str
    step: int = 0
    tick: int = 0
    entered: int = 0
    inflight: str = ""
    code: int | None = None
    exit_unix: float | None = None
    frozen: bool = False


class SimJob:
    """A job's ranks moving in lock step, read the way a node reads them (``poll_rank``)."""

    def __init__(self, nodes: int, per_node: int) -> None:
        self.nodes = nodes
        self.per_node = per_node
        self.ranks = [
            SimRank(r, f"{r // per_node:056x}") for r in range(nodes * per_node)
        ]  # a Ray node id is 56 hex digits
        self.polls = 0

    def advance(self) -> None:
        """One poll interval of work: two collectives, a step every second poll."""
        self.polls += 1
        for r in self.ranks:
            if r.frozen or r.code is not None:
                continue
            r.tick += 1
            r.entered += 2
            if self.polls % 2 == 0:
                r.step += 1

    def hang(self, stuck: int) -> None:
        """Every rank enters a collective and waits in it, but ``stuck`` never enters it."""
        for r in self.ranks:
            r.frozen = True
            r.tick += 1  # its stack moved once more, to where it now waits
            if r.rank != stuck:
                r.entered += 1
                r.inflight = "all_reduce"

    def exit(self, rank: int, code: int, unix: float) -> None:
        self.ranks[rank].code = code
        self.ranks[rank].exit_unix = unix

    def answer(self, r: SimRank, now: float) -> dict[str, Any]:
        unix = UNIX0 + now
        output = ""
        if r.rank == 0:
            output = f"step {r.step} loss {2.0 + 1.0 / (1 + r.step):.4f} tok/s 41234.5\n"
        elif r.rank % 40 == self.polls % 40:
            output = f"[rank {r.rank}] data loader: epoch shard {self.polls // 40}\n"
        return {
            "rank": r.rank,
            "node_id": r.node_id,
            "pid": 10_000 + r.rank,
            "returncode": r.code,
            "exit_unix": r.exit_unix,
            "beat": {"step": r.step, "unix": unix, "loss": 2.5, "tokens_per_s": 41234.5},
            "progress": {
                "tick": r.tick,
                "entered": r.entered,
                "done": r.entered - (1 if r.inflight else 0),
                "inflight": r.inflight,
                "saving": False,
                "unix": unix,
            },
            "output": output,
        }

    def node_answers(self, node: int, now: float) -> list[dict[str, Any]]:
        ranks = self.ranks[node * self.per_node : (node + 1) * self.per_node]
        return [self.answer(r, now) for r in ranks]


class NodeSide:
    """Every node's monitor: folds its ranks' answers into the report it sends (never
    charged to the driver)."""

    def __init__(self, nodes: int) -> None:
        self.reporters = [NodeReporter() for _ in range(nodes)]

    def messages(self, answers: dict[int, list[dict[str, Any]]]) -> dict[int, bytes]:
        out = {}
        for node, ranks in answers.items():
            reporter = self.reporters[node]
            for answer in ranks:
                reporter.add(answer)
            out[node] = pickle.dumps(reporter.report())
        return out


def answers_of(
    job: SimJob, now: float, skip: Collection[int] = ()
) -> dict[int, list[dict[str, Any]]]:
    return {n: job.node_answers(n, now) for n in range(job.nodes) if n not in skip}


class PerNodeDriver:
    """gosok now: one report per node."""

    def __init__(self, policy: WatchPolicy, nodes: int) -> None:
        self.watch = GroupWatch(policy, nodes, now=0.0)

    def poll(self, messages: dict[int, bytes], dead: dict[int, str], now: float) -> Verdict | None:
        reports = {node: pickle.loads(blob) for node, blob in messages.items()}
        return self.watch.observe(reports, dead, now)


class PerRankDriver:
    """The old design: one answer per rank, folded into node reports on the driver."""

    def __init__(self, policy: WatchPolicy, nodes: int, per_node: int) -> None:
        self.watch = GroupWatch(policy, nodes, now=0.0)
        self.per_node = per_node
        self.reporters = [NodeReporter() for _ in range(nodes)]

    def poll(self, messages: list[bytes], now: float) -> Verdict | None:
        for blob in messages:
            answer = pickle.loads(blob)
            self.reporters[answer["rank"] // self.per_node].add(answer)
        reports = {node: r.report() for node, r in enumerate(self.reporters)}
        return self.watch.observe(reports, {}, now)


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    started = time.thread_time()
    out = fn(*args)
    return out, time.thread_time() - started


def compare(job: SimJob, policy: WatchPolicy, poll_s: float, warmup: int, polls: int) -> dict:
    """Driver CPU per poll of both designs on the same answers, polls interleaved."""
    node_side = NodeSide(job.nodes)
    drivers = {
        "per_node": PerNodeDriver(policy, job.nodes),
        "per_rank": PerRankDriver(policy, job.nodes, job.per_node),
    }
    cpu: dict[str, list[float]] = {name: [] for name in drivers}
    sizes: dict[str, list[int]] = {name: [] for name in drivers}
    counts: dict[str, int] = {}
    node_cpu: list[float] = []  # per node: its monitor's fold and encode
    now = 0.0
    for index in range(warmup + polls):
        now += poll_s
        job.advance()
        by_node, node_seconds = timed(node_side.messages, answers_of(job, now))
        by_rank = [pickle.dumps(job.answer(r, now)) for r in job.ranks]
        calls = {"per_node": (by_node, {}, now), "per_rank": (by_rank, now)}
        order = list(calls) if index % 2 == 0 else list(calls)[::-1]
        for name in order:
            verdict, seconds = timed(drivers[name].poll, *calls[name])
            if verdict is not None:
                raise RuntimeError(f"{name}: a healthy job got a verdict: {verdict}")
            if index >= warmup:
                cpu[name].append(seconds)
        if index >= warmup:
            node_cpu.append(node_seconds / job.nodes)
        counts = {"per_node": len(by_node), "per_rank": len(by_rank)}
        sizes["per_node"].append(sum(map(len, by_node.values())))
        sizes["per_rank"].append(sum(map(len, by_rank)))
    out = {}
    for name in drivers:
        per_poll = statistics.median(cpu[name])
        out[name] = {
            "messages_per_poll": counts[name],
            "messages_per_s": counts[name] / poll_s,
            "bytes_per_poll": statistics.median(sizes[name]),
            "cpu_s_per_poll": per_poll,
            "cpu_s_per_poll_each": cpu[name],
            "cpu_fraction_per_s": per_poll / poll_s,
        }
    out["per_node"]["node_side_cpu_s_per_node_per_poll"] = statistics.median(node_cpu)
    return out


@dataclass(frozen=True)
class Fault:
    poll_s: float
    report_timeout_s: float
    missed_reports: int
    hang_timeout_s: float
    startup_timeout_s: float


def expected_latency(scenario: str, fault: Fault) -> float:
    if scenario == "node_silent":
        return fault.missed_reports * (fault.poll_s + fault.report_timeout_s)
    if scenario == "hang":  # the last move is seen one poll late; then strictly more than
        polls = math.floor(fault.hang_timeout_s / fault.poll_s + 1e-9) + 1
        return fault.poll_s + polls * fault.poll_s
    return fault.poll_s  # dead agent, rank exit: the next poll


def named(verdict: Verdict) -> str:
    if verdict.kind == "lost":
        return "node " + ",".join(map(str, sorted(verdict.lost)))
    if verdict.kind == "exit":
        return f"rank {verdict.rank} (code {verdict.code})"
    if verdict.kind == "hang":
        return f"rank {verdict.rank}"
    return "-"


def detect(scenario: str, nodes: int, per_node: int, fault: Fault, lead: int) -> dict:
    """Run a healthy job for ``lead`` polls, inject the fault, poll until a verdict."""
    policy = watch_policy(nodes * per_node, fault)
    job, node_side, driver = SimJob(nodes, per_node), NodeSide(nodes), PerNodeDriver(policy, nodes)
    node = nodes // 2
    exit_rank, stuck = node * per_node + per_node // 2, node * per_node + per_node - 1
    want = {
        "node_silent": ("lost", f"node {node}"),
        "node_dead": ("lost", f"node {node}"),
        "rank_exit": ("exit", f"rank {exit_rank} (code 1)"),
        "hang": ("hang", f"rank {stuck}"),
    }[scenario]
    limit = lead + 4 * math.ceil(expected_latency(scenario, fault) / fault.poll_s) + 10
    now, t0, cpu = 0.0, 0.0, []
    silent: set[int] = set()
    dead: dict[int, str] = {}
    for index in range(limit):
        if index == lead:
            t0 = now
            if scenario == "node_silent":
                silent = {node}
            elif scenario == "node_dead":
                dead = {node: "its node agent is gone (ActorDiedError)"}
            elif scenario == "rank_exit":
                job.exit(exit_rank, 1, UNIX0 + now)
            else:
                job.hang(stuck)
        now += fault.poll_s + (fault.report_timeout_s if silent else 0.0)
        job.advance()
        messages = node_side.messages(answers_of(job, now, skip=silent | set(dead)))
        verdict, seconds = timed(driver.poll, messages, dead, now)
        cpu.append(seconds)
        if verdict is not None:
            break
    else:
        raise RuntimeError(f"{scenario}: no verdict after {limit} polls")
    got = (verdict.kind, named(verdict))
    return {
        "verdict": verdict.kind,
        "named": got[1],
        "expected_verdict": want[0],
        "expected_named": want[1],
        "right": got == want and index >= lead,
        "latency_s": now - t0,
        "expected_latency_s": expected_latency(scenario, fault),
        "polls": index + 1,
        "cpu_s_per_poll": statistics.median(cpu),
    }


def watch_policy(world: int, fault: Fault) -> WatchPolicy:
    return WatchPolicy(
        world=world,
        missed_reports=fault.missed_reports,
        hang_timeout_s=fault.hang_timeout_s,
        startup_timeout_s=fault.startup_timeout_s,
    )


def print_table(scale: dict, fault: Fault, designs: dict, ratio: dict, scenarios: dict) -> None:
    print(
        f"supervisor driver, simulated: {scale['nodes']} nodes x {scale['ranks_per_node']} "
        f"ranks = {scale['world']} ranks; poll_s {fault.poll_s}; median of {scale['polls']} polls"
    )
    head = f"{'design':<10s}{'msgs/poll':>10s}{'msgs/s':>9s}{'KiB/poll':>10s}"
    print(f"{head}{'CPU ms/poll':>13s}{'driver CPU/s':>14s}")
    for name, d in designs.items():
        print(
            f"{name.replace('_', '-'):<10s}{d['messages_per_poll']:>10d}"
            f"{d['messages_per_s']:>9.0f}{d['bytes_per_poll'] / 1024:>10.1f}"
            f"{d['cpu_s_per_poll'] * 1e3:>13.2f}{d['cpu_fraction_per_s']:>14.1%}"
        )
    print(
        f"per-rank / per-node: {ratio['cpu']:.1f}x driver CPU, {ratio['messages']:.1f}x "
        f"messages, {ratio['bytes']:.1f}x bytes"
    )
    node_us = designs["per_node"]["node_side_cpu_s_per_node_per_poll"] * 1e6
    print(f"per-node: each node's own fold + encode {node_us:.0f} us per poll (not on the driver)")
    print()
    print("detection, per-node driver, virtual time")
    print(
        f"(report_timeout_s {fault.report_timeout_s}, missed_reports {fault.missed_reports}, "
        f"hang_timeout_s {fault.hang_timeout_s})"
    )
    print(
        f"{'scenario':<13s}{'verdict':<9s}{'names':<22s}{'latency s':>10s}{'expected s':>12s}"
        f"{'CPU ms/poll':>13s}{'polls':>7s}  right"
    )
    for name, s in scenarios.items():
        print(
            f"{name:<13s}{s['verdict']:<9s}{s['named']:<22s}{s['latency_s']:>10.2f}"
            f"{s['expected_latency_s']:>12.2f}{s['cpu_s_per_poll'] * 1e3:>13.2f}"
            f"{s['polls']:>7d}  {'yes' if s['right'] else 'NO, wanted ' + s['expected_named']}"
        )
    print("simulated: no Ray transport, no network; decode = pickle.loads; node-side folding")
    print("not charged to the driver (see 'method' in the JSON)")


def main(argv: list[str] | None = None) -> int:
    defaults = FaultConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=510)
    parser.add_argument("--ranks-per-node", type=int, default=8)
    parser.add_argument("--poll-s", type=float, default=defaults.poll_s)
    parser.add_argument("--report-timeout-s", type=float, default=defaults.report_timeout_s)
    parser.add_argument("--missed-reports", type=int, default=defaults.missed_reports)
    parser.add_argument("--hang-timeout-s", type=float, default=defaults.hang_timeout_s)
    parser.add_argument("--polls", type=int, default=40, help="timed polls per design")
    parser.add_argument("--warmup", type=int, default=3, help="untimed polls first")
    parser.add_argument("--lead-polls", type=int, default=10, help="healthy polls before a fault")
    parser.add_argument("--out", default="benchmarks/results/cpu/supervisor_sim.json")
    args = parser.parse_args(argv)
    if min(args.nodes, args.ranks_per_node, args.polls, args.missed_reports) < 1:
        parser.error("--nodes, --ranks-per-node, --polls and --missed-reports must be >= 1")
    if min(args.poll_s, args.report_timeout_s, args.hang_timeout_s) <= 0:
        parser.error("--poll-s, --report-timeout-s and --hang-timeout-s must be > 0")
    fault = Fault(
        poll_s=args.poll_s,
        report_timeout_s=args.report_timeout_s,
        missed_reports=args.missed_reports,
        hang_timeout_s=args.hang_timeout_s,
        startup_timeout_s=defaults.startup_timeout_s,
    )
    world = args.nodes * args.ranks_per_node
    scale = {"nodes": args.nodes, "ranks_per_node": args.ranks_per_node, "world": world}
    designs = compare(
        SimJob(args.nodes, args.ranks_per_node),
        watch_policy(world, fault),
        fault.poll_s,
        args.warmup,
        args.polls,
    )
    node, rank = designs["per_node"], designs["per_rank"]
    ratio = {
        "cpu": rank["cpu_s_per_poll"] / node["cpu_s_per_poll"],
        "messages": rank["messages_per_poll"] / node["messages_per_poll"],
        "bytes": rank["bytes_per_poll"] / node["bytes_per_poll"],
    }
    scenarios = {
        name: detect(name, args.nodes, args.ranks_per_node, fault, args.lead_polls)
        for name in ("node_silent", "node_dead", "rank_exit", "hang")
    }
    print_table({**scale, "polls": args.polls}, fault, designs, ratio, scenarios)
    right = all(s["right"] for s in scenarios.values())
    try:
        gosok_version = metadata.version("gosok")
    except metadata.PackageNotFoundError:
        gosok_version = None
    write_results(
        Path(args.out),
        {
            "kind": "supervisor_sim",
            "what": "the launch supervisor's driver against simulated nodes: driver CPU per "
            "poll and per second, per-node reports (gosok now) vs per-rank answers (the "
            "fallback), and detection latency of a silent node, a dead node, a failed rank "
            "and a hang",
            "device": "cpu",
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "software": {"gosok": gosok_version, "python": platform.python_version()},
            "settings": vars(args),
            "scale": scale,
            "policy": asdict(fault),
            "method": METHOD,
            "designs": designs,
            "ratio_per_rank_to_per_node": ratio,
            "scenarios": scenarios,
            "all_right": right,
        },
    )
    print(f"results: {args.out}")
    if not right:
        print("a verdict named the wrong node or rank", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
