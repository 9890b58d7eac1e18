"""A cluster gosok starts lets no one else in: its Ray services require the cluster's
token, the token file is private, and the node address is loopback."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

from gosok.launcher.cluster import local as local_cluster

PROBE = (
    "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
    "print('CONNECTED', len(ray.nodes()))"
)


def _connect(address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE, address], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_only_holders_of_the_token_get_in(ray_cluster):
    token = local_cluster.token_file(ray_cluster.name)
    assert token.stat().st_mode & 0o077 == 0
    assert ipaddress.ip_address(ray_cluster.node_ip).is_loopback
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    stranger = _connect(ray_cluster.address, {**base, "RAY_AUTH_MODE": "disabled"})
    assert "CONNECTED" not in stranger.stdout
    wrong = _connect(
        ray_cluster.address, {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    )
    assert "CONNECTED" not in wrong.stdout
    owner = _connect(ray_cluster.address, {**base, **local_cluster.auth_env(ray_cluster.name)})
    assert "CONNECTED" in owner.stdout, owner.stderr[-2000:]
