"""Start, find and stop a local multi-node Ray cluster on this machine (the CPU fallback).

Each "node" is a real ``ray start`` (head first, then workers joining it) bound to a
loopback address such as 127.0.0.2, which Ray keeps as is (127.0.0.1 would be rewritten to
the machine's external address). Every node offers ``gpus_per_node`` rank slots as the
custom resource ``gosok_slot``. Each ``ray start --block`` runs in its own process
session, so stopping kills the whole session: no Ray process is left behind.

State (address, process groups) lives in ``$GOSOK_STATE_DIR`` (default
``~/.cache/gosok``) as ``local-<name>.json``, so ``gosok cluster up`` / ``down`` /
``status`` and ``gosok bench cluster=local`` share one cluster.

Several commands at once share one cluster of a name. The first starts it; one that comes
while it is starting waits until all its nodes are up (never judging a half-started cluster);
each command using a cluster it did not get from ``gosok cluster up`` is a user of it
(``local-<name>.users/<pid>``), and the last user to end stops it. Who claims, joins and
leaves decides under ``local-<name>.lock``. Ranks of two commands then queue for the
cluster's slots as jobs do on any shared cluster (``workers.wait_placed``).

Use: ``gosok cluster up``; or ``with local_cluster(cfg.cluster) as address: ...``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gosok.launcher.cluster.netns import NetnsNetwork, environment_paths, shared_dir
from gosok.launcher.errors import GosokError
from gosok.launcher.results.store import atomic_write_bytes

SLOT_RESOURCE = "gosok_slot"


def token_file(name: str) -> Path:
    return state_dir() / f"local-{name}.token"


_started_tokens: dict[str, str] = {}  # cluster name -> the token this process started it with


def new_token(name: str) -> Path:
    """A Ray auth token for a cluster this process starts, readable by this user only:
    fresh for its first start; a cluster this process starts again (the next job of a ``-m``
    sweep, once the previous one stopped it) gets the same one, because Ray reads a token
    once per process and would present the old one to the new cluster."""
    token = _started_tokens.setdefault(name, secrets.token_hex(32))
    return write_token(token_file(name), token)


def write_token(path: Path, token: str | None = None) -> Path:
    """A Ray auth token (fresh and random unless given) in a new file readable by this user
    only."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token or secrets.token_hex(32))
    return path


def token_env(path: str | Path) -> dict[str, str]:
    """What a process needs to reach a cluster whose token is in ``path``: Ray's token auth
    on (a wrong or missing token is refused by every Ray service)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def auth_env(name: str) -> dict[str, str]:
    """What a process needs to reach the local cluster ``name``."""
    return token_env(token_file(name))


def without_token(env: dict[str, str] | os._Environ) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}


def use_token(path: str | Path) -> None:
    """Make this process present the token in ``path`` when it connects. Ray reads its auth
    mode once, when it is imported: call this before anything imports ray."""
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(token_env(path))


def use_auth(name: str) -> None:
    """Make this process present the local cluster's token when it connects."""
    use_token(token_file(name))


def ray_env(name: str) -> dict[str, str]:
    """Environment for the cluster's Ray processes: its token, no usage stats."""
    env = dict(os.environ)
    env.pop("RAY_AUTH_TOKEN", None)
    env.update(auth_env(name))
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Nodes on loopback or a private bridge have no DNS for each other's addresses: torch's
    # C++ warnings about reverse lookups (c10d) are noise there; errors still show, and a
    # value the user set wins.
    env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    return env


def state_dir() -> Path:
    """``$GOSOK_STATE_DIR`` (default ``~/.cache/gosok``), this user's only: checked on every
    use (``private.own_dir``)."""
    from gosok.launcher.ranks.private import own_dir

    path = Path(os.environ.get("GOSOK_STATE_DIR", Path.home() / ".cache" / "gosok"))
    return own_dir(path, hint="or set GOSOK_STATE_DIR to a directory of your own")


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout_s):
            return True
    except OSError:
        return False


@dataclass
class LocalClusterState:
    name: str
    address: str
    node_ip: str
    nodes: int
    gpus_per_node: int
    pgids: list[int]
    log_dir: str
    started_unix: float
    isolation: str = "none"
    ready: bool = True  # all nodes up; False while its starter waits for them
    kept: bool = True  # started by `gosok cluster up`: stays up until `gosok cluster down`
    starter_pid: int = 0

    def path(self) -> Path:
        return state_file(self.name)

    def save(self) -> None:
        atomic_write_bytes(self.path(), json.dumps(asdict(self), indent=2).encode())


