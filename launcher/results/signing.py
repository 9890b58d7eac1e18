"""Ed25519 signatures on gosok results files, so auditors can tell who produced a result.

A results file's ``sha256`` only catches accidents: anyone who edits the file can recompute
it. A signature made with a private key that only the benchmark operator holds cannot be
recomputed; an auditor who has the matching ``.pub`` file checks it with
``verify_signature``.

Use::

    key, pub = new_keypair("~/.gosok/bench")    # bench.key (0600) and bench.pub (0644)
    signed = sign_doc(doc, key)                  # adds doc["signature"]; drops a stale sha256
    write_results(path, signed)                  # re-seals: the sha256 then covers the signature
    check = verify_signature(load_results(path), pub)
    check.status  # "valid" | "unsigned" | "wrong_key" | "invalid" | "malformed"
    check_nonce(doc, nonce)  # None, or why doc["audit"]["nonce"] is not the auditor's nonce
    sign_file("outputs/launch/<run>/launch.json", "~/.gosok/bench.key")  # sign in place

What is signed (``signed_bytes``): the canonical JSON (sorted keys, no spaces, no NaN) of
``{"content": body, "signer": {"algorithm", "public_key_fingerprint", "signed_unix"}}``,
where ``body`` is the whole document except its ``signature`` block and its ``sha256``. So
the signature covers every measurement, the config, the environment and ``audit.nonce``, and
also the algorithm, the key fingerprint and the signing time recorded beside it. The
``sha256`` is computed afterwards and covers the signature block too.

The signature covers the JSON form of the document, as written to and read from disk: a
tuple signs like a list. Verify documents as loaded from their JSON file.

Fingerprints are ``"ed25519:"`` followed by the full 64-hex-digit sha256 of the raw 32-byte
public key, so two keys never share one in practice.

This module imports nothing from gosok (stdlib and ``cryptography`` only); ``sign_file``
re-seals through the sibling ``store`` module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "ed25519"
SIGNATURE_FIELD = "signature"
SHA256_FIELD = "sha256"
SIGNATURE_KEYS = frozenset({"algorithm", "public_key_fingerprint", "signed_unix", "value"})
FINGERPRINT_PREFIX = "ed25519:"
SIGNATURE_LEN = 64  # bytes of a raw Ed25519 signature
MAX_KEY_FILE_BYTES = 64 * 1024
MAX_NONCE_CHARS = 256

SignatureStatus = Literal["valid", "unsigned", "wrong_key", "invalid", "malformed"]


@dataclass(frozen=True)
class SignatureCheck:
    """The outcome of ``verify_signature``: a ``status`` and a one-line ``detail``.

    ``valid``: signed by the given key and unchanged since. ``unsigned``: no signature block.
    ``wrong_key``: signed, but the block names another key's fingerprint. ``invalid``: the
    signature does not verify (content edited, or the block forged). ``malformed``: not a
    document, or the signature block is not well formed.
    """

    status: SignatureStatus
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "valid"


# -- canonical encoding ----------------------------------------------------------------------


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _find_nonfinite(obj: Any) -> str | None:
    """The dotted path of the first NaN or infinite float in ``obj``, or None."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return where or "<document>"
        if isinstance(value, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
    return None


def _content(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in (SIGNATURE_FIELD, SHA256_FIELD)}


def _signed_message(content: dict[str, Any], signer: dict[str, Any]) -> bytes:
    try:
        return _canonical({"content": content, "signer": signer})
    except ValueError as err:
        where = _find_nonfinite(content)
        if where is not None:
            raise ValueError(
                f"document has a NaN or infinite number at {where}; JSON cannot hold it, so it "
                "cannot be signed (record it as null or a string)"
            ) from err
        raise ValueError(f"document is not canonical JSON: {err}") from err
    except TypeError as err:
        raise ValueError(f"document is not JSON-serialisable: {err}") from err
    except RecursionError as err:
        raise ValueError("document is nested too deeply to encode") from err


def signed_bytes(doc: dict[str, Any]) -> bytes:
    """The exact bytes the signature in ``doc["signature"]`` is over.

    Canonical JSON of ``{"content": doc minus "signature" and "sha256", "signer": {...}}``
    where ``signer`` is the signature block without its ``value`` (``algorithm``,
    ``public_key_fingerprint``, ``signed_unix``). Raises ``ValueError`` if ``doc`` has no
    signature block, or holds NaN/infinity or values JSON cannot encode.
    """
    if not isinstance(doc, dict):
        raise ValueError(f"a results document is a JSON object, not {type(doc).__name__}")
    block = doc.get(SIGNATURE_FIELD)
    if not isinstance(block, dict):
        raise ValueError("document has no signature block (a dict at doc['signature'])")
    signer = {k: v for k, v in block.items() if k != "value"}
    return _signed_message(_content(doc), signer)


# -- keys ------------------------------------------------------------------------------------


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ValueError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{what} file is a directory: {path}") from None
    except OSError as err:
        raise ValueError(f"cannot read {what} file {path}: {err.strerror or err}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{path} is too large to be a {what} file")
    if b"-----BEGIN " not in data:
        raise ValueError(f"{path} is not a PEM {what} file (no '-----BEGIN' line)")
    return data


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load an unencrypted PEM (PKCS8) Ed25519 private key.

    Raises ``ValueError`` naming ``path`` if the file is missing, not PEM, encrypted, not
    Ed25519, or readable by group or others (like ssh: ``chmod 600 PATH``).
    """
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ValueError(f"private key file not found: {path}") from None
    except OSError as err:
        raise ValueError(f"cannot stat private key file {path}: {err.strerror or err}") from None
    if os.name == "posix" and stat.S_ISREG(mode) and mode & 0o077:
        raise ValueError(
            f"private key file {path} is accessible by group or others (mode "
            f"{stat.S_IMODE(mode):04o}); refusing to use it: run chmod 600 {path}"
        )
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(
            f"private key file {path} is encrypted; gosok needs an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load a PEM (SubjectPublicKeyInfo) Ed25519 public key.

    Raises ``ValueError`` naming ``path`` if the file is missing, not a PEM public key
    (a private key file included), or not Ed25519.
    """
    path = Path(path).expanduser()
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY" in data:
        raise ValueError(f"{path} is a private key; give the public key (.pub) file")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def fingerprint(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """``"ed25519:"`` + the full sha256 hex of the raw 32-byte public key.

    A private key is accepted and fingerprinted by its public half.
    """
    if isinstance(public_key, Ed25519PrivateKey):
        public_key = public_key.public_key()
    if not isinstance(public_key, Ed25519PublicKey):
        raise TypeError(f"expected an Ed25519 public key, got {type(public_key).__name__}")
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return FINGERPRINT_PREFIX + hashlib.sha256(raw).hexdigest()


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (O_EXCL: never overwrite), write, fsync."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it") from None
    except FileNotFoundError:
        raise ValueError(f"directory {path.parent} does not exist") from None
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)  # exactly ``mode`` whatever the umask
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        if fd != -1:
            os.close(fd)
        path.unlink(missing_ok=True)
        raise


