"""The line and descriptor protocol, driven by hand over a socket pair."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import pytest

from agentkeys_runtime import AgentkeysError
from agentkeys_runtime._wire import MAX_FDS_PER_RECV, MAX_LINE, Connection, socket_path

from fake_daemon import encode
from support import PipeProbe, open_fd_count

Probes = Callable[[int], list[PipeProbe]]


class DaemonSide:
    """The daemon's end of a socket pair, read and written by the test itself."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lines = sock.makefile("rb")

    def read(self) -> dict[str, Any]:
        return json.loads(self._lines.readline())

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Sends ``data`` in one sendmsg, with ``fds`` attached to its first byte."""
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)

    def close(self) -> None:
        self._lines.close()
        self.sock.close()


@pytest.fixture
def pair() -> Iterator[tuple[Connection, DaemonSide]]:
    client_sock, daemon_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    connection, daemon = Connection(client_sock, "test-pair"), DaemonSide(daemon_sock)
    yield connection, daemon
    connection.close()
    daemon.close()


def response(request_id: Any, fds: int = 0, **result: Any) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "result": result}
    if fds:
        message["fds"] = fds
    return encode(message)


NOTIFICATION = encode({"jsonrpc": "2.0", "method": "notifications/message", "params": {}})


def test_out_of_order_responses_are_matched_by_id(
    pair: tuple[Connection, DaemonSide], pipe_probes: Probes
) -> None:
    connection, daemon = pair
    [probe] = pipe_probes(1)
    first = connection.send_request("tools/call", {"name": "a"})
    second = connection.send_request("tools/call", {"name": "b"})
    assert [daemon.read()["id"], daemon.read()["id"]] == [first, second]

    daemon.send(NOTIFICATION)
    daemon.send(response(second, fds=1, which="second"), [probe.read_end])
    probe.drop_own_copy()
    daemon.send(NOTIFICATION + response(first, which="first"))

    answer = connection.wait_response(first)
    assert answer.result == {"which": "first"} and answer.fds == []
    stashed = connection.wait_response(second)
    assert stashed.result == {"which": "second"}
    [fd] = stashed.fds
    assert stat.S_ISFIFO(os.fstat(fd).st_mode)  # the very pipe that was sent
    stashed.close_fds()
    assert probe.reader_is_closed()


def test_daemon_requests_get_an_error_and_do_not_disturb_the_wait(
    pair: tuple[Connection, DaemonSide],
) -> None:
    connection, daemon = pair
    request_id = connection.send_request("tools/list", {})
    daemon.read()
    daemon.send(encode({"jsonrpc": "2.0", "id": "ping-1", "method": "ping"}) + response(request_id))

    assert connection.wait_response(request_id).result == {}
    refusal = daemon.read()
    assert refusal["id"] == "ping-1" and refusal["error"]["code"] == -32601


def test_descriptor_goes_to_the_line_that_announces_it(
    pair: tuple[Connection, DaemonSide], pipe_probes: Probes
) -> None:
    # One sendmsg holding a plain line and then the announcing line: the descriptor rides
    # on the first byte of the chunk but belongs to the second line.
    connection, daemon = pair
    [probe] = pipe_probes(1)
    request_id = connection.send_request("tools/call", {})
    daemon.read()
    daemon.send(NOTIFICATION + response(request_id, fds=1), [probe.read_end])
    probe.drop_own_copy()

    answer = connection.wait_response(request_id)
    assert len(answer.fds) == 1
    answer.close_fds()
    assert probe.reader_is_closed()


def test_descriptor_on_a_notification_is_closed(
    pair: tuple[Connection, DaemonSide], pipe_probes: Probes
) -> None:
    connection, daemon = pair
    [probe] = pipe_probes(1)
    request_id = connection.send_request("tools/call", {})
    daemon.read()
    daemon.send(NOTIFICATION, [probe.read_end])
    probe.drop_own_copy()
    before = open_fd_count()  # the descriptor is in flight, owned by nobody here
    daemon.send(response(request_id))

    assert connection.wait_response(request_id).fds == []
    assert probe.reader_is_closed()
    assert open_fd_count() == before


def test_descriptor_on_an_unannounced_response_is_closed(
    pair: tuple[Connection, DaemonSide], pipe_probes: Probes
) -> None:
    connection, daemon = pair
    [probe] = pipe_probes(1)
    request_id = connection.send_request("tools/call", {})
    daemon.read()
    daemon.send(response(request_id), [probe.read_end])  # no "fds" field
    probe.drop_own_copy()

    assert connection.wait_response(request_id).fds == []
    assert probe.reader_is_closed()


def test_descriptors_pending_at_close_are_closed(
    pair: tuple[Connection, DaemonSide], pipe_probes: Probes
) -> None:
    connection, daemon = pair
    [probe] = pipe_probes(1)
    request_id = connection.send_request("tools/call", {})
    daemon.read()
    # The descriptor arrives with the start of a line that never completes.
    daemon.send(response(request_id) + b'{"jsonrpc":"2.0","id":99,"fds":1', [probe.read_end])
    probe.drop_own_copy()

    connection.wait_response(request_id)
    assert not probe.reader_is_closed()  # still queued for the unfinished line
    connection.close()
    assert probe.reader_is_closed()


def test_a_response_to_nothing_asked_is_dropped_with_its_descriptor(
    pair: tuple[Connection, DaemonSide], pipe_probes: Probes
) -> None:
    connection, daemon = pair
    [probe] = pipe_probes(1)
    request_id = connection.send_request("tools/call", {})
    daemon.read()
    daemon.send(response(999, fds=1), [probe.read_end])
    probe.drop_own_copy()
    daemon.send(response(request_id))

    assert connection.wait_response(request_id).result == {}
    assert probe.reader_is_closed()


def test_fewer_descriptors_than_announced_is_an_error(
    pair: tuple[Connection, DaemonSide], pipe_probes: Probes
) -> None:
    connection, daemon = pair
    [probe] = pipe_probes(1)
    request_id = connection.send_request("tools/call", {})
    daemon.read()
    daemon.send(response(request_id, fds=2), [probe.read_end])
    probe.drop_own_copy()

    with pytest.raises(AgentkeysError, match="announced 2 file descriptor"):
        connection.wait_response(request_id)
    assert probe.reader_is_closed()


def test_truncated_ancillary_data_is_an_error_and_leaks_nothing(
    pair: tuple[Connection, DaemonSide], pipe_probes: Probes
) -> None:
    connection, daemon = pair
    probes = pipe_probes(MAX_FDS_PER_RECV + 4)
    request_id = connection.send_request("tools/call", {})
    daemon.read()
    daemon.send(response(request_id, fds=1), [p.read_end for p in probes])
    for probe in probes:
        probe.drop_own_copy()

    with pytest.raises(AgentkeysError, match="MSG_CTRUNC"):
        connection.wait_response(request_id)
    assert all(probe.reader_is_closed() for probe in probes)


def test_received_descriptors_are_close_on_exec(
    pair: tuple[Connection, DaemonSide], pipe_probes: Probes
) -> None:
    connection, daemon = pair
    [probe] = pipe_probes(1)
    os.set_inheritable(probe.read_end, True)  # the sender's copy is inheritable on purpose
    request_id = connection.send_request("tools/call", {})
    daemon.read()
    daemon.send(response(request_id, fds=1), [probe.read_end])

    [fd] = connection.wait_response(request_id).fds
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    os.close(fd)
    probe.drop_own_copy()


def test_json_rpc_error_raises_with_its_code(pair: tuple[Connection, DaemonSide]) -> None:
    connection, daemon = pair
    request_id = connection.send_request("tools/call", {})
    daemon.read()
    error = {"code": -32602, "message": "unknown tool: nope"}
    daemon.send(encode({"jsonrpc": "2.0", "id": request_id, "error": error}))

    with pytest.raises(AgentkeysError, match="unknown tool: nope") as caught:
        connection.wait_response(request_id).raise_for_error()
    assert caught.value.code == -32602


def test_a_line_over_the_limit_is_refused(pair: tuple[Connection, DaemonSide]) -> None:
    connection, daemon = pair
    request_id = connection.send_request("tools/call", {})
    daemon.read()

    def flood() -> None:
        with contextlib.suppress(OSError):  # the client hangs up mid-flood, as it should
            daemon.sock.sendall(b"x" * (MAX_LINE + 2))

    sender = threading.Thread(target=flood)
    sender.start()
    with pytest.raises(AgentkeysError, match="longer than"):
        connection.wait_response(request_id)
    connection.close()
    sender.join(timeout=10)


def test_invalid_json_is_reported_without_quoting_it(pair: tuple[Connection, DaemonSide]) -> None:
    connection, daemon = pair
    request_id = connection.send_request("tools/call", {})
    daemon.read()
    daemon.send(b'{"result": "sk-live-should-not-appear\n')

    with pytest.raises(AgentkeysError) as caught:
        connection.wait_response(request_id)
    assert "sk-live" not in str(caught.value)


def test_daemon_hanging_up_is_an_error(pair: tuple[Connection, DaemonSide]) -> None:
    connection, daemon = pair
    request_id = connection.send_request("tools/call", {})
    daemon.sock.shutdown(socket.SHUT_WR)

    with pytest.raises(AgentkeysError, match="closed the connection"):
        connection.wait_response(request_id)


def test_socket_path_prefers_explicit_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTKEYS_SOCKET", "/env/daemon.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert socket_path("/given.sock") == "/given.sock"
    assert socket_path() == "/env/daemon.sock"
    monkeypatch.setenv("AGENTKEYS_SOCKET", "")  # empty counts as unset, as for the daemon
    assert socket_path() == "/run/user/1000/agentkeys/daemon.sock"


def test_socket_path_falls_back_to_agentkeys_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    monkeypatch.setenv("AGENTKEYS_HOME", "/srv/keys")
    assert socket_path() == "/srv/keys/run/daemon.sock"
    monkeypatch.delenv("AGENTKEYS_HOME")
    monkeypatch.setenv("HOME", "/home/agent")
    assert socket_path() == "/home/agent/.agentkeys/run/daemon.sock"
