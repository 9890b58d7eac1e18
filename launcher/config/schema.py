"""Typed schemas for every gosok config group, registered in Hydra's ConfigStore.

Each YAML file under ``configs/<group>/`` starts with ``defaults: [/schema/<group>@_here_:
<schema>, _self_]`` so Hydra merges it onto one of these dataclasses (kept in the ``schema/``
groups, so they are never offered as choices of ``<group>=``): a misspelt key or a wrong type is
refused by Hydra at compose time with the full key in the message. Semantic rules
(ranges, allowed names, cross-field checks) live in ``launcher.validate``.

Use: ``register_schemas()`` once before Hydra composes (the CLI does this).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

CLUSTER_KINDS = ("local", "existing", "slurm")


@dataclass
class GpuSpec:
    """One entry of the GPU catalogue: dense Tensor Core peaks and memory/fabric specs."""

    name: str = MISSING
    key: str = MISSING
    status: str = "shipping"  # shipping | announced | host
    fp8_tflops: float | None = None
    bf16_tflops: float | None = None
    tf32_tflops: float | None = None
    fp4_tflops: float | None = None
    fp32_tflops: float | None = None
    hbm_gb: float | None = None
    hbm_tbps: float | None = None
    nvlink_gbps: float | None = None
    nics: str = ""
    # Substrings of torch.cuda.get_device_name() that identify this model.
    device_name_match: list[str] = field(default_factory=list)
    min_compute_capability: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass
class LocalRayConfig:
    """How gosok starts a local Ray cluster (CPU fallback and tests)."""

    node_ip: str = "127.0.0.2"
    port: int = 0  # 0: pick a free port
    cpus_per_node: int = 1
    object_store_bytes: int = 100_000_000
    start_timeout_s: float = 60.0


@dataclass
class ClusterConfig:
    """The allocation: which GPU type, how many nodes and rank slots, where Ray is."""

    name: str = MISSING
    #: local: gosok starts Ray on this machine; existing: connect to a running Ray cluster;
    #: slurm: inside a Slurm allocation, on the Ray cluster deploy/slurm/gosok.sbatch starts.
    kind: str = "local"
    provider: str = "local"
    gpu: str = "cpu"  # key into the GPU catalogue (configs/gpu/<key>.yaml)
    nodes: int = 2
    gpus_per_node: int = 2  # rank slots per node (GPUs on a GPU cluster)
    spare_nodes: int = 0
    address: str | None = None  # Ray address (host:port) for kind=existing
    #: Hostnames gosok places no rank on, one per line (the acceptance suite writes its
    #: culprits to <run dir>/exclude.txt in this form; `sbatch --exclude` takes it too).
    exclude_file: str | None = None
    #: kind=local only. none: every node on loopback (127.0.0.2), sharing this machine's
    #: network, hostname and /tmp. netns (root): each worker node in its own network, UTS
    #: and mount namespace (its own IP on a private bridge, hostname and /tmp), like
    #: separate hosts, with one shared directory standing for the cluster's shared storage.
    isolation: str = "none"
    local: LocalRayConfig = field(default_factory=LocalRayConfig)
    note: str = ""


@dataclass
class ClusterCommandConfig:
    """Top-level config of ``gosok cluster up|down|status``."""

    cluster: ClusterConfig = MISSING
    action: str = "status"


def register_schemas() -> None:
    """Store the schemas every command shares in Hydra's ConfigStore (idempotent)."""
    from gosok.launcher.cluster.slurm import register_resolver

    register_resolver()
    cs = ConfigStore.instance()
    cs.store(group="schema/cluster", name="base_cluster", node=ClusterConfig)
    cs.store(name="base_cluster_command", node=ClusterCommandConfig)
