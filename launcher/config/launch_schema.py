"""Typed schemas of ``gosok launch``: the job (script or recipe), DeepSpeed, logger,
checkpoints and fault handling, stored in Hydra's ConfigStore.

YAML files under ``configs/job/``, ``configs/deepspeed/`` and ``configs/logger/`` start
with ``defaults: [<schema>, _self_]``, so a misspelt key or a wrong type is refused at
compose time. Semantic rules live in ``launcher.job_validate``; allocation rules in
``launcher.allocation``.

Use: importing this module registers the schemas (``gosok launch`` does it first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from gosok.launcher.config.ledger_schema import LedgerConfig
from gosok.launcher.config.schema import ClusterConfig
from gosok.launcher.config.trust import AuditConfig, SignConfig

JOB_KINDS = ("script", "recipe")
STRATEGIES = ("ddp", "fsdp", "deepspeed")
PRECISIONS = ("bf16", "fp32")
ZERO_STAGES = (0, 1, 2, 3)
LOGGER_KINDS = ("wandb", "none")
WANDB_MODES = ("auto", "offline", "online", "disabled")
TRACKS = ("auto", "small", "server", "none")


@dataclass
class ScriptJobConfig:
    """Any torchrun-style script, run unchanged on every rank."""

    kind: str = "script"
    name: str = "script"
    script: str = MISSING  # path of the script (relative to the launch directory)
    args: list[str] = field(default_factory=list)  # argv after the script, never a shell
    python: str = ""  # interpreter on the nodes; empty: the driver's sys.executable
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every rank
    #: Variables copied from the launching environment to every rank (e.g. HF_TOKEN):
    #: their values are redacted in every file and everything printed.
    env_from_host: list[str] = field(default_factory=list)
    workdir: str = ""  # cwd of the ranks; empty: the launch directory
    #: The directory shipped to every node, holding the script; empty: the script's own
    #: directory (only the script when that is a shared temporary one such as /tmp).
    code_dir: str = ""


@dataclass
class ModelConfig:
    """The built-in GPT-style decoder (tiny by default so it trains on CPU)."""

    vocab_size: int = 64
    seq_len: int = 32
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256


@dataclass
class DataConfig:
    """Synthetic token streams generated on the ranks (nothing is downloaded)."""

    source: str = "markov"  # markov: a fixed random order-2 Markov chain over the vocab
    seed: int = 7


@dataclass
class RecipeJobConfig:
    """The built-in language-model recipe."""

    kind: str = "recipe"
    name: str = "gpt-tiny"
    strategy: str = "ddp"
    precision: str = "fp32"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 60
    micro_batch: int = 8  # sequences per rank per micro step
    grad_accum: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 1234
    log_every: int = 5


@dataclass
class DeepSpeedConfig:
    """What gosok writes into the generated DeepSpeed JSON (strategy=deepspeed)."""

    zero_stage: int = 2
    train_batch_size: int | None = None  # None: micro x grad_accum x world (checked if set)
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 5_000_000
    offload_optimizer: bool = False
    torch_adam: bool | None = None  # None: True on CPU (no fused-Adam compile), else False


@dataclass
class LoggerConfig:
    """Experiment logging: W&B on rank 0, or nothing."""

    kind: str = "wandb"
    project: str = "gosok"
    entity: str | None = None
    mode: str = "auto"  # auto: online if WANDB_API_KEY is set, else offline
    dir: str = ""  # empty: <run dir>/wandb
    tags: list[str] = field(default_factory=list)


@dataclass
class CheckpointConfig:
    """Where checkpoints go (a path every node sees) and how many are kept."""

    dir: str = ""  # empty: <run dir>/checkpoints
    every_steps: int = 20
    keep_last: int = 2


@dataclass
class FaultConfig:
    """Restarts, failover to spare nodes and hang detection."""

    max_failures: int = 3
    same_failure_limit: int = 2  # the same non-infrastructure failure this often: give up
    exclude_failed_nodes: bool = True
    #: No rank made progress (a heartbeat step, a torch.distributed collective, a move of
    #: its Python stack, bytes written while saving) for this long: a hang. Watched once a
    #: rank has beaten or entered a collective.
    hang_timeout_s: float = 120.0
    startup_timeout_s: float = 600.0  # from spawn to the first beat (DeepSpeed compiles)
    poll_s: float = 0.5  # each node reports this often (at once when a rank exits)
    report_timeout_s: float = 5.0  # a node's report later than poll_s + this is missed
    missed_reports: int = 3  # this many missed in a row: the node is lost
    placement_timeout_s: float = 120.0


@dataclass
class AllocationConfig:
    """Which allocation track the job runs under (rules in launcher/config/allocation.py)."""

    track: str = "auto"  # auto | small | server | none (skip the programme rules)


@dataclass
class LaunchOptions:
    """How the ranks' processes are started, and what is reported about it."""

    #: true: every rank is a fresh ``python`` (imports torch itself), started by its node's
    #: agent. false: ranks are forked from the zygote of each node's agent, which has torch
    #: (and DeepSpeed / the recipe when the job needs them) imported already; gosok falls
    #: back to fresh processes, saying why, when the zygote cannot serve the job.
    fresh_process: bool = False
    #: Print where the time went from the command to rank 0's first step (CLI, connect,
    #: placement, process start, imports, process-group init) and store it in launch.json.
    profile: bool = False


@dataclass
class LaunchConfig:
    """Top-level config of ``gosok launch``."""

    cluster: ClusterConfig = MISSING
    job: Any = MISSING
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    allocation: AllocationConfig = field(default_factory=AllocationConfig)
    launch: LaunchOptions = field(default_factory=LaunchOptions)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    #: Sign launch.json with this Ed25519 key (``sign.key=PATH``), as ``gosok bench`` does.
    sign: SignConfig = field(default_factory=SignConfig)
    #: The auditor's nonce, recorded in launch.json and covered by its signature.
    audit: AuditConfig = field(default_factory=AuditConfig)
    run_id: str = ""  # empty: derived from the run directory (stable across restarts)
    job_id: str = ""  # W&B group; empty: the job name
    tee_ranks: list[int] = field(default_factory=lambda: [0])
    dry_run: bool = False
    master_port: int = 0  # 0: a free port on rank 0's node


def register_launch_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(group="schema/job", name="base_script_job", node=ScriptJobConfig)
    cs.store(group="schema/job", name="base_recipe_job", node=RecipeJobConfig)
    cs.store(group="schema/deepspeed", name="base_deepspeed", node=DeepSpeedConfig)
    cs.store(group="schema/logger", name="base_logger", node=LoggerConfig)
    cs.store(name="base_launch", node=LaunchConfig)
