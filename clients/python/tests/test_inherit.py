"""Credentials inherited from `agentkeys run --fd` through AGENTKEYS_FD_<SERVICE>."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentkeys_runtime import AgentkeysError, credential
from agentkeys_runtime._inherit import fd_env_var

from fake_daemon import BEST_KIND, Page
from support import is_open


@pytest.mark.parametrize(
    ("service", "variable"),
    [
        ("openai", "AGENTKEYS_FD_OPENAI"),
        ("my-api.v2", "AGENTKEYS_FD_MY_API_V2"),
        ("Azure.OpenAI-eu", "AGENTKEYS_FD_AZURE_OPENAI_EU"),
    ],
)
def test_service_names_map_to_variables(service: str, variable: str) -> None:
    assert fd_env_var(service) == variable


def test_an_inherited_descriptor_is_used_once_without_a_daemon(
    canary: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = Page(canary)
    os.set_inheritable(page.fd, True)  # as `agentkeys run --fd` leaves it
    monkeypatch.setenv("AGENTKEYS_FD_MY_API", f"{page.fd}:{len(canary)}")

    cred = credential("my-api", socket=tmp_path / "no-daemon.sock")
    assert "AGENTKEYS_FD_MY_API" not in os.environ  # consumed at once
    assert not os.get_inheritable(page.fd)  # our own children do not get it
    assert (cred.length, cred.kind, cred.mode) == (len(canary), BEST_KIND, "inherited")
    with cred as buf:
        assert buf == canary
    assert not is_open(page.fd)
    assert page.is_wiped()
    page.unmap()

    with pytest.raises(AgentkeysError, match="no agentkeys daemon answers"):
        credential("my-api", socket=tmp_path / "no-daemon.sock")  # single use: back to the socket


def test_a_variable_naming_a_foreign_descriptor_is_refused_and_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "unrelated.txt", "wb") as unrelated:
        os.set_inheritable(unrelated.fileno(), True)  # as if inherited, but no memfd
        monkeypatch.setenv("AGENTKEYS_FD_OPENAI", f"{unrelated.fileno()}:10")
        with pytest.raises(AgentkeysError, match="not an open memfd"):
            credential("openai")
        assert is_open(unrelated.fileno())


def test_a_memfd_this_process_opened_is_refused_and_left_alone(
    canary: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = Page(canary)  # close-on-exec, as every descriptor Python opens
    assert not os.get_inheritable(page.fd)
    monkeypatch.setenv("AGENTKEYS_FD_OPENAI", f"{page.fd}:{len(canary)}")
    with pytest.raises(AgentkeysError, match="opened itself"):
        credential("openai")
    assert is_open(page.fd)
    assert not page.is_wiped()
    page.unmap()
    os.close(page.fd)


@pytest.mark.parametrize("value", ["", "7", "7:", ":7", "x:7", "7:-1", "٣:4"])
def test_a_malformed_variable_is_an_error(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTKEYS_FD_OPENAI", value)
    with pytest.raises(AgentkeysError, match="AGENTKEYS_FD_OPENAI must be '<fd>:<length>'"):
        credential("openai")


def test_a_length_beyond_the_memfd_is_refused(
    canary: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = Page(canary)
    os.set_inheritable(page.fd, True)  # as `agentkeys run --fd` leaves it
    monkeypatch.setenv("AGENTKEYS_FD_OPENAI", f"{page.fd}:{10**6}")
    cred = credential("openai")
    with pytest.raises(AgentkeysError, match="claims 1000000 bytes but its memfd holds 4096"):
        with cred:
            pass
    assert not is_open(page.fd)
    page.unmap()
