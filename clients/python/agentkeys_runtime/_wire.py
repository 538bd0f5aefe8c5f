"""The daemon's wire protocol: newline-delimited JSON-RPC 2.0 on a Unix stream socket,
with file descriptors passed alongside as ``SCM_RIGHTS`` ancillary data.

A response that carries descriptors says so with a top-level ``"fds": n``. The daemon
attaches them to the bytes that start that line, so they arrive with the ``recvmsg`` that
returns the line's first byte (possibly together with earlier lines). This module keeps
every received descriptor in a FIFO queue tagged with the stream range it arrived with,
hands a line the descriptors it announces, and closes any descriptor no line claims.
"""

from __future__ import annotations

import array
import json
import os
import socket
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

from ._errors import AgentkeysError

#: Longest line accepted from the daemon (the daemon applies the same limit to us).
MAX_LINE = 1 << 20
#: Descriptors one ``recvmsg`` can carry; the daemon sends one per credential.
MAX_FDS_PER_RECV = 16
_RECV_SIZE = 64 * 1024
# Received descriptors must be close-on-exec from the start: a fork+exec in another thread
# between receiving and fixing them up would hand the secret to the child.
_MSG_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0x40000000)
_INT_SIZE = array.array("i").itemsize
_METHOD_NOT_FOUND = -32601

SocketPath = Union[str, "os.PathLike[str]"]


def socket_path(explicit: SocketPath | None = None) -> str:
    """The daemon's socket: ``explicit``, else ``$AGENTKEYS_SOCKET``, else
    ``$XDG_RUNTIME_DIR/agentkeys/daemon.sock``, else ``$AGENTKEYS_HOME/run/daemon.sock``
    (``AGENTKEYS_HOME`` defaults to ``~/.agentkeys``). Empty variables count as unset,
    as they do for the daemon."""
    if explicit is not None:
        return os.fspath(explicit)
    configured = os.environ.get("AGENTKEYS_SOCKET")
    if configured:
        return configured
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return os.path.join(runtime_dir, "agentkeys", "daemon.sock")
    home = os.environ.get("AGENTKEYS_HOME") or os.path.join(os.path.expanduser("~"), ".agentkeys")
    return os.path.join(home, "run", "daemon.sock")


@dataclass
class Response:
    """A JSON-RPC response and the descriptors that came with it (owned by the receiver)."""

    id: int | None  # None when the daemon sent an id this client never uses
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    fds: list[int] = field(default_factory=list)

    def close_fds(self) -> None:
        """Closes every descriptor this response still owns."""
        close_fds(self.fds)
        self.fds = []

    def raise_for_error(self) -> dict[str, Any]:
        """The ``result``, or :class:`AgentkeysError` (descriptors closed) for an ``error``."""
        if self.error is not None or self.result is None:
            self.close_fds()
            error = self.error or {}
            code = error.get("code")
            raise AgentkeysError(
                str(error.get("message", "the daemon sent a response without a result")),
                code if isinstance(code, int) else None,
            )
        return self.result


class _QueuedFd(NamedTuple):
    """A received descriptor and the stream range ``[start, end)`` it arrived with."""

    fd: int
    start: int
    end: int


