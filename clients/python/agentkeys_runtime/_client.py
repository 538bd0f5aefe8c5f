"""The MCP client side: one connection to the daemon, and the one-call helpers."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from ._credential import Credential
from ._errors import AgentkeysError
from ._inherit import take_inherited
from ._memory import MEMFD_SECRET, SEALED_MEMFD, fd_kind
from ._version import __version__
from ._wire import Connection, SocketPath, close_fds, socket_path

PROTOCOL_VERSION = "2025-11-25"
FD_DELIVERY_CAPABILITY = "agentkeys/fd-delivery"
FD_META_KEY = "agentkeys/fd"
_CLIENT_INFO = {"name": "agentkeys-runtime-python", "version": __version__}


class Client:
    """One connection to the agentkeys daemon, initialised on ``with`` entry.

    With ``fd_delivery=True`` (the default) the client announces the
    ``agentkeys/fd-delivery`` capability and :meth:`get_credential` returns a
    :class:`Credential` backed by a memfd the daemon passed over the socket. With
    ``fd_delivery=False`` the daemon sends credentials as text and only
    :meth:`get_credential_inline` works.

    Methods may be called from several threads; requests are sent one at a time.
    """

    def __init__(self, socket: SocketPath | None = None, fd_delivery: bool = True) -> None:
        self.socket_path = socket_path(socket)
        self.fd_delivery = fd_delivery
        self._connection: Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "open" if self._connection else "closed"
        return f"Client(socket={self.socket_path!r}, fd_delivery={self.fd_delivery}, {state})"

    def __enter__(self) -> Client:
        connection = Connection.connect(self.socket_path)
        try:
            _initialize(connection, self.fd_delivery)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection. Credentials already returned stay usable."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Calls an MCP tool and returns its raw ``CallToolResult`` (``isError`` results
        included). Descriptors sent with it are closed."""
        result, fds = self._call_tool(name, arguments)
        close_fds(fds)
        return result

    def get_credential(self, service: str) -> Credential:
        """Fetches ``service``'s credential as a memfd. Use the result in a ``with`` block."""
        if not self.fd_delivery:
            raise AgentkeysError(
                "this Client was opened with fd_delivery=False: use get_credential_inline"
            )
        result, fds = self._call_tool("get_credential", {"service": service})
        try:
            fd, length, kind = _delivered_fd(result, fds, service)
        except BaseException:
            close_fds(fds)
            raise
        return Credential(fd, service=service, length=length, kind=kind, mode="fd")

    def get_credential_inline(self, service: str) -> str:
        """Fetches ``service``'s credential as text (the plain MCP way).

        The value passes through Python strings and buffers that are never wiped, so
        copies of it stay in this process's memory; prefer :meth:`get_credential`.
        """
        if self.fd_delivery:
            raise AgentkeysError("this Client was opened with fd_delivery=True: use get_credential")
        result, fds = self._call_tool("get_credential", {"service": service})
        close_fds(fds)
        _raise_if_tool_error(result)
        return _text_of(result)

    def _call_tool(self, name: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        """The tool's result and the descriptors sent with it (the caller owns them)."""
        with self._lock:
            if self._connection is None:
                raise AgentkeysError("the Client is not connected: use it in a 'with' block")
            response = self._connection.request(
                "tools/call", {"name": name, "arguments": arguments}
            )
        return response.raise_for_error(), response.fds


def credential(service: str, *, socket: SocketPath | None = None) -> Credential:
    """Fetches ``service``'s credential for one ``with`` block::

        with credential("openai") as buf:  # a read-only memoryview of the bytes
            ...

    A descriptor inherited from ``agentkeys run --fd`` (``AGENTKEYS_FD_<SERVICE>``) is
    used when present; otherwise the daemon is asked over its socket, and the connection
    is closed before the credential is returned.
    """
    inherited = take_inherited(service)
    if inherited is not None:
        return inherited
    with Client(socket) as client:
        return client.get_credential(service)


def credential_inline(service: str, *, socket: SocketPath | None = None) -> str:
    """Fetches ``service``'s credential as a string, the plain MCP fallback.

    Copies of the value stay in memory until overwritten; use :func:`credential` when
    the daemon supports fd delivery.
    """
    with Client(socket, fd_delivery=False) as client:
        return client.get_credential_inline(service)


def _initialize(connection: Connection, fd_delivery: bool) -> None:
    capabilities: dict[str, Any] = {}
    if fd_delivery:
        capabilities["experimental"] = {FD_DELIVERY_CAPABILITY: {"version": 1}}
    params = {
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": capabilities,
        "clientInfo": _CLIENT_INFO,
    }
    response = connection.request("initialize", params)
    response.close_fds()
    response.raise_for_error()
    connection.send_notification("notifications/initialized")


def _delivered_fd(result: dict[str, Any], fds: list[int], service: str) -> tuple[int, int, str]:
    """The descriptor, length and kind of an fd-delivery result, checked against each other."""
    _raise_if_tool_error(result)
    all_meta = result.get("_meta")
    meta = all_meta.get(FD_META_KEY) if isinstance(all_meta, dict) else None
    if not isinstance(meta, dict) or len(fds) != 1:
        raise AgentkeysError(
            f"the daemon answered without exactly one file descriptor (got {len(fds)}): "
            "it may not support fd delivery; use credential_inline instead"
        )
    length, kind = meta.get("length"), meta.get("kind")
    if meta.get("service") != service:
        raise AgentkeysError(
            f"the daemon sent a descriptor for {meta.get('service')!r}, not {service!r}"
        )
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise AgentkeysError(f"the daemon sent an invalid credential length: {length!r}")
    actual = fd_kind(fds[0])
    if kind not in (MEMFD_SECRET, SEALED_MEMFD) or actual != kind:
        raise AgentkeysError(f"the daemon's descriptor is not the {kind!r} it claims ({actual!r})")
    return fds[0], length, kind


def _raise_if_tool_error(result: dict[str, Any]) -> None:
    if result.get("isError"):
        raise AgentkeysError(_text_of(result))


def _text_of(result: dict[str, Any]) -> str:
    content = result.get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict):
        text = content[0].get("text")
        if isinstance(text, str):
            return text
    raise AgentkeysError("the daemon's tool result has no text content")
