"""The goodput ledger's deploy files, checked without a cluster: the Grafana dashboard asks
only for metrics ``gosok ledger serve`` serves, with bounded labels; the systemd units and
the Kubernetes manifests run ``gosok ledger watch|serve`` with arguments its parser takes,
as an unprivileged user, with the database password from a secret and never in a file."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "gosok-ledger.json"
WATCH_UNIT = DEPLOY / "systemd" / "gosok-ledger-watch.service"
SERVE_UNIT = DEPLOY / "systemd" / "gosok-ledger-serve.service"
DAEMONSET = DEPLOY / "kubernetes" / "ledger-watch-daemonset.yaml"
SERVE_MANIFEST = DEPLOY / "kubernetes" / "ledger-serve.yaml"
SCRAPE = DEPLOY / "prometheus" / "scrape.yaml"

# What `gosok ledger serve` exposes (sample names) and the only labels its series carry:
# one series per provider, cluster, GPU type and project, never per job, rank or step.
SERVED = {
    "gosok_gpu_hours_total",
    "gosok_job_goodput_ratio",
    "gosok_job_attempts_total",
    "gosok_idle_gpus",
    "gosok_allocated_gpus",
    "gosok_running_jobs",
    "gosok_ledger_up",
}
LABELS = {"provider", "cluster", "gpu_type", "project", "state", "cause"}
STATES = {"allocated", "used", "productive", "idle"}
GRAFANA_BUILTINS = {"__range", "__rate_interval", "__interval", "__range_s", "__interval_ms"}

# PromQL's functions, aggregations and keywords, and Grafana's template-query functions.
PROMQL_WORDS = {
    *("sum avg min max count count_values group stddev stdvar topk bottomk quantile".split()),
    *("limitk limit_ratio by without on ignoring group_left group_right bool".split()),
    *("and or unless offset atan2 inf nan".split()),
    *("rate irate increase delta idelta deriv predict_linear resets changes".split()),
    *("avg_over_time min_over_time max_over_time sum_over_time count_over_time".split()),
    *("last_over_time quantile_over_time present_over_time stddev_over_time".split()),
    *("absent absent_over_time clamp clamp_min clamp_max abs ceil floor round sqrt".split()),
    *("exp ln log2 log10 sgn vector scalar time timestamp sort sort_desc".split()),
    *("histogram_quantile label_replace label_join".split()),
    *("day_of_month day_of_week day_of_year days_in_month hour minute month year".split()),
    *("label_values label_names metrics query_result".split()),
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<expr>.+),\s*)?(?P<label>\w+)\s*\)\s*$")
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")
_IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][\w:]*")


def promql_names(query: str) -> tuple[set[str], set[str], list[str]]:
    """(metric names, label names, identifiers that are neither) of a PromQL expression
    or a Grafana ``label_values(...)`` query."""
    labels: set[str] = set()
    found = _LABEL_VALUES.match(query)
    if found:
        labels.add(found["label"])
        query = found["expr"] or ""
    for matchers in _MATCHERS.findall(_STRING.sub('""', query)):
        labels |= {m.strip() for m in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers)}
    bare = _MATCHERS.sub(" ", _STRING.sub('""', query))
    for grouping in _GROUPING.findall(bare):
        labels |= {name.strip() for name in grouping.split(",") if name.strip()}
    bare = _GROUPING.sub(" ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = _VARIABLE.sub(" ", bare)
    metrics, unknown = set(), []
    for word in _IDENTIFIER.findall(bare):
        if re.fullmatch(r"gosok_[a-z_]+", word):
            metrics.add(word)
        elif word.lower() not in PROMQL_WORDS:
            unknown.append(word)
    return metrics, labels, unknown


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, query) for every panel target and every query template variable."""
    board = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            queries.append((f"variable {variable['name']!r}", query))
    return queries


def dashboard_metrics() -> set[str]:
    return {m for _, q in dashboard_queries() for m in promql_names(q)[0]}


@pytest.mark.parametrize(
    "query, metrics, labels, unknown",
    [
        (
            'sum by (cause) (increase(gosok_job_attempts_total{cluster=~"$cluster"}[$__range]))',
            {"gosok_job_attempts_total"},
            {"cause", "cluster"},
            [],
        ),
        (
            'label_values(gosok_idle_gpus{provider=~"$p"}, project)',
            {"gosok_idle_gpus"},
            {"provider", "project"},
            [],
        ),  # fmt: skip
        ("sum(rate(DCGM_FI_DEV_GPU_UTIL[5m])) / 1e-9", set(), set(), ["DCGM_FI_DEV_GPU_UTIL"]),
        ('gosok_running_jobs{job_id="x"} or vector(0)', {"gosok_running_jobs"}, {"job_id"}, []),
    ],
)
def test_the_promql_reader_finds_metrics_labels_and_strangers(query, metrics, labels, unknown):
    assert promql_names(query) == (metrics, labels, unknown)


