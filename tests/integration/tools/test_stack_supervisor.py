"""The supervisor of `llmesh up` (tools.stack.Stack.supervise) with real processes: one killed
with SIGKILL is started again after its backoff, which doubles when it dies again at once; its
restarts show in status.json (what `llmesh status` prints)."""

import json
import os
import signal
import sys
import time

from tools.stack import RESTART_BACKOFF_FIRST_S, Child, Ports, Stack

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _supervise_until(stack: Stack, done, timeout_s: float = 10.0) -> list[str]:
    events = []
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, events
        events += stack.supervise()
        time.sleep(0.05)
    return events


def test_a_killed_process_is_restarted_with_growing_backoff(tmp_path):
    stack = Stack(ports=Ports.free(), run_dir=tmp_path)
    child = Child("sleeper", SLEEPER, lambda: True)
    stack._spawn(child)
    try:
        first_pid = child.proc.pid
        os.kill(first_pid, signal.SIGKILL)
        killed = time.monotonic()
        events = _supervise_until(stack, lambda: child.restarts == 1)
        assert time.monotonic() - killed >= RESTART_BACKOFF_FIRST_S
        assert child.proc.pid != first_pid and child.proc.poll() is None
        assert events == [
            f"sleeper exited with {-signal.SIGKILL}; restarting in {RESTART_BACKOFF_FIRST_S:g}s",
            "sleeper restarted (restart 1)",
        ]

        # Dead again at once: twice the wait.
        os.kill(child.proc.pid, signal.SIGKILL)
        events = _supervise_until(stack, lambda: child.restarts == 2)
        assert events[0].endswith(f"restarting in {2 * RESTART_BACKOFF_FIRST_S:g}s")

        status = json.loads(stack.status_path.read_text())
        assert status["processes"]["sleeper"] | {"pid": None, "log": None} == {
            "pid": None,
            "state": "running",
            "restarts": 2,
            "last_exit": -signal.SIGKILL,
            "log": None,
            "metrics_port": None,
        }
        assert status["processes"]["sleeper"]["pid"] == child.proc.pid
    finally:
        stack.stop(grace_s=2)


def test_a_process_that_exits_on_its_own_is_restarted_too(tmp_path):
    stack = Stack(ports=Ports.free(), run_dir=tmp_path)
    child = Child("quitter", [sys.executable, "-c", "raise SystemExit(3)"], lambda: True)
    stack._spawn(child)
    try:
        events = _supervise_until(stack, lambda: child.restarts == 1)
        assert events[0].startswith("quitter exited with 3")
        assert json.loads(stack.status_path.read_text())["processes"]["quitter"]["last_exit"] == 3
    finally:
        stack.stop(grace_s=2)
