"""Collectives, nccl-tests style: one typed ``Collective`` record per operation with its
byte count, bus-bandwidth factor, buffers, run and check side by side, and the per-rank
measurement step.

Per nccl-tests (doc/PERFORMANCE.md):
- size: ``size_bytes`` is nccl-tests' size; for all_gather, reduce_scatter and
  all_to_all that is the full gathered buffer (per-rank chunk x nranks);
- bus-bandwidth factor: all_reduce 2(n-1)/n; all_gather, reduce_scatter, all_to_all
  (n-1)/n; broadcast, reduce, sendrecv 1.

``collective_step`` runs on every rank (through ``WorkerGroup.run``): for one op, dtype and
size, in each supported mode, it checks correctness once on fresh data (``#wrong``), warms
up, then times ``iters`` back-to-back calls after a barrier (``core.timing``) and returns
this rank's mean time per call. Importing this module does not import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gosok.benchmarks.core.registry import Registry
from gosok.benchmarks.core.timing import barrier, synchronize, time_back_to_back


class _Lazy:
    """A module imported on first attribute access (validation and plans stay torch-free)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


torch: Any = _Lazy("torch")
dist: Any = _Lazy("torch.distributed")
DTYPES = ("float32", "bfloat16", "float16")
MODES = ("out_of_place", "in_place")


def torch_dtype(name: str) -> Any:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def all_reduce_factor(n: int) -> float:
    return 2.0 * (n - 1) / n


def gather_factor(n: int) -> float:
    return (n - 1) / n


def unit_factor(n: int) -> float:
    return 1.0


@dataclass
class Buffers:
    send: Any  # torch.Tensor
    recv: Any


@dataclass
class Call:
    """Where this rank sits in the measured group."""

    group: Any
    members: list[int]
    group_rank: int
    root_group_rank: int

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def root(self) -> int:
        return self.members[self.root_group_rank]


