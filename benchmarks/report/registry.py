"""The auditor's registry: which keys belong to which provider, which clusters each provider
runs, and the nonce the auditor issued for each cluster. ``verify --registry`` and ``audit
--registry`` judge a file's identity against it, never against what the file says of itself.

The file (YAML)::

    providers:
      Naver Cloud:                      # as the results file's config.cluster.provider
        keys: [keys/naver.pub]          # relative to the registry file
        clusters: [naver_h200_32]       # as config.cluster.name
        nonces: {naver_h200_32: q3-7f1c}  # optional: the nonce issued for that cluster

Use: ``registry = load_registry(path)``; ``registry.keys_for(doc)``, ``registry.nonces_for(doc)``,
``registry.identity(doc, signer)`` -> (ok, detail).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gosok.benchmarks.report.trust import InputError, PublicKey, load_public_keys, printable
from gosok.launcher.results.signing import nonce_problem

MAX_REGISTRY_BYTES = 1 << 20


@dataclass(frozen=True)
class Provider:
    name: str
    keys: tuple[PublicKey, ...]
    clusters: tuple[str, ...]
    nonces: dict[str, str] = field(default_factory=dict)


def _label(doc: dict[str, Any]) -> tuple[str | None, str | None]:
    config = doc.get("config")
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict):
        return None, None
    provider, name = cluster.get("provider"), cluster.get("name")
    return (
        provider if isinstance(provider, str) else None,
        name if isinstance(name, str) else None,
    )


@dataclass(frozen=True)
class Registry:
    path: str
    providers: dict[str, Provider]

    def provider_of(self, doc: dict[str, Any]) -> Provider | None:
        provider, _ = _label(doc)
        return self.providers.get(provider) if provider is not None else None

    def keys_for(self, doc: dict[str, Any]) -> list[PublicKey]:
        """Only the keys of the provider the file names: another provider's key never
        verifies it."""
        provider = self.provider_of(doc)
        return list(provider.keys) if provider else []

    def nonces_for(self, doc: dict[str, Any]) -> list[str]:
        provider, cluster = self.provider_of(doc), _label(doc)[1]
        if provider is None or cluster not in provider.nonces:
            return []
        return [provider.nonces[cluster]]

    def identity(self, doc: dict[str, Any], signed: bool) -> tuple[bool, str]:
        """Whether the file's provider and cluster are the registry's and a key of that
        provider verified it (``signed``)."""
        provider_name, cluster = _label(doc)
        shown = printable(f"{provider_name!r} / {cluster!r}")
        provider = self.provider_of(doc)
        if provider is None:
            return False, f"provider {shown} is not in the registry {self.path}"
        if cluster not in provider.clusters:
            return False, (
                f"cluster {printable(repr(cluster))} is not one the registry lists for "
                f"{printable(repr(provider.name))} ({', '.join(provider.clusters) or 'none'})"
            )
        if not signed:
            return False, f"{shown}: not signed by a key the registry gives {provider.name!r}"
        return True, f"{shown}: signed by a key the registry gives this provider"


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InputError(f"{where}: must be a list of non-empty strings")
    return value


def load_registry(path: str) -> Registry:
    """Read and check the registry; ``InputError`` naming the first problem."""
    import yaml

    file = Path(path)
    try:
        if not file.is_file() or file.stat().st_size > MAX_REGISTRY_BYTES:
            raise InputError(f"--registry {path}: not a file of at most 1 MiB")
        data = yaml.safe_load(file.read_text())
    except OSError as err:
        raise InputError(f"--registry {path}: cannot read it: {err.strerror or err}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"--registry {path}: not YAML ({err.__class__.__name__})") from None
    providers = data.get("providers") if isinstance(data, dict) else None
    if not isinstance(providers, dict) or not providers:
        raise InputError(f"--registry {path}: needs a 'providers:' mapping (see gosok docs)")
    out = {}
    for name, entry in providers.items():
        where = f"--registry {path}: providers.{name}"
        if not isinstance(name, str) or not isinstance(entry, dict):
            raise InputError(f"{where}: must map a provider name to keys and clusters")
        unknown = set(entry) - {"keys", "clusters", "nonces"}
        if unknown:
            raise InputError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: keys, "
                             "clusters, nonces")  # fmt: skip
        key_paths = [
            str(p if Path(p).is_absolute() else file.parent / p)
            for p in _strings(entry.get("keys"), f"{where}.keys")
        ]
        clusters = _strings(entry.get("clusters"), f"{where}.clusters")
        nonces = entry.get("nonces") or {}
        if not isinstance(nonces, dict):
            raise InputError(f"{where}.nonces: must map a cluster name to its nonce")
        for cluster, nonce in nonces.items():
            problem = nonce_problem(nonce) if isinstance(nonce, str) else "is not a string"
            if problem or cluster not in clusters:
                raise InputError(f"{where}.nonces.{cluster}: {problem or 'not a listed cluster'}")
        out[name] = Provider(name, tuple(load_public_keys(key_paths)), tuple(clusters), nonces)
    return Registry(path, out)
