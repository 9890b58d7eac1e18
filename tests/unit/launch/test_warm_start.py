"""The pure parts of fast launching: what a job asks of the node's zygote, the profile's
phases, the runner argv, the cached command list and the single Hydra compose.
"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from gosok.launcher import cli
from gosok.launcher.config.launch_schema import LaunchOptions, RecipeJobConfig, ScriptJobConfig
from gosok.launcher.launch.command import RECIPE_MODULE, launch_profile, warm_preload
from gosok.launcher.launch.rank_group import RankGroup
from gosok.launcher.ranks.agent import WarmNeeds
from gosok.launcher.ranks.script_runner import RUNNER_MODULE, Program


def test_launch_options_default_to_warm_without_profile():
    options = OmegaConf.structured(LaunchOptions)
    assert options.fresh_process is False and options.profile is False


def test_preload_follows_the_job():
    assert warm_preload(OmegaConf.structured(ScriptJobConfig(script="t.py"))) == ("torch",)
    recipe = OmegaConf.structured(RecipeJobConfig())
    assert warm_preload(recipe) == ("torch", RECIPE_MODULE)
    recipe.strategy = "deepspeed"
    assert warm_preload(recipe) == ("torch", "deepspeed", RECIPE_MODULE)


def test_warm_needs_take_the_interpreter_and_import_time_env():
    env = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "OTHER": "x"}
    needs = WarmNeeds.for_job("/opt/py/bin/python", env, ("torch",))
    assert needs.python == "/opt/py/bin/python"
    # OMP_NUM_THREADS is each rank's own (a zygote drops it): no zygote of its own.
    assert needs.import_env == (("DS_ACCELERATOR", "cpu"),)
    assert needs == WarmNeeds.for_job("/opt/py/bin/python", {"DS_ACCELERATOR": "cpu"}, ("torch",))


def test_a_program_is_typed_not_an_argv_taken_apart():
    script = Program(sys.executable, "t.py", ("--lr", "1"))
    assert script.main() == ["t.py", "--lr", "1"]
    assert script.fresh_argv() == [sys.executable, "-m", RUNNER_MODULE, "t.py", "--lr", "1"]
    module = Program("/opt/py/bin/python", "m", ("a",), module=True)
    assert module.main() == ["--module", "m", "a"]
    assert module.fresh_argv()[:3] == ["/opt/py/bin/python", "-m", RUNNER_MODULE]


def _outcome(marks: list[tuple[str, float]], first_beat: float | None):
    return SimpleNamespace(
        timings={
            "rank0": {"marks": [{"event": e, "unix": t} for e, t in marks], "spawn_unix": 12.0},
            "placement_s": 0.5,
        },
        first_beat_unix=first_beat,
        rank_start={"mode": "warm", "reason": "", "preload": ["torch"]},
    )


def test_profile_phases_run_from_the_command_to_the_first_step():
    marks = {"process_start": 10.0, "connect_start": 10.5, "connected": 11.0}
    events = [("start", 12.1), ("ready", 12.1), ("pg_init_start", 12.3), ("pg_init_end", 12.6)]
    profile = launch_profile(marks, _outcome(events, first_beat=13.0))
    assert profile["phases_s"] == {
        "cli": 0.5,
        "connect": 0.5,
        "placement": 1.0,
        "process start": pytest.approx(0.1),
        "script imports": pytest.approx(0.2),
        "process group": pytest.approx(0.3),
        "first step": pytest.approx(0.4),
    }
    assert profile["command_to_first_step_s"] == 3.0
    assert profile["details_s"] == {"placement_s": 0.5}
    # No heartbeat, no init_process_group: those phases are unknown, not zero.
    profile = launch_profile(marks, _outcome([("start", 12.1)], first_beat=None))
    assert profile["phases_s"]["process start"] == pytest.approx(0.1)
    assert profile["phases_s"]["process group"] is None
    assert profile["command_to_first_step_s"] is None


def test_sampler_calls_go_to_the_ranks_node_agent_with_the_job():
    calls = []

    def method(name):
        return SimpleNamespace(remote=lambda *a, **k: calls.append((name, a, k)) or "ref")

    cluster = SimpleNamespace(gpu="cpu", nodes=2, gpus_per_node=2)
    group = RankGroup(None, cluster, {}, WarmNeeds())
    agents = [SimpleNamespace(start_sampler=method(n), drain_samples=method(n)) for n in "ab"]
    group.agents = agents
    group.rank_info = [{"rank": r, "node_rank": r // 2} for r in range(4)]
    group.start_sampler(2, 0.5, "node-1", "c", "", [7])
    assert group.drain_samples(3, stop=True) == "ref"
    assert calls == [
        ("b", (group.job_key, 0.5, "node-1", "c", "", [7]), {}),
        ("b", (group.job_key, True), {}),
    ]


def test_process_start_is_in_the_past():
    started = cli.process_start_unix()
    assert started is not None and time.time() - 3600 < started <= time.time()


def test_commands_are_read_once_per_installation(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = cli._entry_points()
    assert ("launch", "gosok.launcher.commands:LAUNCH") in first
    assert list((tmp_path / "gosok" / "cli").glob("commands-*.json"))

    def unreadable(**_):
        raise AssertionError("entry points read again despite the cache")

    monkeypatch.setattr("importlib.metadata.entry_points", unreadable)
    assert cli._entry_points() == first
    only = cli.commands(only="launch")
    assert list(only) == ["launch"] and only["launch"].name == "launch"


def test_one_compose_skips_the_mode_probe_unless_asked(monkeypatch):
    from hydra._internal.hydra import Hydra

    original = Hydra.get_mode
    with cli._one_compose(["job=script"]):
        assert Hydra.get_mode(None, "launch", []) is None
        assert Hydra.get_mode is not original
    assert Hydra.get_mode is original
    for args in (["hydra.mode=MULTIRUN"], ["--config-dir", "/x"], ["-cn", "other"]):
        with cli._one_compose(args):
            assert Hydra.get_mode is original
