"""`python -m agentkeys_runtime check`, run as a separate process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import pytest

from fake_daemon import BEST_KIND, FakeDaemon, Page
from support import memory_contains

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
StartDaemon = Callable[..., FakeDaemon]


def check_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "agentkeys_runtime", "check", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTKEYS_")}
    return {**env, "PYTHONPATH": str(PACKAGE_ROOT), **extra}


def run_check(*args: str, pass_fds: Sequence[int] = (), **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        check_command(*args),
        env=child_env(**env),
        pass_fds=pass_fds,
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )


def report(process: subprocess.CompletedProcess) -> dict[str, Any]:
    assert process.returncode == 0, process.stderr
    [line] = process.stdout.splitlines()
    return json.loads(line)


def test_check_reports_an_fd_delivery(start_daemon: StartDaemon, canary: bytes) -> None:
    daemon = start_daemon(secrets={"openai": canary})
    result = report(run_check("openai", "--socket", str(daemon.path)))
    assert result == {
        "service": "openai",
        "length": len(canary),
        "kind": BEST_KIND,
        "sha256": hashlib.sha256(canary).hexdigest(),
        "mode": "fd",
    }
    assert daemon.pages[0].is_wiped()


def test_check_inline(start_daemon: StartDaemon, canary: bytes) -> None:
    daemon = start_daemon(secrets={"openai": canary})
    result = report(run_check("openai", "--inline", "--socket", str(daemon.path)))
    assert result["mode"] == "inline" and result["kind"] is None
    assert (result["length"], result["sha256"]) == (len(canary), hashlib.sha256(canary).hexdigest())


def test_check_an_inherited_descriptor(canary: bytes, tmp_path: Path) -> None:
    page = Page(canary)
    os.set_inheritable(page.fd, True)
    process = run_check(
        "my-api",
        "--socket",
        str(tmp_path / "no-daemon.sock"),
        pass_fds=[page.fd],
        AGENTKEYS_FD_MY_API=f"{page.fd}:{len(canary)}",
    )
    os.close(page.fd)
    result = report(process)
    assert (result["mode"], result["kind"]) == ("inherited", BEST_KIND)
    assert result["sha256"] == hashlib.sha256(canary).hexdigest()
    assert page.is_wiped()  # the child wiped the page it inherited
    page.unmap()


def test_check_reports_errors_on_stderr(start_daemon: StartDaemon) -> None:
    approval = "approval required: run agentkeys approve ABCD-EFGH (OTP 123456)"
    daemon = start_daemon(errors={"stripe": approval})
    process = run_check("stripe", "--socket", str(daemon.path))
    assert process.returncode == 1
    assert process.stdout == ""
    assert process.stderr == f"error: {approval}\n"


@pytest.mark.parametrize(("mode", "copies_expected"), [("fd", False), ("inline", True)])
def test_check_hold_leaves_no_copy_in_fd_mode(
    start_daemon: StartDaemon, canary: bytes, mode: str, copies_expected: bool
) -> None:
    # The inline run is the control: it shows the scan does find copies when there are some.
    daemon = start_daemon(secrets={"openai": canary})
    extra = ["--inline"] if mode == "inline" else []
    child = subprocess.Popen(
        check_command("openai", "--socket", str(daemon.path), "--hold", *extra),
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert json.loads(child.stdout.readline())["mode"] == mode
        assert memory_contains(child.pid, canary) is copies_expected
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()
