"""What every benchmark driver shares: the run directory, connecting to the cluster,
bringing up the ranks, fingerprinting the nodes, and writing the sealed results file.

Use::

    with bench_session(cfg) as session:          # Ray connected, ranks up
        rows = session.group.run(rank_fn, ...)
    path = write_run_results(kind, cfg, session, payload)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gosok.launcher.config.secrets import redacted_config
from gosok.launcher.ranks.fingerprint import driver_fingerprint, per_node_fingerprint
from gosok.launcher.results.journal import JOURNAL_NAME, journaling, read_journal
from gosok.launcher.results.run_dir import run_dir
from gosok.launcher.results.store import write_results

if TYPE_CHECKING:  # Ray loads only when a session starts, not on refused input
    from gosok.launcher.launch.worker_group import WorkerGroup

PARTIAL_NAME = "results.partial.json"


@dataclass
class BenchSession:
    group: WorkerGroup
    address: str
    ephemeral_cluster: bool
    nodes: list[dict[str, Any]] = field(default_factory=list)
    started_unix: float = field(default_factory=time.time)

    def placement(self) -> list[dict[str, Any]]:
        return [
            {
                k: info.get(k)
                for k in (
                    "rank",
                    "node_rank",
                    "local_rank",
                    "node_id",
                    "ip",
                    "hostname",
                    "pid",
                    "device_name",
                )
            }
            for info in self.group.rank_info
        ]


def results_kind(cfg: Any) -> str:
    """The benchmark (and results kind) a composed config runs: ``bench.name``, or the
    suite, or the auditor's spot check (``suite=spotcheck``)."""
    if cfg.get("suite"):
        return "spotcheck" if cfg.suite.name == "spotcheck" else "suite"
    return str(cfg.bench.name)


@contextlib.contextmanager
def bench_session(
    cfg: Any, timeout_s: float | None = None, pin_nodes: tuple[dict[str, Any], ...] = ()
) -> Iterator[BenchSession]:
    """Ray connected and ranks up; every measurement noted in the run's journal as it is
    taken. On Ctrl-C the measurements so far are sealed into ``results.partial.json``.
    ``pin_nodes``: run on exactly these nodes of the cluster (``{node_id, ip, hostname}``
    each, as a results file lists them), node rank i on the i-th."""
    from gosok.launcher.cluster.connect import ray_cluster
    from gosok.launcher.launch.worker_group import WorkerGroup

    timeout = timeout_s or cfg.collective_timeout_s
    journal_path = run_dir() / JOURNAL_NAME
    header = {"kind": results_kind(cfg), "config": redacted_config(cfg)}
    with journaling(journal_path, header):
        try:
            with (
                ray_cluster(cfg.cluster) as connection,
                WorkerGroup(
                    _pinned_cluster(cfg.cluster, len(pin_nodes)), timeout, pin_nodes=pin_nodes
                ) as group,
            ):
                nodes = [n for n in group.run(per_node_fingerprint) if n is not None]
                yield BenchSession(group, connection.address, connection.ephemeral, nodes)
        except KeyboardInterrupt:
            write_partial_results(journal_path, run_dir() / PARTIAL_NAME)
            raise


def _pinned_cluster(cluster: Any, nodes: int) -> Any:
    if not nodes:
        return cluster
    from omegaconf import OmegaConf

    copy = OmegaConf.structured(OmegaConf.to_object(cluster))
    copy.nodes = nodes
    return copy


def write_partial_results(journal_path: Path, path: Path) -> Path | None:
    """Seal what the journal holds into a results file marked incomplete."""
    try:
        header, entries = read_journal(journal_path)
    except (OSError, ValueError):
        return None
    doc = {
        "kind": header.get("kind", "unknown"),
        "incomplete": True,
        "config": header.get("config", {}),
        "started_unix": header.get("started_unix"),
        "finished_unix": time.time(),
        "records": [e["record"] for e in entries if e.get("kind") == header.get("kind")],
        "journal": [{"kind": e["kind"], "unix": e["unix"]} for e in entries],
    }
    write_results(path, doc)
    return path


def write_run_results(
    kind: str, cfg: Any, session: BenchSession, payload: dict[str, Any], name: str | None = None
) -> Path:
    plan = session.group.plan
    doc = {
        "kind": kind,
        "config": redacted_config(cfg),
        "env": {
            "driver": driver_fingerprint(),
            "nodes": session.nodes,
            "ray_address": session.address,
            "placement": session.placement(),
            "plan": plan.summary() if plan else None,
            "process_group_init_seconds": session.group.pg_init_seconds,
        },
        "started_unix": session.started_unix,
        "finished_unix": time.time(),
        **payload,
    }
    path = run_dir() / (name or cfg.output.results_name)
    doc, unsigned_because = _audit_and_sign(doc, cfg, session)
    write_results(path, doc)
    signature = doc.get("signature") or {}
    if signature.get("public_key_fingerprint"):
        nonce = (doc.get("audit") or {}).get("nonce")
        print(
            f"signed: {path} with key {signature['public_key_fingerprint']}"
            + (f", auditor's nonce {nonce!r}" if nonce else ""),
            flush=True,
        )
    if unsigned_because:
        from gosok.launcher.errors import GosokError

        raise GosokError(
            f"results written UNSIGNED to {path}: {unsigned_because}; sign them with "
            f"gosok report sign {path} --key KEY"
        )
    return path


def _audit_and_sign(
    doc: dict[str, Any], cfg: Any, session: BenchSession
) -> tuple[dict[str, Any], str | None]:
    """Record ``audit`` (the auditor's nonce, node identities) and sign with ``sign.key``.

    Returns the document to seal and, if signing failed, why (the run's results are then
    written unsigned rather than lost).
    """
    from gosok.launcher.results.signing import sign_doc
    from gosok.launcher.results.store import SCHEMA

    placement_ip = {p.get("node_id"): p.get("ip") for p in session.placement()}
    identity_keys = ("node_rank", "hostname", "ray_node_id", "gpus", "gpu_uuids", "gpu_serials")
    nodes = [
        {
            **{k: node[k] for k in identity_keys if node.get(k) is not None},
            "ip": placement_ip.get(node.get("ray_node_id")),
        }
        for node in session.nodes
    ]
    audit = getattr(cfg, "audit", None)
    doc = {
        **doc,
        "schema": SCHEMA,
        "created_unix": time.time(),
        "audit": {"nonce": getattr(audit, "nonce", None), "nodes": nodes},
    }
    key = getattr(getattr(cfg, "sign", None), "key", None)
    if key is None:
        return doc, None
    try:
        return sign_doc(doc, key), None
    except ValueError as err:
        return doc, str(err)
