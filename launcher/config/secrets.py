"""Secrets never touch disk: find the secret values a command was given and redact them
from everything gosok writes or prints.

A value is secret when its variable name looks secret (a word such as TOKEN, SECRET(S),
PASSWORD(S), PASS, PASSPHRASE, CREDENTIAL, AUTH, PRIVATE, JWT, COOKIE, WEBHOOK, or a name
ending in _KEY), when it follows such a flag in ``job.args`` (``--hf-token V``,
``--api_key=V``), when it carries credentials in a URL (``scheme://user:password@host``, the
password whole even when it holds ``@``), when it looks like a token whatever its name
(``hf_…``, ``sk-…``, ``ghp_…``, a JWT), when it comes from the launching environment
(``job.env_from_host``), or when it is the W&B key. Ranks still receive the real values
(through Ray, in memory); files, Hydra's ``.hydra/`` copies, printed output and recorded
argv get ``<redacted>``.

Use::

    redactor = Redactor.for_config(cfg)
    text = redactor.text(text)                # any string
    data = redactor.data(OmegaConf.to_container(cfg))   # any JSON-like structure
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MARK = "<redacted>"
SECRET_WORDS = {
    "token", "secret", "secrets", "password", "passwords", "passwd", "pwd", "pass",
    "passphrase", "credential", "credentials", "auth", "private", "apikey", "pat", "jwt",
    "cookie", "cookies", "webhook",
}  # fmt: skip
# The password runs to the last "@" before the host, so one holding "@" is redacted whole.
URL_CREDENTIALS = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<pw>[^\s/]+)@(?=[^@\s/]*(?:[/\s?#]|$))"
)
# Values that are credentials whatever they are called (Hugging Face, OpenAI-style, GitHub,
# GitLab, Slack tokens; JSON Web Tokens).
TOKEN_VALUES = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|glpat-[A-Za-z0-9_-]{16,}|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
)
HOST_SECRETS = ("WANDB_API_KEY",)


def is_secret_name(name: str) -> bool:
    """``HF_TOKEN``, ``WANDB_API_KEY``, ``db_password``, ``DB_PASS``, ``SLACK_WEBHOOK_URL``,
    ``--hf-token``: yes. ``drift_keys``, a bare ``key`` (a file path in gosok's configs),
    ``max_tokens``, ``bypass``: no."""
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+|(?<=[a-z])(?=[A-Z])", str(name)) if w]
    if any(w in SECRET_WORDS for w in words):
        return True
    return len(words) > 1 and words[-1] == "key"


def url_passwords(text: str) -> list[str]:
    return [m.group("pw") for m in URL_CREDENTIALS.finditer(text)]


def argument_secrets(args: Iterable[Any]) -> list[str]:
    """Values of a script's arguments whose flag names a secret: ``--hf-token V``,
    ``--api_key=V``, ``password=V``; and any argument that looks like a token."""
    found, args = [], [str(a) for a in args]
    for index, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if equals and value and is_secret_name(name.lstrip("-")):
            found.append(value)
        elif arg.startswith("-") and not equals and is_secret_name(arg.lstrip("-")):
            if index + 1 < len(args) and not args[index + 1].startswith("--"):
                found.append(args[index + 1])
        found += TOKEN_VALUES.findall(arg) + url_passwords(arg)
    return found


@dataclass
class Redactor:
    """Replaces known secret values (and any URL password) with ``<redacted>``."""

    values: set[str] = field(default_factory=set)

    def add(self, value: Any) -> None:
        text = str(value)
        if len(text) >= 4:  # shorter values would redact ordinary words
            self.values.add(text)

    def text(self, text: str) -> str:
        text = URL_CREDENTIALS.sub(lambda m: m.group("head") + MARK + "@", text)
        text = TOKEN_VALUES.sub(MARK, text)
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, MARK)
        return text

    def data(self, data: Any, name: str = "") -> Any:
        if isinstance(data, dict):
            return {k: self.data(v, str(k)) for k, v in data.items()}
        if isinstance(data, list | tuple):
            return [self.data(v, name) for v in data]
        if isinstance(data, str):
            if name and is_secret_name(name) and data:
                return MARK
            return self.text(data)
        return data

    @classmethod
    def for_config(cls, cfg: Any, environ: dict[str, str] | None = None) -> Redactor:
        """Every secret a composed config names or pulls from the environment."""
        environ = dict(os.environ if environ is None else environ)
        redactor = cls()
        for name, value in _walk(cfg):
            if is_secret_name(name) and isinstance(value, str) and value:
                redactor.add(value)
            if isinstance(value, str):
                for password in url_passwords(value):
                    redactor.add(password)
        job = _get(cfg, "job")
        args = _get(job, "args")
        if args is not None and not isinstance(args, str):
            for value in argument_secrets(list(args)):
                redactor.add(value)
        for name in _get(job, "env_from_host") or []:
            if name in environ:
                redactor.add(environ[name])
        for name in HOST_SECRETS:
            if environ.get(name):
                redactor.add(environ[name])
        return redactor

    @classmethod
    def for_argv(cls, argv: Iterable[str]) -> Redactor:
        """Secrets given as ``key=value`` overrides on a command line."""
        redactor = cls()
        for arg in argv:
            key, _, value = str(arg).partition("=")
            if value and is_secret_name(key.split(".")[-1]):
                redactor.add(value)
            if key.lstrip("+~").split(".")[-1] == "args" and value:  # job.args=[--token,V]
                items = [v.strip().strip("'\"") for v in value.strip("[] ").split(",")]
                for secret in argument_secrets(items):
                    redactor.add(secret)
            for password in url_passwords(str(arg)):
                redactor.add(password)
        return redactor

    def merge(self, other: Redactor) -> Redactor:
        return Redactor(self.values | other.values)


def _get(node: Any, key: str) -> Any:
    if node is None:
        return None
    try:
        return node.get(key) if hasattr(node, "get") else getattr(node, key, None)
    except Exception:  # omegaconf raises its own errors for missing keys
        return None


def _walk(node: Any, name: str = "") -> Iterable[tuple[str, Any]]:
    """(leaf key, value) of a config or JSON-like structure, without resolving secrets."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(node, DictConfig | ListConfig):
            node = OmegaConf.to_container(node, resolve=False)
    except ImportError:
        pass
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, str(key))
    elif isinstance(node, list | tuple):
        for value in node:
            yield from _walk(value, name)
    else:
        yield name, node


class RedactingStream:
    """A text stream that redacts everything written through it (stdout / stderr)."""

    def __init__(self, inner: Any, redactor: Redactor) -> None:
        self._inner = inner
        self.redactor = redactor
        self._held: list[str] | None = None

    def write(self, text: str) -> int:
        if self._held is not None:
            self._held.append(text)
        else:
            self._inner.write(self.redactor.text(text))
        return len(text)

    def hold(self) -> None:
        """Keep what is written until ``release`` (a message that may be reworded)."""
        self._held = []

    def release(self, reword: Any = None) -> None:
        """Write what was held, through ``reword(text) -> text`` if given."""
        held, self._held = self._held, None
        if held:
            text = "".join(held)
            self.write(reword(text) if reword else text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


_current = Redactor()


def set_current(redactor: Redactor) -> None:
    """The redactor of the command being run (the CLI sets it once the config is known)."""
    global _current
    _current = redactor


def current() -> Redactor:
    return _current


def redacted_config(cfg: Any) -> Any:
    """The composed config as plain data, fit to write into a results file."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    return _current.merge(Redactor.for_config(cfg)).data(data)
