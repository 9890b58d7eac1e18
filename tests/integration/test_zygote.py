"""The zygote (``gosok.launcher.ranks.zygote``): scripts forked from a zygote with torch
preloaded see exactly the argv, env, cwd and ``__main__`` a fresh interpreter would give
them, end with the same exit codes (pushed to the agent as they end), can be signalled and
killed, die with the zygote, the zygote with its agent's end of the channel, and start
much sooner than a fresh ``import torch``.

No Ray. One torch-preloading zygote per module, a few bare ones (``preload=()``) for the
life-cycle tests.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gosok.launcher.ranks import forked, zygote
from tests.integration.launch.launch_helpers import wait_for

SERVER_ONLY = "GOSOK_WARM_SERVER_ONLY"


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != SERVER_ONLY}
    env.update(extra)
    return env


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = dict(os.environ, **{SERVER_ONLY: "1"})
    log = tmp_path_factory.mktemp("zygote") / "zygote.log"
    handle = zygote.Zygote.start(preload=("torch",), env=env, log_path=str(log))
    yield handle
    handle.stop(grace_s=0.5)


def _script(dir_: Path, name: str, source: str) -> Path:
    path = dir_ / name
    path.write_text(textwrap.dedent(source))
    return path


REPORT = """
    import ctypes, json, os, sys, threading, time
    first = {"torch_loaded": "torch" in sys.modules, "t": time.time()}
    import torch

    def late():
        time.sleep(0.2)
        print("non-daemon thread joined", flush=True)

    threading.Thread(target=late).start()
    getenv = ctypes.CDLL(None).getenv
    getenv.restype = ctypes.c_char_p
    print("REPORT " + json.dumps({
        **first,
        "name": __name__,
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "path0": sys.path[0],
        "custom": os.environ.get("GOSOK_WARM_CUSTOM"),
        "custom_c": (getenv(b"GOSOK_WARM_CUSTOM") or b"").decode(),
        "server_only": os.environ.get("GOSOK_WARM_SERVER_ONLY"),
        "server_only_c": getenv(b"GOSOK_WARM_SERVER_ONLY"),
        "stdin": sys.stdin.read(),
        "threads": torch.get_num_threads(),
        "matmul": float((torch.ones(64, 64) @ torch.ones(64, 64)).sum()),
        "own_group": os.getpgid(0) == os.getpid(),
    }), flush=True)
