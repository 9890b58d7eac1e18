"""Re-derivation of a results file: the generic part every benchmark's hook uses.

A results file keeps raw measurements beside the figures derived from them. Each benchmark
declares one hook (``Benchmark.rederive``, a ``Rederiver``) that recomputes every derived
figure from the raw data with the benchmark's own functions (the same ones its run calls)
and compares: ``Rederivation.same(where, stored, derived)`` records each stored figure that
does not match. What is here knows no benchmark: the result record, the comparison, the
checks that raise ``ValueError`` on malformed input, and the guard that turns any malformed
document into ``Rederivation.malformed`` instead of a traceback.

Raw data that is absent cannot vouch for its figure: that is listed in ``missing``. When
the recorded GPU entry or contract differs from gosok's own, that is a ``note``.

Use::

    hook = Rederiver("suite", body)       # body(r: Rederivation) re-derives r.doc in place
    result = hook.full(doc)               # problems, missing, notes, malformed, doc
    hook(doc)                             # every reason, or []
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gosok.launcher.errors import ConfigError

REL_TOL = 1e-9
REDACTED = "<redacted>"  # what gosok writes in place of a config value it treats as secret
MAX_LISTED = 20


@dataclass
class Rederivation:
    """What re-deriving one results document found.

    ``problems``: stored figures, checks or verdicts that contradict the raw data.
    ``missing``: figures whose raw data the file does not hold (taken as stored).
    ``notes``: the recorded GPU entry or contract differs from gosok's own (not a failure:
    the figures were judged against what the file recorded). ``malformed``: the document
    does not have the structure of its kind (then ``doc`` is None). ``doc``: a copy of the
    document in which every derived figure is the re-derived one.
    """

    kind: str
    doc: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    malformed: str | None = None
    compared: int = 0

    @property
    def ok(self) -> bool:
        return self.malformed is None and not self.problems and not self.missing

    def reasons(self) -> list[str]:
        """Every reason the figures are not fully re-derivable, as one list."""
        if self.malformed:
            return [f"malformed: {self.malformed}"]
        return [*self.problems, *(f"no raw data: {m}" for m in self.missing)]

    def same(self, where: str, stored: Any, derived: Any) -> bool:
        """Compare a stored figure with its re-derived value; record a problem if they differ."""
        self.compared += 1
        diff = difference(stored, derived)
        if diff is None:
            return True
        path, a, b = diff
        self.problems.append(f"{where}{path}: stored {short(a)}, re-derived {short(b)}")
        return False


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first place where ``a`` and ``b`` differ (numbers within ``REL_TOL``), or None."""
    if is_number(a) and is_number(b):
        if a == b or abs(a - b) <= REL_TOL * max(abs(a), abs(b)):
            return None
        return path, a, b
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{path}.{key}", a.get(key, "<absent>"), b.get(key, "<absent>")
            found = difference(a[key], b[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path} (length)", len(a), len(b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if type(a) is not type(b) or a != b:
        return path, a, b
    return None


def json_copy(value: Any) -> Any:
    """``value`` as it would read back from a results file (tuples become lists)."""
    return json.loads(json.dumps(value))


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def as_list(value: Any, what: str) -> list[Any]:
    require(isinstance(value, list), f"{what} is a {type(value).__name__}, not a list")
    return value


def as_dict(value: Any, what: str) -> dict[str, Any]:
    require(isinstance(value, dict), f"{what} is a {type(value).__name__}, not an object")
    return value


def settings_of(data: Any, what: str) -> Any:
    """Recorded settings as a config object; an interpolation (``${...}``) is refused, so
    reading a file never resolves anything from the auditor's environment."""
    stack = [as_dict(data, what)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            require("${" not in item, f"{what} holds an interpolation {short(item)}")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return OmegaConf.create(data)


def times_of(values: Any, what: str) -> list[float]:
    values = as_list(values, what)
    require(bool(values), f"{what} is empty")
    require(all(is_number(v) for v in values), f"{what} holds a value that is not a number")
    require(all(math.isfinite(v) and v > 0 for v in values), f"{what} holds a non-positive time")
    return values


def typed(cls: type, data: Any, what: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``data`` checked against the field types of dataclass ``cls`` (by their annotation)."""
    data = as_dict(data, what)
    known = {f.name: str(f.type) for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    require(not unknown, f"{what} has unknown field(s) {unknown}")
    for name, value in data.items():
        if name in skip:
            continue
        kind = known[name]
        if value is None and "None" in kind:
            continue
        if kind.startswith(("float", "int")):
            ok = is_number(value) and (kind.startswith("float") or isinstance(value, int))
        elif kind.startswith("str"):
            ok = isinstance(value, str)
        elif kind.startswith("bool"):
            ok = isinstance(value, bool)
        elif kind.startswith("list"):
            ok = isinstance(value, list)
        elif kind.startswith("dict"):
            ok = isinstance(value, dict)
        else:
            ok = True
        require(ok, f"{what}.{name} is {short(value)}, not a {kind}")
    return data


def guarded(kind: str, doc: Any, body: Callable[[Rederivation], None]) -> Rederivation:
    if not isinstance(doc, dict):
        return Rederivation(kind, None, malformed=f"document is a {type(doc).__name__}")
    try:
        work = copy.deepcopy(doc)
    except RecursionError:
        return Rederivation(kind, None, malformed="document is nested too deeply")
    result = Rederivation(kind, work)
    try:
        body(result)
    except KeyError as err:
        return Rederivation(kind, None, malformed=f"{kind} results lack the field {err}")
    except (TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as err:
        return Rederivation(kind, None, malformed=f"{kind} results: {err}")
    except (statistics.StatisticsError, ConfigError, OmegaConfBaseException) as err:
        return Rederivation(kind, None, malformed=f"{kind} results: {err}".replace("\n", " "))
    except RecursionError:
        return Rederivation(kind, None, malformed="document is nested too deeply")
    return result


# --- the Benchmark hooks -------------------------------------------------------------------


class Rederiver:
    """A ``Benchmark.rederive`` hook: ``hook(doc)`` lists every reason the figures do not
    re-derive (empty when they all do); ``hook.full(doc)`` gives the whole ``Rederivation``."""

    def __init__(self, kind: str, body: Callable[[Rederivation], None]) -> None:
        self.kind = kind
        self._body = body

    def full(self, doc: Any) -> Rederivation:
        return guarded(self.kind, doc, self._body)

    def __call__(self, doc: dict[str, Any]) -> list[str]:
        return self.full(doc).reasons()


def rederivation(hook: Callable[[dict[str, Any]], list[str]], kind: str, doc: Any) -> Rederivation:
    """The full result of a record's ``rederive`` hook (a plain hook's reasons as problems)."""
    full = getattr(hook, "full", None)
    if full is not None:
        return full(doc)
    try:
        reasons = list(hook(doc))
    except Exception as err:  # a third-party hook: its failure is a finding, not a crash
        return Rederivation(kind, None, malformed=f"{kind} re-derivation failed: {err}")
    return Rederivation(kind, copy.deepcopy(doc), problems=reasons, compared=1)


def differences(where: str, recorded: Any, reference: Any, limit: int = 6) -> list[str]:
    """Every path at which ``recorded`` differs from ``reference`` (first ``limit``)."""
    out: list[str] = []
    if isinstance(recorded, dict) and isinstance(reference, dict):
        for key in sorted(set(recorded) | set(reference), key=str):
            if key not in reference:
                out.append(f"{where}.{key}: not in the reference")
            elif key not in recorded:
                out.append(f"{where}.{key}: missing (reference {short(reference[key])})")
            else:
                out += differences(f"{where}.{key}", recorded[key], reference[key], limit)
            if len(out) >= limit:
                break
        return out[:limit]
    found = difference(recorded, reference)
    if found is None:
        return []
    path, a, b = found
    return [f"{where}{path}: file {short(a)}, reference {short(b)}"]
