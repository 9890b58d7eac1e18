"""Exceptions gosok raises on bad input and unusable clusters.

A ``ConfigError`` carries every problem found, each naming the field and the allowed
values, so the CLI can print them all at once and exit non-zero before starting anything.
"""

from __future__ import annotations


class GosokError(Exception):
    """Base of gosok's own errors; the CLI prints these without a traceback."""

    exit_code = 1


class ConfigError(GosokError):
    """The composed config is invalid. Raised before anything starts on the cluster."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in self.problems))


class ClusterMismatchError(GosokError):
    """The Ray cluster does not offer what the cluster config asks for."""

    exit_code = 3


class CollectiveTimeoutError(GosokError):
    """A step on the ranks did not finish within its timeout."""

    exit_code = 4


class RankCallError(GosokError):
    """A benchmark's rank could not be called, or ended, while the driver waited on it."""


# A rank's process could not start because its node lacks what the job names (an
# interpreter, a script, a permission): the job's environment, not an infrastructure fault.
ENVIRONMENT_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError)


class RankStartError(GosokError):
    """A rank's process could not be started on its node (no such interpreter or script,
    no permission): ``rank``, ``node_id``, ``hostname`` and the node's own error."""

    def __init__(self, rank: int, node_id: str, hostname: str, cause: BaseException) -> None:
        self.rank, self.node_id, self.hostname, self.cause = rank, node_id, hostname, cause
        super().__init__(
            f"rank {rank} could not start on {hostname or 'its node'} ({node_id[:8]}): "
            f"{type(cause).__name__}: {cause}"
        )
