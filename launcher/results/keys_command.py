"""The ``gosok keys`` command: make an Ed25519 signing key pair, or show a key's fingerprint.

Run::

    gosok keys new --out ~/.gosok/bench   # bench.key (0600), bench.pub (0644); ~/.gosok made 0700
    gosok keys show ~/.gosok/bench.pub    # prints ed25519:<sha256 hex of the raw key>

``run_keys_command(argv)`` takes the arguments after ``keys`` and returns the exit code: 0 on
success, 2 with one line on stderr naming the problem (never a traceback). Give auditors the
``.pub`` file; keep the ``.key`` file private (gosok refuses one readable by others).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .signing import fingerprint, load_public_key, new_keypair

USAGE = """usage: gosok keys new --out PREFIX | gosok keys show PUBFILE

  new --out PREFIX   write a new Ed25519 key pair PREFIX.key (0600) and PREFIX.pub (0644)
  show PUBFILE       print the fingerprint of a public key file
"""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error raises instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gosok keys", usage=USAGE, add_help=False)
    parser.add_argument("-h", "--help", action="store_true")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    new = commands.add_parser("new", usage=USAGE, add_help=False)
    new.add_argument("-h", "--help", action="store_true", dest="sub_help")
    new.add_argument("--out", metavar="PREFIX")
    show = commands.add_parser("show", usage=USAGE, add_help=False)
    show.add_argument("-h", "--help", action="store_true", dest="sub_help")
    show.add_argument("pubfile", nargs="?")
    return parser


def _make_private_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and any missing parents, each 0700 (only the user can list or
    add keys there); returns the ones created. An existing directory is left as it is."""
    missing = []
    while not directory.exists() and not directory.is_symlink():
        missing.append(directory)
        directory = directory.parent
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    for path in reversed(missing):
        path.mkdir(mode=0o700)
        path.chmod(0o700)  # whatever the umask
    return list(reversed(missing))


def _fail(message: str) -> int:
    print(f"gosok keys: error: {message}", file=sys.stderr)
    return 2


def run_keys_command(argv: list[str]) -> int:
    """``gosok keys new --out PREFIX`` / ``gosok keys show PUBFILE``; returns the exit code."""
    try:
        args = _parser().parse_args(list(argv))
    except _UsageError as err:
        return _fail(f"{err} (see gosok keys --help)")
    if args.help or getattr(args, "sub_help", False):
        print(USAGE, end="")
        return 0
    if args.command is None:
        return _fail("give a subcommand: new or show (see gosok keys --help)")
    if args.command == "new":
        if not args.out:
            return _fail("keys new needs --out PREFIX (writes PREFIX.key and PREFIX.pub)")
        try:
            made = _make_private_dirs(Path(args.out).expanduser().parent)
            key_path, pub_path = new_keypair(args.out)
            key_fp = fingerprint(load_public_key(pub_path))
        except (OSError, ValueError) as err:
            return _fail(str(err))
        for directory in made:
            print(f"created {directory}  (mode 0700)")
        print(f"private key: {key_path}  (keep secret; mode 0600)")
        print(f"public key:  {pub_path}  (give this to auditors)")
        print(f"fingerprint: {key_fp}")
        return 0
    if not args.pubfile:
        return _fail("keys show needs a public key file: gosok keys show PUBFILE")
    try:
        key_fp = fingerprint(load_public_key(args.pubfile))
    except (OSError, ValueError) as err:
        return _fail(str(err))
    print(key_fp)
    return 0