def new_keypair(prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair to ``PREFIX.key`` (0600) and ``PREFIX.pub`` (0644).

    The private key is unencrypted PEM PKCS8, created with mode 0600 from the first byte;
    the public key is PEM SubjectPublicKeyInfo. Refuses (``FileExistsError``) if either file
    already exists; raises ``ValueError`` if the directory does not exist. Returns
    ``(key_path, pub_path)``.
    """
    raw_prefix = os.fspath(prefix)
    base = Path(raw_prefix).expanduser()
    if not raw_prefix or raw_prefix.endswith(("/", os.sep)) or base.is_dir():
        raise ValueError(f"key prefix {raw_prefix!r} is a directory; give DIR/NAME")
    key_path = base.with_name(base.name + ".key")
    pub_path = base.with_name(base.name + ".pub")
    for existing in (key_path, pub_path):
        if existing.exists() or existing.is_symlink():
            raise FileExistsError(f"{existing} already exists; refusing to overwrite it")
    private = Ed25519PrivateKey.generate()
    key_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new_file(key_path, key_pem, 0o600)
    try:
        _write_new_file(pub_path, pub_pem, 0o644)
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    return key_path, pub_path


# -- signing and verifying -------------------------------------------------------------------


def sign_doc(
    doc: dict[str, Any],
    key: str | os.PathLike[str] | Ed25519PrivateKey,
    *,
    signed_unix: int | None = None,
) -> dict[str, Any]:
    """Return a copy of ``doc`` (in JSON form) with a ``signature`` block, replacing any old one.

    ``key`` is a private key file path (see ``load_private_key``) or a loaded key. The block
    is ``{"algorithm": "ed25519", "public_key_fingerprint": ..., "signed_unix": <int>,
    "value": <base64 signature>}``. The returned copy has no ``sha256``: the old one would be
    stale, so re-seal it (``results.seal`` / ``write_results``); that sha256 then covers the
    signature block too. Raises ``ValueError`` if ``doc`` holds NaN/infinity or anything JSON
    cannot encode.
    """
    if not isinstance(doc, dict):
        raise ValueError(f"a results document is a JSON object, not {type(doc).__name__}")
    private = key if isinstance(key, Ed25519PrivateKey) else load_private_key(key)
    when = int(time.time()) if signed_unix is None else signed_unix
    if isinstance(when, bool) or not isinstance(when, int):
        raise ValueError(f"signed_unix must be an int, not {type(when).__name__}")
    content = _content(doc)
    signer = {
        "algorithm": ALGORITHM,
        "public_key_fingerprint": fingerprint(private.public_key()),
        "signed_unix": when,
    }
    value = private.sign(_signed_message(content, signer))
    try:  # a copy in JSON form (tuples become lists): exactly what was signed
        signed = json.loads(json.dumps(content, allow_nan=False))
    except RecursionError as err:
        raise ValueError("document is nested too deeply to encode") from err
    signed[SIGNATURE_FIELD] = {**signer, "value": base64.b64encode(value).decode("ascii")}
    return signed


def _block_problem(block: Any) -> str | None:
    """Why ``block`` is not a well-formed signature block, or None."""
    if not isinstance(block, dict):
        return f"signature block is a {type(block).__name__}, not an object"
    keys = set(block)
    if keys != SIGNATURE_KEYS:
        missing, extra = sorted(SIGNATURE_KEYS - keys), sorted(map(str, keys - SIGNATURE_KEYS))
        return f"signature block fields wrong (missing {missing}, unexpected {extra})"
    if block["algorithm"] != ALGORITHM:
        return f"signature algorithm {block['algorithm']!r} is not supported (only ed25519)"
    fp = block["public_key_fingerprint"]
    if not isinstance(fp, str) or not fp.startswith(FINGERPRINT_PREFIX):
        return "signature public_key_fingerprint is not an 'ed25519:...' string"
    when = block["signed_unix"]
    if isinstance(when, bool) or not isinstance(when, int):
        return "signature signed_unix is not an integer"
    if not isinstance(block["value"], str):
        return "signature value is not a base64 string"
    return None


def verify_signature(
    doc: Any, public_key: str | os.PathLike[str] | Ed25519PublicKey
) -> SignatureCheck:
    """Check ``doc``'s signature against ``public_key`` (a ``.pub`` path or a loaded key).

    Never raises on a hostile document: every problem with it is a status (see
    ``SignatureCheck``). A bad public key file raises ``ValueError`` naming it, because that
    is the auditor's own input.
    """
    key = public_key if isinstance(public_key, Ed25519PublicKey) else load_public_key(public_key)
    if not isinstance(doc, dict):
        return SignatureCheck("malformed", f"document is a {type(doc).__name__}, not an object")
    if SIGNATURE_FIELD not in doc:
        return SignatureCheck("unsigned", "document has no signature block")
    block = doc[SIGNATURE_FIELD]
    problem = _block_problem(block)
    if problem:
        return SignatureCheck("malformed", problem)
    try:
        value = base64.b64decode(block["value"].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return SignatureCheck("malformed", "signature value is not valid base64")
    if len(value) != SIGNATURE_LEN:
        return SignatureCheck(
            "malformed", f"signature value is {len(value)} bytes, not {SIGNATURE_LEN}"
        )
    expected_fp = fingerprint(key)
    if block["public_key_fingerprint"] != expected_fp:
        return SignatureCheck(
            "wrong_key",
            f"signed by {block['public_key_fingerprint']}, not by the given key {expected_fp}",
        )
    try:
        message = signed_bytes(doc)
    except ValueError as err:
        return SignatureCheck("malformed", f"cannot encode the document: {err}")
    try:
        key.verify(value, message)
    except InvalidSignature:
        return SignatureCheck(
            "invalid", "signature does not match the content (edited after signing, or forged)"
        )
    return SignatureCheck("valid", f"signed by {expected_fp} at unix {block['signed_unix']}")


def check_nonce(doc: Any, nonce: str) -> str | None:
    """Why ``doc["audit"]["nonce"]`` is not the auditor's ``nonce``, or None if it is.

    The nonce proves a result came from the run the auditor asked for, not an older one; it
    is only trustworthy when the signature is valid too (it is inside the signed content).
    Raises ``ValueError`` only if ``nonce`` itself is empty or not a string.
    """
    if not isinstance(nonce, str) or not nonce:
        raise ValueError("the expected nonce must be a non-empty string")
    if not isinstance(doc, dict):
        return f"document is a {type(doc).__name__}, not an object"
    audit = doc.get("audit")
    if not isinstance(audit, dict) or "nonce" not in audit:
        return "document records no audit.nonce"
    recorded = audit["nonce"]
    if recorded is None:
        return "the run recorded no nonce (audit.nonce is null): it was not run with audit.nonce="
    if not isinstance(recorded, str):
        return f"audit.nonce is a {type(recorded).__name__}, not a string"
    if recorded != nonce:
        return f"audit.nonce {recorded!r} is not the expected nonce {nonce!r}"
    return None


def nonce_problem(nonce: Any) -> str | None:
    """Why ``nonce`` cannot be an auditor's nonce, or None: a non-empty string of at most
    ``MAX_NONCE_CHARS`` printable characters."""
    if not isinstance(nonce, str) or not nonce:
        return "must be a non-empty string"
    if len(nonce) > MAX_NONCE_CHARS:
        return f"is {len(nonce)} characters long; at most {MAX_NONCE_CHARS} are allowed"
    if not nonce.isprintable():
        return "holds non-printable characters; only printable characters are allowed"
    return None


def sign_file(
    path: str | os.PathLike[str], key_path: str | os.PathLike[str] | Ed25519PrivateKey
) -> dict[str, Any]:
    """Sign the sealed results file at ``path`` in place with ``key_path``, and re-seal it.

    The file is read, checked against its sha256 (an edited file is refused with
    ``ValueError``: signing it would vouch for the edit), signed with ``sign_doc`` and
    written back atomically with a new sha256. Returns the signed document.
    """
    from .store import SCHEMA, load_results, write_results

    try:
        doc = load_results(path)
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err.msg}") from None
    except AttributeError:
        raise ValueError(f"{path} is not a gosok results file (not a JSON object)") from None
    doc.setdefault("schema", SCHEMA)
    doc.setdefault("created_unix", time.time())
    signed = sign_doc(doc, key_path)
    return write_results(path, signed)
