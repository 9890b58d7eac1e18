"""A real Slurm on this machine: ``slurmctld`` on the host and one ``slurmd`` per
network-namespace host (its own hostname, IP and private ``/tmp``, as
``cluster.isolation=netns`` makes them), authenticated by ``munge``. Nothing is mocked:
``sbatch``, ``srun``, ``scancel`` and ``scontrol`` are Slurm's own (Debian's slurm-wlm).

Use (root)::

    with SlurmCluster(nodes=3) as slurm:
        subprocess.run(["sbatch", "-N", "3", ...], env=slurm.env(), cwd=slurm.workdir)
        slurm.kill_node(2)              # slurmd and every process of that host

or by hand: ``python tests/integration/slurm/slurm_cluster.py up --nodes 3`` prints the
``export SLURM_CONF=...`` line to use and the work directory every node sees;
``... down`` stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gosok.launcher.cluster.local import free_port, port_open, session_alive
from gosok.launcher.cluster.netns import NetnsNetwork, environment_paths, problem

BASE = Path("/var/tmp/gosok-slurm")  # outside /tmp: every node sees it at the same path


def unavailable() -> str | None:
    """None when a Slurm can be started here, else why not (for a skip)."""
    reason = problem()
    if reason:
        return reason
    for tool in ("slurmctld", "slurmd", "sbatch", "munged", "nsenter"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"needs `{tool}` (Debian: apt-get install slurm-wlm munge)"
    return None


def _sbin(tool: str) -> str:
    return shutil.which(tool) or f"/usr/sbin/{tool}"


def start_munge() -> None:
    socket_path = Path("/run/munge/munge.socket.2")
    if socket_path.exists() and _munge_ok():
        return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run([_sbin("mungekey"), "--create"], check=True)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", _sbin("munged"), "--force"], check=True)
    deadline = time.monotonic() + 10
    while not _munge_ok():
        if time.monotonic() > deadline:
            raise RuntimeError("munged did not start")
        time.sleep(0.1)


def _munge_ok() -> bool:
    made = subprocess.run(["munge", "-n"], capture_output=True)
    return made.returncode == 0


class SlurmCluster:
    def __init__(self, nodes: int = 3, name: str = "slurmtest", kill_wait_s: int = 30):
        self.nodes = nodes
        self.name = name
        self.kill_wait_s = kill_wait_s
        self.net = NetnsNetwork.for_cluster(name, nodes + 1)  # index 0: this machine
        self.base = BASE / name
        self.conf = self.base / "slurm.conf"
        self.workdir = self.base / "work"
        self.shared = self.base / "shared"  # the cluster's shared storage (NFS stands-in)
        self.pgids: list[int] = []

    def hostname(self, node: int) -> str:
        """Slurm node ``node`` (1-based), as Slurm and the node itself name it."""
        return self.net.hostname(node)

    @property
    def hostnames(self) -> list[str]:
        return [self.hostname(i) for i in range(1, self.nodes + 1)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_conf(self, ctld_port: int) -> None:
        cpus = os.cpu_count() or 1
        lines = [
            "ClusterName=gosoktest",
            f"SlurmctldHost={socket.gethostname()}({self.net.head_ip})",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"StateSaveLocation={self.base}/ctld",
            f"SlurmdSpoolDir={self.base}/slurmd-%n",
            f"SlurmctldPidFile={self.base}/slurmctld.pid",
            f"SlurmdPidFile={self.base}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.base}/slurmctld.log",
            f"SlurmdLogFile={self.base}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/builtin",
            "MpiDefault=none",
            "ReturnToService=2",
            f"KillWait={self.kill_wait_s}",
            "SlurmdTimeout=300",
            "InactiveLimit=0",
            f"NodeName=DEFAULT CPUs={cpus} RealMemory=1000 State=UNKNOWN",
            *(
                f"NodeName={self.hostname(i)} NodeAddr={self.net.ip_of(i)}"
                for i in range(1, self.nodes + 1)
            ),  # fmt: skip
            "PartitionName=gosok Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, command: list[str], log: str) -> None:
        with open(self.base / log, "ab") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=self.env(),
            )  # fmt: skip
        self.pgids.append(proc.pid)
        self._save()

    def _save(self) -> None:
        state = {"nodes": self.nodes, "pgids": self.pgids}
        (self.base / "state.json").write_text(json.dumps(state))

    def start(self) -> SlurmCluster:
        reason = unavailable()
        if reason:
            raise RuntimeError(f"cannot start a Slurm here: {reason}")
        self.stop()
        for path in (self.base / "ctld", self.workdir, self.shared):
            path.mkdir(parents=True, exist_ok=True)
        start_munge()
        self.net.create()
        ctld_port = free_port(self.net.head_ip)
        self._write_conf(ctld_port)
        self._spawn([_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        deadline = time.monotonic() + 30
        while not port_open(self.net.head_ip, ctld_port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"slurmctld did not start; see {self.base}/slurmctld.log")
            time.sleep(0.2)
        for i in range(1, self.nodes + 1):
            self._start_slurmd(i)
        self.wait_idle(self.nodes)
        return self

    def _start_slurmd(self, node: int) -> None:
        keep = [self.base, *environment_paths()]
        slurmd = [_sbin("slurmd"), "-D", "-N", self.hostname(node), "-f", str(self.conf)]
        self._spawn(self.net.wrap(node, slurmd, keep, sysfs=False), f"slurmd-{node}.out")

    def revive_node(self, node: int) -> None:
        """Boot host ``node`` again after ``kill_node``: a fresh slurmd (Slurm returns it to
        service and completes the jobs it held)."""
        self._start_slurmd(node)
        self.wait_idle(self.nodes)

    def sinfo(self) -> dict[str, str]:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, env=self.env()
        ).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_idle(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = self.sinfo()
            if sum(s in ("idle", "mix", "alloc") for s in states.values()) >= count:
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm nodes not idle in {timeout_s}s: {self.sinfo()}")

    def pids_on(self, node: int) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", self.net.ns(node)], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]

    def processes_on(self, node: int) -> list[str]:
        """Command lines of every process on host ``node``."""
        lines = []
        for pid in self.pids_on(node):
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                lines.append(raw.replace(b"\0", b" ").decode(errors="replace").strip())
        return lines

    def kill_node(self, node: int) -> None:
        """The host dies: its slurmd and every process on it, SIGKILL."""
        for pid in self.pids_on(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        state_file = self.base / "state.json"
        pgids = list(self.pgids)
        if state_file.exists():
            with contextlib.suppress(ValueError, OSError):
                pgids += json.loads(state_file.read_text())["pgids"]
        for i in range(1, self.nodes + 1):
            self.kill_node(i)
        for pgid in pgids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(session_alive(p) for p in pgids) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.net.destroy()
        self.pgids = []
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="a local Slurm on network-namespace hosts")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--name", default="slurmtest")
    args = parser.parse_args()
    cluster = SlurmCluster(args.nodes, args.name)
    if args.action == "down":
        cluster.stop()
        return
    cluster.start()
    print(f"Slurm up: nodes {', '.join(cluster.hostnames)}")
    print(f"export SLURM_CONF={cluster.conf}")
    print(f"work directory every node sees: {cluster.workdir}")
    print(f"shared storage: {cluster.shared}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    main()
