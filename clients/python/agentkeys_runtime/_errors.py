"""The one exception type this package raises for daemon and protocol failures."""

from __future__ import annotations


class AgentkeysError(Exception):
    """A credential could not be delivered.

    ``message`` is meant for a human and often names the command that fixes the problem
    (for example ``agentkeys approve ABCD-EFGH``). It never contains credential bytes.
    ``code`` is the JSON-RPC error code when the daemon answered with a JSON-RPC error,
    else ``None``.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __repr__(self) -> str:
        return f"AgentkeysError({self.message!r}, code={self.code!r})"
