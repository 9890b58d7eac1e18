"""How far a results file can be trusted: its seal, its signature, the auditor's nonce and
whether every derived figure re-derives from its raw data. Shared by ``gosok report
verify``, ``sign``, ``compare`` and ``audit``.

Use::

    doc, sealed = load_input(path)                  # InputError: one line, exit 2
    keys = load_public_keys(["provider.pub"])       # InputError on a bad key file
    verdict = assess(path, doc, sealed, keys, ["nonce-2025q3"])
    verdict.passed; verdict.lines()                 # one line per aspect

Aspects: ``seal`` (sha256, an accident check only: anyone can recompute it), ``signature``
(ed25519, checked only against the public keys given), ``nonce`` (only when the auditor
gives one; a match is only worth something with a valid signature), ``figures`` (every
derived figure re-derived, see ``rederive``) and ``notes`` (when the recorded GPU entry,
contract or settings are not gosok's own).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gosok.benchmarks.core.rederive import Rederivation, rederivation
from gosok.launcher.results.signing import (
    SIGNATURE_FIELD,
    SignatureCheck,
    fingerprint,
    load_public_key,
    nonce_problem,
    verify_signature,
)
from gosok.launcher.results.store import SCHEMA, verify

OK, FAIL, NOT_CHECKED, NOTE = "OK", "FAIL", "NOT CHECKED", "NOTE"
MAX_FILE_BYTES = 1 << 30


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: Any) -> str:
    """``text`` with every control character (escape sequences, carriage returns, line
    breaks) shown as ``\\xNN``: what a results file says can never move the cursor, rewrite a
    line of ``verify``'s output or start a new one."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


class InputError(ValueError):
    """A report input that cannot be used at all (one line naming the file and why)."""


def load_input(path: str | Path) -> tuple[dict[str, Any], bool]:
    """Read a results file: ``(document, seal_matches)``; ``InputError`` when it is not one."""
    target = Path(path)
    try:
        if target.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB; not a results file")
        data = target.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a results file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read it: {err.strerror or err}") from None
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text, so not a results file") from None
    except json.JSONDecodeError as err:
        raise InputError(
            f"{path}: not valid JSON (truncated or corrupt): {err.msg} at line {err.lineno} "
            f"column {err.colno}"
        ) from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to be a results file") from None
    except ValueError as err:  # an integer longer than Python converts (4300 digits)
        raise InputError(f"{path}: not a results file: {str(err).split(':')[0]}") from None
    if not isinstance(doc, dict):
        what = {list: "an array", str: "a string"}.get(type(doc), f"a {type(doc).__name__}")
        raise InputError(f"{path}: a results file is a JSON object; this is {what}")
    schema = doc.get("schema")
    if not isinstance(schema, str) or schema.split("/")[0] != SCHEMA.split("/")[0]:
        raise InputError(
            f"{path}: not a gosok results file (schema={schema!r}; expected {SCHEMA!r})"
        )
    if not isinstance(doc.get("kind"), str):
        raise InputError(f"{path}: field 'kind' is missing or not a string")
    try:
        sealed = verify(doc)
    except (ValueError, RecursionError):  # NaN or infinity cannot be in a sealed file
        sealed = False
    return doc, sealed


@dataclass(frozen=True)
class PublicKey:
    path: str
    key: Any
    fingerprint: str


def load_public_keys(paths: list[str] | None) -> list[PublicKey]:
    """Load the auditor's ``--public-key`` files; ``InputError`` naming a bad one."""
    keys = []
    for path in paths or []:
        try:
            key = load_public_key(path)
        except ValueError as err:
            raise InputError(f"--public-key {path}: {err}") from None
        keys.append(PublicKey(path, key, fingerprint(key)))
    return keys


def check_nonces(nonces: list[str] | None) -> list[str]:
    """The auditor's ``--nonce`` values; ``InputError`` naming a bad one."""
    for nonce in nonces or []:
        problem = nonce_problem(nonce)
        if problem:
            raise InputError(f"--nonce {nonce[:40]!r} {problem}")
    return list(nonces or [])


@dataclass
class Aspect:
    name: str
    status: str  # OK | FAIL | NOT CHECKED | NOTE
    detail: str
    more: list[str] = field(default_factory=list)


@dataclass
class Assessment:
    """Every aspect of one file, with the re-derivation behind the figures."""

    path: str
    doc: dict[str, Any]
    rederived: Rederivation
    aspects: list[Aspect]
    signature: SignatureCheck | None = None
    signer: str | None = None  # the --public-key file that verified it

    @property
    def passed(self) -> bool:
        return all(a.status != FAIL for a in self.aspects)

    @property
    def malformed(self) -> bool:
        return self.rederived.malformed is not None

    def aspect(self, name: str) -> Aspect | None:
        return next((a for a in self.aspects if a.name == name), None)

    def failed(self) -> list[str]:
        return [a.name for a in self.aspects if a.status == FAIL]

    @property
    def verified(self) -> bool:
        """Every aspect holds and a key the auditor gave verified the signature: an unsigned
        file, or one whose signature was not checked, is never VERIFIED."""
        return self.passed and self.signature is not None and self.signature.ok

    def verdict(self) -> str:
        if not self.passed:
            return "NOT VERIFIED (" + ", ".join(self.failed()) + ")"
        if self.verified:
            return "VERIFIED"
        if _signed_by(self.doc) is None:
            return "UNSIGNED (nothing says who made it)"
        return "SIGNATURE NOT CHECKED (give --public-key)"

    def lines(self, limit: int = 20) -> list[str]:
        out = []
        for a in self.aspects:
            out.append(f"  {a.name:<10s} {a.status:<12s}{a.detail}")
            out += [f"      - {m}" for m in a.more[:limit]]
            if len(a.more) > limit:
                out.append(f"      - ... and {len(a.more) - limit} more")
        return [printable(line) for line in (f"{self.path}: {self.verdict()}", *out)]


