"""The audit trail a command is asked to leave: the key that signs its results file and
the auditor's nonce it records. Shared by ``gosok bench`` (results.json) and ``gosok
launch`` (launch.json).

Use: ``validate_trust(cfg)`` before anything starts; ``sign.key`` / ``audit.nonce``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SignConfig:
    """Signing the results file with the operator's Ed25519 key (``gosok keys new``)."""

    #: Path of the PEM Ed25519 private key (mode 0600) that signs results.json; None: unsigned.
    key: str | None = None


@dataclass
class AuditConfig:
    """What an auditor asked the run to record."""

    #: The auditor's nonce (at most 256 printable characters), recorded at audit.nonce and
    #: covered by the signature: proves the results come from a run made after it was issued.
    nonce: str | None = None


def validate_trust(cfg: Any) -> list[str]:
    """Problems with ``sign.key`` and ``audit.nonce``, each naming the field and what is allowed."""
    from gosok.launcher.results.signing import MAX_NONCE_CHARS, load_private_key, nonce_problem

    problems = []
    key = cfg.sign.key
    if key is not None:
        try:
            load_private_key(key)
        except ValueError as err:
            problems.append(
                f"sign.key={key!r}: {err}; allowed: an unencrypted Ed25519 PEM private key "
                "readable by its owner only (make one with gosok keys new --out PREFIX)"
            )
    nonce = cfg.audit.nonce
    if nonce is not None:
        problem = nonce_problem(nonce)
        if problem:
            shown = nonce if len(nonce) <= 40 else nonce[:40] + "..."
            problems.append(
                f"audit.nonce={shown!r} {problem}; allowed: 1 to {MAX_NONCE_CHARS} "
                "printable characters"
            )
    return problems
