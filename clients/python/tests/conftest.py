"""Shared fixtures: a clean environment, a fake daemon on a socket in tmp_path, random
credential values and pipe probes."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from fake_daemon import FakeDaemon
from support import PipeProbe


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AGENTKEYS_* variable from the outside world changes what a test does."""
    for name in list(os.environ):
        if name.startswith("AGENTKEYS_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def no_hanging_sockets() -> Iterator[None]:
    """A protocol bug makes a socket call fail after 10 s instead of hanging the run."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    yield
    socket.setdefaulttimeout(previous)


@pytest.fixture
def canary() -> bytes:
    """A credential-shaped random value, unique to the test."""
    return b"sk-canary-" + secrets.token_hex(20).encode()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., FakeDaemon]]:
    """Starts a :class:`FakeDaemon` on ``tmp_path/daemon.sock``; stops it after the test."""
    started: list[FakeDaemon] = []

    def start(**options: Any) -> FakeDaemon:
        daemon = FakeDaemon(tmp_path / "daemon.sock", **options)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def pipe_probes() -> Iterator[Callable[[int], list[PipeProbe]]]:
    """Makes ``n`` :class:`PipeProbe` objects, closed after the test."""
    made: list[PipeProbe] = []

    def make(n: int) -> list[PipeProbe]:
        probes = [PipeProbe() for _ in range(n)]
        made.extend(probes)
        return probes

    yield make
    for probe in made:
        probe.close()
