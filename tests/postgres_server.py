"""A real PostgreSQL server for the ledger's tests: its own data directory, socket and
loopback port, run as a non-root user (the server refuses root; as root the tests use the
package's ``postgres`` user). Password authentication over TCP, as a central ledger uses
it: the password reaches libpq through ``PGPASSWORD``, never the URL.

Use::

    server = PostgresServer.start()          # skips the test when PostgreSQL is absent
    env = {**os.environ, **server.env}       # PGPASSWORD for the ledger's user
    Ledger.open(server.url)
    server.stop(); server.start_again()      # a restart mid-run
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "gosok"
PASSWORD = "ledger-test-password"
DATABASE = "ledger"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    """A free port below the kernel's ephemeral range and above Ray's worker ports
    (10002-19999): a restarted server must find its port still free, not taken by an
    outgoing connection or a Ray process that started while it was down."""
    for port in random.sample(range(21000, 32000), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 21000-32000 for the test PostgreSQL")


@dataclass
class PostgresServer:
    bindir: Path
    base: Path
    port: int
    run_as: str | None
    database: str = DATABASE
    durable: bool = False  # True: fsync and full-page writes as a production server has them

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{self.database}"

    @property
    def env(self) -> dict[str, str]:
        return {"PGPASSWORD": PASSWORD}

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=60)

    @classmethod
    def start(cls, durable: bool = False) -> PostgresServer:
        bindir = _bindir()
        if bindir is None:
            pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
        run_as = None
        if os.getuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root without a postgres user to run the server as")
            run_as = "postgres"
        base = Path(tempfile.mkdtemp(prefix="gosok-pg-"))
        base.chmod(0o755)
        if run_as:
            shutil.chown(base, run_as)
        server = cls(bindir, base, _free_port(), run_as, durable=durable)
        pwfile = base / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if run_as:
            shutil.chown(pwfile, run_as)
        server._run(
            "initdb",
            "-D",
            str(base / "data"),
            "-U",
            USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
        )
        pwfile.unlink()
        server.start_again()
        server._run(
            "createdb", "-h", str(base), "-p", str(server.port), "-U", USER, server.database
        )
        return server

    def start_again(self) -> None:
        # fsync=off is safe against the server being killed (the OS keeps what it wrote);
        # synchronous_commit stays on: a commit the ledger was told of must survive a kill.
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        started = self._run(
            "pg_ctl", "-D", str(self.base / "data"), "-o", options,
            "-l", str(self.base / "server.log"), "-w", "start", check=False,
        )  # fmt: skip
        if started.returncode != 0:
            log = (self.base / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n{log}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.base / "data"), "-m", mode, "-w", "stop", check=False)

    def fresh_database(self, name: str) -> str:
        """A new empty database on this server; its URL."""
        self._run("createdb", "-h", str(self.base), "-p", str(self.port), "-U", USER, name)
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.stop("immediate")
        with contextlib.suppress(OSError):
            shutil.rmtree(self.base)