class Connection:
    """One connection to the daemon. Not thread-safe: callers serialise requests.

    Requests may be pipelined (:meth:`send_request` several times, then
    :meth:`wait_response` in any order); responses for other outstanding ids are kept
    until asked for, and responses nobody waits for are dropped with their descriptors.
    """

    def __init__(self, sock: socket.socket, label: str) -> None:
        self._sock = sock
        self._label = label
        self._buffer = bytearray()
        self._buffer_start = 0  # stream offset of self._buffer[0]
        self._received = 0  # stream offset just past the last byte received
        self._fd_queue: deque[_QueuedFd] = deque()
        self._next_id = 1
        self._outstanding: set[int] = set()
        self._stash: dict[int, Response] = {}

    @classmethod
    def connect(cls, path: str) -> Connection:
        """Connects to the daemon listening on ``path``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise AgentkeysError(
                f"no agentkeys daemon answers on {path}: start it with "
                "'agentkeys-daemon serve --server URL' or set AGENTKEYS_SOCKET"
            ) from exc
        return cls(sock, path)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the socket and every descriptor received but not handed out."""
        self._sock.close()
        close_fds(fd.fd for fd in self._fd_queue)
        self._fd_queue.clear()
        for response in self._stash.values():
            response.close_fds()
        self._stash.clear()

    def send_request(self, method: str, params: dict[str, Any]) -> int:
        """Sends a request and returns its id, for :meth:`wait_response`."""
        request_id = self._next_id
        self._next_id += 1
        self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        self._outstanding.add(request_id)
        return request_id

    def send_notification(self, method: str) -> None:
        """Sends a notification (no id, no response)."""
        self._send({"jsonrpc": "2.0", "method": method})

    def request(self, method: str, params: dict[str, Any]) -> Response:
        """Sends a request and waits for its response."""
        return self.wait_response(self.send_request(method, params))

    def wait_response(self, request_id: int) -> Response:
        """The response to ``request_id``; the caller owns its descriptors."""
        if request_id not in self._outstanding:
            raise ValueError(f"no request with id {request_id} is waiting for a response")
        while request_id not in self._stash:
            response = self._next_response()
            if response.id in self._outstanding:
                self._stash[response.id] = response
            else:
                response.close_fds()  # an answer to nothing we asked: drop it
        self._outstanding.discard(request_id)
        return self._stash.pop(request_id)

    def _send(self, message: dict[str, Any]) -> None:
        # json.dumps escapes control characters, so the line holds no raw newline.
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        try:
            self._sock.sendall(line)
        except OSError as exc:
            raise self._lost(exc) from exc

    def _next_response(self) -> Response:
        """Reads messages until one is a response, answering or dropping the others."""
        while True:
            message, fds = self._next_message()
            if "id" in message and "method" not in message:
                return _response_from(message, fds)
            close_fds(fds)  # only responses carry descriptors meant for us
            if "id" in message:
                self._refuse_request(message["id"])
            # else a notification: nothing to do

    def _refuse_request(self, request_id: Any) -> None:
        # JSON-RPC requires an answer to every request; this client serves no methods.
        error = {"code": _METHOD_NOT_FOUND, "message": "this client serves no methods"}
        self._send({"jsonrpc": "2.0", "id": request_id, "error": error})

    def _next_message(self) -> tuple[dict[str, Any], list[int]]:
        """The next JSON object from the daemon and the descriptors its line announces."""
        while True:
            line = self._pop_line()
            if line is None:
                self._receive()
                continue
            start, raw = line
            message = _parse(raw) if raw.strip() else {}
            fds = self._claim_fds(start, _announced_fds(message))
            # Queued descriptors whose bytes all precede the next line can no longer be
            # claimed by any line: they are strays.
            self._close_stale_fds(self._buffer_start)
            if message:
                return message, fds

    def _pop_line(self) -> tuple[int, bytes] | None:
        """The next complete line (without its newline) and its stream offset, if any."""
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                raise AgentkeysError(f"the daemon sent a line longer than {MAX_LINE} bytes")
            return None
        if end > MAX_LINE:
            raise AgentkeysError(f"the daemon sent a line longer than {MAX_LINE} bytes")
        start = self._buffer_start
        raw = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._buffer_start += end + 1
        return start, raw

    def _receive(self) -> None:
        """One ``recvmsg``: appends its bytes to the buffer and its descriptors to the queue."""
        # socket.recv_fds() would be the natural call, but CPython (3.9 to 3.13 at least)
        # ignores its flags argument (python/cpython#128881): no MSG_CMSG_CLOEXEC.
        try:
            data, ancdata, msg_flags, _ = self._sock.recvmsg(
                _RECV_SIZE, socket.CMSG_SPACE(MAX_FDS_PER_RECV * _INT_SIZE), _MSG_CMSG_CLOEXEC
            )
        except OSError as exc:
            raise self._lost(exc) from exc
        fds = _fds_from(ancdata)
        if msg_flags & socket.MSG_CTRUNC:
            close_fds(fds)
            raise AgentkeysError(
                "file descriptors from the daemon were lost (MSG_CTRUNC): it sent more than "
                f"{MAX_FDS_PER_RECV} at once"
            )
        if not data:
            close_fds(fds)
            raise AgentkeysError(f"the agentkeys daemon on {self._label} closed the connection")
        start = self._received
        self._received += len(data)
        self._fd_queue.extend(_QueuedFd(fd, start, self._received) for fd in fds)
        self._buffer += data

    def _claim_fds(self, line_start: int, count: int) -> list[int]:
        """Pops the ``count`` descriptors for the line starting at ``line_start``: the
        oldest queued ones, provided they arrived no later than the line's first byte."""
        claimed: list[int] = []
        while len(claimed) < count and self._fd_queue and self._fd_queue[0].start <= line_start:
            claimed.append(self._fd_queue.popleft().fd)
        if len(claimed) < count:
            close_fds(claimed)
            raise AgentkeysError(
                f"the daemon announced {count} file descriptor(s) with a message "
                f"but sent {len(claimed)}"
            )
        return claimed

    def _close_stale_fds(self, offset: int) -> None:
        """Closes the queued descriptors whose bytes all lie before stream offset ``offset``."""
        while self._fd_queue and self._fd_queue[0].end <= offset:
            os.close(self._fd_queue.popleft().fd)

    def _lost(self, exc: OSError) -> AgentkeysError:
        return AgentkeysError(
            f"lost the connection to the agentkeys daemon on {self._label}: {exc.strerror or exc}"
        )


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError as exc:
        # The line may hold a credential, so it is not quoted in the error.
        raise AgentkeysError(f"the daemon sent a line that is not JSON ({len(raw)} bytes)") from exc
    if not isinstance(message, dict):
        raise AgentkeysError("the daemon sent a JSON value that is not an object")
    return message


def _announced_fds(message: dict[str, Any]) -> int:
    count = message.get("fds", 0)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_FDS_PER_RECV:
        raise AgentkeysError(f"the daemon sent an invalid 'fds' field: {count!r}")
    return count


def _response_from(message: dict[str, Any], fds: list[int]) -> Response:
    request_id, result, error = message["id"], message.get("result"), message.get("error")
    return Response(
        id=request_id if isinstance(request_id, int) and not isinstance(request_id, bool) else None,
        result=result if isinstance(result, dict) else None,
        error=error if isinstance(error, dict) else None,
        fds=fds,
    )


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % _INT_SIZE])
    return list(fds)


def close_fds(fds: Iterable[int]) -> None:
    """Closes every descriptor in ``fds``."""
    for fd in fds:
        os.close(fd)
