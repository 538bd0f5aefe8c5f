"""A stand-in for agentkeys-daemon, speaking its socket protocol from a thread.

It serves newline-delimited JSON-RPC on a Unix listener and, to a client that announced
``agentkeys/fd-delivery``, sends each credential as a real ``memfd_secret`` (or sealed
memfd) descriptor. It keeps its own shared mapping of every page it sent, so a test can
see the client's wipe through it.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

PAGE_SIZE = mmap.PAGESIZE
_SYS_MEMFD_SECRET = 447  # the same number on x86_64 and the generic (arm64) table
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def memfd_secret() -> int:
    """A new one-page ``memfd_secret`` file; fails loudly where the kernel has none (ask
    :data:`HAVE_MEMFD_SECRET` first)."""
    fd = _libc.syscall(_SYS_MEMFD_SECRET, os.O_CLOEXEC)
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"memfd_secret failed ({os.strerror(errno)})")
    os.ftruncate(fd, PAGE_SIZE)
    return fd


def _probe_memfd_secret() -> bool:
    """Whether this kernel gives ``memfd_secret`` files, decided by making one."""
    try:
        os.close(memfd_secret())
    except OSError:
        return False
    return True


HAVE_MEMFD_SECRET = _probe_memfd_secret()
#: The page kind the daemon sends on this machine: ``memfd_secret``, else a sealed memfd.
BEST_KIND = "memfd_secret" if HAVE_MEMFD_SECRET else "sealed_memfd"


def sealed_memfd() -> int:
    """A one-page memfd sealed against resizing, as the daemon makes them."""
    fd = os.memfd_create("agentkeys-secret", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, PAGE_SIZE)
    seals = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


class Page:
    """A secret page as the daemon holds it: a shared mapping of a memfd it sent away.

    Mapped with libc's mmap rather than the mmap module, which would keep a duplicate
    descriptor open and blur the tests' descriptor counts.
    """

    def __init__(self, secret: bytes, kind: str = BEST_KIND) -> None:
        self.fd = memfd_secret() if kind == "memfd_secret" else sealed_memfd()
        address = _libc.mmap(
            None, PAGE_SIZE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, self.fd, 0
        )
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap of the secret page failed")
        self._address: int = address
        ctypes.memmove(self._address, secret, len(secret))

    def contents(self) -> bytes:
        """A copy of the whole page, as this side's mapping sees it."""
        return ctypes.string_at(self._address, PAGE_SIZE)

    def is_wiped(self) -> bool:
        """Whether every byte of the page reads zero."""
        return self.contents() == bytes(PAGE_SIZE)

    def unmap(self) -> None:
        _libc.munmap(self._address, PAGE_SIZE)


def encode(message: dict[str, Any]) -> bytes:
    """One protocol line."""
    return json.dumps(message).encode() + b"\n"


def tool_result(text: str, is_error: bool = False, **extra: Any) -> dict[str, Any]:
    """An MCP CallToolResult with one text item."""
    return {"content": [{"type": "text", "text": text}], "isError": is_error, **extra}


# Called with the connection before each tools/call response, to inject traffic.
Hook = Callable[[socket.socket], None]


@dataclass
class FakeDaemon:
    """Serves ``secrets`` (service -> bytes); ``errors`` (service -> message) are refused.

    ``fd_support=False`` mimics a daemon that ignores the fd-delivery capability;
    ``claimed_kind`` makes it lie about the page kind in ``_meta``.
    """

    path: Path
    secrets: dict[str, bytes] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    kind: str = BEST_KIND
    claimed_kind: str | None = None
    fd_support: bool = True
    before_response: Hook | None = None
    pages: list[Page] = field(default_factory=list)
    initialize_params: list[dict[str, Any]] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen()
        self._handling = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops accepting and unmaps the pages it kept."""
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._thread.join(timeout=5)
        for page in self.pages:
            page.unmap()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def settle(self) -> None:
        """Waits until the message being handled, if any, is done: a client can see a
        response before the handler has closed the page descriptor it sent."""
        with self._handling:
            pass

    def _serve(self, conn: socket.socket) -> None:
        fd_mode = False
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                with self._handling:
                    fd_mode = self._handle(conn, json.loads(line), fd_mode)

    def _handle(self, conn: socket.socket, message: dict[str, Any], fd_mode: bool) -> bool:
        """Handles one message; returns whether the connection now uses fd delivery."""
        method = message.get("method")
        if "id" not in message:
            self.notifications.append(method)
        elif method == "initialize":
            return self._initialize(conn, message)
        elif method == "tools/call":
            if self.before_response is not None:
                self.before_response(conn)
            self._call_tool(conn, message, fd_mode)
        else:
            error = {"code": -32601, "message": f"no method {method}"}
            conn.sendall(encode({"jsonrpc": "2.0", "id": message["id"], "error": error}))
        return fd_mode

    def _initialize(self, conn: socket.socket, message: dict[str, Any]) -> bool:
        params = message["params"]
        self.initialize_params.append(params)
        result = {
            "protocolVersion": params["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "fake-agentkeys-daemon", "version": "0"},
        }
        conn.sendall(encode({"jsonrpc": "2.0", "id": message["id"], "result": result}))
        wants_fds = "agentkeys/fd-delivery" in params["capabilities"].get("experimental", {})
        return wants_fds and self.fd_support

    def _call_tool(self, conn: socket.socket, message: dict[str, Any], fd_mode: bool) -> None:
        request_id, params = message["id"], message["params"]
        if params["name"] == "whoami":
            self._answer(conn, request_id, tool_result("wallet 0xfake"))
            return
        service = params["arguments"]["service"]
        if service in self.errors:
            self._answer(conn, request_id, tool_result(self.errors[service], is_error=True))
        elif service not in self.secrets:
            self._answer(
                conn, request_id, tool_result(f"no credential named {service}", is_error=True)
            )
        elif fd_mode:
            self._send_page(conn, request_id, service)
        else:
            self._answer(conn, request_id, tool_result(self.secrets[service].decode()))

    def _send_page(self, conn: socket.socket, request_id: int, service: str) -> None:
        secret = self.secrets[service]
        page = Page(secret, self.kind)
        self.pages.append(page)
        meta = {"service": service, "length": len(secret), "kind": self.claimed_kind or self.kind}
        result = tool_result(
            f"{service}: {len(secret)} bytes in the attached descriptor",
            _meta={"agentkeys/fd": meta},
        )
        line = encode({"jsonrpc": "2.0", "id": request_id, "result": result, "fds": 1})
        socket.send_fds(conn, [line], [page.fd])
        os.close(page.fd)  # the mapping stays, so tests can watch the client's wipe

    @staticmethod
    def _answer(conn: socket.socket, request_id: int, result: dict[str, Any]) -> None:
        conn.sendall(encode({"jsonrpc": "2.0", "id": request_id, "result": result}))