def _signed_by(doc: dict[str, Any]) -> str | None:
    block = doc.get(SIGNATURE_FIELD)
    if isinstance(block, dict) and isinstance(block.get("public_key_fingerprint"), str):
        return block["public_key_fingerprint"]
    return None


def signature_aspect(
    doc: dict[str, Any], keys: list[PublicKey]
) -> tuple[Aspect, SignatureCheck | None, str | None]:
    """Check the signature against the key (of those given) that the file names."""
    if not keys:
        signer = _signed_by(doc)
        said = f"the file says it is signed by {signer}" if signer else "the file is unsigned"
        detail = f"no --public-key given, so the signature was not checked ({said})"
        return Aspect("signature", NOT_CHECKED, detail), None, None
    signer = _signed_by(doc)
    chosen = next((k for k in keys if k.fingerprint == signer), keys[0])
    check = verify_signature(doc, chosen.key)
    if check.status == "wrong_key" and len(keys) > 1:
        detail = f"wrong_key: signed by {signer}, which is none of the {len(keys)} keys given"
        return Aspect("signature", FAIL, detail), check, None
    if check.ok:
        return Aspect("signature", OK, f"{check.detail} ({chosen.path})"), check, chosen.path
    return Aspect("signature", FAIL, f"{check.status}: {check.detail}"), check, None


def nonce_aspect(
    doc: dict[str, Any], nonces: list[str], signature: SignatureCheck | None
) -> Aspect:
    """The recorded nonce against the auditor's; a match counts only under a valid signature."""
    if not nonces:
        return Aspect("nonce", NOT_CHECKED, "no --nonce given")
    audit = doc.get("audit")
    recorded = audit.get("nonce") if isinstance(audit, dict) else None
    if isinstance(recorded, str) and recorded in nonces:
        if signature is None:
            return Aspect(
                "nonce",
                OK,
                "audit.nonce matches (signature not checked: give --public-key "
                "for the match to prove anything)",
            )
        if signature.ok:
            return Aspect("nonce", OK, "audit.nonce matches and is covered by the valid signature")
        return Aspect(
            "nonce",
            FAIL,
            "audit.nonce matches but is not covered by a valid signature, so "
            "anyone could have written it",
        )
    if len(nonces) == 1:
        from gosok.launcher.results.signing import check_nonce

        return Aspect("nonce", FAIL, check_nonce(doc, nonces[0]) or "mismatch")
    return Aspect(
        "nonce", FAIL, f"audit.nonce {recorded!r} is none of the {len(nonces)} nonces given"
    )


def figures_aspect(result: Rederivation) -> Aspect:
    if result.malformed:
        return Aspect("figures", FAIL, f"malformed: {result.malformed}")
    if result.problems:
        return Aspect(
            "figures",
            FAIL,
            f"{len(result.problems)} stored figure(s), check(s) or verdict(s) do not follow "
            "from the raw data",
            [*result.problems, *(f"no raw data: {m}" for m in result.missing)],
        )
    if result.missing:
        return Aspect(
            "figures",
            FAIL,
            f"not re-derivable: {len(result.missing)} figure(s) have no raw data",
            list(result.missing),
        )
    return Aspect(
        "figures",
        OK,
        f"every derived figure re-derives from the raw data ({result.compared} compared)",
    )


def rederive_doc(doc: dict[str, Any]) -> Rederivation:
    """Re-derive ``doc`` through the ``rederive`` hook of the benchmark that writes its kind."""
    from gosok.benchmarks.core.registry import for_kind

    kind = doc.get("kind")
    if doc.get("incomplete") is True:
        unfinished = "the run did not finish (incomplete results): no full set of figures"
        return Rederivation(str(kind), None, malformed=unfinished)
    record = for_kind(kind) if isinstance(kind, str) else None
    if record is None:
        return Rederivation(
            str(kind), None, malformed=f"no benchmark writes results of kind {kind!r}"
        )
    if record.rederive is None:
        return Rederivation(kind, None, malformed=f"results of kind {kind!r} cannot be re-derived")
    return rederivation(record.rederive, kind, doc)


def assess(
    path: str,
    doc: dict[str, Any],
    sealed: bool,
    keys: list[PublicKey],
    nonces: list[str],
    result: Rederivation | None = None,
    contract: str | None = None,
) -> Assessment:
    """Every aspect of one loaded results file (see the module doc); ``contract`` is the
    auditor's (a name or a path), else gosok's own is the reference."""
    from gosok.benchmarks.report.reference import reference_aspect

    if doc.get("source") == "nccl-tests" and "sha256" not in doc:
        seal = Aspect("seal", NOT_CHECKED, "written by nccl-tests: no seal and no signature")
    elif sealed:
        seal = Aspect("seal", OK, "sha256 matches the content (an accident check only)")
    elif "sha256" not in doc:
        seal = Aspect("seal", FAIL, "the file has no sha256")
    else:
        seal = Aspect(
            "seal", FAIL, "TAMPERED: sha256 does not match the content (edited since written)"
        )
    signature, check, signer = signature_aspect(doc, keys)
    nonce = nonce_aspect(doc, nonces, check)
    result = result if result is not None else rederive_doc(doc)
    aspects = [seal, signature, nonce, figures_aspect(result)]
    aspects.append(reference_aspect(doc, result.doc, contract))
    if result.notes:
        aspects.append(
            Aspect("notes", NOTE, "judged with what the file recorded", list(result.notes))
        )
    return Assessment(path, doc, result, aspects, check, signer)