def state_file(name: str) -> Path:
    return state_dir() / f"local-{name}.json"


def load_state(name: str) -> LocalClusterState | None:
    path = state_file(name)
    if not path.exists():
        return None
    try:
        return LocalClusterState(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)
        return None


def session_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def session_alive(pgid: int) -> bool:
    return bool(session_members(pgid))


def is_running(state: LocalClusterState) -> bool:
    """The head is up. A worker node that died leaves a running cluster with one node
    fewer (as on a real cluster: Ray marks it dead, placement goes around it)."""
    if not state.pgids or not state.address:
        return False
    host, port = state.address.rsplit(":", 1)
    return session_alive(state.pgids[0]) and port_open(host, int(port))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def starting(state: LocalClusterState) -> bool:
    """Another process is starting it right now."""
    return not state.ready and pid_alive(state.starter_pid)


def in_use(state: LocalClusterState) -> bool:
    return starting(state) or is_running(state)


def _node_command(
    role: str, head_address: str, port: int, cluster: Any, temp_dir: str, ip: str
) -> list[str]:
    local = cluster.local
    own_ports = cluster.isolation == "netns" and role != "head"  # a host of its own
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--block",
        f"--node-ip-address={ip}",
        f"--num-cpus={local.cpus_per_node}",
        f"--object-store-memory={local.object_store_bytes}",
        f"--resources={json.dumps({SLOT_RESOURCE: cluster.gpus_per_node})}",
        "--num-gpus=0",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    if not own_ports:
        cmd += [
            f"--dashboard-agent-listen-port={free_port(ip)}",
            f"--metrics-export-port={free_port(ip)}",
            f"--runtime-env-agent-port={free_port(ip)}",
        ]
    if role == "head":
        cmd += [
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port(ip)}",
        ]
    else:
        cmd += [f"--address={head_address}"]
    return cmd


def start(cluster: Any, tries: int = 2, kept: bool = True) -> LocalClusterState:
    """Start head + (nodes - 1) workers; wait until all nodes are alive in Ray. A start
    whose nodes do not all come up (a Ray agent can die while several nodes start on one
    busy machine) is torn down and tried once more. ``kept``: ``gosok cluster up``'s (else a
    command's own, stopped by its last user)."""
    with _locked(cluster.name):
        existing = load_state(cluster.name)
        if existing and in_use(existing):
            owner = "" if existing.kept else f" for gosok command pid {existing.starter_pid}"
            raise GosokError(
                f"local cluster {cluster.name!r} is already running{owner} at "
                f"{existing.address or '(starting)'}; `gosok cluster down` first"
            )
        _claim(cluster, kept)
    return _start_claimed(cluster, tries, kept)


def _claim(cluster: Any, kept: bool) -> None:
    """Under the lock: record that this process is starting the cluster, so a command that
    comes meanwhile waits for it instead of judging a half-started one."""
    LocalClusterState(
        cluster.name, "", "", cluster.nodes, cluster.gpus_per_node, [], "", time.time(),
        cluster.isolation, ready=False, kept=kept, starter_pid=os.getpid(),
    ).save()  # fmt: skip


def _start_claimed(cluster: Any, tries: int, kept: bool) -> LocalClusterState:
    try:
        for attempt in range(1, tries + 1):
            try:
                return _start_once(cluster, kept)
            except GosokError:
                if attempt == tries:
                    raise
    except BaseException:
        state_file(cluster.name).unlink(missing_ok=True)
        raise
    raise AssertionError("unreachable")