def test_dashboard_uses_only_served_metrics_and_labels():
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 39 and "__inputs" not in board
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"provider", "cluster", "gpu_type", "project"} <= variables.keys()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"

    queries = dashboard_queries()
    assert queries
    for where, query in queries:
        metrics, labels, unknown = promql_names(query)
        assert metrics, f"{where}: no gosok metric in {query!r}"
        assert metrics <= SERVED, f"{where}: not served: {sorted(metrics - SERVED)}"
        assert not unknown, f"{where}: neither PromQL nor a served metric: {unknown}"
        assert labels <= LABELS, f"{where}: labels the metrics lack: {sorted(labels - LABELS)}"
        used = set(_VARIABLE.findall(query))
        assert used <= variables.keys() | GRAFANA_BUILTINS, f"{where}: undefined {used}"
        for state in re.findall(r'state\s*=\s*"([^"]*)"', query):
            assert state in STATES, f"{where}: no state {state!r}"
    assert dashboard_metrics() == SERVED, "every served metric has a panel"

    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert legend <= LABELS, f"{panel['title']!r}: legend names {legend - LABELS}"


def test_dashboard_metrics_are_what_render_serves(tmp_path):
    """Fails until ``gosok.launcher.ledger.metrics.render`` and ``Ledger.allocate`` exist."""
    from prometheus_client.parser import text_string_to_metric_families

    from gosok.launcher.ledger.db import Ledger
    from gosok.launcher.ledger.metrics import render

    now = 1_750_000_000.0
    with Ledger.open(str(tmp_path / "ledger.sqlite")) as ledger:
        ledger.allocate(
            project="llm",
            cluster="h200-east",
            provider="acme",
            gpu_type="H200",
            gpus=16,
            start_unix=now - 7200,
            end_unix=now + 3600,
        )
        ledger.start_job(
            "job-1",
            kind="launch",
            project="llm",
            cluster="h200-east",
            gpu_type="H200",
            nodes=2,
            gpus=16,
            started_unix=now - 6000,
        )
        ledger.record_attempt(
            "job-1",
            0,
            started_unix=now - 6000,
            first_step_unix=now - 5700,
            ended_unix=now - 2400,
            cause="ok",
            last_step=10,
        )
        ledger.finish_job("job-1", exit_status="ok", finished_unix=now - 2400, steps=10)
        text = render(ledger, now_unix=now)

    assert isinstance(text, bytes)
    samples = [
        sample
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    ]
    served = {s.name for s in samples}
    missing = dashboard_metrics() - served
    assert not missing, f"the dashboard asks for metrics render does not serve: {missing}"
    for sample in samples:
        if sample.name.startswith("gosok_"):
            extra = set(sample.labels) - LABELS
            assert not extra, f"{sample.name}: unbounded labels {sorted(extra)}"
    states = {s.labels["state"] for s in samples if s.name == "gosok_gpu_hours_total"}
    assert states <= STATES and "allocated" in states

    def total(name: str) -> float:
        return sum(s.value for s in samples if s.name == name)

    up = [s for s in samples if s.name == "gosok_ledger_up"]
    assert [(s.labels, s.value) for s in up] == [({}, 1.0)]
    assert total("gosok_allocated_gpus") == 16
    assert total("gosok_idle_gpus") == 16  # allocated now, the job has finished
    assert total("gosok_running_jobs") == 0


# ---- systemd and Kubernetes ------------------------------------------------------------

# What /etc/gosok/ledger.env or the ConfigMap would hold on a real node.
SITE_ENV = {
    "GOSOK_LEDGER": "postgresql://gosok@ledger-db:5432/gosok",
    "GOSOK_CLUSTER": "h200-east",
    "NODE_NAME": "gpu-07",
}
_URL_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")
_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|CREDENTIAL|API_?KEY", re.IGNORECASE)


