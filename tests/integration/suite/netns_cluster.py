"""A Ray cluster whose nodes live in their own Linux network namespaces, for network faults.

Each node gets a namespace with one veth into a shared bridge (10.231.0.0/24 by default)
and runs ``ray start --block`` inside it with its own IP, so traffic between nodes really
crosses a link that ``tc`` can slow down. ``slow_link(i, rate)`` puts a token-bucket rate
limit on both ends of node i's link (``tbf``; ``netem`` is used for delay when the kernel
has it). The driver must run inside node 0's namespace (``run_in(0, cmd)``): a Ray driver
needs a raylet on its own host.

Use::

    with NetnsCluster(nodes=3) as cluster:
        cluster.slow_link(2, "200mbit")
        subprocess.run(cluster.run_in(0, ["gosok", "bench", ...]))

Needs root, ``ip`` and ``tc``; ``available()`` says whether this host can do it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gosok.launcher.cluster.local import SLOT_RESOURCE, port_open


def available() -> str | None:
    """None when namespaces can be used here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs `{tool}`"
    probe = f"gsk-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


class NetnsCluster:
    def __init__(
        self, nodes: int = 3, slots: int = 2, prefix: str = "gsk", subnet: str = "10.231.0"
    ):
        self.nodes = nodes
        self.slots = slots
        self.prefix = prefix
        self.subnet = subnet
        self.port = 6390
        self.sessions: list[int] = []
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-netns-"))

    def ns(self, i: int) -> str:
        return f"{self.prefix}-n{i}"

    def ip_of(self, i: int) -> str:
        return f"{self.subnet}.{10 + i}"

    @property
    def address(self) -> str:
        return f"{self.ip_of(0)}:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", GLOO_SOCKET_IFNAME="eth0")
        return env

    def run_in(self, i: int, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i), *cmd]

    def __enter__(self) -> NetnsCluster:
        try:
            self._network()
            self._ray()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _network(self) -> None:
        bridge = f"{self.prefix}-br0"
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i in range(self.nodes):
            ns, veth = self.ns(i), f"{self.prefix}-v{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.ip_of(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "default", "via", f"{self.subnet}.1")

    def _ray(self) -> None:
        for i in range(self.nodes):
            role = (
                ["--head", f"--port={self.port}", "--include-dashboard=false"]
                if i == 0
                else [f"--address={self.address}"]
            )
            cmd = self.run_in(
                i,
                [
                    sys.executable,
                    "-m",
                    "ray.scripts.scripts",
                    "start",
                    "--block",
                    f"--node-ip-address={self.ip_of(i)}",
                    "--num-cpus=1",
                    "--object-store-memory=100000000",
                    "--num-gpus=0",
                    f"--resources={json.dumps({SLOT_RESOURCE: self.slots})}",
                    "--disable-usage-stats",
                    f"--temp-dir={self.log_dir / f'ray-{i}'}",
                    *role,
                ],
            )
            with open(self.log_dir / f"node-{i}.log", "wb") as log:
                proc = subprocess.Popen(
                    cmd,
                    env=self.env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            self.sessions.append(proc.pid)
            if i == 0:
                self._wait(lambda: port_open(self.ip_of(0), self.port), "head port")
        probe = (
            f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )

        def all_alive() -> bool:
            out = subprocess.run(
                self.run_in(0, [sys.executable, "-c", probe]),
                env=self.env(),
                capture_output=True,
                text=True,
            )
            return out.stdout.strip() == str(self.nodes)

        self._wait(all_alive, "all nodes alive")

    def _wait(self, ready, what: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(1.0)
        raise RuntimeError(
            f"netns cluster: {what} not reached in {timeout_s}s; logs {self.log_dir}"
        )

    def slow_link(self, i: int, rate: str = "200mbit") -> None:
        """Rate-limit node i's link in both directions."""
        tbf = ["root", "tbf", "rate", rate, "burst", "32kbit", "latency", "50ms"]
        subprocess.run(["tc", "qdisc", "add", "dev", f"{self.prefix}-v{i}", *tbf], check=True)
        subprocess.run(["tc", "-n", self.ns(i), "qdisc", "add", "dev", "eth0", *tbf], check=True)

    def heal_link(self, i: int) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", f"{self.prefix}-v{i}", "root"], check=False)
        subprocess.run(["tc", "-n", self.ns(i), "qdisc", "del", "dev", "eth0", "root"], check=False)

    def __exit__(self, *exc: object) -> None:
        for pid in self.sessions:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        time.sleep(2.0)
        for pid in self.sessions:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        for i in range(self.nodes):
            _ip("netns", "del", self.ns(i), check=False)
            _ip("link", "del", f"{self.prefix}-v{i}", check=False)
        _ip("link", "del", f"{self.prefix}-br0", check=False)
