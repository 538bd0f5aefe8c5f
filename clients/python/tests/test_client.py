"""Client, credential() and credential_inline() against the fake daemon."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from pathlib import Path
from typing import Callable

import pytest

from agentkeys_runtime import AgentkeysError, Client, credential, credential_inline

from fake_daemon import BEST_KIND, HAVE_MEMFD_SECRET, FakeDaemon, encode
from support import PipeProbe, is_open, open_memfds

StartDaemon = Callable[..., FakeDaemon]
APPROVAL = "approval required: run agentkeys approve ABCD-EFGH (OTP 123456)"


def dumpable() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE


def test_fd_delivery_round_trip(start_daemon: StartDaemon, canary: bytes) -> None:
    daemon = start_daemon(secrets={"openai": canary})
    cred = credential("openai", socket=daemon.path)

    assert (cred.service, cred.length) == ("openai", len(canary))
    assert (cred.kind, cred.mode) == (BEST_KIND, "fd")
    with cred as buf:
        assert isinstance(buf, memoryview) and buf.readonly
        assert len(buf) == len(canary)
        assert buf == canary
    [params] = daemon.initialize_params
    assert params["capabilities"] == {"experimental": {"agentkeys/fd-delivery": {"version": 1}}}
    assert params["clientInfo"]["name"] == "agentkeys-runtime-python"
    assert daemon.notifications == ["notifications/initialized"]


def test_sealed_memfd_delivery(start_daemon: StartDaemon, canary: bytes) -> None:
    daemon = start_daemon(secrets={"openai": canary}, kind="sealed_memfd")
    with Client(daemon.path) as client, client.get_credential("openai") as buf:
        assert buf == canary
    assert daemon.pages[0].is_wiped()


def test_the_page_is_wiped_when_the_block_ends(start_daemon: StartDaemon, canary: bytes) -> None:
    daemon = start_daemon(secrets={"openai": canary})
    with credential("openai", socket=daemon.path) as buf:
        # The daemon's mapping and ours share the same pages.
        [page] = daemon.pages
        assert page.contents()[: len(canary)] == canary
        assert buf == canary
    assert page.is_wiped()
    with pytest.raises(ValueError):
        bytes(buf)  # the view was released


def test_memfd_secret_descriptor_cannot_be_read(start_daemon: StartDaemon, canary: bytes) -> None:
    daemon = start_daemon(secrets={"openai": canary})
    cred = credential("openai", socket=daemon.path)
    if not HAVE_MEMFD_SECRET:
        with cred:  # the fallback: a sealed memfd, which read(2) can read
            assert os.read(cred._fd, 64)[: len(canary)] == canary  # type: ignore[arg-type]
        pytest.skip("no memfd_secret on this kernel; the sealed-memfd fallback was checked")
    with cred:
        with pytest.raises(OSError) as caught:
            os.read(cred._fd, 64)  # type: ignore[arg-type]
        assert caught.value.errno == errno.EINVAL


def test_process_is_non_dumpable_only_while_a_block_is_active(
    start_daemon: StartDaemon, canary: bytes
) -> None:
    daemon = start_daemon(secrets={"openai": canary, "github": canary[::-1]})
    assert dumpable() == 1
    with Client(daemon.path) as client:
        with client.get_credential("openai"):
            assert dumpable() == 0
            with client.get_credential("github") as inner:
                assert dumpable() == 0
                assert inner == canary[::-1]
            assert dumpable() == 0  # the outer block is still active
        assert dumpable() == 1


def test_credential_descriptor_is_closed_after_the_block(
    start_daemon: StartDaemon, canary: bytes
) -> None:
    daemon = start_daemon(secrets={"openai": canary})
    before = open_memfds()
    cred = credential("openai", socket=daemon.path)
    fd = cred._fd
    assert fd is not None and is_open(fd)
    with cred:
        pass
    assert not is_open(fd)
    daemon.settle()
    assert open_memfds() == before


def test_an_unused_credential_closes_its_descriptor(
    start_daemon: StartDaemon, canary: bytes
) -> None:
    daemon = start_daemon(secrets={"openai": canary})
    cred = credential("openai", socket=daemon.path)
    fd = cred._fd
    cred.close()
    assert fd is not None and not is_open(fd)
    with pytest.raises(RuntimeError, match="already used or closed"):
        cred.__enter__()


def test_a_credential_is_used_once(start_daemon: StartDaemon, canary: bytes) -> None:
    daemon = start_daemon(secrets={"openai": canary})
    cred = credential("openai", socket=daemon.path)
    with cred:
        pass
    with pytest.raises(RuntimeError):
        with cred:
            pass


def test_keeping_the_buffer_is_reported_after_the_wipe(
    start_daemon: StartDaemon, canary: bytes
) -> None:
    daemon = start_daemon(secrets={"openai": canary})
    cred = credential("openai", socket=daemon.path)
    fd = cred._fd
    kept: list[memoryview] = []
    with pytest.raises(BufferError, match="do not keep references to buf"):
        with cred as buf:
            kept.append(buf[:8])
    assert kept[0] == bytes(8)  # wiped even though it could not be unmapped
    assert daemon.pages[0].is_wiped()
    assert fd is not None and not is_open(fd)
    assert dumpable() == 1
    kept[0].release()


def test_tool_error_raises_with_the_daemon_message(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(errors={"stripe": APPROVAL})
    with pytest.raises(AgentkeysError) as caught:
        credential("stripe", socket=daemon.path)
    assert caught.value.message == APPROVAL and caught.value.code is None


def test_inline_mode_returns_the_text(start_daemon: StartDaemon, canary: bytes) -> None:
    daemon = start_daemon(secrets={"openai": canary}, errors={"stripe": APPROVAL})
    assert credential_inline("openai", socket=daemon.path) == canary.decode()
    assert daemon.initialize_params[0]["capabilities"] == {}
    with pytest.raises(AgentkeysError, match="approve"):
        credential_inline("stripe", socket=daemon.path)


def test_modes_do_not_mix(start_daemon: StartDaemon, canary: bytes) -> None:
    daemon = start_daemon(secrets={"openai": canary})
    with Client(daemon.path) as client:
        with pytest.raises(AgentkeysError, match="get_credential"):
            client.get_credential_inline("openai")
    with Client(daemon.path, fd_delivery=False) as client:
        with pytest.raises(AgentkeysError, match="get_credential_inline"):
            client.get_credential("openai")


def test_call_tool_returns_the_raw_result(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(errors={"stripe": APPROVAL})
    with Client(daemon.path) as client:
        assert client.call_tool("whoami", {})["content"][0]["text"] == "wallet 0xfake"
        refused = client.call_tool("get_credential", {"service": "stripe"})
    assert refused["isError"] is True


def test_stray_descriptors_from_the_daemon_are_closed(
    start_daemon: StartDaemon, canary: bytes, pipe_probes: Callable[[int], list[PipeProbe]]
) -> None:
    probes = pipe_probes(2)

    def misbehave(conn: socket.socket) -> None:
        notice = encode({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}})
        socket.send_fds(conn, [notice], [probes[0].read_end])
        unrelated = encode({"jsonrpc": "2.0", "id": 999, "result": {}, "fds": 1})
        socket.send_fds(conn, [unrelated], [probes[1].read_end])

    daemon = start_daemon(secrets={"openai": canary}, before_response=misbehave)
    with credential("openai", socket=daemon.path) as buf:
        assert buf == canary
    for probe in probes:
        probe.drop_own_copy()
        assert probe.reader_is_closed()


def test_fd_mode_against_a_daemon_without_it_fails_clearly(
    start_daemon: StartDaemon, canary: bytes
) -> None:
    daemon = start_daemon(secrets={"openai": canary}, fd_support=False)
    with pytest.raises(AgentkeysError, match="may not support fd delivery") as caught:
        credential("openai", socket=daemon.path)
    assert canary.decode() not in str(caught.value)


def test_a_descriptor_of_another_kind_than_claimed_is_refused(
    start_daemon: StartDaemon, canary: bytes
) -> None:
    daemon = start_daemon(
        secrets={"openai": canary}, kind="sealed_memfd", claimed_kind="memfd_secret"
    )
    before = open_memfds()
    with pytest.raises(AgentkeysError, match="not the 'memfd_secret' it claims"):
        credential("openai", socket=daemon.path)
    daemon.settle()
    assert open_memfds() == before


def test_no_daemon_names_the_socket_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "absent.sock"
    with pytest.raises(AgentkeysError) as caught:
        credential("openai", socket=missing)
    assert caught.value.message == (
        f"no agentkeys daemon answers on {missing}: start it with "
        "'agentkeys-daemon serve --server URL' or set AGENTKEYS_SOCKET"
    )


def test_the_socket_comes_from_the_environment(
    start_daemon: StartDaemon, canary: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = start_daemon(secrets={"openai": canary})
    monkeypatch.setenv("AGENTKEYS_SOCKET", str(daemon.path))
    with credential("openai") as buf:
        assert buf == canary


def test_reprs_hold_no_secret(start_daemon: StartDaemon, canary: bytes) -> None:
    daemon = start_daemon(secrets={"openai": canary})
    with Client(daemon.path) as client:
        cred = client.get_credential("openai")
        with cred:
            text = repr(cred) + repr(client)
    assert "openai" in text and "mapped" in text
    assert canary.decode() not in text