def unit_settings(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a systemd unit, in order (keys repeat)."""
    settings, section = [], ""
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.append((section, key.strip(), value.strip()))
    return settings


def unit_argv(path: Path) -> list[str]:
    """The unit's ExecStart, with its Environment= defaults under SITE_ENV expanded."""
    settings = unit_settings(path)
    specifiers = {"%H": "gpu-07", "%S": "/var/lib", "%%": "%"}
    env = {}
    for _, key, value in settings:
        if key == "Environment":
            name, _, default = value.partition("=")
            env[name] = re.sub(r"%.", lambda m: specifiers[m.group()], default)
    env.update(SITE_ENV)
    (command,) = [v for s, k, v in settings if s == "Service" and k == "ExecStart"]
    return [re.sub(r"\$\{(\w+)\}", lambda m: env.get(m[1], ""), a) for a in shlex.split(command)]


def parses(argv: list[str]) -> None:
    """``gosok ledger ...`` argv takes the ledger parser (``serve`` once it has landed)."""
    from gosok.launcher.ledger.command import build_parser

    assert Path(argv[0]).name == "gosok" and argv[1] == "ledger", argv
    try:
        build_parser().parse_args(argv[2:])
    except Exception as err:
        if argv[2] == "serve" and "invalid choice: 'serve'" in str(err):
            pytest.skip("gosok ledger serve is not in the parser yet")
        raise AssertionError(f"{shlex.join(argv)}: {err}") from err


@pytest.mark.parametrize("unit, action", [(WATCH_UNIT, "watch"), (SERVE_UNIT, "serve")])
def test_systemd_unit_runs_gosok_ledger_unprivileged(unit, action):
    text = unit.read_text()
    settings = {(s, k): v for s, k, v in unit_settings(unit)}
    argv = unit_argv(unit)
    assert argv[1:3] == ["ledger", action], argv
    assert re.search(rf"^ExecStart=\S*gosok ledger {action} ", text, re.MULTILINE)
    assert settings["Service", "User"] not in ("", "root", "0")
    assert settings["Service", "EnvironmentFile"] == "-/etc/gosok/ledger.env"
    assert settings["Service", "Restart"] == "on-failure"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
    }.items():
        assert settings["Service", key] == value, key
    assert settings["Service", "ProtectHome"] in ("read-only", "yes", "tmpfs")
    assert "PGPASSWORD=" not in text and not _URL_PASSWORD.search(text)
    if action == "watch":
        assert argv[argv.index("--node") + 1] == "gpu-07"  # %H: the host name
        assert "PrivateDevices=yes" not in text, "NVML needs /dev/nvidia*"
    else:
        assert argv[argv.index("--port") + 1] == "9464"
    parses(argv)


def manifests() -> list[dict]:
    return [
        doc
        for path in (DAEMONSET, SERVE_MANIFEST)
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def walk(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        yield from walk(child)


def container_argv(container: dict) -> list[str]:
    env = {e["name"] for e in container.get("env", [])}
    argv = [*container.get("command", []), *container.get("args", [])]
    for arg in argv:
        for name in re.findall(r"\$\((\w+)\)", arg):
            assert name in env, f"$({name}) is not in the container's env: left as it is"
    return [re.sub(r"\$\((\w+)\)", lambda m: SITE_ENV.get(m[1], "x"), a) for a in argv]


def test_kubernetes_manifests_watch_every_gpu_node_without_taking_one():
    docs = manifests()
    kinds = [d["kind"] for d in docs]
    assert kinds.count("DaemonSet") == 1 and {"Deployment", "Service", "ConfigMap"} <= set(kinds)
    (daemonset,) = [d for d in docs if d["kind"] == "DaemonSet"]
    assert daemonset["apiVersion"] == "apps/v1"
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    argv = container_argv(container)
    assert argv[:3] == ["gosok", "ledger", "watch"], argv
    assert argv[argv.index("--node") + 1] == "gpu-07"
    parses(argv)
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert "configMapKeyRef" in env["GOSOK_LEDGER"]["valueFrom"]
    assert container["image"] == "gosok:latest"
    gpu_nodes = json.dumps([pod.get("nodeSelector", {}), pod.get("tolerations", [])])
    assert "nvidia.com/gpu" in gpu_nodes
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for home in ("HOME", "XDG_DATA_HOME"):
        assert "emptyDir" in volumes[mounts[env[home]["value"]]], f"{home} is not writable"

    (serve,) = [d for d in docs if d["kind"] == "Deployment"]
    (serve_container,) = serve["spec"]["template"]["spec"]["containers"]
    serve_argv = container_argv(serve_container)
    assert serve_argv[:3] == ["gosok", "ledger", "serve"], serve_argv
    port = serve_argv[serve_argv.index("--port") + 1]
    (service,) = [d for d in docs if d["kind"] == "Service"]
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == port
    assert [p["containerPort"] for p in serve_container["ports"]] == [int(port)]

    for doc in docs:
        if doc["kind"] not in ("DaemonSet", "Deployment"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["kind"]
        assert pod["securityContext"]["runAsUser"] != 0, doc["kind"]
        for c in pod["containers"]:
            password = {e["name"]: e for e in c["env"]}["PGPASSWORD"]
            from_secret = "secretKeyRef" in password.get("valueFrom", {})
            assert from_secret and "value" not in password, f"{doc['kind']}: PGPASSWORD"
            resources = json.dumps(c.get("resources", {}))
            assert "nvidia.com/gpu" not in resources, "it observes GPUs; it must not take one"


def test_no_manifest_or_scrape_config_holds_a_password():
    for node in walk(manifests()):
        if isinstance(node, dict) and "name" in node and "value" in node:
            assert not _SECRET_NAME.search(node["name"]), f"{node['name']} is a literal"
        if isinstance(node, str):
            assert not _URL_PASSWORD.search(node), node
            assert not re.search(r"password\s*[=:]\s*\S", node, re.IGNORECASE), node
    config = yaml.safe_load(SCRAPE.read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets and all(t.endswith(":9464") for t in targets)
