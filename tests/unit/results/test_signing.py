"""Tests for results signing (``launcher/results/signing.py``) and ``gosok keys``.

Every forgery an auditor cares about must fail with the right status: edited content,
edited or swapped signer, stripped or garbage signature, a result from another run with its
nonce swapped in. A Hypothesis test mutates signed documents at random and checks that a
document verifies as valid exactly when its signed content is unchanged.

The modules are loaded from their files as a stand-alone package (no ``gosok`` import), so
these tests do not depend on the rest of the tree. No Ray; runs in a few seconds.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib
import json
import math
import os
import stat
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

RESULTS_DIR = Path(__file__).resolve().parents[3] / "launcher" / "results"
_PKG = "_gosok_results_signing_under_test"


def _load(name: str) -> types.ModuleType:
    if _PKG not in sys.modules:
        package = types.ModuleType(_PKG)
        package.__path__ = [str(RESULTS_DIR)]
        sys.modules[_PKG] = package
    return importlib.import_module(f"{_PKG}.{name}")


signing = _load("signing")
keys_command = _load("keys_command")

NONCE = "auditor-nonce-4f1c9a"


def make_doc(nonce: str = NONCE, busbw: float = 181.25) -> dict[str, Any]:
    return {
        "schema": "gosok.results/1",
        "kind": "collectives",
        "config": {"op": "all_reduce", "sizes": [1024, 1048576], "dtype": "bf16"},
        "env": {"gpus": 16, "nodes": 2, "torch": "2.4.0", "nccl": [2, 21, 5]},
        "measurements": [
            {"size": 1024, "algbw": 1.5, "busbw": 2.8125, "ok": True},
            {"size": 1048576, "algbw": 96.0, "busbw": busbw, "ok": True},
        ],
        "audit": {"nonce": nonce},
        "started_unix": 1732250000.25,
        "finished_unix": 1732250042.5,
    }


def seal(doc: dict[str, Any]) -> dict[str, Any]:
    """What the results store does after signing: sha256 over everything but sha256."""
    body = {k: v for k, v in doc.items() if k != "sha256"}
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return {**doc, "sha256": hashlib.sha256(data).hexdigest()}


def roundtrip(doc: dict[str, Any]) -> dict[str, Any]:
    """Through the JSON file form, as an auditor reads it."""
    return json.loads(json.dumps(doc, indent=1, allow_nan=False))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    a_key, a_pub = signing.new_keypair(root / "alice")
    b_key, b_pub = signing.new_keypair(root / "bob")
    return {"a_key": a_key, "a_pub": a_pub, "b_key": b_key, "b_pub": b_pub}


@pytest.fixture(scope="module")
def signed(keys: dict[str, Path]) -> dict[str, Any]:
    return roundtrip(seal(signing.sign_doc(make_doc(), keys["a_key"], signed_unix=1732250100)))


def status(doc: Any, pub: Path) -> str:
    return signing.verify_signature(doc, pub).status


# -- key files -------------------------------------------------------------------------------


def test_new_keypair_modes_and_formats(tmp_path: Path) -> None:
    old = os.umask(0)  # the modes must not depend on the umask
    try:
        key_path, pub_path = signing.new_keypair(tmp_path / "k")
    finally:
        os.umask(old)
    assert (key_path, pub_path) == (tmp_path / "k.key", tmp_path / "k.pub")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private = signing.load_private_key(key_path)
    public = signing.load_public_key(pub_path)
    fp = signing.fingerprint(public)
    assert fp == signing.fingerprint(private)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert fp == "ed25519:" + hashlib.sha256(raw).hexdigest()
    assert len(fp) == len("ed25519:") + 64


def test_new_keypair_refuses_to_overwrite(tmp_path: Path) -> None:
    key_path, pub_path = signing.new_keypair(tmp_path / "k")
    before = key_path.read_bytes(), pub_path.read_bytes()
    with pytest.raises(FileExistsError, match="k.key already exists; refusing to overwrite"):
        signing.new_keypair(tmp_path / "k")
    assert (key_path.read_bytes(), pub_path.read_bytes()) == before
    (tmp_path / "only.pub").write_text("someone else's file")
    with pytest.raises(FileExistsError, match="only.pub already exists"):
        signing.new_keypair(tmp_path / "only")
    assert not (tmp_path / "only.key").exists()
    assert (tmp_path / "only.pub").read_text() == "someone else's file"
    with pytest.raises(ValueError, match="does not exist"):
        signing.new_keypair(tmp_path / "missing-dir" / "k")
    with pytest.raises(ValueError, match="is a directory"):
        signing.new_keypair(tmp_path)


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    key_path, _ = signing.new_keypair(tmp_path / "k")
    key_path.chmod(0o640)
    with pytest.raises(ValueError, match=r"k\.key.*group or others.*chmod 600"):
        signing.load_private_key(key_path)
    with pytest.raises(ValueError, match="chmod 600"):
        signing.sign_doc(make_doc(), key_path)


def test_bad_key_files_give_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key\n")
    junk_key = tmp_path / "junk.key"
    junk_key.write_text("not a key\n")
    junk_key.chmod(0o600)
    for loader, path in [
        (signing.load_public_key, junk),
        (signing.load_private_key, junk_key),
        (signing.load_public_key, tmp_path / "absent.pub"),
        (signing.load_private_key, tmp_path / "absent.key"),
    ]:
        with pytest.raises(ValueError, match=path.name):
            loader(path)
    # PEM, but EC rather than Ed25519
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pub = tmp_path / "ec.pub"
    ec_pub.write_bytes(
        ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    ec_priv = tmp_path / "ec.key"
    ec_priv.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ec_priv.chmod(0o600)
    with pytest.raises(ValueError, match=r"ec\.pub.*not an Ed25519 public key"):
        signing.load_public_key(ec_pub)
    with pytest.raises(ValueError, match=r"ec\.key.*not an Ed25519 private key"):
        signing.load_private_key(ec_priv)
    # a corrupt PEM body, and a private key given where the public one belongs
    corrupt = tmp_path / "corrupt.pub"
    corrupt.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="corrupt.pub is not a PEM public key"):
        signing.load_public_key(corrupt)
    with pytest.raises(ValueError, match="is a private key"):
        signing.load_public_key(ec_priv)
    with pytest.raises(ValueError, match="junk.pub"):
        signing.verify_signature(make_doc(), junk)


# -- signing and the forgeries -----------------------------------------------------------------


def test_sign_then_verify_valid(keys: dict[str, Path], signed: dict[str, Any]) -> None:
    check = signing.verify_signature(signed, keys["a_pub"])
    assert check.status == "valid" and check.ok
    assert signing.fingerprint(signing.load_public_key(keys["a_pub"])) in check.detail
    block = signed["signature"]
    assert set(block) == {"algorithm", "public_key_fingerprint", "signed_unix", "value"}
    assert block["algorithm"] == "ed25519" and block["signed_unix"] == 1732250100
    assert len(base64.b64decode(block["value"], validate=True)) == 64
    # the sha256 is outside the signature and covers the signature block
    assert status({k: v for k, v in signed.items() if k != "sha256"}, keys["a_pub"]) == "valid"
    forged_block = copy.deepcopy(signed)
    forged_block["signature"]["signed_unix"] += 1
    assert seal(forged_block)["sha256"] != signed["sha256"]
    # the input is not modified; a stale sha256 is dropped
    doc = seal(make_doc())
    out = signing.sign_doc(doc, keys["a_key"])
    assert "signature" not in doc and "sha256" not in out
    assert list(out)[: len(make_doc())] == list(make_doc())  # field order kept


def test_signed_bytes_cover_content_and_signer(signed: dict[str, Any]) -> None:
    message = json.loads(signing.signed_bytes(signed))
    assert message["signer"] == {k: v for k, v in signed["signature"].items() if k != "value"}
    assert message["content"] == {
        k: v for k, v in signed.items() if k not in ("signature", "sha256")
    }
    with pytest.raises(ValueError, match="no signature block"):
        signing.signed_bytes(make_doc())


def test_edited_nested_measurement_is_invalid(keys: dict[str, Path], signed: dict[str, Any]):
    forged = copy.deepcopy(signed)
    forged["measurements"][1]["busbw"] = 190.0
    assert status(seal(forged), keys["a_pub"]) == "invalid"
    forged = copy.deepcopy(signed)
    forged["env"]["nccl"][2] = 6
    assert status(forged, keys["a_pub"]) == "invalid"
    forged = copy.deepcopy(signed)
    forged["measurements"][1]["busbw"] = 181  # same number, int instead of float
    assert status(forged, keys["a_pub"]) == "invalid"
    forged = copy.deepcopy(signed)
    forged["signature"]["signed_unix"] = 1732259999  # signer fields are signed too
    assert status(forged, keys["a_pub"]) == "invalid"


def test_edited_fingerprint_fails(keys: dict[str, Path], signed: dict[str, Any]) -> None:
    forged = copy.deepcopy(signed)
    forged["signature"]["public_key_fingerprint"] = "ed25519:" + "0" * 64
    assert status(forged, keys["a_pub"]) == "wrong_key"
    # signed by bob, block edited to claim alice's key: the fingerprint is signed
    by_bob = roundtrip(signing.sign_doc(make_doc(), keys["b_key"]))
    alice_fp = signing.fingerprint(signing.load_public_key(keys["a_pub"]))
    by_bob["signature"]["public_key_fingerprint"] = alice_fp
    assert status(by_bob, keys["a_pub"]) == "invalid"


def test_resigned_with_another_key_is_wrong_key(
    keys: dict[str, Path], signed: dict[str, Any]
) -> None:
    forged = copy.deepcopy(signed)
    forged["measurements"][1]["busbw"] = 250.0
    resigned = roundtrip(seal(signing.sign_doc(forged, keys["b_key"])))
    check = signing.verify_signature(resigned, keys["a_pub"])
    assert check.status == "wrong_key"
    assert resigned["signature"]["public_key_fingerprint"] in check.detail
    assert status(resigned, keys["b_pub"]) == "valid"  # old signature replaced


def test_stripped_signature_is_unsigned(keys: dict[str, Path], signed: dict[str, Any]):
    stripped = seal({k: v for k, v in signed.items() if k != "signature"})
    assert status(stripped, keys["a_pub"]) == "unsigned"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("!!not base64!!", "malformed"),
        ("", "malformed"),
        (base64.b64encode(b"x" * 63).decode(), "malformed"),
        ("é" * 88, "malformed"),
        (base64.b64encode(b"\x01" * 64).decode(), "invalid"),
        (12345, "malformed"),
        (None, "malformed"),
    ],
)
def test_garbage_signature_value(keys, signed, value: Any, expected: str) -> None:
    forged = copy.deepcopy(signed)
    forged["signature"]["value"] = value
    assert status(forged, keys["a_pub"]) == expected


def test_nonce_swapped_from_another_run(keys: dict[str, Path]) -> None:
    other_run = roundtrip(seal(signing.sign_doc(make_doc(nonce="older-run-nonce"), keys["a_key"])))
    # replayed as is: genuinely signed, but not for this audit
    assert status(other_run, keys["a_pub"]) == "valid"
    problem = signing.check_nonce(other_run, NONCE)
    assert problem and "older-run-nonce" in problem and NONCE in problem
    # nonce edited to the auditor's: the nonce now matches but the signature breaks
    swapped = copy.deepcopy(other_run)
    swapped["audit"]["nonce"] = NONCE
    assert status(seal(swapped), keys["a_pub"]) == "invalid"
    assert signing.check_nonce(swapped, NONCE) is None
    # a fresh run for this audit passes both
    fresh = roundtrip(signing.sign_doc(make_doc(), keys["a_key"]))
    assert status(fresh, keys["a_pub"]) == "valid"
    assert signing.check_nonce(fresh, NONCE) is None


@pytest.mark.parametrize(
    "doc",
    [
        {k: v for k, v in make_doc().items() if k != "audit"},
        {**make_doc(), "audit": {}},
        {**make_doc(), "audit": "x"},
        {**make_doc(), "audit": {"nonce": 7}},
        [],
        None,
    ],
)
def test_check_nonce_problems(doc: Any) -> None:
    assert isinstance(signing.check_nonce(doc, NONCE), str)


def test_nan_in_doc_is_refused_at_signing(keys: dict[str, Path]) -> None:
    doc = make_doc(busbw=math.nan)
    with pytest.raises(ValueError, match=r"NaN or infinite number at measurements\[1\]\.busbw"):
        signing.sign_doc(doc, keys["a_key"])
    with pytest.raises(ValueError, match=r"at env\.gpus"):
        signing.sign_doc({**make_doc(), "env": {"gpus": math.inf}}, keys["a_key"])
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        signing.sign_doc({**make_doc(), "blob": object()}, keys["a_key"])


def _deep(depth: int) -> Any:
    node: Any = 0
    for _ in range(depth):
        node = {"a": [node]}
    return node


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["signature"].pop("algorithm"),
        lambda d: d["signature"].update(algorithm="rsa"),
        lambda d: d["signature"].update(extra="x"),
        lambda d: d["signature"].update(signed_unix="1732250100"),
        lambda d: d["signature"].update(signed_unix=True),
        lambda d: d["signature"].update(signed_unix=1.5),
        lambda d: d["signature"].update(public_key_fingerprint=None),
        lambda d: d["signature"].update(public_key_fingerprint="sha256:abc"),
        lambda d: d.update(signature=[1, 2]),
        lambda d: d.update(signature=None),
        lambda d: d.update(signature="sig"),
        lambda d: d["measurements"][0].update(busbw=math.nan),  # json.loads accepts NaN
        lambda d: d.update(deep=_deep(100_000)),
        lambda d: d.update({1: "non-str key beside str keys"}),
    ],
)
def test_hostile_documents_never_raise(keys, signed, mutate) -> None:
    forged = copy.deepcopy(signed)
    mutate(forged)
    check = signing.verify_signature(forged, keys["a_pub"])
    assert check.status == "malformed", check
    assert check.detail


@pytest.mark.parametrize("doc", [None, [], "text", 3, b"bytes"])
def test_non_dict_documents_are_malformed(keys: dict[str, Path], doc: Any) -> None:
    assert status(doc, keys["a_pub"]) == "malformed"


# -- random mutations never verify unless the signed content is unchanged -----------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


def _signed_content(doc: dict[str, Any]) -> bytes | None:
    try:
        body = {k: v for k, v in doc.items() if k != "sha256"}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        return None


@st.composite
def mutations(draw: st.DrawFn, doc: dict[str, Any]) -> dict[str, Any]:
    """One edit anywhere in ``doc``: replace, delete, insert or rename, at any depth."""
    doc = copy.deepcopy(doc)
    node: Any = doc
    while True:
        inner = (
            [k for k, v in node.items() if isinstance(v, (dict, list))]
            if isinstance(node, dict)
            else [i for i, v in enumerate(node) if isinstance(v, (dict, list))]
        )
        if not inner or not draw(st.booleans()):
            break
        node = node[draw(st.sampled_from(inner))]
    if isinstance(node, dict):
        op = draw(
            st.sampled_from(["replace", "delete", "insert", "rename"] if node else ["insert"])
        )
        if op == "insert":
            node[draw(st.text(max_size=6))] = draw(JSON_VALUES)
            return doc
        key = draw(st.sampled_from(sorted(node)))
        if op == "replace":
            node[key] = draw(JSON_VALUES)
        elif op == "delete":
            del node[key]
        else:
            node[draw(st.text(max_size=6))] = node.pop(key)
        return doc
    op = draw(st.sampled_from(["replace", "delete", "insert"] if node else ["insert"]))
    if op == "insert":
        node.insert(draw(st.integers(0, len(node))), draw(JSON_VALUES))
    else:
        index = draw(st.integers(0, len(node) - 1))
        if op == "replace":
            node[index] = draw(JSON_VALUES)
        else:
            del node[index]
    return doc


@pytest.fixture(scope="module")
def alice_public(keys: dict[str, Path]):
    return signing.load_public_key(keys["a_pub"])


@settings(derandomize=True, max_examples=200, deadline=None)
@given(data=st.data())
def test_random_mutations_never_verify_unless_unchanged(data, signed, alice_public) -> None:
    mutated = data.draw(mutations(signed))
    if data.draw(st.booleans()):  # a second edit sometimes
        mutated = data.draw(mutations(mutated))
    unchanged = _signed_content(mutated) == _signed_content(signed)
    check = signing.verify_signature(mutated, alice_public)
    assert (check.status == "valid") == unchanged, (check, mutated)


# -- gosok keys ---------------------------------------------------------------------------------


def test_keys_new_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "bench"
    assert keys_command.run_keys_command(["new", "--out", str(prefix)]) == 0
    out = capsys.readouterr().out
    fp = signing.fingerprint(signing.load_public_key(tmp_path / "bench.pub"))
    assert str(tmp_path / "bench.key") in out and str(tmp_path / "bench.pub") in out
    assert fp in out
    assert stat.S_IMODE((tmp_path / "bench.key").stat().st_mode) == 0o600
    assert keys_command.run_keys_command(["show", str(tmp_path / "bench.pub")]) == 0
    assert capsys.readouterr().out.strip() == fp


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give a subcommand"),
        (["rotate"], "invalid choice"),
        (["new"], "needs --out"),
        (["new", "--out"], "--out"),
        (["new", "--out", "{tmp}/exists"], "already exists"),
        (["new", "--out", "{tmp}/exists.key/k"], "is not a directory"),
        (["show"], "needs a public key file"),
        (["show", "{tmp}/absent.pub"], "not found"),
        (["show", "{tmp}/exists.key"], "is a private key"),
        (["show", "{tmp}/junk.pub"], "not a PEM public key"),
        (["show", "a", "b"], "unrecognized arguments"),
    ],
)
def test_keys_errors_are_one_line(tmp_path, capsys, argv: list[str], message: str) -> None:
    signing.new_keypair(tmp_path / "exists")
    (tmp_path / "junk.pub").write_text("junk")
    capsys.readouterr()
    code = keys_command.run_keys_command([a.format(tmp=tmp_path) for a in argv])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gosok keys: error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err


def test_keys_new_creates_missing_directories_private(tmp_path, capsys) -> None:
    prefix = tmp_path / "home" / ".gosok" / "provider"
    assert keys_command.run_keys_command(["new", "--out", str(prefix)]) == 0
    for directory in (tmp_path / "home", tmp_path / "home" / ".gosok"):
        assert directory.stat().st_mode & 0o777 == 0o700
    assert prefix.with_suffix(".key").stat().st_mode & 0o777 == 0o600
    assert "created" in capsys.readouterr().out


def test_keys_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert keys_command.run_keys_command(["--help"]) == 0
    assert "gosok keys new --out PREFIX" in capsys.readouterr().out