def pattern(count: int, owner: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Small integers (-6..6) that depend on the owning rank: exact in every dtype, and a
    sum over ranks stays exact while |sum| <= 256 in bfloat16 (2048 in float16)."""
    idx = torch.arange(count, device=device, dtype=torch.int64)
    return ((idx * 3 + owner * 7) % 13 - 6).to(dtype)


def summed(count: int, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    total = torch.zeros(count, device=device, dtype=torch.float64)
    for owner in range(n):
        total += pattern(count, owner, torch.float64, device)
    return total


def count_wrong(got: torch.Tensor, expected: torch.Tensor, n: int) -> int:
    """Elements outside a dtype-aware tolerance (exact for float32 at these magnitudes)."""
    got64 = got.to(torch.float64)
    eps = torch.finfo(got.dtype).eps
    tolerance = eps * max(1, n) * expected.abs().clamp(min=1.0)
    bad = (got64 - expected).abs() > tolerance
    bad |= ~torch.isfinite(got64)
    return int(bad.sum().item())


# --- buffer layouts: (count, call, dtype, device, mode) -> Buffers ---------------------------


def same_buffer(count: int, call: Call, dtype, device, mode: str) -> Buffers:
    buf = torch.empty(count, dtype=dtype, device=device)
    return Buffers(buf, buf)


def gather_buffers(count: int, call: Call, dtype, device, mode: str) -> Buffers:
    chunk = count // call.n
    recv = torch.empty(count, dtype=dtype, device=device)
    if mode == "in_place":
        send = recv[call.group_rank * chunk : (call.group_rank + 1) * chunk]
    else:
        send = torch.empty(chunk, dtype=dtype, device=device)
    return Buffers(send, recv)


def scatter_buffers(count: int, call: Call, dtype, device, mode: str) -> Buffers:
    chunk = count // call.n
    send = torch.empty(count, dtype=dtype, device=device)
    if mode == "in_place":
        recv = send[call.group_rank * chunk : (call.group_rank + 1) * chunk]
    else:
        recv = torch.empty(chunk, dtype=dtype, device=device)
    return Buffers(send, recv)


def separate_buffers(count: int, call: Call, dtype, device, mode: str) -> Buffers:
    return Buffers(
        torch.empty(count, dtype=dtype, device=device),
        torch.empty(count, dtype=dtype, device=device),
    )


# --- the operations ---------------------------------------------------------------------------


def run_all_reduce(b: Buffers, call: Call) -> None:
    dist.all_reduce(b.recv, op=dist.ReduceOp.SUM, group=call.group)


def run_all_gather(b: Buffers, call: Call) -> None:
    all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    all_gather(b.recv, b.send, group=call.group)


def run_reduce_scatter(b: Buffers, call: Call) -> None:
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    reduce_scatter(b.recv, b.send, op=dist.ReduceOp.SUM, group=call.group)


def run_broadcast(b: Buffers, call: Call) -> None:
    dist.broadcast(b.recv, src=call.root, group=call.group)


def run_reduce(b: Buffers, call: Call) -> None:
    dist.reduce(b.recv, dst=call.root, op=dist.ReduceOp.SUM, group=call.group)


def run_all_to_all(b: Buffers, call: Call) -> None:
    dist.all_to_all_single(b.recv, b.send, group=call.group)


def run_sendrecv(b: Buffers, call: Call) -> None:
    """Ring of pairs: every rank sends to the next and receives from the previous."""
    nxt = call.members[(call.group_rank + 1) % call.n]
    prev = call.members[(call.group_rank - 1) % call.n]
    ops = [
        dist.P2POp(dist.isend, b.send, nxt, call.group),
        dist.P2POp(dist.irecv, b.recv, prev, call.group),
    ]
    for request in dist.batch_isend_irecv(ops):
        request.wait()


# --- fill before the check run, and count wrong after it -------------------------------------


def fill_all_reduce(b: Buffers, call: Call) -> None:
    b.recv.copy_(pattern(b.recv.numel(), call.group_rank, b.recv.dtype, b.recv.device))


def check_all_reduce(b: Buffers, call: Call) -> int:
    return count_wrong(b.recv, summed(b.recv.numel(), call.n, b.recv.dtype, b.recv.device), call.n)


def fill_all_gather(b: Buffers, call: Call) -> None:
    if b.send.data_ptr() != b.recv.data_ptr():
        b.recv.fill_(-100)
    b.send.copy_(pattern(b.send.numel(), call.group_rank, b.send.dtype, b.send.device))


def check_all_gather(b: Buffers, call: Call) -> int:
    chunk = b.recv.numel() // call.n
    expected = torch.cat([pattern(chunk, r, torch.float64, b.recv.device) for r in range(call.n)])
    return count_wrong(b.recv, expected, call.n)


def fill_reduce_scatter(b: Buffers, call: Call) -> None:
    b.send.copy_(pattern(b.send.numel(), call.group_rank, b.send.dtype, b.send.device))


def check_reduce_scatter(b: Buffers, call: Call) -> int:
    chunk = b.recv.numel()
    full = summed(chunk * call.n, call.n, b.recv.dtype, b.recv.device)
    return count_wrong(
        b.recv, full[call.group_rank * chunk : (call.group_rank + 1) * chunk], call.n
    )


def fill_broadcast(b: Buffers, call: Call) -> None:
    if call.group_rank == call.root_group_rank:
        b.recv.copy_(pattern(b.recv.numel(), call.root_group_rank, b.recv.dtype, b.recv.device))
    else:
        b.recv.fill_(-100)


def check_broadcast(b: Buffers, call: Call) -> int:
    expected = pattern(b.recv.numel(), call.root_group_rank, torch.float64, b.recv.device)
    return count_wrong(b.recv, expected, 1)


def check_reduce(b: Buffers, call: Call) -> int:
    if call.group_rank != call.root_group_rank:
        return 0  # only the root's buffer is defined after reduce
    return check_all_reduce(b, call)


def fill_all_to_all(b: Buffers, call: Call) -> None:
    b.recv.fill_(-100)
    b.send.copy_(pattern(b.send.numel(), call.group_rank, b.send.dtype, b.send.device))


def check_all_to_all(b: Buffers, call: Call) -> int:
    chunk = b.recv.numel() // call.n
    lo, hi = call.group_rank * chunk, (call.group_rank + 1) * chunk
    expected = torch.cat(
        [pattern(b.send.numel(), r, torch.float64, b.recv.device)[lo:hi] for r in range(call.n)]
    )
    return count_wrong(b.recv, expected, 1)


def fill_sendrecv(b: Buffers, call: Call) -> None:
    b.recv.fill_(-100)
    b.send.copy_(pattern(b.send.numel(), call.group_rank, b.send.dtype, b.send.device))


def check_sendrecv(b: Buffers, call: Call) -> int:
    prev = (call.group_rank - 1) % call.n
    return count_wrong(b.recv, pattern(b.recv.numel(), prev, torch.float64, b.recv.device), 1)


@dataclass(frozen=True)
class Collective:
    """One collective: how it counts, its buffers, how to run it once and to check it."""

    name: str
    description: str
    busbw_factor: Callable[[int], float]
    modes: tuple[str, ...]
    chunked: bool  # count must be a multiple of the group size
    redop: str
    rooted: bool
    min_ranks: int
    buffers: Callable[..., Buffers]
    fill: Callable[[Buffers, Call], None]
    run: Callable[[Buffers, Call], None]
    check: Callable[[Buffers, Call], int]

    def bytes_for(self, size_bytes: int, n: int) -> int:
        """Bytes the bandwidth is counted over: nccl-tests' size, whatever n is."""
        return size_bytes


COLLECTIVES: Registry[Collective] = Registry("collective")
IN, OUT = ("in_place",), ("out_of_place",)
for _record in (
    Collective(
        "all_reduce", "sum over all ranks, result everywhere", all_reduce_factor,
        IN, False, "sum", False, 1,
        same_buffer, fill_all_reduce, run_all_reduce, check_all_reduce,
    ),
    Collective(
        "all_gather", "each rank's chunk to every rank", gather_factor,
        MODES, True, "none", False, 1,
        gather_buffers, fill_all_gather, run_all_gather, check_all_gather,
    ),
    Collective(
        "reduce_scatter", "sum, each rank keeps one chunk", gather_factor,
        MODES, True, "sum", False, 1,
        scatter_buffers, fill_reduce_scatter, run_reduce_scatter, check_reduce_scatter,
    ),
    Collective(
        "broadcast", "root's buffer to every rank", unit_factor,
        IN, False, "none", True, 1,
        same_buffer, fill_broadcast, run_broadcast, check_broadcast,
    ),
    Collective(
        "reduce", "sum onto the root", unit_factor,
        IN, False, "sum", True, 1,
        same_buffer, fill_all_reduce, run_reduce, check_reduce,
    ),
    Collective(
        "all_to_all", "chunk j of rank i to rank j", gather_factor,
        OUT, True, "none", False, 1,
        separate_buffers, fill_all_to_all, run_all_to_all, check_all_to_all,
    ),
    Collective(
        "sendrecv", "ring of pairs: send to next, receive from previous", unit_factor,
        OUT, False, "none", False, 2,
        separate_buffers, fill_sendrecv, run_sendrecv, check_sendrecv,
    ),
):  # fmt: skip
    COLLECTIVES.add(_record.name, _record)


def element_count(size_bytes: int, element_size: int, n: int, chunked: bool) -> int:
    """nccl-tests' count for a size: whole elements, a multiple of n for chunked ops."""
    count = size_bytes // element_size
    if chunked:
        count -= count % n
    return count


def collective_step(
    ctx: Any,
    op: str,
    dtype: str,
    size_bytes: int,
    modes: list[str],
    warmup_iters: int,
    iters: int,
    check: bool,
    root: int,
    groups: list[list[int]],
) -> dict[str, Any]:
    """Measure one (op, dtype, size) on this rank's group; runs on every rank."""
    index, group = ctx.group_for(groups)
    if group is None:
        return {"group": None}
    members = groups[index]
    call = Call(group, members, members.index(ctx.rank), min(root, len(members) - 1))
    spec = COLLECTIVES[op]
    dtype_of = torch_dtype(dtype)
    device = ctx.torch_device()
    element_size = torch.tensor([], dtype=dtype_of).element_size()
    count = element_count(size_bytes, element_size, call.n, spec.chunked)
    result: dict[str, Any] = {
        "group": index,
        "group_rank": call.group_rank,
        "count": count,
        "size_bytes": count * element_size,
        "modes": {},
    }
    if count == 0 or call.n < spec.min_ranks:
        return result
    for mode in modes:
        if mode not in spec.modes:
            continue
        buffers = spec.buffers(count, call, dtype_of, device, mode)
        wrong = -1
        if check:
            spec.fill(buffers, call)
            synchronize(device)
            spec.run(buffers, call)
            synchronize(device)
            wrong = spec.check(buffers, call)
        for _ in range(warmup_iters):
            spec.run(buffers, call)
        synchronize(device)
        barrier(device, call.group)
        seconds = time_back_to_back(lambda b=buffers: spec.run(b, call), iters, device)
        result["modes"][mode] = {"iter_us": [t * 1e6 for t in seconds], "wrong": wrong}
    return result
