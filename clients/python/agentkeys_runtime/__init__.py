"""agentkeys_runtime: fetch credentials from the agentkeys daemon without leaving copies.

The daemon passes each credential as a file descriptor of a ``memfd_secret`` page (or a
sealed memfd where the kernel lacks it). This package maps that page for the duration of
a ``with`` block, wipes it on exit, and keeps the process non-dumpable meanwhile::

    from agentkeys_runtime import credential

    with credential("openai") as buf:   # read-only memoryview of the credential bytes
        ...                             # bytes(buf) or buf.tobytes() make copies that stay

:func:`credential_inline` is the plain MCP fallback that returns a ``str``.
"""

from ._client import Client, credential, credential_inline
from ._credential import Credential
from ._errors import AgentkeysError
from ._version import __version__

__all__ = [
    "AgentkeysError",
    "Client",
    "Credential",
    "__version__",
    "credential",
    "credential_inline",
]
