"""``sightline demo`` as an operator runs it: it stops everything it started, and says at once why it cannot run.

Every process of a demo runs with the demo's working directory, so ``/proc/*/cwd`` finds
them all (the demo, its API, its worker and anything they started) without trusting the demo.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from stack import REPO_ROOT, free_port

BANNER_WAIT_S = 180.0
STOP_WAIT_S = 30.0  # the demo's own grace before SIGKILL is 10 s

pytestmark = pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux /proc")


def _processes_in(workdir: Path) -> set[int]:
    """Live (not zombie) processes whose working directory is ``workdir``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == workdir and (entry / "stat").read_text().split(") ")[1][0] != "Z":
                found.add(int(entry.name))
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return found


def _start_demo(workdir: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    env.update(SIGHTLINE_PORT=str(port), PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "demo", "--samples", "1"],
        cwd=workdir, env=env, stdout=(workdir / "demo.out").open("w"), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def _kill_leftovers(workdir: Path) -> None:
    for pid in _processes_in(workdir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_demo_and_every_child(tmp_path: Path, signum: signal.Signals) -> None:
    workdir, port = tmp_path.resolve(), free_port()
    demo = _start_demo(workdir, port)
    try:
        deadline = time.monotonic() + BANNER_WAIT_S
        while "Reader token:" not in (workdir / "demo.out").read_text():
            assert demo.poll() is None, f"the demo exited early: {demo.stderr.read() if demo.stderr else ''}"
            assert time.monotonic() < deadline, "no banner"
            time.sleep(0.5)
        started = _processes_in(workdir)
        assert demo.pid in started and len(started) >= 3  # the demo, its API and its worker
        assert not _port_is_free(port)
        demo.send_signal(signum)
        assert demo.wait(timeout=STOP_WAIT_S) == 0
        assert _eventually(lambda: not _processes_in(workdir)), f"still running: {_processes_in(workdir)}"
        assert _eventually(lambda: _port_is_free(port)), f"port {port} is still held"
    finally:
        if demo.poll() is None:
            demo.kill()
        _kill_leftovers(workdir)


def test_a_demo_whose_api_cannot_bind_says_so_in_one_line(tmp_path: Path) -> None:
    workdir, port = tmp_path.resolve(), free_port()
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", port))
        occupier.listen()
        demo = _start_demo(workdir, port)
        try:
            _, stderr = demo.communicate(timeout=BANNER_WAIT_S)
        finally:
            if demo.poll() is None:
                demo.kill()
            _kill_leftovers(workdir)
    assert demo.returncode == 1
    assert stderr.splitlines()[-1] == (
        f"error: the demo stopped: the API could not listen on 127.0.0.1:{port}: the port is already in use "
        "(stop what holds it or set SIGHTLINE_PORT)"
    )
    assert "Traceback" not in stderr
    assert not _processes_in(workdir)  # the worker it had started is gone too