"""


def _report(log: Path) -> dict:
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("REPORT ")]
    assert lines, log.read_text()
    return json.loads(lines[-1][len("REPORT ") :])


def test_child_sees_argv_env_cwd_and_main(server, tmp_path):
    scripts, work = tmp_path / "scripts", tmp_path / "work"
    scripts.mkdir()
    work.mkdir()
    script = _script(scripts, "report.py", REPORT)
    argv = [str(script), "--lr", "3e-4", "two words"]
    env = _child_env(GOSOK_WARM_CUSTOM="custom-value", OMP_NUM_THREADS="1")
    child = server.spawn(argv, env, str(work), "rank.log")
    assert child.wait(30) == 0, (work / "rank.log").read_text()
    out = (work / "rank.log").read_text()
    report = _report(work / "rank.log")
    assert report["torch_loaded"] is True
    assert report["name"] == "__main__"
    assert report["argv"] == argv
    assert report["cwd"] == str(work)
    assert report["path0"] == str(scripts)
    assert report["custom"] == report["custom_c"] == "custom-value"
    assert report["server_only"] is None and report["server_only_c"] is None
    assert report["stdin"] == ""
    assert report["threads"] == 1  # OMP_NUM_THREADS of the child, not the server's
    assert report["matmul"] == 64 * 64 * 64
    assert report["own_group"] is True
    assert "non-daemon thread joined" in out


def test_module_argv(server, tmp_path):
    (tmp_path / "gw_mod.py").write_text(
        "import os, sys\nprint('MOD', __name__, sys.argv[1:], sys.path[0] == os.getcwd())\n"
    )
    child = server.spawn(["--module", "gw_mod", "a", "b"], _child_env(), str(tmp_path), "m.log")
    assert child.wait(30) == 0
    assert "MOD __main__ ['a', 'b'] True" in (tmp_path / "m.log").read_text()


EXIT_CASES = {
    "normal": ("print('hi')", 0, "hi"),
    "exit_3": ("import sys\nsys.exit(3)", 3, ""),
    "exit_none": ("import sys\nsys.exit()", 0, ""),
    "exit_string": ("import sys\nsys.exit('bye now')", 1, "bye now"),
    "raise": ("raise ValueError('boom')", 1, "ValueError: boom"),
    "sigterm": (
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(5)",
        -15,
        "",
    ),
    "keyboard_interrupt": ("raise KeyboardInterrupt", -2, "KeyboardInterrupt"),
    "atexit": ("import atexit\natexit.register(print, 'atexit ran')", 0, "atexit ran"),
}


def test_exit_codes_match_a_fresh_interpreter(server, tmp_path):
    env = _child_env()
    warm_children, fresh = {}, {}
    for name, (source, _code, _text) in EXIT_CASES.items():
        script = _script(tmp_path, f"{name}.py", source)
        warm_children[name] = server.spawn([str(script)], env, str(tmp_path), f"{name}.log")
        fresh[name] = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    missing = str(tmp_path / "no_such_script.py")
    warm_children["missing"] = server.spawn([missing], env, str(tmp_path), "missing.log")
    fresh["missing"] = subprocess.Popen(
        [sys.executable, missing], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    cases = {**EXIT_CASES, "missing": ("", 2, "can't open file")}
    for name, (_source, code, text) in cases.items():
        got = warm_children[name].wait(30)
        out = (tmp_path / f"{name}.log").read_text()
        assert got == code, f"{name}: {got}\n{out}"
        assert fresh[name].wait(30) == code, name
        assert text in out, f"{name}: {out}"
    assert "Traceback (most recent call last)" in (tmp_path / "raise.log").read_text()


def test_signal_rank_only_then_kill_group(server, tmp_path):
    script = _script(
        tmp_path,
        "sleeper.py",
        """
        import subprocess, sys, time
        helper = subprocess.Popen(["sleep", "60"])
        print("ready", helper.pid, flush=True)
        time.sleep(60)
        """,
    )
    stack = tmp_path / "stack.txt"
    log = tmp_path / "sleeper.log"
    env = _child_env(GOSOK_STACK_FILE=str(stack))
    child = server.spawn([str(script)], env, str(tmp_path), str(log))
    line = wait_for(lambda: "ready" in log.read_text() and log.read_text(), 10, "ready")
    helper = int(line.split()[1])
    assert child.poll() is None
    assert child.send_signal(signal.SIGUSR1)  # faulthandler dump, rank only
    wait_for(lambda: stack.exists() and "sleeper.py" in stack.read_text(), 10, "stack")
    assert child.poll() is None and not _gone(helper)
    assert child.kill()
    assert child.wait(10) == -9
    wait_for(lambda: _gone(helper), 10, "the helper to die with the group")
    assert child.kill() is False  # already ended: no-op


def test_two_children_run_concurrently(server, tmp_path):
    source = """
        import sys, time
        from pathlib import Path
        mine, other = Path(sys.argv[1]), Path(sys.argv[2])
        mine.touch()
        deadline = time.time() + 10
        while not other.exists():
            if time.time() > deadline:
                sys.exit(5)
            time.sleep(0.01)
    """
    script = _script(tmp_path, "meet.py", source)
    a, b = str(tmp_path / "a.flag"), str(tmp_path / "b.flag")
    env = _child_env()
    first = server.spawn([str(script), a, b], env, str(tmp_path), "a.log")
    second = server.spawn([str(script), b, a], env, str(tmp_path), "b.log")
    assert first.pid != second.pid
    assert (first.wait(20), second.wait(20)) == (0, 0)


def test_exits_are_pushed_to_the_agent(server, tmp_path):
    script = _script(tmp_path, "quick.py", "pass\n")
    ended = []
    child = server.spawn([str(script)], _child_env(), str(tmp_path), "quick.log",
                         on_exit=lambda: ended.append(True))  # fmt: skip
    wait_for(lambda: ended, 10, "the exit event")
    assert child.poll() == 0
    assert not os.path.exists(f"/proc/{child.pid}")  # reaped by the zygote


def test_wait_timeout_and_an_immediate_sigterm(server, tmp_path):
    script = _script(tmp_path, "long.py", "import time\ntime.sleep(60)\n")
    mine = server.spawn([str(script)], _child_env(), str(tmp_path), "long2.log")
    with pytest.raises(subprocess.TimeoutExpired):
        mine.wait(timeout=0.2)
    assert mine.poll() is None
    mine.terminate()
    assert mine.wait(10) == -15

    # a SIGTERM sent at once must reach the child, not the server's handler copied into it
    for i in range(8):
        fast = server.spawn([str(script)], _child_env(), str(tmp_path), f"fast{i}.log")
        assert fast.terminate()
        assert fast.wait(10) == -15


def test_env_fingerprint_stable_and_matches_a_fresh_interpreter(server):
    assert forked.env_fingerprint(["torch"]) == forked.env_fingerprint(["torch"])
    assert forked.env_fingerprint(["torch"]) != forked.env_fingerprint(["torch", "json"])
    info = server.hello()
    assert info["fingerprint"] == info["fingerprint_now"]
    assert not server.stale()
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            "from gosok.launcher.ranks.forked import env_fingerprint\n"
            "print(env_fingerprint(['torch']))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=_child_env(),
    )
    assert fresh.stdout.strip() == info["fingerprint"], fresh.stderr


def test_stale_environment_and_startup_env_refusal(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    module = mods / "gw_preload.py"
    module.write_text("VALUE = 1\n")
    env = dict(os.environ, PYTHONPATH=str(mods))
    handle = zygote.Zygote.start(preload=("gw_preload",), env=env)
    try:
        assert not handle.stale()
        with pytest.raises(zygote.ZygoteError, match="PYTHONPATH"):
            handle.spawn(["x.py"], _child_env(), str(tmp_path), "x.log")
        later = time.time() + 10
        os.utime(module, (later, later))
        assert handle.stale()
    finally:
        handle.stop(grace_s=0.5)


def test_stop_kills_live_children(tmp_path):
    handle = zygote.Zygote.start(preload=())
    try:
        up = "import time\nprint('up', flush=True)\ntime.sleep(60)\n"
        plain = _script(tmp_path, "plain.py", up)
        stubborn = _script(
            tmp_path,
            "stubborn.py",
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('up', flush=True)\ntime.sleep(60)\n",
        )
        env = _child_env()
        children = [
            handle.spawn([str(plain)], env, str(tmp_path), "plain.log"),
            handle.spawn([str(stubborn)], env, str(tmp_path), "stubborn.log"),
        ]
        for name in ("plain.log", "stubborn.log"):
            wait_for(lambda n=name: "up" in (tmp_path / n).read_text(), 10, name)
        started = time.monotonic()
        handle.stop(grace_s=0.5)
        assert time.monotonic() - started < 5
        assert handle.proc.returncode == 0
        assert all(_gone(child.pid) for child in children)
        assert [child.wait(5) for child in children] == [-15, -9]
        wait_for(lambda: not handle.alive(), 10, "the channel to close")
    finally:
        handle.stop(grace_s=0.1)


def test_zygote_and_its_children_end_with_the_agent(tmp_path):
    """The agent's process ends (here: SIGKILL, no goodbye): the zygote reads the end of
    its channel and takes its children with it."""
    script = _script(tmp_path, "long.py", "import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    agent = subprocess.Popen(
        [sys.executable, "-c",
         "import json, os, sys, time\nfrom gosok.launcher.ranks import zygote\n"
         "z = zygote.Zygote.start(preload=())\n"
         "c = z.spawn([sys.argv[1]], dict(os.environ), sys.argv[2], 'long.log')\n"
         "print(json.dumps([z.pid, c.pid]), flush=True)\ntime.sleep(60)\n",
         str(script), str(tmp_path)],
        stdout=subprocess.PIPE, text=True, env=_child_env(),
    )  # fmt: skip
    try:
        zygote_pid, child_pid = json.loads(agent.stdout.readline())
        wait_for(lambda: "up" in (tmp_path / "long.log").read_text(), 10, "the child")
        agent.kill()
        agent.wait(10)
        wait_for(lambda: _gone(zygote_pid), 10, "the zygote to end with its agent")
        wait_for(lambda: _gone(child_pid), 10, "the child to end with its zygote")
    finally:
        agent.kill()
        agent.wait(10)


def test_a_failed_preload_says_why(tmp_path):
    with pytest.raises(zygote.ZygoteError, match="gw_no_such_module"):
        zygote.Zygote.start(preload=("gw_no_such_module",), log_path=str(tmp_path / "z.log"))


def test_measure_start_latency(server, tmp_path, capsys):
    script = _script(
        tmp_path,
        "first_line.py",
        """
        import time
        first = time.time()
        import torch
        print("TIMES", first, time.time(), flush=True)
        """,
    )
    env = _child_env()
    to_first, to_torch = [], []
    for i in range(5):
        log = tmp_path / f"t{i}.log"
        sent = time.time()
        child = server.spawn([str(script)], env, str(tmp_path), str(log))
        assert child.wait(30) == 0
        first, after_torch = map(float, log.read_text().split()[1:3])
        to_first.append(first - sent)
        to_torch.append(after_torch - sent)
    fresh = []
    for _ in range(2):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True, env=env)
        fresh.append(time.perf_counter() - started)
    with capsys.disabled():
        print(
            f"\nwarm spawn -> first line: median {statistics.median(to_first) * 1e3:.1f} ms; "
            f"-> after `import torch`: {statistics.median(to_torch) * 1e3:.1f} ms; "
            f"fresh `python -c 'import torch'`: best {min(fresh) * 1e3:.0f} ms"
        )


def test_a_zygote_that_stops_answering_is_ended(tmp_path):
    """A late reply would answer the next request: a zygote silent past a request's
    timeout is killed, and its children are reported ended with it."""
    handle = zygote.Zygote.start(preload=())
    script = _script(tmp_path, "long.py", "import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    child = handle.spawn([str(script)], _child_env(), str(tmp_path), "long.log")
    wait_for(lambda: "up" in (tmp_path / "long.log").read_text(), 10, "the child")
    os.kill(handle.pid, signal.SIGSTOP)
    try:
        with pytest.raises(zygote.ZygoteError, match="no reply"):
            handle.request({"op": "hello"}, timeout=0.5)
        assert handle.proc.wait(10) == -signal.SIGKILL
        assert child.wait(10) == -signal.SIGKILL
        with pytest.raises(zygote.ZygoteError, match="gone"):
            handle.hello()
    finally:
        handle.stop(grace_s=0.1)
