"""One gosok command as one Slurm batch job: Ray on every allocated node for the life of
the job, the command on the first node as the driver, nothing left afterwards.

``deploy/slurm/gosok.sbatch`` runs ``python -m gosok.launcher.cluster.slurm_job run <gosok
command and overrides>`` in the batch step, on the allocation's first node:

1. the command is checked first (``dry_run=true``, in the allocation): a bad override or an
   ``-N`` that disagrees with it exits 2 before any Ray process starts;
2. a fresh Ray token for this job (``<state dir>/slurm-<job id>/ray.token``, 0600, in a 0700
   directory; it reaches the nodes in the step's environment, never an argv or the output);
3. one ``srun`` task per usable node (hosts of ``cluster.exclude_file`` left out) runs
   ``... slurm_job node``: ``ray start --block`` bound to the node's address as Slurm knows it
   (``NodeAddr``), with its temp and spill files in ``/tmp/gosok-ray-<job id>``;
4. the command runs with ``cluster.address`` set to this job's head, and its exit code is
   the job's (an acceptance FAIL fails the job);
5. Ray is stopped on every node: when the command ends, fails, or the job is cancelled
   (SIGTERM from ``scancel``: the command gets Ctrl-C, each node task stops its Ray and kills
   every process of its step that is left, well within Slurm's ``KillWait``).
"""

from __future__ import annotations

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

from gosok.launcher.cluster.local import (
    SLOT_RESOURCE,
    free_port,
    port_open,
    state_dir,
    token_env,
    wait_for_nodes,
    without_token,
    write_token,
)
from gosok.launcher.cluster.slurm import Allocation, HostlistError, read_exclude_file
from gosok.launcher.errors import GosokError
from gosok.launcher.ranks.private import private_dir

USAGE = "usage: sbatch -N <nodes> [options] deploy/slurm/gosok.sbatch bench|launch [overrides]"
COMMANDS = ("bench", "launch")
HEAD_ENV = "GOSOK_SLURM_HEAD"  # ip:port of this job's Ray head
NODES_ENV = "GOSOK_SLURM_NODES"  # {hostname: {"ip": ..., "slots": ...}} for the node tasks
JOB_DIR_ENV = "GOSOK_SLURM_JOB_DIR"  # on the head node: where its task names the Ray step
STEP_FILE = "ray-step"
STOP_GRACE_S = 20.0  # the command's Ctrl-C teardown, then the node tasks' own stop


def _say(text: str) -> None:
    print(f"gosok-slurm: {text}", flush=True)


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "gosok.launcher.cli", *args]