def _start_once(cluster: Any, kept: bool) -> LocalClusterState:
    isolation = cluster.isolation
    net = NetnsNetwork.for_cluster(cluster.name, cluster.nodes) if isolation == "netns" else None
    ip = net.head_ip if net else cluster.local.node_ip
    if net:
        net.create()
    port = cluster.local.port or free_port(ip)
    address = f"{ip}:{port}"
    # Short: Ray's socket paths live under it (at most 107 bytes). Worker nodes in their
    # own namespaces keep their Ray files in their private /tmp.
    log_dir = tempfile.mkdtemp(prefix=f"gosok-{cluster.name[:12]}-")
    pgids: list[int] = []
    state = LocalClusterState(
        cluster.name, address, ip, cluster.nodes, cluster.gpus_per_node, pgids, log_dir,
        time.time(), isolation, ready=False, kept=kept, starter_pid=os.getpid(),
    )  # fmt: skip
    state.save()
    new_token(cluster.name)
    try:
        for index in range(cluster.nodes):
            role = "head" if index == 0 else "worker"
            node_ip = net.ip_of(index) if net else ip
            temp_dir = os.path.join(log_dir, f"ray-{index}")
            command = _node_command(role, address, port, cluster, temp_dir, node_ip)
            env = ray_env(cluster.name)
            if net:
                shared = shared_dir(state_dir(), cluster.name)
                command = net.wrap(index, command, [shared, *environment_paths()])
                env["GLOO_SOCKET_IFNAME"] = net.interface(index)
                env["GOSOK_SHARED_DIR"] = str(shared)
                if index:  # a host of its own: the token travels in memory, not on disk
                    env.pop("RAY_AUTH_TOKEN_PATH", None)
                    env["RAY_AUTH_TOKEN"] = token_file(cluster.name).read_text().strip()
            log = open(os.path.join(log_dir, f"node-{index}.log"), "wb")  # noqa: SIM115
            proc = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log.close()
            pgids.append(proc.pid)
            state.save()
            if role == "head":
                _wait_for_port(ip, port, cluster.local.start_timeout_s, log_dir)
        wait_for_nodes(
            address, cluster.nodes, cluster.local.start_timeout_s, log_dir,
            str(token_file(cluster.name)),
        )  # fmt: skip
    except BaseException:
        stop_sessions(pgids)
        if net:
            net.destroy()
        raise
    state.ready = True
    state.save()
    return state


def _wait_for_port(host: str, port: int, timeout_s: float, log_dir: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.2)
    raise GosokError(f"Ray head did not open {host}:{port} in {timeout_s}s; logs in {log_dir}")


def wait_for_nodes(
    address: str, count: int, timeout_s: float, log_dir: str, token_path: str
) -> None:
    """Block until the cluster at ``address`` has ``count`` alive nodes with rank slots.

    A process holds one Ray connection at a time, so when this one is already connected
    (to this or another cluster) the wait runs in a short-lived subprocess.
    """
    if "ray" in sys.modules:
        # Ray fixes its auth mode when it is imported: probe from a fresh process that
        # presents this cluster's token.
        call = f"wait_for_nodes({address!r}, {count}, {timeout_s}, {log_dir!r}, {token_path!r})"
        probe = f"from gosok.launcher.cluster.local import wait_for_nodes; {call}"
        result = subprocess.run(
            [sys.executable, "-c", probe],
            env={**without_token(os.environ), **token_env(token_path)},
            capture_output=True,
            text=True,
            timeout=timeout_s + 60,
        )
        if result.returncode != 0:
            raise GosokError(
                result.stderr.strip().splitlines()[-1]
                if result.stderr
                else f"local Ray cluster at {address} did not come up; logs in {log_dir}"
            )
        return
    use_token(token_path)
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alive = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get(SLOT_RESOURCE)]
            if len(alive) >= count:
                return
            time.sleep(0.25)
    finally:
        ray.shutdown()
    raise GosokError(
        f"local Ray cluster at {address} did not reach {count} nodes in {timeout_s}s; "
        f"logs in {log_dir}"
    )


