"""Local cluster nodes that are separate hosts: each worker node of ``cluster=local
cluster.isolation=netns`` runs in its own network namespace (own IP on a bridge
private to this machine), its own UTS namespace (own hostname) and its own mount
namespace (a private ``/tmp``). The head node is this machine, on the bridge's address,
so the user's command is the driver. ``shared_dir(name)`` stands for the shared storage
of a real cluster (NFS, Lustre): one directory every node sees at the same path, where
checkpoints go by default in this mode.

Use (``cluster.local`` does this when ``isolation=netns``)::

    net = NetnsNetwork.for_cluster("local", nodes=3)
    net.create()                         # bridge + one namespace per worker node
    cmd = net.wrap(1, ["ray", "start", ...])   # run inside worker node 1
    net.destroy()

Needs root, ``ip`` and ``unshare`` (util-linux); ``problem()`` says why not when it can't.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def problem() -> str | None:
    """None when this machine can run netns nodes, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root (network, UTS and mount namespaces)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"needs `{tool}`"
    return None


HOSTS_DIR = Path("/run/gosok")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@dataclass(frozen=True)
class NetnsNetwork:
    """The bridge and namespaces of one local cluster, named after it."""

    tag: str  # short, derived from the cluster name: interface names are <= 15 chars
    nodes: int
    subnet: str  # "10.X.Y": the bridge is .1, worker node i is .(10 + i)

    @classmethod
    def for_cluster(cls, name: str, nodes: int) -> NetnsNetwork:
        digest = hashlib.sha256(name.encode()).digest()
        return cls(f"g{digest[:3].hex()}", nodes, f"10.{200 + digest[3] % 50}.{digest[4]}")

    @property
    def bridge(self) -> str:
        return f"{self.tag}-br"

    @property
    def head_ip(self) -> str:
        return f"{self.subnet}.1"

    def ns(self, index: int) -> str:
        return f"{self.tag}-n{index}"

    def ip_of(self, index: int) -> str:
        return self.head_ip if index == 0 else f"{self.subnet}.{10 + index}"

    def hostname(self, index: int) -> str:
        return f"{self.tag}-node{index}"

    def interface(self, index: int) -> str:
        """The interface gloo must use on node ``index``."""
        return self.bridge if index == 0 else "eth0"

    @property
    def hosts_file(self) -> Path:
        """The nodes' /etc/hosts: every node's name resolves to its IP (as cluster DNS)."""
        return HOSTS_DIR / f"{self.tag}.hosts"

    @property
    def resolv_file(self) -> Path:
        """The nodes' /etc/resolv.conf: no DNS server is reachable from a node's network, so
        none is named and a lookup /etc/hosts cannot answer fails at once (torch's c10d
        looks up the name of every store connection: with the machine's resolver it waits
        out the DNS timeout, 10 s, on each rank)."""
        return HOSTS_DIR / f"{self.tag}.resolv"

    def create(self) -> None:
        self.destroy()
        import socket

        names = [f"{self.ip_of(i)} {self.hostname(i)}" for i in range(1, self.nodes)]
        HOSTS_DIR.mkdir(parents=True, exist_ok=True)
        self.hosts_file.write_text(
            "\n".join(["127.0.0.1 localhost", f"{self.head_ip} {socket.gethostname()}", *names])
            + "\n"
        )
        self.resolv_file.write_text("# names come from /etc/hosts\noptions timeout:1 attempts:1\n")
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.head_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index in range(1, self.nodes):
            ns, veth = self.ns(index), f"{self.tag}-v{index}"
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.ip_of(index)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "default", "via", self.head_ip)

    def wrap(
        self, index: int, command: list[str], keep: list[Path], sysfs: bool = True
    ) -> list[str]:
        """``command`` as run on node ``index``: worker nodes get their own network, hostname
        and a private /tmp; the ``keep`` paths (the shared storage, the Python environment
        and gosok's own code, as installed on every host of a real cluster) stay visible at
        the same paths. The head runs on this machine as it is. ``sysfs=False`` enters the
        network namespace without remounting /sys (``ip netns exec`` does, which hides the
        cgroup tree a Slurm daemon needs)."""
        if index == 0:
            return command
        hidden = [p for p in keep if p.exists() and p.resolve().is_relative_to("/tmp")]
        kept = _outermost(hidden)  # only what the private /tmp would hide
        steps = [f"hostname {shlex.quote(self.hostname(index))}", "mkdir -p /run/gosok"]
        if self.hosts_file.exists():
            steps.append(f"mount --bind {shlex.quote(str(self.hosts_file))} /etc/hosts")
        if self.resolv_file.exists():
            steps.append(f"mount --bind {shlex.quote(str(self.resolv_file))} /etc/resolv.conf")
        for i, path in enumerate(kept):
            steps += [f"k{i}=$(mktemp -d /run/gosok/keep.XXXXXX)",
                      f"mount --rbind {shlex.quote(str(path))} $k{i}"]  # fmt: skip
        steps.append("mount -t tmpfs -o mode=1777 gosok-tmp /tmp")
        for i, path in enumerate(kept):
            quoted = shlex.quote(str(path))
            steps += [f"mkdir -p {quoted}", f"mount --move $k{i} {quoted}", f"rmdir $k{i}"]
        inner = " && ".join(steps) + f" && exec {shlex.join(command)}"
        enter = (
            ["ip", "netns", "exec", self.ns(index)]
            if sysfs
            else ["nsenter", f"--net=/var/run/netns/{self.ns(index)}"]
        )
        return [
            *enter, "unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", inner,
        ]  # fmt: skip

    def cut_link(self, index: int) -> None:
        """Take node ``index``'s link down (a cable pulled): for failure tests."""
        _ip("-n", self.ns(index), "link", "set", "eth0", "down")

    def slow_link(self, index: int, rate: str = "200mbit") -> None:
        """Rate-limit worker node ``index``'s link both ways (a token bucket on each end of
        its veth; this kernel may lack ``netem``): a bad cable or NIC, for isolation tests."""
        tbf = ["root", "tbf", "rate", rate, "burst", "32kbit", "latency", "50ms"]
        for where, dev in self._link_ends(index):
            subprocess.run(["tc", *where, "qdisc", "add", "dev", dev, *tbf], check=True)

    def heal_link(self, index: int) -> None:
        for where, dev in self._link_ends(index):
            subprocess.run(["tc", *where, "qdisc", "del", "dev", dev, "root"], check=False)

    def _link_ends(self, index: int) -> tuple[tuple[list[str], str], ...]:
        """The two ends of worker ``index``'s veth: on this machine, inside its namespace."""
        return ([], f"{self.tag}-v{index}"), (["-n", self.ns(index)], "eth0")

    def destroy(self) -> None:
        for index in range(1, self.nodes):
            _ip("netns", "del", self.ns(index), check=False)
            _ip("link", "del", f"{self.tag}-v{index}", check=False)
        _ip("link", "del", self.bridge, check=False)
        self.hosts_file.unlink(missing_ok=True)
        self.resolv_file.unlink(missing_ok=True)


def _outermost(paths: list[Path]) -> list[Path]:
    """The paths not inside another one of them (a bind of the parent carries the child)."""
    resolved = sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts))
    out: list[Path] = []
    for path in resolved:
        if not any(path.is_relative_to(parent) for parent in out):
            out.append(path)
    return out


def environment_paths() -> list[Path]:
    """The interpreter's environment and gosok's code: on a real cluster every host has
    them installed; a netns node must see them through its private /tmp too."""
    import sys

    import gosok.launcher

    code = Path(gosok.launcher.__file__).resolve().parent.parent
    return [Path(sys.prefix), code, *(Path(p) for p in sys.path if p)]


def shared_dir(state_dir: Path, name: str, create: bool = True) -> Path:
    """The directory standing for the cluster's shared storage (same path on every node)."""
    path = state_dir / "shared" / name
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