def node_addresses(hosts: list[str]) -> dict[str, str]:
    """Each node's address on the cluster network: Slurm's ``NodeAddr`` (what slurmctld
    itself uses to reach the node), resolved when it is a name."""
    found: dict[str, str] = {}
    if shutil.which("scontrol"):
        shown = subprocess.run(
            ["scontrol", "show", "node", "-o", ",".join(hosts)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        for line in shown.stdout.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields.get("NodeName") in hosts and fields.get("NodeAddr"):
                found[fields["NodeName"]] = fields["NodeAddr"]
    out = {}
    for host in hosts:
        addr = found.get(host, host)
        try:
            out[host] = socket.getaddrinfo(addr, None, socket.AF_INET)[0][4][0]
        except OSError as exc:
            raise GosokError(f"node {host}: address {addr!r} does not resolve ({exc})") from exc
    return out


def _option(args: list[str], key: str) -> str | None:
    for arg in reversed(args):
        name, sep, value = arg.lstrip("+~").partition("=")
        if sep and name == key:
            return value
    return None


def _stop(proc: subprocess.Popen, first: int, grace_s: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(first)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _Stopping:
    """SIGTERM / SIGINT / SIGHUP recorded instead of raised, so teardown runs in order."""

    def __init__(self) -> None:
        self.signum: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on)

    def _on(self, signum: int, frame: object) -> None:
        self.signum = signum


def run(args: list[str]) -> int:
    """The batch step: check, start Ray everywhere, run the command, stop Ray."""
    if args[:1] == ["--"]:
        args = args[1:]
    if not args or args[0] not in COMMANDS:
        print(f"error: the command must be one of {', '.join(COMMANDS)}; {USAGE}", file=sys.stderr)
        return 2
    try:
        alloc = Allocation.from_env(os.environ)
    except HostlistError as exc:
        print(f"error: SLURM_JOB_NODELIST cannot be read: {exc}", file=sys.stderr)
        return 2
    if alloc is None:
        print(f"error: not inside a Slurm job (SLURM_JOB_ID is not set); {USAGE}", file=sys.stderr)
        return 2
    if not any(a.startswith("cluster=") for a in args[1:]):
        args = [args[0], "cluster=slurm", *args[1:]]

    # 1. Check the command where it will run; nothing is started if it is refused.
    check = subprocess.run(_cli([*args, "dry_run=true"]), capture_output=True, text=True)
    if check.returncode != 0:
        sys.stderr.write(check.stderr or check.stdout)
        return check.returncode

    stopping = _Stopping()
    here = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    excluded = read_exclude_file(_option(args, "cluster.exclude_file"))
    usable = alloc.usable(excluded)
    hosts = [here, *(h for h in usable if h != here)]  # the driver's node is the head
    addrs = node_addresses(hosts)
    nodes = {
        h: {"ip": addrs[h], "slots": alloc.slots_per_node if h in usable else 0} for h in hosts
    }
    # The token's directory: made 0700, or refused if someone else made it or can write to it.
    job_dir = private_dir(state_dir() / f"slurm-{alloc.job_id}", set_aside=False)
    token = write_token(job_dir / "ray.token")
    head = f"{addrs[here]}:{free_port(addrs[here])}"
    if excluded & set(alloc.hostnames):
        _say(f"leaving out {sorted(excluded & set(alloc.hostnames))} (cluster.exclude_file)")
    _say(f"job {alloc.job_id}: starting Ray on {len(hosts)} node(s) {hosts}, head {head}")

    # 2-3. One Ray node per usable node; the token travels in the step's environment.
    step_env = without_token(os.environ)
    step_env.pop("RAY_AUTH_TOKEN_PATH", None)
    step_env.update(
        RAY_AUTH_TOKEN=token.read_text().strip(),
        **{HEAD_ENV: head, NODES_ENV: json.dumps(nodes), JOB_DIR_ENV: str(job_dir)},
    )
    srun = [
        "srun", "--overlap", f"--nodes={len(hosts)}", f"--ntasks={len(hosts)}",
        "--ntasks-per-node=1", f"--nodelist={','.join(hosts)}", "--kill-on-bad-exit=0",
        "--no-kill",
    ]  # fmt: skip
    if alloc.gpus_per_node:
        srun.append(f"--gpus-per-node={alloc.gpus_per_node}")
    srun += [sys.executable, "-m", "gosok.launcher.cluster.slurm_job", "node"]
    ray_step = subprocess.Popen(srun, env=step_env, stdin=subprocess.DEVNULL)
    code = 1
    try:
        code = _with_ray(args, alloc, usable, head, token, ray_step, stopping, job_dir)
    finally:
        # 5. Stop Ray on every node: SIGTERM to the node tasks lets each stop its Ray and
        # sweep its step; srun itself is stopped only if that does not end the step.
        _signal_step(alloc.job_id, job_dir)
        try:
            ray_step.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _stop(ray_step, signal.SIGTERM, STOP_GRACE_S)
        shutil.rmtree(job_dir, ignore_errors=True)
        _say(f"Ray stopped on every node; exit {code}")
    return code


def _signal_step(job_id: str, job_dir: Path) -> None:
    step = (job_dir / STEP_FILE).read_text().strip() if (job_dir / STEP_FILE).exists() else ""
    if step and shutil.which("scancel"):
        subprocess.run(
            ["scancel", "--signal=TERM", f"{job_id}.{step}"], capture_output=True, timeout=30
        )


def _with_ray(
    args: list[str], alloc: Allocation, usable: list[str], head: str, token: Path,
    ray_step: subprocess.Popen, stopping: _Stopping, job_dir: Path,
) -> int:  # fmt: skip
    timeout_s = float(os.environ.get("GOSOK_SLURM_START_TIMEOUT_S", "180"))
    host, port = head.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while not port_open(host, int(port)):
        if stopping.signum is not None:
            return 128 + stopping.signum
        if ray_step.poll() is not None or time.monotonic() > deadline:
            _say("the Ray head did not start (its node task said why above)")
            return 3
        time.sleep(0.25)
    try:
        wait_for_nodes(head, len(usable), max(deadline - time.monotonic(), 1.0), str(job_dir),
                       str(token))  # fmt: skip
    except GosokError as exc:
        _say(f"not every node joined: {exc}")
        return 3
    if stopping.signum is not None:
        return 128 + stopping.signum
    _say(f"Ray is up on {len(usable)} node(s); running gosok {' '.join(args)}")

    # 4. The command, as the driver, on this node.
    env = {**without_token(os.environ), **token_env(token)}
    driver = subprocess.Popen(_cli([*args, f"cluster.address={head}"]), env=env)
    while driver.poll() is None:
        if stopping.signum is not None:
            _say("job cancelled: stopping the command (Ctrl-C)")
            _stop(driver, signal.SIGINT, STOP_GRACE_S)
            break
        time.sleep(0.2)
    code = driver.wait()
    return 128 - code if code < 0 else code


# ---- one node task -----------------------------------------------------------------------


def _interface_of(ip: str) -> str | None:
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == ip for a in addrs):
            return name
    return None


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return pids


def kill_step_leftovers(job_id: str, step_id: str, host: str) -> list[int]:
    """SIGKILL every process of this user that belongs to this job step on this node (its
    environment says so) and is not this task or one of its ancestors: whatever left Ray's
    process tree (a daemonised worker, a rank in a session of its own) does not outlive
    the job."""
    mine, spare, killed = os.getuid(), _ancestors(), []
    marks = {
        f"SLURM_JOB_ID={job_id}".encode(),
        f"SLURM_STEP_ID={step_id}".encode(),
        f"SLURMD_NODENAME={host}".encode(),
    }
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spare:
            continue
        try:
            if entry.stat().st_uid != mine:
                continue
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if marks <= environ:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


def node() -> int:
    """One allocated node: ``ray start --block`` until the job stops it, then nothing left."""
    env = os.environ
    job_id, step_id = env["SLURM_JOB_ID"], env.get("SLURM_STEP_ID", "")
    host = env["SLURMD_NODENAME"]
    me = json.loads(env[NODES_ENV])[host]
    head = env[HEAD_ENV]
    head_ip, port = head.rsplit(":", 1)
    is_head = me["ip"] == head_ip
    if is_head:  # the batch step stops this step by its id (scancel --signal=TERM)
        (Path(env[JOB_DIR_ENV]) / STEP_FILE).write_text(step_id)
    temp_dir = Path(f"/tmp/gosok-ray-{job_id}")
    cpus = env.get("SLURM_CPUS_ON_NODE") or str(os.cpu_count() or 1)
    cmd = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
        f"--node-ip-address={me['ip']}", f"--num-cpus={cpus}",
        f"--resources={json.dumps({SLOT_RESOURCE: me['slots']})}",
        "--disable-usage-stats", f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    if not me["slots"]:
        cmd.append("--num-gpus=0")  # an excluded node that only hosts the driver's head
    if is_head:
        cmd += ["--head", f"--port={port}", "--include-dashboard=false"]
    else:
        cmd.append(f"--address={head}")
    ray_env = dict(env, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    iface = _interface_of(me["ip"])
    if iface and "GLOO_SOCKET_IFNAME" not in env:
        ray_env["GLOO_SOCKET_IFNAME"] = iface  # collectives on the cluster network
    stopping = _Stopping()
    deadline = time.monotonic() + float(env.get("GOSOK_SLURM_START_TIMEOUT_S", "180"))
    while not is_head and not port_open(head_ip, int(port)):
        if stopping.signum is not None or time.monotonic() > deadline:
            return 0 if stopping.signum is not None else 3
        time.sleep(0.25)
    # Ray's own output stays on the node; the job's output gets its tail if Ray fails.
    log = temp_dir.with_name(f"{temp_dir.name}.log")
    with open(log, "wb") as out:
        ray = subprocess.Popen(
            cmd, env=ray_env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        while ray.poll() is None and stopping.signum is None:
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ray.pid, signal.SIGTERM)
        end = time.monotonic() + 5
        while ray.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ray.pid, signal.SIGKILL)
        ray.wait()
        kill_step_leftovers(job_id, step_id, host)
        shutil.rmtree(temp_dir, ignore_errors=True)
        if stopping.signum is None:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            _say(f"node {host}: Ray exited ({ray.returncode}):\n  " + "\n  ".join(tail))
        log.unlink(missing_ok=True)
    return 0 if stopping.signum is not None else ray.returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["node"]:
        return node()
    if argv[:1] == ["run"]:
        try:
            return run(argv[1:])
        except GosokError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return getattr(exc, "exit_code", 1)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