def stop_sessions(pgids: list[int], grace_s: float = 3.0) -> None:
    """SIGTERM each node's process session, then SIGKILL whatever is left."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(session_alive(p) for p in pgids):
        time.sleep(0.1)
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0  # a killed process can take a moment to go
    while time.monotonic() < deadline and any(session_alive(p) for p in pgids):
        time.sleep(0.05)
    for pgid in pgids:  # reap our direct children
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pgid, os.WNOHANG)


def stop(name: str) -> bool:
    """Stop the named local cluster; returns False if none was recorded."""
    state = load_state(name)
    if state is None:
        return False
    stop_sessions(state.pgids)
    if state.isolation == "netns":
        NetnsNetwork.for_cluster(name, state.nodes).destroy()
    state.path().unlink(missing_ok=True)
    token_file(name).unlink(missing_ok=True)
    return True


def wait_until_ready(state: LocalClusterState, timeout_s: float) -> bool:
    """A recorded cluster whose head is alive may still be starting (another process just
    ran ``start``): give it time to open its port. False if stale."""
    host, port = state.address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while state.pgids and session_alive(state.pgids[0]):
        if port_open(host, int(port)):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return False


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Hold the cluster's lock: claiming, joining and leaving it are one step each."""
    fd = os.open(state_dir() / f"local-{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _users_dir(name: str) -> Path:
    path = state_dir() / f"local-{name}.users"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def users(name: str) -> list[int]:
    """The live commands using the cluster (the files of ended ones are dropped)."""
    alive = []
    for entry in _users_dir(name).iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name)):
            alive.append(int(entry.name))
        else:
            entry.unlink(missing_ok=True)
    return sorted(alive)


def _join(cluster: Any) -> tuple[LocalClusterState | None, bool]:
    """Under the lock: the cluster of that name to use and whether this process must start
    it; a command's own cluster counts this process among its users."""
    with _locked(cluster.name):
        state = load_state(cluster.name)
        if state and not in_use(state):
            stop(cluster.name)  # left behind by a command that was killed
            state = None
        if state is None:
            _claim(cluster, kept=False)
        if state is None or not state.kept:
            (_users_dir(cluster.name) / str(os.getpid())).touch(mode=0o600)
        return state, state is None


def _leave(name: str, address: str) -> None:
    """Under the lock: this process no longer uses the cluster; the last user of a
    command's own cluster stops it."""
    with _locked(name):
        (_users_dir(name) / str(os.getpid())).unlink(missing_ok=True)
        state = load_state(name)
        if state and not state.kept and state.address == address and not users(name):
            stop(name)


def _wait_ready(state: LocalClusterState, timeout_s: float) -> LocalClusterState | None:
    """Wait for a cluster another process is starting; None when that start failed."""
    deadline = time.monotonic() + timeout_s
    while True:
        latest = load_state(state.name)
        if latest is None or not in_use(latest):
            return None
        if latest.ready and wait_until_ready(latest, timeout_s):
            return latest
        if time.monotonic() > deadline:
            raise GosokError(
                f"local cluster {state.name!r}, which gosok command pid {latest.starter_pid} "
                f"is starting, did not come up in {timeout_s}s (logs in {latest.log_dir or '?'})"
            )
        time.sleep(0.25)


@contextlib.contextmanager
def local_cluster(cluster: Any) -> Iterator[tuple[str, bool]]:
    """Yield (address, ephemeral): use the running cluster of that name (waiting while
    another command starts it), or start one; a cluster no ``gosok cluster up`` started is
    stopped when the last command using it ends, also on errors and Ctrl-C."""
    for _ in range(3):  # a start another command was making failed: take it over
        state, mine = _join(cluster)
        if mine:
            break
        assert state is not None
        if not state.ready:
            print(
                f"local Ray cluster {cluster.name!r} is being started by gosok command pid "
                f"{state.starter_pid}: waiting for its {state.nodes} node(s) ...", flush=True,
            )  # fmt: skip
        ready = _wait_ready(state, cluster.local.start_timeout_s)
        if ready is None:
            _leave(cluster.name, "")
            continue
        if cluster.isolation != ready.isolation:
            # The run happens on the cluster that is up: its config says how it really ran.
            cluster.isolation = ready.isolation
        try:
            yield ready.address, not ready.kept
        finally:
            if not ready.kept:
                _leave(cluster.name, ready.address)
        return
    else:
        raise GosokError(f"local cluster {cluster.name!r} could not be started; see the logs")
    begun = time.monotonic()
    where = "separate netns hosts" if cluster.isolation == "netns" else "loopback"
    print(
        f"starting local Ray cluster {cluster.name!r}: {cluster.nodes} node(s) x "
        f"{cluster.gpus_per_node} rank slots on {where} ...",
        end="", flush=True,
    )  # fmt: skip
    try:
        address = _start_claimed(cluster, 2, kept=False).address
    except BaseException:
        print(" failed", flush=True)
        _leave(cluster.name, "")
        raise
    print(f" up in {time.monotonic() - begun:.0f} s", flush=True)
    try:
        yield address, True
    finally:
        _leave(cluster.name, address)
