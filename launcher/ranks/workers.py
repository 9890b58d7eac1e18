"""A benchmark's ranks, on the rank's side: processes that run the functions their driver
sends.

The node agents start a benchmark's ranks as they start a launch's (forked from the
node's zygote, torchrun's environment); each runs ``python -m gosok.launcher.ranks.workers``
with a channel it inherited from the zygote (env ``GOSOK_CALL_FD``), whose other end the
node agent holds and nobody else. It serves calls over it until it closes: each is a
pickled ``(fn, args, kwargs)`` from the driver of the same user, run as
``fn(ctx, *args, **kwargs)``, and answered with ``(ok, result or exception, traceback)``.
The driver's side is ``launch/worker_group.py``; the agent relays (``NodeAgent.call``).

Messages are framed as the zygote's (``forked.send_message``). stdlib only at module
level: a forked rank starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from gosok.launcher.ranks.forked import CHANNEL_ENV, read_message, send_message


@dataclass
class RankContext:
    """What a rank function receives: its place in the world and its device."""

    rank: int
    local_rank: int
    node_rank: int
    world_size: int
    local_world_size: int
    node_id: str
    hostname: str
    device: str
    backend: str
    groups: dict[tuple[int, ...], Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str]) -> RankContext:
        backend = env.get("GOSOK_BACKEND", "gloo")
        local_rank = int(env["LOCAL_RANK"])
        return cls(
            rank=int(env["RANK"]),
            local_rank=local_rank,
            node_rank=int(env["GROUP_RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_world_size=int(env["LOCAL_WORLD_SIZE"]),
            node_id=env.get("GOSOK_NODE_ID", ""),
            hostname=socket.gethostname(),
            device=f"cuda:{local_rank}" if backend == "nccl" else "cpu",
            backend=backend,
        )

    def torch_device(self):
        import torch

        return torch.device(self.device)

    def group_for(self, groups: list[list[int]]) -> tuple[int, Any] | tuple[None, None]:
        """Create (once, in the same order on every rank) the process groups for
        ``groups`` and return (group index, handle) for the one this rank is in."""
        import torch.distributed as dist

        mine: tuple[int, Any] | tuple[None, None] = (None, None)
        for index, members in enumerate(groups):
            key = tuple(members)
            if key not in self.groups:
                if len(key) == self.world_size:
                    self.groups[key] = dist.group.WORLD
                else:
                    self.groups[key] = dist.new_group(list(key))
            if self.rank in key:
                mine = (index, self.groups[key])
        return mine


def describe(ctx: RankContext) -> dict[str, Any]:
    """The rank's process and device (the first call of every benchmark rank)."""
    info: dict[str, Any] = {"hostname": ctx.hostname, "pid": os.getpid()}
    if ctx.backend == "nccl":
        import torch

        torch.cuda.set_device(ctx.local_rank)
        info["device_name"] = torch.cuda.get_device_name()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return info


def init_process_group(ctx: RankContext, timeout_s: float) -> float:
    import torch.distributed as dist

    start = time.perf_counter()
    dist.init_process_group(
        backend=ctx.backend,
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return time.perf_counter() - start


def _answer(call: bytes, ctx: RankContext) -> bytes:
    try:
        fn, args, kwargs = pickle.loads(call)
        return pickle.dumps((True, fn(ctx, *args, **kwargs), ""))
    except BaseException as exc:  # noqa: BLE001  (every failure goes back to the driver)
        failure, text = exc, traceback.format_exc()
    try:
        return pickle.dumps((False, failure, text))
    except Exception:  # noqa: BLE001  (an exception that does not pickle travels as text)
        return pickle.dumps((False, RuntimeError(f"{type(failure).__name__}: {failure}"), text))


def serve(fd: int) -> int:
    """Answer calls on channel ``fd`` until it closes; then leave the process group."""
    ctx = RankContext.from_env(dict(os.environ))
    os.set_inheritable(fd, False)  # a process the rank starts must not keep it open
    os.environ.pop(CHANNEL_ENV, None)
    with socket.socket(fileno=fd) as sock:
        while (call := read_message(sock)) is not None:
            send_message(sock, _answer(call, ctx))
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    # Serve from the imported module, not __main__, so that functions sent by reference
    # (``workers.describe``) and the context are the module's own.
    from gosok.launcher.ranks import workers

    sys.exit(workers.serve(int(os.environ[CHANNEL_ENV])))
