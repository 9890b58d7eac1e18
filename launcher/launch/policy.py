"""What ``gosok launch`` does after an attempt ends: stop, or restart and on which nodes.

Pure: no Ray, no processes. The supervisor reports each attempt's end as an ``Ended``
(its failure kind, whether it was the infrastructure's fault, its failure signature and
the nodes it blames) together with the nodes that could host a rank now, and gets a
``Decision`` back. The rules, after Ray Train's ``FailurePolicy`` and torchrun's
``--max-restarts``:

- success ends the run;
- a kind no restart can help (``disk_full``) stops at once;
- the same non-infrastructure failure ``same_failure_limit`` times in a row is taken as a
  config or code error and stops (an infrastructure failure in between resets the count);
- more than ``max_failures`` failures stop;
- otherwise restart. With ``exclude_failed_nodes``, the nodes blamed go on the blocklist
  for the rest of the run when enough other nodes can host the job (failover to spares);
  with too few, they stay in the pool and the decision says so.

Use::

    policy = RestartPolicy(cfg.fault, nodes_needed=cfg.cluster.nodes)
    decision = policy.after(Ended(kind, infra, signature, blamed), usable_node_ids)
    decision.restart, decision.message, policy.blocklist
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NOT_RETRIED = ("disk_full",)  # a restart cannot help: it needs the user
KINDS = (
    "ok", "exit", "signal", "node_lost", "worker_lost", "hang", "spawn", "startup_timeout",
    "placement", "disk_full",
)  # fmt: skip


@dataclass(frozen=True)
class Ended:
    """How one attempt ended, as the policy needs it."""

    kind: str
    infra: bool = False
    signature: str = ""
    blamed_node_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    restart: bool
    ok: bool = False
    message: str = ""
    excluded: tuple[str, ...] = ()  # nodes put on the blocklist by this decision
    kept: tuple[str, ...] = ()  # blamed nodes kept in the pool: no spare to replace them


@dataclass
class RestartPolicy:
    """The restart rules of one run (see the module doc); holds the run's counters."""

    fault: Any  # max_failures, same_failure_limit, exclude_failed_nodes
    nodes_needed: int
    failures: int = 0
    same: int = 0
    last_signature: str = ""
    blocklist: list[str] = field(default_factory=list)

    def after(self, ended: Ended, usable_node_ids: list[str] | tuple[str, ...] = ()) -> Decision:
        """The decision after an attempt; ``usable_node_ids``: the live nodes that could
        host a node's ranks now (blocklisted ones included or not, they are left out)."""
        if ended.kind not in KINDS:
            raise ValueError(f"unknown failure kind {ended.kind!r}; known: {KINDS}")
        if ended.kind == "ok":
            return Decision(False, ok=True)
        self.failures += 1
        if ended.infra:
            self.same, self.last_signature = 0, ""
        else:
            same = ended.signature == self.last_signature
            self.same = self.same + 1 if same else 1
            self.last_signature = ended.signature
        if ended.kind in NOT_RETRIED:
            return Decision(False, message=f"{ended.kind}: a restart cannot help; not retrying")
        if not ended.infra and self.same >= self.fault.same_failure_limit:
            return Decision(
                False,
                message=(
                    f"the same failure happened {self.same} time(s) in a row "
                    f"({ended.signature}); this looks like a config or code error, "
                    "not an infrastructure fault: not retrying"
                ),
            )
        if self.failures > self.fault.max_failures:
            return Decision(
                False,
                message=(
                    f"gave up after {self.failures} failure(s) "
                    f"(fault.max_failures={self.fault.max_failures})"
                ),
            )
        excluded, kept = self._failover(ended.blamed_node_ids, usable_node_ids)
        return Decision(True, excluded=excluded, kept=kept)

    def _failover(
        self, blamed: tuple[str, ...], usable: list[str] | tuple[str, ...]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if not self.fault.exclude_failed_nodes:
            return (), ()
        new = tuple(dict.fromkeys(n for n in blamed if n not in self.blocklist))
        if not new:
            return (), ()
        left = [n for n in usable if n not in self.blocklist and n not in new]
        if len(left) >= self.nodes_needed:
            self.blocklist += list(new)
            return new, ()
        return (), new
